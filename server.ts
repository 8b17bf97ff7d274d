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
import { parseArgs } from "node:util";
import type { Server, ServerWebSocket, TCPSocketListener } from "bun";
import { Hono } from "hono";
import { nanoid } from "nanoid";
import {
  formatHost,
  type PortRange,
  parseCount,
  parsePort,
  parsePortRange,
  UsageError,
} from "./shared/args.ts";
import { bearerKey, keyMatches } from "./shared/auth.ts";
import { createLogger, describeError, type Logger } from "./shared/log.ts";
import { Mux } from "./shared/mux.ts";
import {
  AUTH_HEADER,
  CloseCode,
  CONNECT_PATH,
  type ControlMessage,
  DEFAULTS,
  type ExposeRequest,
  type Hello,
  PROTOCOL_VERSION,
  ProtocolError,
  parseControl,
  StreamKind,
  SUBPROTOCOL,
} from "./shared/protocol.ts";
import { listenPublic, PortError } from "./shared/public-port.ts";
import { type RelaySocket, type RelaySocketData, relaySocketHandlers } from "./shared/stream.ts";

/** Everything the server can be told; the CLI fills it from flags and env. */
export interface ServerOptions {
  /** Bind address of the control port and of public ports. */
  host?: string;
  /** Control port; 0 picks a free one. */
  port?: number;
  /** Public host name printed in tunnel URLs. */
  domain?: string;
  /** Range for public TCP ports; absent means any free port. */
  tcpPorts?: PortRange;
  /** PEM certificate and key: serve wss/https. */
  tls?: { cert: string; key: string };
  /** Clients must present this key; absent means no auth. */
  apiKey?: string;
  /** Per-stream flow-control window in bytes. */
  window?: number;
  maxStreamsPerTunnel?: number;
  maxTunnelsPerClient?: number;
  /** Drop info lines from the log. */
  quiet?: boolean;
}

/** Counts reported by `GET /health`. */
export interface ServerStats {
  status: "ok";
  protocol: number;
  clients: number;
  tunnels: number;
  streams: number;
}

/** A running server. */
export interface ServerHandle {
  /** Address the control port is bound to. */
  host: string;
  /** Bound control port. */
  port: number;
  /** `ws://` or `wss://` URL for clients. */
  url: string;
  stats(): ServerStats;
  /** Closes every client (going away), every public port and the control port. */
  close(): Promise<void>;
}

interface Tunnel {
  id: string;
  ref: number;
  port: number;
  listener: TCPSocketListener<RelaySocketData>;
  streams: number;
}

interface SessionData {
  session: Session | null;
  remote: string;
}

interface Settings {
  host: string;
  domain: string;
  tcpPorts?: PortRange;
  hello: Hello;
  log: Logger;
}

/** One connected client: its WebSocket, its stream multiplexer and its tunnels. */
class Session {
  readonly mux: Mux;
  readonly tunnels = new Map<number, Tunnel>();
  private nextRef = 1;
  private closing = false;

  constructor(
    private readonly ws: ServerWebSocket<SessionData>,
    private readonly settings: Settings,
  ) {
    this.mux = new Mux((frame) => this.sendFrame(frame), settings.hello);
    ws.send(JSON.stringify(settings.hello));
  }

  private sendFrame(frame: Uint8Array): void {
    const sent = this.ws.send(frame);
    // -1: queued past the backpressure limit → pause readers until drain. 0: dropped → the socket is dead.
    if (sent === -1) this.mux.setBlocked(true);
    else if (sent === 0 && !this.closing) this.fail(CloseCode.InternalError, "WebSocket send failed");
  }

  /** A text frame: one control message. */
  onControl(text: string): void {
    const message: ControlMessage = parseControl(text);
    if (message.type !== "expose") throw new ProtocolError(`unexpected '${message.type}' from a client`);
    this.expose(message);
  }

  private expose(request: ExposeRequest): void {
    const { log, hello, host, domain, tcpPorts } = this.settings;
    if (this.tunnels.size >= hello.maxTunnelsPerClient) {
      this.reply(request, "limit", `a client may hold at most ${hello.maxTunnelsPerClient} tunnels`);
      return;
    }
    const ref = this.nextRef++;
    const tunnel = { id: nanoid(12), ref, port: 0, streams: 0 } as Tunnel;
    try {
      tunnel.listener = listenPublic<RelaySocketData>(
        { host, port: request.port, range: tcpPorts },
        { ...relaySocketHandlers, open: (socket) => this.acceptVisitor(tunnel, socket) },
      );
    } catch (error) {
      const code = error instanceof PortError ? error.code : "listen_failed";
      this.reply(request, code, describeError(error));
      return;
    }
    tunnel.port = tunnel.listener.port;
    this.tunnels.set(ref, tunnel);
    const url = `${formatHost(domain)}:${tunnel.port}`;
    log.info(`tunnel ${tunnel.id} for ${this.ws.data.remote} on port ${tunnel.port}`);
    this.ws.send(
      JSON.stringify({
        type: "exposed",
        id: request.id,
        tunnel: tunnel.id,
        ref,
        host: domain,
        port: tunnel.port,
        url,
      }),
    );
  }

  private reply(request: ExposeRequest, code: string, message: string): void {
    this.settings.log.info(`expose refused for ${this.ws.data.remote}: ${message}`);
    this.ws.send(JSON.stringify({ type: "error", id: request.id, code, message }));
  }

  /** A visitor connected to a tunnel's public port: announce it as a new stream and relay. */
  private acceptVisitor(tunnel: Tunnel, socket: RelaySocket): void {
    socket.data = { stream: null };
    if (this.closing || tunnel.streams >= this.settings.hello.maxStreamsPerTunnel) {
      this.settings.log.warn(`tunnel ${tunnel.id}: visitor refused, ${tunnel.streams} streams open (limit)`);
      socket.terminate();
      return;
    }
    tunnel.streams++;
    const stream = this.mux.createStream(() => tunnel.streams--);
    const remote = `${formatHost(socket.remoteAddress)}:${socket.remotePort}`;
    this.mux.sendOpen(stream, StreamKind.Tcp, tunnel.ref, { remote });
    stream.attach(socket);
  }

  /** Closes the WebSocket with a code, after logging why. */
  fail(code: number, reason: string): void {
    this.settings.log.warn(`closing client ${this.ws.data.remote}: ${reason}`);
    this.ws.close(code, reason.slice(0, 120));
    this.teardown();
  }

  /** The client is gone: close its public ports and every visitor. */
  teardown(): void {
    if (this.closing) return;
    this.closing = true;
    for (const tunnel of this.tunnels.values()) tunnel.listener.stop(true);
    this.mux.destroyAll();
    this.tunnels.clear();
  }
}

/** Starts a server; resolves once the control port listens. */
export async function startServer(options: ServerOptions = {}): Promise<ServerHandle> {
  const log = createLogger("server", options.quiet);
  const host = options.host ?? "0.0.0.0";
  const hello: Hello = {
    type: "hello",
    protocol: PROTOCOL_VERSION,
    window: options.window ?? DEFAULTS.window,
    maxFramePayload: DEFAULTS.maxFramePayload,
    maxStreamsPerTunnel: options.maxStreamsPerTunnel ?? DEFAULTS.maxStreamsPerTunnel,
    maxTunnelsPerClient: options.maxTunnelsPerClient ?? DEFAULTS.maxTunnelsPerClient,
  };
  const settings: Settings = {
    host,
    domain: options.domain ?? "localhost",
    tcpPorts: options.tcpPorts,
    hello,
    log,
  };
  const sessions = new Set<Session>();
  const stats = (): ServerStats => {
    let tunnels = 0;
    let streams = 0;
    for (const s of sessions) {
      tunnels += s.tunnels.size;
      streams += s.mux.streams.size;
    }
    return { status: "ok", protocol: PROTOCOL_VERSION, clients: sessions.size, tunnels, streams };
  };

  const app = new Hono<{ Bindings: Server<SessionData> }>();
  app.get("/health", (c) => c.json(stats()));
  app.get(CONNECT_PATH, (c) => {
    const refusal = checkUpgrade(c.req.raw, options.apiKey);
    if (refusal) {
      log.info(
        `refused ${c.req.header("x-forwarded-for") ?? "client"}: ${refusal.status} ${refusal.message}`,
      );
      return c.text(`${refusal.message}\n`, refusal.status);
    }
    const remote = c.env.requestIP(c.req.raw);
    const data: SessionData = {
      session: null,
      remote: remote ? `${formatHost(remote.address)}:${remote.port}` : "?",
    };
    if (c.env.upgrade(c.req.raw, { data, headers: { "Sec-WebSocket-Protocol": SUBPROTOCOL } }))
      return new Response(null);
    return c.text("expected a WebSocket upgrade\n", 400);
  });

  const server = Bun.serve<SessionData>({
    hostname: host,
    port: options.port ?? 7070,
    tls: options.tls,
    fetch: (req, srv) => app.fetch(req, srv),
    error: (error) => {
      log.error(`request failed: ${describeError(error)}`);
      return new Response("internal error\n", { status: 500 });
    },
    websocket: {
      perMessageDeflate: false,
      maxPayloadLength: 64 * 1024 + hello.maxFramePayload,
      // Credit bounds what each stream queues; this only guards against a misbehaving build.
      backpressureLimit: 64 * 1024 * 1024,
      closeOnBackpressureLimit: true,
      open(ws) {
        const session = new Session(ws, settings);
        ws.data.session = session;
        sessions.add(session);
        log.info(`client ${ws.data.remote} connected`);
      },
      message(ws, message) {
        const session = ws.data.session;
        if (!session) return;
        try {
          if (typeof message === "string") session.onControl(message);
          else session.mux.receive(message);
        } catch (error) {
          if (error instanceof ProtocolError)
            session.fail(CloseCode.ProtocolError, `protocol error: ${error.message}`);
          else session.fail(CloseCode.InternalError, `internal error: ${describeError(error)}`);
        }
      },
      drain(ws) {
        ws.data.session?.mux.setBlocked(false);
      },
      close(ws, code) {
        const session = ws.data.session;
        if (!session) return;
        session.teardown();
        sessions.delete(session);
        log.info(`client ${ws.data.remote} disconnected (${code})`);
      },
    },
  });

  const url = `${options.tls ? "wss" : "ws"}://${formatHost(host)}:${server.port}`;
  log.info(`listening on ${url} (domain ${settings.domain})`);
  if (!options.apiKey) log.warn("no SOCKETS_SINGLE_API_KEY set: any client may open tunnels");
  return {
    host,
    port: server.port as number,
    url,
    stats,
    async close() {
      for (const session of sessions) session.fail(CloseCode.GoingAway, "server shutting down");
      sessions.clear();
      await server.stop(true);
    },
  };
}

/** Checks auth and protocol version of an upgrade request; returns the refusal, or null to accept. */
function checkUpgrade(req: Request, apiKey?: string): { status: 401 | 426; message: string } | null {
  if (apiKey !== undefined && !keyMatches(bearerKey(req.headers.get(AUTH_HEADER)), apiKey))
    return { status: 401, message: "authentication failed: missing or wrong API key" };
  const offered = (req.headers.get("sec-websocket-protocol") ?? "").split(",").map((p) => p.trim());
  if (!offered.includes(SUBPROTOCOL))
    return {
      status: 426,
      message: `unsupported protocol version: client offered '${offered.join(",") || "none"}', this server speaks ${SUBPROTOCOL}`,
    };
  return null;
}

const HELP = `Usage: bun server.ts [options]

Options:
  --host ADDR            bind address for the control port and public ports (default 0.0.0.0)
  --port N               control port: client WebSocket, GET /health (default 7070; 0 = any free)
  --domain NAME          public host name printed in tunnel URLs (default localhost)
  --tcp-ports MIN-MAX    range for public TCP ports (default: any free port)
  --tls-cert FILE        PEM certificate: serve wss/https (needs --tls-key)
  --tls-key FILE         PEM private key for --tls-cert
  --window BYTES         per-stream flow-control window (default ${DEFAULTS.window})
  --max-streams N        most visitors open at once per tunnel (default ${DEFAULTS.maxStreamsPerTunnel})
  --max-tunnels N        most tunnels per client (default ${DEFAULTS.maxTunnelsPerClient})
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
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      host: { type: "string" },
      port: { type: "string" },
      domain: { type: "string" },
      "tcp-ports": { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      window: { type: "string" },
      "max-streams": { type: "string" },
      "max-tunnels": { type: "string" },
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
    tls: values["tls-cert"]
      ? {
          cert: readPem(values["tls-cert"], "--tls-cert"),
          key: readPem(values["tls-key"] as string, "--tls-key"),
        }
      : undefined,
    apiKey: env.SOCKETS_SINGLE_API_KEY || undefined,
    window: values.window === undefined ? undefined : parseCount(values.window, "--window"),
    maxStreamsPerTunnel:
      values["max-streams"] === undefined ? undefined : parseCount(values["max-streams"], "--max-streams"),
    maxTunnelsPerClient:
      values["max-tunnels"] === undefined ? undefined : parseCount(values["max-tunnels"], "--max-tunnels"),
    quiet: values.quiet,
  };
}

function readPem(file: string, flag: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (error) {
    throw new UsageError(
      `${flag}: cannot read '${file}': ${(error as NodeJS.ErrnoException).code ?? describeError(error)}`,
    );
  }
}

async function main(): Promise<void> {
  let options: ServerOptions | "help";
  try {
    options = parseServerArgs(process.argv.slice(2), process.env);
  } catch (error) {
    process.stderr.write(`error: ${describeError(error)} (see --help)\n`);
    process.exit(2);
  }
  if (options === "help") {
    process.stdout.write(HELP);
    return;
  }
  let handle: ServerHandle;
  try {
    handle = await startServer(options);
  } catch (error) {
    process.stderr.write(
      `error: cannot start server on port ${options.port ?? 7070}: ${describeError(error)}\n`,
    );
    process.exit(1);
  }
  const stop = async (signal: string) => {
    process.stderr.write(`${signal}: shutting down\n`);
    await handle.close();
    process.exit(0);
  };
  process.once("SIGINT", () => void stop("SIGINT"));
  process.once("SIGTERM", () => void stop("SIGTERM"));
}

if (import.meta.main) await main();
