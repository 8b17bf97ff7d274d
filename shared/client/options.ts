/**
 * The client's options, each declared once (see shared/options.ts): `--help`, the parser, the
 * defaults the client uses and README's client table all come from {@link CLIENT_OPTIONS}. The flags
 * that pair up (`--port` with `--expose`, `--subdomain` with `--http`) become one list of named services
 * ({@link servicesFromValues}); a config file's `[[tunnels]]` become the same (shared/client/config.ts).
 * @module
 */

import {
  type HostPort,
  parseCount,
  parseHostPort,
  parsePort,
  parseSeconds,
  parseServerUrl,
  UsageError,
} from "../args.ts";
import { parseCidr } from "../ip.ts";
import type { EnvSpec, OptionTable, OptionValues } from "../options.ts";
import { HOSTNAME, MAX_ACCESS_RULES, SUBDOMAIN } from "../wire/protocol.ts";
import { PROXY_VERSIONS, type ProxyVersion } from "../wire/proxy-protocol.ts";
import { DEFAULT_CAPACITY, type InspectSetting, parseInspect } from "./inspector/settings.ts";

/** One local service to publish. */
export interface ExposeOption extends HostPort {
  /** The tunnel's name in the client's set (unique; a config file's `name`, else `tcp-1`, `http-1`, …). */
  name?: string;
  /**
   * A raw TCP tunnel (default), an HTTP tunnel at `NAME.DOMAIN`, a UDP tunnel, or an end-to-end TLS
   * tunnel (the server routes by SNI on its HTTPS port and never decrypts: the local service holds the key).
   */
  kind?: "tcp" | "http" | "udp" | "tls";
  /** TCP, UDP: the public port to ask for; absent for any. */
  publicPort?: number;
  /** HTTP, TLS: the name to ask for; absent for a random one. */
  subdomain?: string;
  /** HTTP, TLS: a full host name outside the server's domain (a custom domain it allows). */
  hostname?: string;
  /** HTTP: keep the visitor's Host header instead of sending the local address (default false). */
  preserveHost?: boolean;
  /** HTTP: `user:password` visitors must present (basic auth, checked by the server). */
  basicAuth?: string;
  /** HTTP: one line per request through the client's request log (false: none; absent: when one is set). */
  logRequests?: boolean;
  /** Share the port or name with the user's other clients that ask with `pool` too. */
  pool?: boolean;
  /** Visitor addresses the server lets through (canonical CIDR); absent or empty: all not denied. */
  allow?: string[];
  /** Visitor addresses the server refuses, whatever `allow` says (canonical CIDR). */
  deny?: string[];
  /** Write a PROXY protocol header of this version into each connection to the local service. */
  proxyProtocol?: ProxyVersion;
}

/** A service with its name: how the client keys its tunnels (a reload compares them by name). */
export type NamedService = ExposeOption & { name: string };

const seconds = (text: string, flag: string): number => parseSeconds(text, flag, 0.1, 3600);

/** A CIDR range or address as its canonical text (`192.0.2.7/24` → `192.0.2.0/24`), or one line naming the flag. */
function cidrOption(text: string, flag: string): string {
  try {
    return parseCidr(text).text;
  } catch (error) {
    throw new UsageError(`${flag}: ${(error as Error).message}`, false);
  }
}

/** Every client option, in `--help` order. */
export const CLIENT_OPTIONS = {
  expose: {
    key: "tcp",
    value: "HOST:PORT",
    multiple: true,
    help: "local service to publish as a TCP tunnel (repeatable: one tunnel each); PORT alone means 127.0.0.1:PORT; IPv6 as [::1]:PORT",
    parse: (text: string, flag: string): HostPort => parseHostPort(text, flag),
  },
  "expose-udp": {
    key: "udp",
    value: "HOST:PORT",
    multiple: true,
    help: "local UDP service to publish as a UDP tunnel (repeatable; README: UDP tunnels): each visitor address gets its own socket toward it; PORT alone means 127.0.0.1:PORT",
    parse: (text: string, flag: string): HostPort => parseHostPort(text, flag),
  },
  server: {
    key: "server",
    value: "URL",
    multiple: true,
    default: "ws://localhost:7070",
    env: "SOCKETS_SERVER",
    help: "ws:// or wss:// server; repeatable (the env: a comma-separated list): the first that answers is used, the next when it is lost (README: Several servers)",
    parse: (text: string, flag: string): URL => parseServerUrl(text, flag),
  },
  port: {
    key: "ports",
    value: "N",
    multiple: true,
    defaultText: "any",
    help: "ask for this public port (repeatable: the n-th --port goes with the n-th --expose, those past the --expose flags with the --expose-udp flags in order)",
    parse: (text: string, flag: string): number => parsePort(text, flag),
  },
  http: {
    key: "http",
    value: "HOST:PORT",
    multiple: true,
    help: "local web service to publish at http(s)://NAME.DOMAIN (repeatable: one tunnel each; combinable with --expose)",
    parse: (text: string, flag: string): HostPort => parseHostPort(text, flag),
  },
  "tls-passthrough": {
    key: "tls",
    value: "HOST:PORT",
    multiple: true,
    help: "local TLS service to publish end to end at NAME.DOMAIN on the server's --https-port: routed by SNI, never decrypted, so the service's own certificate is what visitors see (README: End-to-end TLS)",
    parse: (text: string, flag: string): HostPort => parseHostPort(text, flag),
  },
  subdomain: {
    key: "subdomains",
    value: "NAME",
    multiple: true,
    defaultText: "random (10 lower-case letters and digits)",
    help: "ask for this name (repeatable: the n-th goes with the n-th --http, then --tls-passthrough); a DNS label: a-z, 0-9, inner '-', at most 63",
    parse: (text: string, flag: string): string => {
      if (!SUBDOMAIN.test(text))
        throw new UsageError(`${flag}: '${text}' is not a DNS label (a-z, 0-9, inner '-', at most 63)`);
      return text;
    },
  },
  hostname: {
    key: "hostnames",
    value: "HOST",
    multiple: true,
    help: "ask for a full host name outside the server's domain, e.g. api.example.com CNAMEd to the server (repeatable, paired as --subdomain; the server must allow it; README: Custom domains)",
    parse: (text: string, flag: string): string => {
      const host = text.toLowerCase().replace(/\.$/, "");
      if (!HOSTNAME.test(host))
        throw new UsageError(
          `${flag}: '${text}' is not a host name (dot-separated DNS labels, e.g. api.example.com)`,
        );
      return host;
    },
  },
  "host-header": {
    key: "hostHeader",
    value: "MODE",
    default: "rewrite",
    help: "the Host header the local web service sees: its own address (rewrite, as ngrok does; dev servers check it) or the visitor's (preserve)",
    parse: (text: string, flag: string): "rewrite" | "preserve" => {
      if (text !== "rewrite" && text !== "preserve")
        throw new UsageError(`${flag}: '${text}' is not rewrite or preserve`);
      return text;
    },
  },
  "basic-auth": {
    key: "basicAuth",
    value: "USER:PASSWORD",
    help: "visitors of every --http tunnel must log in (checked by the server, never forwarded)",
    parse: (text: string, flag: string): string => {
      if (!/^[^:]+:.+$/.test(text)) throw new UsageError(`${flag}: expected USER:PASSWORD`);
      return text;
    },
  },
  "log-requests": {
    key: "logRequests",
    defaultText: "on when stdout is a terminal",
    help: "one stdout line per HTTP request: time, method, path, status, duration, bytes",
  },
  inspect: {
    key: "inspect",
    value: "ADDR",
    defaultText: "`127.0.0.1:4040` (the next free port when taken)",
    env: "SOCKETS_INSPECT",
    help: "where the request inspector listens (README: Inspector): HOST:PORT, PORT (on 127.0.0.1; 0 = any free port), or off",
    parse: (text: string, flag: string): InspectSetting => parseInspect(text, flag),
  },
  "inspect-buffer": {
    key: "inspectBuffer",
    value: "N",
    default: DEFAULT_CAPACITY,
    help: "HTTP requests (and TCP connections) the inspector keeps, newest first; each body kept up to 1 MiB",
    parse: (text: string, flag: string): number => parseCount(text, flag),
  },
  pool: {
    key: "pool",
    defaultText: "off",
    help: "share each tunnel's port or name with the same user's other clients that also say --pool: visitors are spread over them (README: Pools)",
  },
  allow: {
    key: "allow",
    value: "CIDR",
    multiple: true,
    defaultText: "everyone",
    help: `only visitors from these addresses reach the tunnels (repeatable, at most ${MAX_ACCESS_RULES}; IPv4 or IPv6, a range or one address; checked by the server; README: Allow and deny lists)`,
    parse: cidrOption,
  },
  deny: {
    key: "deny",
    value: "CIDR",
    multiple: true,
    defaultText: "nobody",
    help: `visitors from these addresses are refused, whatever --allow says (repeatable, at most ${MAX_ACCESS_RULES})`,
    parse: cidrOption,
  },
  "proxy-protocol": {
    key: "proxyProtocol",
    value: "VERSION",
    defaultText: "off",
    help: "write a PROXY protocol header (text v1 or binary v2) with the visitor's address into each connection to the local service (README: The visitor's address)",
    parse: (text: string, flag: string): ProxyVersion => {
      if (!(PROXY_VERSIONS as readonly string[]).includes(text))
        throw new UsageError(`${flag}: '${text}' is not a PROXY protocol version (v1 or v2)`, false);
      return text as ProxyVersion;
    },
  },
  ca: {
    key: "ca",
    value: "FILE",
    defaultText: "system roots",
    help: "trust this CA or self-signed certificate (PEM) for wss",
  },
  insecure: {
    key: "insecure",
    defaultText: "off",
    help: "skip TLS certificate verification (unsafe; prints a warning)",
  },
  heartbeat: {
    key: "heartbeatSeconds",
    value: "SECONDS",
    default: 10,
    help: "heartbeat interval: a server silent for one is pinged, for 3 dead",
    parse: seconds,
  },
  "udp-idle-timeout": {
    key: "udpIdleSeconds",
    value: "SECONDS",
    default: 60,
    help: "close a UDP flow's local socket after this long without a datagram either way (the server forgets flows after its own --udp-idle-timeout)",
    parse: seconds,
  },
  "max-backoff": {
    key: "maxBackoffSeconds",
    value: "SECONDS",
    default: 30,
    help: "longest wait between reconnect attempts",
    parse: seconds,
  },
  quiet: { key: "quiet", short: "q", help: "log warnings and errors only" },
  config: {
    key: "config",
    value: "FILE",
    help: "read options and tunnels from this TOML file (README: Config file); options on the command line win, and tunnels on the command line replace the file's",
  },
  watch: {
    key: "watch",
    defaultText: "off (SIGHUP reloads)",
    help: "reload the --config file whenever it changes: tunnels added, removed or changed are applied, the others keep their URL and connections",
  },
  init: {
    key: "init",
    value: "[FILE]",
    defaultText: "`sockets.toml`",
    help: "write a commented example config file that works against a local server, and exit",
  },
} as const satisfies OptionTable;

/** Environment variables the client reads that no flag sets. */
export const CLIENT_ENVIRONMENT: EnvSpec[] = [
  { name: "SOCKETS_API_KEY", help: "API key sent to the server", defaultText: "none" },
];

/** The options object the client's table parses into (command line or config file). */
export type ClientValues = OptionValues<typeof CLIENT_OPTIONS>;

/** What the client is told, once the paired flags (or a config file's tables) became named services. */
export type ClientArgs = Omit<
  ClientValues,
  | "tcp"
  | "http"
  | "udp"
  | "tls"
  | "ports"
  | "subdomains"
  | "hostnames"
  | "hostHeader"
  | "basicAuth"
  | "ca"
  | "server"
  | "config"
  | "init"
  | "pool"
  | "allow"
  | "deny"
  | "proxyProtocol"
> & {
  /** The first of {@link ClientArgs.servers} (what a one-server caller reads). */
  server: URL;
  /** Every server, in the order given (`--server` repeated, the env list, or the file's array); never empty. */
  servers: URL[];
  expose: NamedService[];
  /** PEM CA certificate(s) to trust for wss (the file's contents). */
  ca?: string;
  apiKey?: string;
  /**
   * With `--config`: the file, the command line's own values (a reload merges them again) and the
   * top-level values the client starts with (a reload says which changes need a restart).
   */
  config?: { file: string; commandLine: ClientValues; values: ClientValues };
};

/** Top-level settings a service takes when it does not set its own. */
export interface ServiceDefaults extends TunnelSettings {
  hostHeader?: "rewrite" | "preserve";
  basicAuth?: string;
  logRequests?: boolean;
}

/** The settings every tunnel type takes: pooling, who may visit, the PROXY protocol. */
export interface TunnelSettings {
  pool?: boolean;
  allow?: string[];
  deny?: string[];
  proxyProtocol?: ProxyVersion;
}

/**
 * `service` with the tunnel settings of `settings` that are set (absent fields stay absent: a reload
 * compares them).
 * @throws {UsageError} when `allow` and `deny` together name more than the wire carries.
 */
export function withTunnelSettings(service: NamedService, settings: TunnelSettings): NamedService {
  if (settings.pool) service.pool = true;
  if (settings.allow !== undefined && settings.allow.length > 0) service.allow = [...settings.allow];
  if (settings.deny !== undefined && settings.deny.length > 0) service.deny = [...settings.deny];
  if (settings.proxyProtocol !== undefined) service.proxyProtocol = settings.proxyProtocol;
  for (const key of ["allow", "deny"] as const)
    if ((service[key]?.length ?? 0) > MAX_ACCESS_RULES)
      throw new UsageError(
        `--${key}: at most ${MAX_ACCESS_RULES} ranges per tunnel (use wider ranges)`,
        false,
      );
  return service;
}

/**
 * The services the paired options give (`--expose` with `--port`, `--http` with `--subdomain`, or the
 * same keys at a config file's top level), named `tcp-1`, `tcp-2`, …, `http-1`, … in order, HTTP ones
 * with the top-level host-header mode, basic auth and request log.
 * @throws {UsageError} for a `--port` or `--subdomain` without its tunnel.
 */
export function servicesFromValues(values: ClientValues, defaults: ServiceDefaults = values): NamedService[] {
  const { tcp = [], http = [], udp = [], tls = [], ports = [], subdomains = [], hostnames = [] } = values;
  if (ports.length > tcp.length + udp.length)
    throw new UsageError("--port given more times than --expose and --expose-udp together");
  const named = http.length + tls.length;
  if (subdomains.length > named)
    throw new UsageError("--subdomain given more times than --http and --tls-passthrough");
  if (hostnames.length > named)
    throw new UsageError("--hostname given more times than --http and --tls-passthrough");
  // The n-th --subdomain or --hostname names the n-th --http, then the --tls-passthrough ones: the
  // two would name the same first tunnel (a config file names each tunnel on its own).
  if (subdomains.length > 0 && hostnames.length > 0)
    throw new UsageError(
      "--subdomain and --hostname both name the tunnels in order: give one of them (or name each tunnel in a config file)",
    );
  const withHostname = (i: number, service: NamedService): NamedService => {
    const hostname = hostnames[i];
    if (hostname !== undefined) service.hostname = hostname;
    return service;
  };
  return [
    ...tcp.map((target, i): NamedService => {
      const publicPort = ports[i];
      const name = `tcp-${i + 1}`;
      const service: NamedService =
        publicPort === undefined ? { name, ...target } : { name, ...target, publicPort };
      return withTunnelSettings(service, defaults);
    }),
    ...http.map(
      (target, i): NamedService =>
        withHostname(i, httpService(`http-${i + 1}`, target, subdomains[i], defaults)),
    ),
    ...tls.map(
      (target, i): NamedService =>
        withHostname(
          http.length + i,
          tlsService(`tls-${i + 1}`, target, subdomains[http.length + i], defaults),
        ),
    ),
    ...udp.map((target, i): NamedService => {
      const publicPort = ports[tcp.length + i];
      const service: NamedService = { name: `udp-${i + 1}`, ...target, kind: "udp" };
      return publicPort === undefined ? service : { ...service, publicPort };
    }),
  ];
}

/** An HTTP service with the defaults it does not override; absent fields stay absent (a reload compares them). */
export function httpService(
  name: string,
  target: HostPort,
  subdomain: string | undefined,
  settings: ServiceDefaults,
): NamedService {
  const service: NamedService = {
    name,
    ...target,
    kind: "http",
    preserveHost: (settings.hostHeader ?? CLIENT_OPTIONS["host-header"].default) === "preserve",
  };
  if (subdomain !== undefined) service.subdomain = subdomain;
  if (settings.basicAuth !== undefined) service.basicAuth = settings.basicAuth;
  if (settings.logRequests !== undefined) service.logRequests = settings.logRequests;
  return withTunnelSettings(service, settings);
}

/** An end-to-end TLS service (absent fields stay absent: a reload compares them). */
export function tlsService(
  name: string,
  target: HostPort,
  subdomain: string | undefined,
  settings: TunnelSettings = {},
): NamedService {
  const service: NamedService = { name, ...target, kind: "tls" };
  if (subdomain !== undefined) service.subdomain = subdomain;
  return withTunnelSettings(service, settings);
}

/** Gives each service without a name one (`tcp-1`, `http-1`, … by kind and position); keeps the others. */
export function nameServices(services: ExposeOption[]): NamedService[] {
  const seen = { tcp: 0, http: 0, udp: 0, tls: 0 };
  return services.map((service) => {
    const kind = service.kind ?? "tcp";
    seen[kind]++;
    return service.name === undefined
      ? { ...service, name: `${kind}-${seen[kind]}` }
      : (service as NamedService);
  });
}

/** The server URL the client uses when none is given. */
export function defaultServer(): URL {
  return parseServerUrl(CLIENT_OPTIONS.server.default, "--server");
}

/**
 * The servers a `SOCKETS_SERVER` value names: one URL or a comma-separated list (blanks around the
 * commas ignored; empty items skipped).
 * @throws {UsageError} naming the variable for an item that is no ws:// or wss:// URL.
 */
export function serversFromEnv(text: string, name = CLIENT_OPTIONS.server.env): URL[] {
  return text
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item !== "")
    .map((item) => parseServerUrl(item, name));
}
