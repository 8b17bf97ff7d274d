/**
 * sockets client: publishes local services through a sockets server. It holds one WebSocket to the
 * server; each visitor of a tunnel arrives as a stream and becomes its own connection to the local
 * service.
 *
 * Story: connect (TLS, API key, protocol version) → expose each service and print its URL → for each
 * visitor, connect locally and relay with flow control → on any failure, one clear line and exit.
 *
 * ```sh
 * bun client.ts --expose 127.0.0.1:8000 --server wss://tunnel.example.com:7070
 * ```
 * @module
 */

import { lookup } from "node:dns/promises";
import {
  formatHost,
  type HostPort,
  parseFlags,
  parseHostPort,
  parsePort,
  parseSeconds,
  parseServerUrl,
  UsageError,
  usageLine,
} from "./shared/args.ts";
import { backoffDelay } from "./shared/client/backoff.ts";
import { ConnectError, type ControlConnection, connectControl } from "./shared/client/connect.ts";
import { RequestLogTap } from "./shared/client/request-log.ts";
import { commandName, createLogger, describeError, type Logger } from "./shared/log.ts";
import { Mux } from "./shared/relay/mux.ts";
import { type RelaySocket, type RelaySocketData, relaySocketHandlers } from "./shared/relay/stream.ts";
import type { OpenFrame } from "./shared/wire/codec.ts";
import {
  CloseCode,
  type Exposed,
  type ExposeRequest,
  type Hello,
  ProtocolError,
  parseControl,
  ResetCode,
  StreamKind,
  SUBDOMAIN,
  type SyncMessage,
} from "./shared/wire/protocol.ts";

/** One local service to publish. */
export interface ExposeOption extends HostPort {
  /** A raw TCP tunnel (default) or an HTTP tunnel at `NAME.DOMAIN`. */
  kind?: "tcp" | "http";
  /** TCP: the public port to ask for; absent for any. */
  publicPort?: number;
  /** HTTP: the name to ask for; absent for a random one. */
  subdomain?: string;
  /** HTTP: keep the visitor's Host header instead of sending the local address (default false). */
  preserveHost?: boolean;
  /** HTTP: `user:password` visitors must present (basic auth, checked by the server). */
  basicAuth?: string;
}

/** Everything the client can be told; the CLI fills it from flags and env. */
export interface ClientOptions {
  /** `ws://` or `wss://` URL of the server. */
  server: string | URL;
  expose: ExposeOption[];
  apiKey?: string;
  /** PEM CA certificate(s) to trust for wss. */
  ca?: string;
  /** Skip certificate verification. */
  insecure?: boolean;
  /** Seconds between pings; a server silent for 3 intervals is dead (default 10). */
  heartbeatSeconds?: number;
  /** Longest wait between reconnect attempts, in seconds (default 30). */
  maxBackoffSeconds?: number;
  /** Prints one line per HTTP request on HTTP tunnels (method, path, status, duration, bytes). */
  logRequest?: (line: string) => void;
  /** CLI: print the request log on stdout (`--log-requests`, or stdout is a terminal). */
  logRequests?: boolean;
  /** Called for every tunnel the server confirms: at start, and again after a server restart. */
  onExposed?: (tunnel: TunnelInfo) => void;
  quiet?: boolean;
}

/** A live tunnel, as the server announced it. */
export interface TunnelInfo {
  id: string;
  /** HTTP tunnels: the name under the server's domain. */
  name?: string;
  url: string;
  host: string;
  port: number;
  local: HostPort;
}

/** A running client. */
export interface ClientHandle {
  /** The tunnels as last confirmed by the server (same ids and ports across reconnects when possible). */
  tunnels: TunnelInfo[];
  /** Open streams (visitor connections) on this client. */
  stats(): { streams: number };
  /** Resolves with the reason once the client gave up (auth rejected, …) or was closed. */
  closed: Promise<string>;
  /** Closes the tunnels and the connection (the server releases them at once). */
  close(): Promise<void>;
}

/** Client-side failure with a one-line message (auth, TLS, unreachable, port taken, …). */
export class ClientError extends Error {
  override name = "ClientError";
}

/**
 * Connects, exposes every service and resolves once all tunnels are live. From then on the client
 * stays up by itself: a lost connection is resumed (same tunnels, same visitor connections) or, after
 * a server restart, the tunnels are exposed again on the same ports.
 */
export async function startClient(options: ClientOptions): Promise<ClientHandle> {
  const log = createLogger("client", options.quiet);
  await Promise.all(options.expose.map(checkResolves));
  const url = new URL(options.server);
  const heartbeatMs = (options.heartbeatSeconds ?? 10) * 1000;
  const connectTo = (resume?: { session: string; secret: string }) =>
    connectControl({ url, apiKey: options.apiKey, ca: options.ca, insecure: options.insecure, resume });

  let connection: ControlConnection;
  try {
    connection = await connectTo();
  } catch (error) {
    throw new ClientError(describeError(error));
  }
  let hello: Hello = connection.hello;
  const mux = new Mux(null, hello, (frame) => acceptStream(frame));
  /** Local service of each tunnel, by the ref the server's OPEN frames use. */
  const targets = new Map<number, HostPort>();
  let tunnels: TunnelInfo[] = [];
  const pending = new Map<number, { resolve: (m: Exposed) => void; reject: (e: Error) => void }>();
  let nextRequest = 1;
  let closing = false;
  let giveUp: (reason: string) => void = () => {};
  const closed = new Promise<string>((resolve) => {
    giveUp = resolve;
  });

  /** Route: a visitor arrived; connect to the local service and relay, or reset the stream. */
  function acceptStream(frame: OpenFrame): void {
    const target = targets.get(frame.tunnel);
    if (target === undefined) throw new ProtocolError(`OPEN for unknown tunnel ${frame.tunnel}`);
    const stream = mux.acceptStream(frame.stream);
    if (frame.kind === StreamKind.Http && options.logRequest)
      stream.tap = new RequestLogTap(options.logRequest);
    if (frame.kind !== StreamKind.Tcp && frame.kind !== StreamKind.Http) {
      stream.reset(ResetCode.Protocol, `stream kind ${frame.kind} is not supported by this client`);
      return;
    }
    Bun.connect<RelaySocketData>({
      hostname: target.host,
      port: target.port,
      allowHalfOpen: true,
      data: { stream: null },
      socket: relaySocketHandlers,
    }).then(
      (socket: RelaySocket) => stream.attach(socket),
      (error: unknown) => {
        const reason = `local service ${target.host}:${target.port} refused ${frame.meta.remote}: ${describeError(error)}`;
        log.warn(reason);
        stream.reset(ResetCode.ConnectFailed, reason);
      },
    );
  }

  function onControl(text: string): void {
    const message = parseControl(text);
    if (message.type === "going-away") {
      log.info(`server is shutting down; connections in flight have ${message.drain} s to finish`);
      return;
    }
    if (message.type !== "exposed" && message.type !== "error")
      throw new ProtocolError(`unexpected '${message.type}' from the server`);
    const waiter = message.id === undefined ? undefined : pending.get(message.id);
    if (waiter === undefined) {
      if (message.type === "error") log.error(`server: ${message.message}`);
      return;
    }
    pending.delete(message.id as number);
    if (message.type === "exposed") waiter.resolve(message);
    else waiter.reject(new ClientError(`server refused the tunnel: ${message.message}`));
  }

  /** Binds a greeted connection: frames, control messages, heartbeat, and what to do when it is lost. */
  function bind(conn: ControlConnection): void {
    connection = conn;
    hello = conn.hello;
    const { ws } = conn;
    // A flag per message (not a clock read: this runs for every frame); the heartbeat reads it.
    let heard = false;
    let lastSeen = Date.now();
    const seen = () => {
      heard = true;
    };
    ws.addEventListener("message", (event) => {
      seen();
      try {
        if (typeof event.data === "string") onControl(event.data);
        else mux.receive(new Uint8Array(event.data as ArrayBuffer), true);
      } catch (error) {
        const reason = `protocol error: ${describeError(error)}`;
        log.error(reason);
        ws.close(CloseCode.ProtocolError, reason.slice(0, 120));
      }
    });
    ws.addEventListener("ping", seen);
    ws.addEventListener("pong", seen);
    const heartbeat = setInterval(() => {
      if (heard) {
        heard = false;
        lastSeen = Date.now();
      }
      if (Date.now() - lastSeen <= 3 * heartbeatMs) return ws.ping();
      log.warn(`server silent for ${Math.round((Date.now() - lastSeen) / 1000)} s: connection is dead`);
      ws.terminate();
      lost(`server silent`);
    }, heartbeatMs);
    let gone = false;
    const lost = (reason: string) => {
      if (gone) return;
      gone = true;
      clearInterval(heartbeat);
      mux.detach();
      for (const waiter of pending.values()) waiter.reject(new ClientError(`connection lost: ${reason}`));
      pending.clear();
      if (!closing) void reconnect(reason);
    };
    ws.addEventListener("close", (event) =>
      lost(`closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`),
    );
    conn.onBlocked = (blocked) => mux.setBlocked(blocked);
  }

  /** Expose: ask for a tunnel (the same port and id again after a server restart). */
  function expose(local: ExposeOption, previous?: TunnelInfo): Promise<TunnelInfo> {
    const id = nextRequest++;
    const answer = new Promise<Exposed>((resolve, reject) => pending.set(id, { resolve, reject }));
    const http = local.kind === "http";
    const request: ExposeRequest = {
      type: "expose",
      id,
      kind: http ? "http" : "tcp",
      port: http ? undefined : (local.publicPort ?? previous?.port),
      subdomain: http ? (local.subdomain ?? previous?.name) : undefined,
      hostHeader: http && !local.preserveHost ? `${formatHost(local.host)}:${local.port}` : undefined,
      basicAuth: http ? local.basicAuth : undefined,
      tunnel: previous?.id,
    };
    connection.ws.send(JSON.stringify(request));
    return answer.then((m) => {
      targets.set(m.ref, { host: local.host, port: local.port });
      return { id: m.tunnel, name: m.name, url: m.url, host: m.host, port: m.port, local: { ...local } };
    });
  }

  /**
   * Exposes every service; announces them only once all are up, so that a refusal of one never leaves
   * the others printed as live (the caller closes the connection, and the server releases them).
   */
  async function exposeAll(each: (local: ExposeOption, i: number) => Promise<TunnelInfo>): Promise<void> {
    const all = await Promise.all(options.expose.map(each));
    tunnels = all;
    for (const tunnel of all) options.onExposed?.(tunnel);
  }

  /** After a server restart: the old session is gone, so expose every tunnel again, same port if free. */
  async function exposeAgain(): Promise<void> {
    mux.destroyAll();
    targets.clear();
    mux.start((frame) => connection.send(frame));
    await exposeAll((local, i) =>
      expose(local, tunnels[i]).catch((error) => {
        if (local.publicPort !== undefined || local.subdomain !== undefined) throw error;
        log.warn(`${describeError(error)}; asking for another one`);
        return expose(local);
      }),
    );
  }

  /** Reconnect: back off with jitter, resume the session, or expose again if the server lost it. */
  async function reconnect(reason: string): Promise<void> {
    log.warn(`connection to server lost (${reason}); reconnecting`);
    const capMs = (options.maxBackoffSeconds ?? 30) * 1000;
    for (let attempt = 1; !closing; attempt++) {
      const delay = backoffDelay(attempt, 250, capMs);
      log.info(`reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})`);
      await Bun.sleep(delay);
      if (closing) return;
      let conn: ControlConnection;
      try {
        conn = await connectTo({ session: hello.session, secret: hello.secret });
      } catch (error) {
        if (error instanceof ConnectError && error.fatal) {
          log.error(describeError(error));
          return giveUp(describeError(error));
        }
        log.warn(`reconnect attempt ${attempt} failed: ${describeError(error)}`);
        continue;
      }
      bind(conn);
      try {
        if (conn.hello.resumed) return resumeSession(conn.sync as SyncMessage);
        log.info("server lost the session (restarted?); exposing the tunnels again");
        return await exposeAgain();
      } catch (error) {
        // Lost again while exposing: the close handler has already started the next reconnect.
        if (conn.ws.readyState !== WebSocket.OPEN) return;
        log.error(describeError(error));
        closing = true;
        conn.ws.close(CloseCode.Normal, "client giving up");
        return giveUp(describeError(error));
      }
    }
  }

  /** Resume: tell the server our positions, then resend what the blip lost. */
  function resumeSession(sync: SyncMessage): void {
    connection.ws.send(JSON.stringify({ type: "sync", ...mux.syncState() } satisfies SyncMessage));
    mux.resume((frame) => connection.send(frame), sync);
    for (const tunnel of tunnels) log.info(`resumed: tunnel ${tunnel.id} still at url: ${tunnel.url}`);
  }

  bind(connection);
  mux.start((frame) => connection.send(frame));
  const close = async () => {
    if (closing) return;
    closing = true;
    const { ws } = connection;
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
      const done = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
      ws.close(CloseCode.Normal, "client closing");
      await Promise.race([done, Bun.sleep(2000)]);
    }
    mux.destroyAll();
    giveUp("client closed");
  };
  try {
    await exposeAll((local) => expose(local));
  } catch (error) {
    await close();
    throw error;
  }
  return {
    get tunnels() {
      return tunnels;
    },
    stats: () => ({ streams: mux.streams.size }),
    closed,
    close,
  };
}

/** Fails early, with one line, when an `--expose` host does not resolve. */
async function checkResolves(target: HostPort): Promise<void> {
  try {
    await lookup(target.host);
  } catch {
    throw new ClientError(`--expose: cannot resolve host '${target.host}'`);
  }
}

const HELP = `Usage: ${commandName("client.ts")} --expose HOST:PORT [options]

Options:
  --expose HOST:PORT   local service to publish (repeatable: one tunnel each)
  --server URL         ws:// or wss:// server (default: env SOCKETS_SERVER, else ws://localhost:7070)
  --port N             ask for this public port (repeatable: one per --expose, in order)
  --http HOST:PORT     local web service to publish at http://NAME.DOMAIN (repeatable: one tunnel each)
  --subdomain NAME     ask for this NAME (repeatable: one per --http, in order; default random)
  --host-header MODE   rewrite (Host = the local address, default) or preserve (the visitor's)
  --basic-auth USER:PASSWORD  visitors of every --http tunnel must log in (checked by the server)
  --log-requests       one stdout line per HTTP request (default when stdout is a terminal)
  --ca FILE            trust this CA or self-signed certificate (PEM) for wss
  --insecure           skip TLS certificate verification (unsafe; prints a warning)
  --heartbeat SECONDS  ping interval; a server silent for 3 intervals is dead (default 10)
  --max-backoff SECONDS  longest wait between reconnect attempts (default 30)
  -q, --quiet          log warnings and errors only
  -h, --help           show this help

Environment:
  SOCKETS_SERVER       server URL when --server is not given
  SOCKETS_API_KEY      API key sent to the server
`;

/** Turns argv and env into options; throws UsageError on bad input. */
export async function parseClientArgs(
  argv: string[],
  env: Record<string, string | undefined>,
): Promise<ClientOptions | "help"> {
  const { values } = parseFlags({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      expose: { type: "string", multiple: true },
      http: { type: "string", multiple: true },
      subdomain: { type: "string", multiple: true },
      "host-header": { type: "string" },
      "basic-auth": { type: "string" },
      "log-requests": { type: "boolean" },
      server: { type: "string" },
      port: { type: "string", multiple: true },
      ca: { type: "string" },
      insecure: { type: "boolean" },
      heartbeat: { type: "string" },
      "max-backoff": { type: "string" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  const exposes = values.expose ?? [];
  const https = values.http ?? [];
  if (exposes.length + https.length === 0)
    throw new UsageError("--expose HOST:PORT or --http HOST:PORT is required");
  const ports = values.port ?? [];
  if (ports.length > exposes.length) throw new UsageError("--port given more times than --expose");
  const subdomains = values.subdomain ?? [];
  if (subdomains.length > https.length) throw new UsageError("--subdomain given more times than --http");
  const basicAuth = values["basic-auth"];
  if (basicAuth !== undefined && !/^[^:]+:.+$/.test(basicAuth))
    throw new UsageError("--basic-auth: expected USER:PASSWORD");
  if (basicAuth !== undefined && https.length === 0) throw new UsageError("--basic-auth needs --http");
  const hostHeader = values["host-header"] ?? "rewrite";
  if (hostHeader !== "rewrite" && hostHeader !== "preserve")
    throw new UsageError(`--host-header: '${hostHeader}' is not rewrite or preserve`);
  const tcp = exposes.map((value, i): ExposeOption => {
    const target = parseHostPort(value, "--expose");
    const port = ports[i];
    return port === undefined ? target : { ...target, publicPort: parsePort(port, "--port") };
  });
  const http = https.map((value, i): ExposeOption => {
    const subdomain = subdomains[i];
    if (subdomain !== undefined && !SUBDOMAIN.test(subdomain))
      throw new UsageError(
        `--subdomain: '${subdomain}' is not a DNS label (a-z, 0-9, inner '-', at most 63)`,
      );
    return {
      ...parseHostPort(value, "--http"),
      kind: "http",
      subdomain,
      preserveHost: hostHeader === "preserve",
      basicAuth,
    };
  });
  const expose = [...tcp, ...http];
  // An empty SOCKETS_SERVER counts as unset, like an empty SOCKETS_API_KEY.
  const server = parseServerUrl(values.server ?? (env.SOCKETS_SERVER || "ws://localhost:7070"), "--server");
  let ca: string | undefined;
  if (values.ca !== undefined) {
    const file = Bun.file(values.ca);
    if (!(await file.exists())) throw new UsageError(`--ca: cannot read '${values.ca}'`);
    ca = await file.text();
  }
  return {
    server,
    expose,
    apiKey: env.SOCKETS_API_KEY || undefined,
    ca,
    insecure: values.insecure,
    heartbeatSeconds:
      values.heartbeat === undefined ? undefined : parseSeconds(values.heartbeat, "--heartbeat", 0.1, 3600),
    maxBackoffSeconds:
      values["max-backoff"] === undefined
        ? undefined
        : parseSeconds(values["max-backoff"], "--max-backoff", 0.1, 3600),
    logRequests: values["log-requests"] ?? process.stdout.isTTY === true,
    quiet: values.quiet,
  };
}

async function main(): Promise<void> {
  let options: ClientOptions | "help";
  try {
    options = await parseClientArgs(process.argv.slice(2), process.env);
  } catch (error) {
    process.stderr.write(`${usageLine(error)}\n`);
    process.exit(2);
  }
  if (options === "help") {
    process.stdout.write(HELP);
    return;
  }
  const log: Logger = createLogger("client", options.quiet);
  if (options.insecure)
    log.warn(
      "--insecure: the server's TLS certificate is NOT verified; anyone on the path can read and alter the traffic",
    );
  // Signals are handled from the first moment: one arriving during start-up still exits cleanly.
  let handle: ClientHandle | undefined;
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await handle?.close();
    process.exit(0);
  };
  process.on("SIGINT", () => void stop());
  process.on("SIGTERM", () => void stop());
  try {
    // One stdout line per tunnel the server confirms: at start, and again after a server restart.
    handle = await startClient({
      ...options,
      logRequest: options.logRequests ? (line) => process.stdout.write(`${line}\n`) : undefined,
      onExposed(tunnel) {
        process.stdout.write(`exposed with tunnel id ${tunnel.id}, url: ${tunnel.url}\n`);
        log.info(`tunnel ${tunnel.id}: ${tunnel.url} -> ${tunnel.local.host}:${tunnel.local.port}`);
      },
    });
  } catch (error) {
    if (stopping) return;
    process.stderr.write(
      `error: ${error instanceof ConnectError || error instanceof ClientError ? error.message : describeError(error)}\n`,
    );
    process.exit(1);
  }
  const reason = await handle.closed;
  if (stopping) return;
  process.stderr.write(`error: ${reason}\n`);
  process.exit(1);
}

if (import.meta.main) await main();
