/**
 * The server's options, each declared once (see shared/options.ts): `--help`, the parser, the
 * defaults `startServer` uses and README's server table all come from {@link SERVER_OPTIONS}.
 * @module
 */

import { readFileSync } from "node:fs";
import {
  type HostPort,
  type PortRange,
  parseCount,
  parseHostPort,
  parsePort,
  parsePortRange,
  parseSeconds,
  UsageError,
} from "../args.ts";
import { parseCidr } from "../ip.ts";
import { describeError } from "../log.ts";
import { type EnvSpec, type OptionTable, type OptionValues, parseOptions } from "../options.ts";
import { DEFAULT_CLIENT_BUDGET, DEFAULT_SERVER_BUDGET } from "../relay/budget.ts";
import { DEFAULTS, NODE_NAME } from "../wire/protocol.ts";
import { AccessList, MAX_RULES } from "./access-list.ts";
import { nsupdateAvailable } from "./acme/dns-update.ts";
import { parseHostPatterns } from "./acme/hostnames.ts";
import type { ChallengeType } from "./acme/manager.ts";
import { adminProblem, parseAdminAddress } from "./admin.ts";
import { isSentinelUrl, parseSentinelUrl } from "./cluster/sentinel.ts";
import { DEFAULT_REQUEST_TIMEOUT_SECONDS } from "./http-ingress.ts";
import type { UserConfig } from "./users.ts";

/** Let's Encrypt's production directory. */
export const LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory";

/** Parses `--acme-challenge`: a comma-separated list of http-01 and tls-alpn-01. */
function parseChallenges(text: string, flag: string): ChallengeType[] {
  const list = text
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t !== "");
  for (const type of list)
    if (type !== "http-01" && type !== "tls-alpn-01")
      throw new UsageError(
        `${flag}: '${type}' is not a challenge type this server answers (http-01, tls-alpn-01; DNS-01 comes with --acme-dns)`,
      );
  if (list.length === 0) throw new UsageError(`${flag}: no challenge type given (http-01, tls-alpn-01)`);
  return [...new Set(list)] as ChallengeType[];
}

const seconds = (min: number, max: number) => (text: string, flag: string) =>
  parseSeconds(text, flag, min, max);

/** A CIDR range or address as its canonical text, or one line naming the flag (or config key). */
function cidrOption(text: string, flag: string): string {
  try {
    return parseCidr(text).text;
  } catch (error) {
    throw new UsageError(`${flag}: ${(error as Error).message}`, false);
  }
}

/** Reads a text file named by a flag; one line naming the flag when it cannot. */
function readFlagFile(file: string, flag: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? describeError(error);
    throw new UsageError(`${flag}: cannot read '${file}': ${code}`);
  }
}

/** Reads a PEM file named by a flag; one line naming the flag when it is unreadable or not PEM. */
function readPem(file: string, flag: string, what: string, label: RegExp): string {
  const text = readFlagFile(file, flag);
  if (!label.test(text)) throw new UsageError(`${flag}: '${file}' holds no PEM ${what}`);
  return text;
}

/** Checks a `--acme-dns-key` file: readable, and a key in BIND's format (one line naming the flag). */
function checkTsigKey(file: string, flag: string): void {
  const text = readFlagFile(file, flag);
  if (!/\bkey\b[^{]*\{[^}]*\balgorithm\b[^}]*\bsecret\b/.test(text))
    throw new UsageError(
      `${flag}: '${file}' holds no TSIG key (key "NAME" { algorithm hmac-sha256; secret "…"; }; as tsig-keygen writes it)`,
    );
}

/** Every server option, in `--help` order. */
export const SERVER_OPTIONS = {
  config: {
    key: "config",
    value: "FILE",
    defaultText: "flags only",
    help: "read options and [[users]] (tokens, limits) from this TOML file; flags override it; SIGHUP reloads it (README: Config file)",
  },
  watch: {
    restart: true,
    key: "watch",
    help: "reload the --config file when it changes, as SIGHUP does",
  },
  host: {
    restart: true,
    key: "host",
    value: "ADDR",
    defaultText: "`::` (IPv4 and IPv6) where the machine has IPv6, else `0.0.0.0`",
    help: "bind address for the control port and the public ports",
  },
  port: {
    restart: true,
    key: "port",
    value: "N",
    default: 7070,
    help: "control port: client WebSocket upgrade, GET /health, HTTP tunnels at NAME.DOMAIN (0 = any free port)",
    parse: (text: string, flag: string): number => parsePort(text, flag, true),
  },
  domain: {
    restart: true,
    key: "domain",
    value: "NAME",
    default: "localhost",
    help: "public host name printed in tunnel URLs; HTTP tunnels are NAME.DOMAIN",
  },
  "tcp-ports": {
    key: "tcpPorts",
    value: "MIN-MAX",
    defaultText: "any free port ≥ 1024",
    help: "range for public TCP ports; a client may ask for any port in it, privileged ones included; never the server's own ports",
    parse: (text: string, flag: string): PortRange => parsePortRange(text, flag),
  },
  "http-port": {
    restart: true,
    key: "httpPort",
    value: "N",
    defaultText: "HTTP tunnels on `--port` only",
    help: "a separate public port for HTTP tunnels, e.g. 80/443 (https with --tls-cert; 0 = any free port)",
    parse: (text: string, flag: string): number => parsePort(text, flag, true),
  },
  "tls-cert": {
    restart: true,
    key: "tlsCert",
    value: "FILE",
    defaultText: "plain ws/http",
    help: "PEM certificate: serve wss/https on --port (and --http-port); a wildcard for *.DOMAIN for HTTP tunnels (needs --tls-key)",
  },
  "tls-key": {
    restart: true,
    key: "tlsKey",
    value: "FILE",
    help: "PEM private key for --tls-cert",
  },
  "https-port": {
    key: "httpsPort",
    restart: true,
    value: "N",
    defaultText: "off",
    help: "public HTTPS port routed by the ClientHello's name (SNI): HTTP tunnels terminated with ACME's or --tls-cert's certificate, --tls-passthrough tunnels carried encrypted; --http-port then stays plain http (README: Automatic HTTPS)",
    parse: (text: string, flag: string): number => parsePort(text, flag, true),
  },
  "acme-email": {
    key: "acmeEmail",
    restart: true,
    value: "ADDR",
    defaultText: "off",
    help: "turn on automatic HTTPS: certificates from an ACME CA for DOMAIN and each HTTP tunnel's name, renewed by themselves (needs --https-port and, for HTTP-01, --http-port)",
    parse: (text: string, flag: string): string => {
      if (!/^[^\s@]+@[^\s@]+$/.test(text)) throw new UsageError(`${flag}: '${text}' is not an email address`);
      return text;
    },
  },
  "acme-directory": {
    key: "acmeDirectory",
    restart: true,
    value: "URL",
    default: LETS_ENCRYPT,
    help: "the ACME CA's directory (any RFC 8555 CA; Let's Encrypt's staging: https://acme-staging-v02.api.letsencrypt.org/directory)",
    parse: (text: string, flag: string): string => {
      let url: URL;
      try {
        url = new URL(text);
      } catch {
        throw new UsageError(`${flag}: '${text}' is not a URL`);
      }
      if (url.protocol !== "https:") throw new UsageError(`${flag}: '${text}' must be https://`);
      return text;
    },
  },
  "acme-ca": {
    key: "acmeCa",
    restart: true,
    value: "FILE",
    defaultText: "the system's CAs",
    help: "PEM CA certificate to trust for --acme-directory's HTTPS (a private CA)",
  },
  "acme-dir": {
    key: "acmeDir",
    restart: true,
    value: "DIR",
    defaultText: "$XDG_STATE_HOME/sockets/acme (~/.local/state/sockets/acme)",
    help: "where the ACME account key, certificates and keys are kept (made 0700, files 0600); a restart reuses them",
  },
  "acme-challenge": {
    key: "acmeChallenges",
    restart: true,
    value: "LIST",
    default: ["http-01", "tls-alpn-01"] as ChallengeType[],
    defaultText: "http-01,tls-alpn-01",
    help: "ACME challenge types in order of preference: http-01 (answered on --http-port, the CA connects to port 80) and tls-alpn-01 (on --https-port, port 443)",
    parse: parseChallenges,
  },
  "acme-dns": {
    key: "acmeDns",
    restart: true,
    value: "HOST:PORT",
    defaultText: "off",
    help: "DNS server that takes RFC 2136 updates for DOMAIN's zone: a wildcard *.DOMAIN (with DOMAIN) is ordered through DNS-01 and covers every NAME.DOMAIN (needs --acme-dns-key and nsupdate; README: Automatic HTTPS)",
    parse: (text: string, flag: string): HostPort => parseHostPort(text, flag),
  },
  "acme-dns-key": {
    key: "acmeDnsKey",
    restart: true,
    value: "FILE",
    help: "TSIG key file for --acme-dns, as tsig-keygen writes it",
  },
  "acme-user-orders": {
    key: "acmeUserOrders",
    restart: true,
    value: "N",
    default: 20,
    help: "most certificate orders one user's (or, without users, one client address's) names may cause per hour; past it, named in the log",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  "acme-server-orders": {
    key: "acmeServerOrders",
    restart: true,
    value: "N",
    default: 100,
    help: "most certificate orders (renewals included) the server places per hour",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  "acme-retry": {
    key: "acmeRetrySeconds",
    restart: true,
    value: "SECONDS",
    default: 60,
    help: "first wait after a failed order; doubles per failure up to an hour (at least an hour after the CA's rate-limit answer)",
    parse: seconds(0.1, 86_400),
  },
  "revocation-interval": {
    key: "revocationIntervalSeconds",
    restart: true,
    value: "SECONDS",
    default: 43_200,
    help: "how often each certificate held (ACME's, --tls-cert's) is checked for revocation through the OCSP responder or CRL it names, sooner when the answer says so; 0: never (README: Automatic HTTPS)",
    parse: (text: string, flag: string): number => {
      if (text === "0") return 0;
      if (/^\d+(\.\d+)?$/.test(text) && Number(text) >= 1 && Number(text) <= 604_800) return Number(text);
      throw new UsageError(`${flag}: '${text}' is not 0 (never) or a number of seconds (1-604800)`);
    },
  },
  "custom-domains": {
    key: "customDomains",
    restart: true,
    value: "PATTERNS",
    defaultText: "none",
    help: "without users: host names outside DOMAIN clients may hold with --hostname, e.g. *.example.com,api.example.org (users: hostnames in [[users]]; README: Custom domains)",
    parse: (text: string, flag: string): string[] => {
      try {
        return parseHostPatterns(text, flag);
      } catch (error) {
        throw new UsageError((error as Error).message);
      }
    },
  },
  window: {
    restart: true,
    key: "window",
    value: "BYTES",
    default: DEFAULTS.window,
    help: "most a stream's flow-control window grows to: streams start at 1 MiB and grow with the round trip",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  "client-budget": {
    restart: true,
    key: "clientBudget",
    value: "BYTES",
    default: DEFAULT_CLIENT_BUDGET,
    help: "bytes one client's streams may buffer in the server, per direction; over it, that client is paused",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  "server-budget": {
    restart: true,
    key: "serverBudget",
    value: "BYTES",
    default: DEFAULT_SERVER_BUDGET,
    help: "bytes all clients' streams may buffer in the server together, per direction",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  "max-streams": {
    key: "maxStreamsPerTunnel",
    value: "N",
    default: DEFAULTS.maxStreamsPerTunnel,
    help: "most visitor connections open at once per tunnel",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  "max-tunnels": {
    key: "maxTunnelsPerClient",
    value: "N",
    default: DEFAULTS.maxTunnelsPerClient,
    help: "most tunnels one client may hold",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  grace: {
    key: "graceSeconds",
    value: "SECONDS",
    default: 60,
    help: "how long a dropped client's tunnels, ports, names and open visitor connections stay reserved for it (0 = release at once)",
    parse: seconds(0, 86_400),
  },
  heartbeat: {
    restart: true,
    key: "heartbeatSeconds",
    value: "SECONDS",
    default: 10,
    help: "heartbeat interval: a client silent for one is pinged, for 3 declared dead",
    parse: seconds(0.1, 3600),
  },
  "drain-timeout": {
    key: "drainSeconds",
    value: "SECONDS",
    default: 10,
    help: "on SIGINT/SIGTERM, how long connections in flight may take to finish",
    parse: seconds(0, 3600),
  },
  "handshake-timeout": {
    key: "handshakeSeconds",
    value: "SECONDS",
    default: 10,
    help: "a client that has no live tunnel this long after connecting is closed (1008)",
    parse: seconds(0.1, 3600),
  },
  "auth-fail-limit": {
    restart: true,
    key: "authFailLimit",
    value: "N",
    default: 10,
    help: "failed API keys or resume secrets per address per minute before 429",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  "request-timeout": {
    restart: true,
    key: "requestTimeoutSeconds",
    value: "SECONDS",
    default: DEFAULT_REQUEST_TIMEOUT_SECONDS,
    help: "HTTP visitors must complete a request head this long after connecting or after their previous response; idle keep-alive connections close then too",
    parse: seconds(0.1, 3600),
  },
  "visitor-idle-timeout": {
    restart: true,
    key: "visitorIdleSeconds",
    value: "SECONDS",
    default: 0,
    help: "close visitor connections that move no byte either way for this long (0 = never)",
    parse: seconds(0, 86_400),
  },
  allow: {
    key: "allow",
    value: "CIDR",
    multiple: true,
    defaultText: "everyone",
    help: "only visitors from these addresses reach any tunnel (repeatable; IPv4 or IPv6, a range or one address); binds every user's and tunnel's own lists (README: Allow and deny lists)",
    parse: cidrOption,
  },
  deny: {
    key: "deny",
    value: "CIDR",
    multiple: true,
    defaultText: "nobody",
    help: "visitors from these addresses are refused by every tunnel, whatever any allow list says (repeatable)",
    parse: cidrOption,
  },
  "udp-idle-timeout": {
    key: "udpIdleSeconds",
    value: "SECONDS",
    default: 60,
    help: "a UDP flow (one visitor's IP and port) that carries no datagram either way this long is forgotten, and its client's socket closed",
    parse: seconds(0.1, 86_400),
  },
  "udp-max-flows": {
    key: "udpMaxFlows",
    value: "N",
    default: 1024,
    help: "most flows per UDP tunnel; a new visitor past it takes the place of the least recently active flow",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  "udp-rate-limit": {
    key: "udpRateMbps",
    value: "MBIT",
    defaultText: "no limit",
    help: "most Mbit/s of datagrams from visitors to one UDP tunnel's client (a pool's port counts once); past it datagrams are dropped as they arrive, counted as rate_limited: a flood then costs the client and the WebSocket nothing more (the server still reads each datagram)",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  "health-detail": {
    key: "healthDetail",
    help: "GET /health and tunnel log lines name the user holding each tunnel (per-user counts)",
  },
  admin: {
    restart: true,
    key: "admin",
    value: "ADDR",
    defaultText: "off",
    help: "serve the dashboard, its JSON API and GET /metrics (Prometheus) on HOST:PORT, e.g. 127.0.0.1:9090 (README: Dashboard and metrics)",
    parse: parseAdminAddress,
  },
  "admin-token": {
    restart: true,
    key: "adminToken",
    value: "TOKEN",
    env: "SOCKETS_ADMIN_TOKEN",
    defaultText: "none: --admin on loopback only",
    help: "the admin listener wants this token (Bearer or ?token=); required beyond loopback (prefer the env or admin_token in --config: a flag shows in ps)",
  },
  "metrics-per-tunnel": {
    restart: true,
    key: "metricsPerTunnel",
    help: "/metrics also has series per tunnel (labels tunnel, name, type): their number grows with tunnels",
  },
  cluster: {
    restart: true,
    key: "cluster",
    value: "URL",
    env: "SOCKETS_CLUSTER",
    defaultText: "one server alone, no Redis",
    help: "join a cluster whose namespace lives in this Redis: redis://[:PASSWORD@]HOST:PORT[/DB], rediss://, or redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER_NAME (README: Run a cluster)",
    parse: parseRedisUrl,
  },
  "cluster-ca": {
    restart: true,
    key: "clusterCa",
    value: "FILE",
    defaultText: "the system's CAs",
    help: "PEM CA certificate(s) that Redis' certificate (rediss://) and other nodes' (wss:// node URLs) are checked against",
  },
  "node-name": {
    restart: true,
    key: "nodeName",
    value: "NAME",
    defaultText: "HOST:PORT of --node-url",
    help: "this node's name in the cluster (unique per node; a node whose name a live node uses refuses to start)",
    parse: (text: string, flag: string): string => {
      if (!NODE_NAME.test(text))
        throw new UsageError(`${flag}: '${text}' is not a node name (1-64 of A-Z a-z 0-9 . _ : -)`);
      return text;
    },
  },
  "node-url": {
    restart: true,
    key: "nodeUrl",
    value: "URL",
    defaultText:
      "ws(s)://HOST:PORT of the control port (bound to all addresses: this machine's address toward Redis)",
    help: "where the other nodes reach this one (its control port) to carry visitors to it",
    parse: (text: string, flag: string): string => {
      let url: URL;
      try {
        url = new URL(text);
      } catch {
        throw new UsageError(`${flag}: '${text}' is not a URL (e.g. ws://10.0.0.2:7070)`);
      }
      if (url.protocol !== "ws:" && url.protocol !== "wss:")
        throw new UsageError(`${flag}: '${text}' must be ws:// or wss://`);
      return url.href.replace(/\/$/, "");
    },
  },
  "cluster-lease": {
    restart: true,
    key: "clusterLeaseSeconds",
    value: "SECONDS",
    default: 5,
    help: "how long a node's hold on a name or port lasts without renewal: a dead node's names free after this",
    parse: seconds(1, 600),
  },
  quiet: { key: "quiet", short: "q", restart: true, help: "log warnings and errors only" },
} as const satisfies OptionTable;

/** Checks a `--cluster` Redis URL: redis:// or rediss://, with a host, or a sentinel URL. */
function parseRedisUrl(text: string, flag: string): string {
  if (isSentinelUrl(text)) {
    try {
      parseSentinelUrl(text);
    } catch (error) {
      throw new UsageError(`${flag}: ${describeError(error)}`);
    }
    return text;
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(`${flag}: '${text}' is not a URL (e.g. redis://127.0.0.1:6379)`);
  }
  if (url.protocol !== "redis:" && url.protocol !== "rediss:")
    throw new UsageError(`${flag}: '${text}' must be redis://, rediss:// or redis+sentinel://`);
  if (url.hostname === "") throw new UsageError(`${flag}: '${text}' names no host`);
  return text;
}

/**
 * The options that shape the running server, each with its default applied: resolved once, at start
 * and on each reload (nothing else applies a default).
 */
export interface ServerSettings {
  domain: string;
  tcpPorts?: PortRange;
  window: number;
  clientBudget: number;
  serverBudget: number;
  maxStreamsPerTunnel: number;
  maxTunnelsPerClient: number;
  graceSeconds: number;
  heartbeatSeconds: number;
  drainSeconds: number;
  handshakeSeconds: number;
  authFailLimit: number;
  visitorIdleSeconds: number;
  /** `--udp-idle-timeout`, `--udp-max-flows`. */
  udpIdleSeconds: number;
  udpMaxFlows: number;
  /** `--udp-rate-limit`, Mbit/s per UDP tunnel (absent: none). */
  udpRateMbps?: number;
  healthDetail: boolean;
  users: UserConfig[];
  apiKey?: string;
  /** `--custom-domains`: host patterns clients may hold without users. */
  customDomains?: string[];
  /** The server's own allow and deny lists (`--allow`, `--deny`). */
  access?: AccessList;
}

/** {@link ServerSettings} from the options: each absent one takes its option table default. */
export function resolveServerSettings(options: ServerOptions): ServerSettings {
  const o = SERVER_OPTIONS;
  return {
    domain: options.domain ?? o.domain.default,
    tcpPorts: options.tcpPorts,
    window: options.window ?? o.window.default,
    clientBudget: options.clientBudget ?? o["client-budget"].default,
    serverBudget: options.serverBudget ?? o["server-budget"].default,
    maxStreamsPerTunnel: options.maxStreamsPerTunnel ?? o["max-streams"].default,
    maxTunnelsPerClient: options.maxTunnelsPerClient ?? o["max-tunnels"].default,
    graceSeconds: options.graceSeconds ?? o.grace.default,
    heartbeatSeconds: options.heartbeatSeconds ?? o.heartbeat.default,
    drainSeconds: options.drainSeconds ?? o["drain-timeout"].default,
    handshakeSeconds: options.handshakeSeconds ?? o["handshake-timeout"].default,
    authFailLimit: options.authFailLimit ?? o["auth-fail-limit"].default,
    visitorIdleSeconds: options.visitorIdleSeconds ?? o["visitor-idle-timeout"].default,
    udpIdleSeconds: options.udpIdleSeconds ?? o["udp-idle-timeout"].default,
    udpMaxFlows: options.udpMaxFlows ?? o["udp-max-flows"].default,
    udpRateMbps: options.udpRateMbps,
    healthDetail: options.healthDetail === true,
    users: options.users ?? [],
    apiKey: options.apiKey,
    customDomains: options.customDomains,
    access: options.access,
  };
}

/** Environment variables the server reads that no flag sets. */
export const SERVER_ENVIRONMENT: EnvSpec[] = [
  {
    name: "SOCKETS_SINGLE_API_KEY",
    help: "clients must present this key",
    defaultText: "no auth (a warning is logged)",
  },
];

/** The values the option table parses into (flags, or a config file's keys). */
export type ServerOptionValues = OptionValues<typeof SERVER_OPTIONS>;

/** Everything the server can be told; the CLI fills it from flags, env and the config file. */
export type ServerOptions = Omit<ServerOptionValues, "tlsCert" | "tlsKey" | "clusterCa" | "acmeCa"> & {
  /** The `--acme-ca` file's PEM text. */
  acmeCa?: string;
  /** PEM certificate and key: serve wss/https. */
  tls?: { cert: string; key: string };
  /** The `--cluster-ca` file's PEM text (not its path). */
  clusterCa?: string;
  /** Clients must present this key; absent means no auth. */
  apiKey?: string;
  /** The config file's users (tokens as hashes, limits). */
  users?: UserConfig[];
  /**
   * The server's own allow and deny lists (`--allow`, `--deny`), parsed; absent when neither is
   * given. They bind every visitor of every tunnel (shared/server/access-list.ts, `accessRefusal`).
   */
  access?: AccessList;
};

/**
 * Turns parsed option values into the server's options: reads the TLS files and takes the API key
 * from env. `name` says how to name an option in an error (`--tls-cert`, or a config file's place).
 * @throws {UsageError} for a certificate without its key (or the other way round), an unreadable PEM
 *   or `--cluster-ca` without `--cluster`.
 */
export function finishServerOptions(
  values: ServerOptionValues,
  env: Record<string, string | undefined>,
  name: (flag: "tls-cert" | "tls-key" | "cluster-ca" | "acme-ca") => string = (flag) => `--${flag}`,
): ServerOptions {
  const { tlsCert, tlsKey, clusterCa, acmeCa, ...rest } = values;
  if (values.acmeEmail !== undefined && values.httpsPort === undefined)
    throw new UsageError(
      "--acme-email needs --https-port (where the certificates are served; 443 in production)",
    );
  if (
    values.acmeEmail !== undefined &&
    values.httpPort === undefined &&
    !(values.acmeChallenges ?? SERVER_OPTIONS["acme-challenge"].default).includes("tls-alpn-01")
  )
    throw new UsageError("--acme-challenge http-01 needs --http-port (the CA validates on port 80)");
  if ((values.acmeDns === undefined) !== (values.acmeDnsKey === undefined))
    throw new UsageError("--acme-dns and --acme-dns-key must be given together");
  if (values.acmeDns !== undefined && values.acmeEmail === undefined)
    throw new UsageError("--acme-dns needs --acme-email (it is how ACME's DNS-01 is answered)");
  if (values.acmeDns !== undefined && !nsupdateAvailable())
    throw new UsageError("--acme-dns needs nsupdate to send its updates (apt-get install dnsutils)");
  if (values.acmeDnsKey !== undefined) checkTsigKey(values.acmeDnsKey, "--acme-dns-key");
  if (acmeCa !== undefined && values.acmeEmail === undefined)
    throw new UsageError(`${name("acme-ca")} needs --acme-email (it is the CA of --acme-directory)`);
  if ((tlsCert === undefined) !== (tlsKey === undefined))
    throw new UsageError(`${name("tls-cert")} and ${name("tls-key")} must be given together`);
  if (clusterCa !== undefined && values.cluster === undefined)
    throw new UsageError(
      `${name("cluster-ca")} needs --cluster (it is the CA of the cluster's Redis and nodes)`,
    );
  const admin = adminProblem(values.admin, values.adminToken);
  if (admin !== undefined) throw new UsageError(admin);
  for (const key of ["allow", "deny"] as const)
    if ((values[key]?.length ?? 0) > MAX_RULES)
      throw new UsageError(`--${key}: at most ${MAX_RULES} ranges (use wider ranges)`, false);
  const { allow = [], deny = [] } = values;
  return {
    access: allow.length + deny.length > 0 ? AccessList.parse(allow, deny, "server") : undefined,
    ...rest,
    tls:
      tlsCert !== undefined && tlsKey !== undefined
        ? {
            cert: readPem(tlsCert, name("tls-cert"), "certificate", /-----BEGIN CERTIFICATE-----/),
            key: readPem(tlsKey, name("tls-key"), "private key", /-----BEGIN [A-Z ]*PRIVATE KEY-----/),
          }
        : undefined,
    clusterCa:
      clusterCa === undefined
        ? undefined
        : readPem(clusterCa, name("cluster-ca"), "certificate", /-----BEGIN CERTIFICATE-----/),
    acmeCa:
      acmeCa === undefined
        ? undefined
        : readPem(acmeCa, name("acme-ca"), "certificate", /-----BEGIN CERTIFICATE-----/),
    apiKey: env.SOCKETS_SINGLE_API_KEY || undefined,
  };
}

/**
 * Turns argv and env into options, or "help" (flags only: a `--config` file is read by
 * `parseServerCommand` in config.ts).
 * @throws {UsageError} on bad input, with one line naming the flag.
 */
export function parseServerArgs(
  argv: string[],
  env: Record<string, string | undefined>,
): ServerOptions | "help" {
  const { values, help } = parseOptions(SERVER_OPTIONS, argv, env);
  if (help) return "help";
  return finishServerOptions(values as ServerOptionValues, env);
}
