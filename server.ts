/**
 * sockets server: accepts tunnel clients on one WebSocket each, opens a public TCP port per tunnel and
 * carries every visitor over the client's WebSocket as its own stream.
 *
 * Story: accept the upgrade (authenticate, agree the protocol version) → expose (open a public port)
 * → route each visitor to a new stream → relay with flow control → close the tunnel's port and visitors
 * when the client goes away.
 *
 * ```sh
 * bun server.ts --port 7070 --domain tunnel.example.com
 * ```
 * @module
 */

import { readFileSync } from "node:fs";
import { Hono } from "hono";
import {
  formatHost,
  type PortRange,
  parseCount,
  parseFlags,
  parsePort,
  parsePortRange,
  parseSeconds,
  UsageError,
  unmappedAddress,
  usageLine,
} from "./shared/args.ts";
import { commandName, createLogger, describeError } from "./shared/log.ts";
import { Budget, DEFAULT_CLIENT_BUDGET, DEFAULT_SERVER_BUDGET } from "./shared/relay/budget.ts";
import { bearerKey, keyMatches } from "./shared/server/auth.ts";
import { type ControlEnv, listenControl } from "./shared/server/control-port.ts";
import {
  DEFAULT_REQUEST_TIMEOUT_SECONDS,
  HeadBudget,
  type HttpIngress,
  listenHttp,
} from "./shared/server/http-ingress.ts";
import { defaultHost } from "./shared/server/public-port.ts";
import { FailureLimiter } from "./shared/server/rate-limit.ts";
import { Session, type SessionContext, type SessionSocketData } from "./shared/server/session.ts";
import {
  AUTH_HEADER,
  CONNECT_PATH,
  DEFAULTS,
  PROTOCOL_VERSION,
  RESUME_HEADER,
  SUBPROTOCOL,
} from "./shared/wire/protocol.ts";

/** Everything the server can be told; the CLI fills it from flags and env. */
export interface ServerOptions {
  /** Bind address of the control port and of public ports (default `::` where dual-stack works, else 0.0.0.0). */
  host?: string;
  /** Control port; 0 picks a free one. */
  port?: number;
  /** Public host name printed in tunnel URLs. */
  domain?: string;
  /** Range for public TCP ports; absent means any free port. */
  tcpPorts?: PortRange;
  /** Public port for HTTP tunnels (`NAME.DOMAIN`); 0 picks a free one; absent means no HTTP tunnels. */
  httpPort?: number;
  /** PEM certificate and key: serve wss/https. */
  tls?: { cert: string; key: string };
  /** Clients must present this key; absent means no auth. */
  apiKey?: string;
  /** Most a stream's flow-control window may grow to, in bytes. */
  window?: number;
  /** Bytes one client's streams may buffer in the server, per direction (default 64 MiB). */
  clientBudget?: number;
  /** Bytes all clients' streams may buffer in the server together, per direction (default 256 MiB). */
  serverBudget?: number;
  maxStreamsPerTunnel?: number;
  maxTunnelsPerClient?: number;
  /** Seconds a dropped client's tunnels stay reserved for it (default 60; 0 = none). */
  graceSeconds?: number;
  /** Seconds between pings; a client silent for 3 intervals is dead (default 10). */
  heartbeatSeconds?: number;
  /** Seconds streams may take to finish on shutdown (default 10). */
  drainSeconds?: number;
  /** Seconds a client may take, once upgraded, to send its first expose or sync (default 10). */
  handshakeSeconds?: number;
  /** Failed auth attempts per remote address per minute before `429` (default 10). */
  authFailLimit?: number;
  /**
   * Seconds an HTTP visitor may take to send a complete request head, after connecting or after its
   * previous response (default 10); also how long an idle keep-alive connection is kept.
   */
  requestTimeoutSeconds?: number;
  /** Seconds without traffic after which a visitor is closed (default 0 = never). */
  visitorIdleSeconds?: number;
  /** Drop info lines from the log. */
  quiet?: boolean;
}

/** Counts reported by `GET /health`. */
export interface ServerStats {
  status: "ok" | "draining";
  protocol: number;
  /** Clients connected now. */
  clients: number;
  /** Tunnels, live and reserved. */
  tunnels: number;
  /** Visitor connections open. */
  streams: number;
  /** Sessions whose client is away, within their grace period. */
  reserved: number;
  /** Bytes buffered for all clients: received and not yet written to visitors, sent and not yet acknowledged. */
  buffered: { received: number; sent: number };
  /** The largest stream window now: granted to us by clients (`send`), granted by us (`receive`). */
  largestWindow: { send: number; receive: number };
}

/** A running server. */
export interface ServerHandle {
  /** Address the control port is bound to. */
  host: string;
  /** Bound control port. */
  port: number;
  /** `ws://` or `wss://` URL for clients. */
  url: string;
  /** Bound HTTP tunnel port, when `httpPort` was given. */
  httpPort?: number;
  stats(): ServerStats;
  /**
   * Shuts down: stops accepting clients and visitors, tells clients (going-away), lets streams in
   * flight finish for up to the drain timeout, then closes every client (1001) and port.
   */
  close(): Promise<void>;
}

/** Starts a server; resolves once the control port listens. */
export async function startServer(options: ServerOptions = {}): Promise<ServerHandle> {
  const log = createLogger("server", options.quiet);
  const host = options.host ?? (await defaultHost());
  const heartbeatMs = (options.heartbeatSeconds ?? 10) * 1000;
  const sessions = new Map<string, Session>();
  let draining = false;
  const context: SessionContext = {
    host,
    domain: options.domain ?? "localhost",
    tcpPorts: options.tcpPorts,
    limits: {
      protocol: PROTOCOL_VERSION,
      window: options.window ?? DEFAULTS.window,
      initialWindow: Math.min(options.window ?? DEFAULTS.window, DEFAULTS.initialWindow),
      maxFramePayload: DEFAULTS.maxFramePayload,
      maxStreamsPerTunnel: options.maxStreamsPerTunnel ?? DEFAULTS.maxStreamsPerTunnel,
      maxTunnelsPerClient: options.maxTunnelsPerClient ?? DEFAULTS.maxTunnelsPerClient,
    },
    graceSeconds: options.graceSeconds ?? 60,
    handshakeSeconds: options.handshakeSeconds ?? 10,
    budgets: {
      perClient: options.clientBudget ?? DEFAULT_CLIENT_BUDGET,
      received: new Budget(options.serverBudget ?? DEFAULT_SERVER_BUDGET),
      sent: new Budget(options.serverBudget ?? DEFAULT_SERVER_BUDGET),
    },
    log,
    tunnelIds: new Set(),
    httpRoutes: new Map(),
    portHolders: new Map(),
    onEnded: (session) => sessions.delete(session.id),
  };
  const authFailures = new FailureLimiter(options.authFailLimit ?? 10);

  const stats = (): ServerStats => {
    const all = [...sessions.values()];
    const largestWindow = { send: 0, receive: 0 };
    for (const session of all)
      for (const stream of session.mux.streams.values()) {
        largestWindow.send = Math.max(largestWindow.send, stream.sendWindowBytes);
        largestWindow.receive = Math.max(largestWindow.receive, stream.recvWindowBytes);
      }
    const budgets = context.budgets;
    return {
      status: draining ? "draining" : "ok",
      protocol: PROTOCOL_VERSION,
      clients: all.filter((s) => !s.reserved).length,
      tunnels: all.reduce((n, s) => n + s.tunnels.size, 0),
      streams: all.reduce((n, s) => n + s.mux.streams.size, 0),
      reserved: all.filter((s) => s.reserved).length,
      buffered: { received: budgets?.received.used ?? 0, sent: budgets?.sent.used ?? 0 },
      largestWindow,
    };
  };

  // HTTP tunnels, routed by Host to NAME.DOMAIN: on the control port and, when given, on --http-port,
  // by the same code on both.
  const scheme = options.tls ? "https" : "http";
  context.httpScheme = scheme;
  const http = {
    domain: context.domain,
    route: (name: string) => context.httpRoutes.get(name),
    requestTimeoutSeconds: options.requestTimeoutSeconds,
    heads: new HeadBudget(),
    tls: options.tls,
    log,
  };

  // Accept: authenticate, agree the version, find the session a reconnecting client resumes.
  const app = new Hono<{ Bindings: ControlEnv<SessionSocketData> }>();
  app.get("/health", (c) => c.json(stats()));
  app.get(CONNECT_PATH, (c) => {
    const address = c.env.requestIP(c.req.raw);
    const remote = address ? `${formatHost(unmappedAddress(address.address))}:${address.port}` : "?";
    const refuse = (status: 401 | 403 | 426 | 429 | 503, message: string) => {
      log.info(`refused ${remote}: ${status} ${message}`);
      return c.text(`${message}\n`, status);
    };
    const ip = address ? unmappedAddress(address.address) : "?";
    if (draining) return refuse(503, "server is shutting down");
    if (authFailures.blocked(ip)) return refuse(429, "too many failed attempts; try again in a minute");
    if (options.apiKey !== undefined && !keyMatches(bearerKey(c.req.header(AUTH_HEADER)), options.apiKey)) {
      authFailures.fail(ip);
      return refuse(401, "authentication failed: missing or wrong API key");
    }
    const offered = (c.req.header("sec-websocket-protocol") ?? "").split(",").map((p) => p.trim());
    if (!offered.includes(SUBPROTOCOL))
      return refuse(
        426,
        `unsupported protocol version: client offered '${offered.join(",") || "none"}', this server speaks ${SUBPROTOCOL}`,
      );
    const [sessionId, secret] = (c.req.header(RESUME_HEADER) ?? "").split(" ");
    const resume = sessionId ? sessions.get(sessionId) : undefined;
    if (resume && !resume.secretMatches(secret ?? "")) {
      authFailures.fail(ip);
      return refuse(403, "resume refused: the session's secret does not match");
    }
    const data: SessionSocketData = { session: null, resume: resume ?? null, remote };
    if (c.env.upgrade(c.req.raw, { data, headers: { "Sec-WebSocket-Protocol": SUBPROTOCOL } }))
      return new Response(null);
    return c.text("expected a WebSocket upgrade\n", 400);
  });

  const control = listenControl<SessionSocketData>({
    ...http,
    host,
    port: options.port ?? 7070,
    app,
    limits: {
      // Tunnel frames stay far below this (the codec enforces maxFramePayload).
      maxPayloadLength: 16 * 1024 * 1024,
      // Credit and the budgets bound what each client queues; this only guards against a misbehaving build.
      backpressureLimit: 64 * 1024 * 1024,
    },
    // Liveness is ours (the heartbeat below), in both directions, with the configured timeout.
    websocket: {
      open(ws) {
        const session = ws.data.resume ?? new Session(context);
        ws.data.resume = null;
        sessions.set(session.id, session);
        session.attach(ws);
        log.info(`client ${ws.data.remote} connected`);
      },
      message: (ws, message) => ws.data.session?.onMessage(message),
      drain: (ws) => ws.data.session?.onDrain(),
      ping(ws) {
        if (ws.data.session) ws.data.session.heard = true;
      },
      pong(ws) {
        if (ws.data.session) ws.data.session.heard = true;
      },
      close(ws, code, reason) {
        ws.data.session?.onClose(ws, code, reason);
        log.info(`client ${ws.data.remote} disconnected (${code})`);
      },
    },
  });
  let httpPort: HttpIngress | undefined;
  try {
    if (options.httpPort !== undefined) httpPort = listenHttp({ ...http, host, port: options.httpPort });
  } catch (error) {
    control.stop(true);
    throw new Error(`--http-port ${options.httpPort}: ${describeError(error)}`);
  }

  context.httpPort = httpPort?.port ?? control.port;
  context.ownPorts = [control.port, ...(httpPort ? [httpPort.port] : [])];

  // Heartbeat: ping every client each interval; one silent for three intervals is dead.
  const heartbeat = setInterval(() => {
    const now = Date.now();
    for (const session of sessions.values()) session.heartbeat(now, 3 * heartbeatMs);
  }, heartbeatMs);

  // Visitor idle timeout: a sweep a few times per timeout period, off unless asked for.
  const idleMs = (options.visitorIdleSeconds ?? 0) * 1000;
  const idleSweep =
    idleMs > 0
      ? setInterval(
          () => {
            const now = Date.now();
            for (const session of sessions.values()) session.sweepIdle(now, idleMs);
          },
          Math.min(1000, idleMs / 4),
        )
      : undefined;

  const url = `${options.tls ? "wss" : "ws"}://${formatHost(host)}:${control.port}`;
  log.info(`listening on ${url} (domain ${context.domain})`);
  log.info(`http tunnels on ${scheme}://*.${context.domain}:${context.httpPort}`);
  if (!options.apiKey) log.warn("no SOCKETS_SINGLE_API_KEY set: any client may open tunnels");
  return {
    host,
    port: control.port,
    url,
    httpPort: httpPort?.port,
    stats,
    async close() {
      if (draining) return;
      draining = true;
      clearInterval(heartbeat);
      clearInterval(idleSweep);
      control.stop(false);
      httpPort?.stop(false);
      const drainMs = (options.drainSeconds ?? 10) * 1000;
      await Promise.all([...sessions.values()].map((session) => session.drain(drainMs)));
      for (const session of [...sessions.values()]) session.end();
      httpPort?.stop(true);
      control.stop(true);
    },
  };
}

const HELP = `Usage: ${commandName("server.ts")} [options]

Options:
  --host ADDR            bind address for the control port and public ports (default :: for IPv4 and
                         IPv6 where the machine has IPv6, else 0.0.0.0)
  --port N               control port: client WebSocket, GET /health (default 7070; 0 = any free)
  --domain NAME          public host name printed in tunnel URLs (default localhost)
  --tcp-ports MIN-MAX    range for public TCP ports (default: any free unprivileged port, 1024-65535,
                         never the server's own; a range may include privileged ports)
  --http-port N          a separate public port for HTTP tunnels at http(s)://NAME.DOMAIN:N (0 = any free);
                         https with --tls-cert (a wildcard certificate for *.DOMAIN). Without it, HTTP
                         tunnels are served on --port as well
  --tls-cert FILE        PEM certificate: serve wss/https (needs --tls-key)
  --tls-key FILE         PEM private key for --tls-cert
  --window BYTES         most a stream's flow-control window grows to (default ${DEFAULTS.window})
  --client-budget BYTES  bytes one client's streams may buffer here, per direction (default ${DEFAULT_CLIENT_BUDGET})
  --server-budget BYTES  bytes all clients' streams may buffer here, per direction (default ${DEFAULT_SERVER_BUDGET})
  --max-streams N        most visitors open at once per tunnel (default ${DEFAULTS.maxStreamsPerTunnel})
  --max-tunnels N        most tunnels per client (default ${DEFAULTS.maxTunnelsPerClient})
  --grace SECONDS        keep a dropped client's tunnels and connections for it (default 60; 0 = no)
  --heartbeat SECONDS    ping interval; a client silent for 3 intervals is dead (default 10)
  --drain-timeout SECONDS  on SIGTERM/SIGINT, how long streams may take to finish (default 10)
  --handshake-timeout SECONDS  close clients that send no expose/sync this long after connecting (default 10)
  --auth-fail-limit N    failed auth attempts per address per minute before 429 (default 10)
  --request-timeout SECONDS  HTTP visitors must complete a request head this long after connecting or
                         after their previous response; idle keep-alive connections close then too
                         (default ${DEFAULT_REQUEST_TIMEOUT_SECONDS})
  --visitor-idle-timeout SECONDS  close visitor connections idle this long (default 0 = never)
  -q, --quiet            log warnings and errors only
  -h, --help             show this help

Environment:
  SOCKETS_SINGLE_API_KEY   clients must present this key (default: no auth, with a warning)
`;

/** Turns argv and env into options; throws UsageError on bad input. */
export function parseServerArgs(
  argv: string[],
  env: Record<string, string | undefined>,
): ServerOptions | "help" {
  const { values } = parseFlags({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      host: { type: "string" },
      port: { type: "string" },
      domain: { type: "string" },
      "tcp-ports": { type: "string" },
      "http-port": { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      window: { type: "string" },
      "client-budget": { type: "string" },
      "server-budget": { type: "string" },
      "max-streams": { type: "string" },
      "max-tunnels": { type: "string" },
      grace: { type: "string" },
      heartbeat: { type: "string" },
      "drain-timeout": { type: "string" },
      "handshake-timeout": { type: "string" },
      "auth-fail-limit": { type: "string" },
      "visitor-idle-timeout": { type: "string" },
      "request-timeout": { type: "string" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  if (Boolean(values["tls-cert"]) !== Boolean(values["tls-key"]))
    throw new UsageError("--tls-cert and --tls-key must be given together");
  return {
    host: values.host,
    port: values.port === undefined ? undefined : parsePort(values.port, "--port", true),
    domain: values.domain,
    tcpPorts:
      values["tcp-ports"] === undefined ? undefined : parsePortRange(values["tcp-ports"], "--tcp-ports"),
    httpPort: optional(values["http-port"], (v) => parsePort(v, "--http-port", true)),
    tls: values["tls-cert"]
      ? {
          cert: readPem(values["tls-cert"], "--tls-cert", "certificate", /-----BEGIN CERTIFICATE-----/),
          key: readPem(
            values["tls-key"] as string,
            "--tls-key",
            "private key",
            /-----BEGIN [A-Z ]*PRIVATE KEY-----/,
          ),
        }
      : undefined,
    apiKey: env.SOCKETS_SINGLE_API_KEY || undefined,
    window: values.window === undefined ? undefined : parseCount(values.window, "--window"),
    clientBudget: optional(values["client-budget"], (v) => parseCount(v, "--client-budget")),
    serverBudget: optional(values["server-budget"], (v) => parseCount(v, "--server-budget")),
    maxStreamsPerTunnel:
      values["max-streams"] === undefined ? undefined : parseCount(values["max-streams"], "--max-streams"),
    maxTunnelsPerClient:
      values["max-tunnels"] === undefined ? undefined : parseCount(values["max-tunnels"], "--max-tunnels"),
    graceSeconds: optional(values.grace, (v) => parseSeconds(v, "--grace", 0, 86_400)),
    heartbeatSeconds: optional(values.heartbeat, (v) => parseSeconds(v, "--heartbeat", 0.1, 3600)),
    drainSeconds: optional(values["drain-timeout"], (v) => parseSeconds(v, "--drain-timeout", 0, 3600)),
    handshakeSeconds: optional(values["handshake-timeout"], (v) =>
      parseSeconds(v, "--handshake-timeout", 0.1, 3600),
    ),
    authFailLimit: optional(values["auth-fail-limit"], (v) => parseCount(v, "--auth-fail-limit")),
    requestTimeoutSeconds: optional(values["request-timeout"], (v) =>
      parseSeconds(v, "--request-timeout", 0.1, 3600),
    ),
    visitorIdleSeconds: optional(values["visitor-idle-timeout"], (v) =>
      parseSeconds(v, "--visitor-idle-timeout", 0, 86_400),
    ),
    quiet: values.quiet,
  };
}

function optional<T>(value: string | undefined, parse: (value: string) => T): T | undefined {
  return value === undefined ? undefined : parse(value);
}

function readPem(file: string, flag: string, what: string, label: RegExp): string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new UsageError(
      `${flag}: cannot read '${file}': ${(error as NodeJS.ErrnoException).code ?? describeError(error)}`,
    );
  }
  if (!label.test(text)) throw new UsageError(`${flag}: '${file}' holds no PEM ${what}`);
  return text;
}

async function main(): Promise<void> {
  let options: ServerOptions | "help";
  try {
    options = parseServerArgs(process.argv.slice(2), process.env);
  } catch (error) {
    process.stderr.write(`${usageLine(error)}\n`);
    process.exit(2);
  }
  if (options === "help") {
    process.stdout.write(HELP);
    return;
  }
  // Signals are handled from the first moment: one arriving during start-up still exits cleanly.
  let handle: ServerHandle | undefined;
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`${signal}: shutting down\n`);
    await handle?.close();
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  try {
    handle = await startServer(options);
  } catch (error) {
    process.stderr.write(
      `error: cannot start server on port ${options.port ?? 7070}: ${describeError(error)}\n`,
    );
    process.exit(1);
  }
}

if (import.meta.main) await main();
