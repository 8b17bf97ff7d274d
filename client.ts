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
import { parseArgs } from "node:util";
import { type HostPort, parseHostPort, parsePort, parseServerUrl, UsageError } from "./shared/args.ts";
import type { OpenFrame } from "./shared/codec.ts";
import { ConnectError, type ControlConnection, connectControl } from "./shared/connect.ts";
import { createLogger, describeError, type Logger } from "./shared/log.ts";
import { Mux } from "./shared/mux.ts";
import {
  CloseCode,
  type Exposed,
  ProtocolError,
  parseControl,
  ResetCode,
  StreamKind,
} from "./shared/protocol.ts";
import { type RelaySocket, type RelaySocketData, relaySocketHandlers } from "./shared/stream.ts";

/** One local service to publish. */
export interface ExposeOption extends HostPort {
  /** Public port to ask for; absent for any. */
  publicPort?: number;
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
  quiet?: boolean;
}

/** A live tunnel, as the server announced it. */
export interface TunnelInfo {
  id: string;
  url: string;
  host: string;
  port: number;
  local: HostPort;
}

/** A running client. */
export interface ClientHandle {
  tunnels: TunnelInfo[];
  /** Open streams (visitor connections) on this client. */
  stats(): { streams: number };
  /** Resolves with the reason once the connection to the server is gone. */
  closed: Promise<string>;
  /** Closes the tunnels and the connection. */
  close(): Promise<void>;
}

/** Client-side failure with a one-line message (auth, TLS, unreachable, port taken, …). */
export class ClientError extends Error {
  override name = "ClientError";
}

/** Connects, exposes every service and resolves once all tunnels are live. */
export async function startClient(options: ClientOptions): Promise<ClientHandle> {
  const log = createLogger("client", options.quiet);
  await Promise.all(options.expose.map(checkResolves));
  let connection: ControlConnection;
  try {
    connection = await connectControl({
      url: new URL(options.server),
      apiKey: options.apiKey,
      ca: options.ca,
      insecure: options.insecure,
    });
  } catch (error) {
    throw new ClientError(describeError(error));
  }
  const { ws, hello } = connection;
  const targets = new Map<number, HostPort>();
  const mux = new Mux(
    (frame) => connection.send(frame),
    hello,
    (frame) => acceptStream(frame),
  );
  connection.onBlocked = (blocked) => mux.setBlocked(blocked);

  /** A visitor arrived: connect to the local service and relay; reset the stream if that fails. */
  function acceptStream(frame: OpenFrame): void {
    const target = targets.get(frame.tunnel);
    if (target === undefined) throw new ProtocolError(`OPEN for unknown tunnel ${frame.tunnel}`);
    const stream = mux.acceptStream(frame.stream);
    if (frame.kind !== StreamKind.Tcp) {
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

  const pending = new Map<number, { resolve: (m: Exposed) => void; reject: (e: Error) => void }>();
  let closedReason: string | undefined;
  const closed = new Promise<string>((resolve) => {
    ws.addEventListener("close", (event) => {
      mux.destroyAll();
      closedReason = `connection to server closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`;
      for (const waiter of pending.values()) waiter.reject(new ClientError(closedReason));
      resolve(closedReason);
    });
  });

  ws.addEventListener("message", (event) => {
    try {
      if (typeof event.data === "string") onControl(event.data);
      else mux.receive(new Uint8Array(event.data as ArrayBuffer));
    } catch (error) {
      const reason = `protocol error: ${describeError(error)}`;
      log.error(reason);
      ws.close(CloseCode.ProtocolError, reason.slice(0, 120));
    }
  });

  function onControl(text: string): void {
    const message = parseControl(text);
    if (message.type === "exposed" || message.type === "error") {
      const waiter = message.id === undefined ? undefined : pending.get(message.id);
      if (waiter === undefined) {
        if (message.type === "error") log.error(`server: ${message.message}`);
        return;
      }
      pending.delete(message.id as number);
      if (message.type === "exposed") waiter.resolve(message);
      else waiter.reject(new ClientError(`server refused the tunnel: ${message.message}`));
      return;
    }
    throw new ProtocolError(`unexpected '${message.type}' from the server`);
  }

  let nextRequest = 1;
  const exposeOne = (local: ExposeOption): Promise<TunnelInfo> => {
    const id = nextRequest++;
    const answer = new Promise<Exposed>((resolve, reject) => pending.set(id, { resolve, reject }));
    ws.send(JSON.stringify({ type: "expose", id, kind: "tcp", port: local.publicPort }));
    return answer.then((m) => {
      targets.set(m.ref, { host: local.host, port: local.port });
      return {
        id: m.tunnel,
        url: m.url,
        host: m.host,
        port: m.port,
        local: { host: local.host, port: local.port },
      };
    });
  };

  const close = async () => {
    if (closedReason === undefined) ws.close(CloseCode.Normal, "client closing");
    await closed;
  };
  try {
    const tunnels = await Promise.all(options.expose.map(exposeOne));
    return { tunnels, stats: () => ({ streams: mux.streams.size }), closed, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/** Fails early, with one line, when an `--expose` host does not resolve. */
async function checkResolves(target: HostPort): Promise<void> {
  try {
    await lookup(target.host);
  } catch {
    throw new ClientError(`--expose: cannot resolve host '${target.host}'`);
  }
}

const HELP = `Usage: bun client.ts --expose HOST:PORT [options]

Options:
  --expose HOST:PORT   local service to publish (repeatable: one tunnel each)
  --server URL         ws:// or wss:// server (default: env SOCKETS_SERVER, else ws://localhost:7070)
  --port N             ask for this public port (repeatable: one per --expose, in order)
  --ca FILE            trust this CA or self-signed certificate (PEM) for wss
  --insecure           skip TLS certificate verification (unsafe; prints a warning)
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
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      expose: { type: "string", multiple: true },
      server: { type: "string" },
      port: { type: "string", multiple: true },
      ca: { type: "string" },
      insecure: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  const exposes = values.expose ?? [];
  if (exposes.length === 0) throw new UsageError("--expose HOST:PORT is required");
  const ports = values.port ?? [];
  if (ports.length > exposes.length) throw new UsageError("--port given more times than --expose");
  const expose = exposes.map((value, i): ExposeOption => {
    const target = parseHostPort(value, "--expose");
    const port = ports[i];
    return port === undefined ? target : { ...target, publicPort: parsePort(port, "--port") };
  });
  const server = parseServerUrl(values.server ?? env.SOCKETS_SERVER ?? "ws://localhost:7070", "--server");
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
    quiet: values.quiet,
  };
}

async function main(): Promise<void> {
  let options: ClientOptions | "help";
  try {
    options = await parseClientArgs(process.argv.slice(2), process.env);
  } catch (error) {
    process.stderr.write(`error: ${describeError(error)} (see --help)\n`);
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
  let handle: ClientHandle;
  try {
    handle = await startClient(options);
  } catch (error) {
    process.stderr.write(
      `error: ${error instanceof ConnectError || error instanceof ClientError ? error.message : describeError(error)}\n`,
    );
    process.exit(1);
  }
  for (const tunnel of handle.tunnels) {
    process.stdout.write(`exposed with tunnel id ${tunnel.id}, url: ${tunnel.url}\n`);
    log.info(`tunnel ${tunnel.id}: ${tunnel.url} -> ${tunnel.local.host}:${tunnel.local.port}`);
  }
  let stopping = false;
  const stop = async () => {
    stopping = true;
    await handle.close();
    process.exit(0);
  };
  process.once("SIGINT", () => void stop());
  process.once("SIGTERM", () => void stop());
  const reason = await handle.closed;
  if (stopping) return;
  process.stderr.write(`error: ${reason}\n`);
  process.exit(1);
}

if (import.meta.main) await main();
