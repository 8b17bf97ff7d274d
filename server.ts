/**
 * sockets server: accepts tunnel clients on one WebSocket each, opens a public TCP port per tunnel
 * (and a `NAME.DOMAIN` route per HTTP tunnel) and carries every visitor over its client's WebSocket as
 * a stream of its own.
 *
 * Story: listen on the control port → accept a client's upgrade (authenticate, agree the protocol
 * version, resume its session) → expose its tunnels → route each visitor to a new stream → relay with
 * flow control → on shutdown, drain and close.
 *
 * ```sh
 * bun server.ts --port 7070 --domain tunnel.example.com
 * ```
 * @module
 */

import { formatHost, usageLine } from "./shared/args.ts";
import { commandName, createLogger, describeError } from "./shared/log.ts";
import { helpText } from "./shared/options.ts";
import { controlApp } from "./shared/server/app.ts";
import { listenControl } from "./shared/server/control-port.ts";
import { HeadBudget, type HttpIngress, listenHttp } from "./shared/server/http-ingress.ts";
import {
  parseServerArgs,
  SERVER_ENVIRONMENT,
  SERVER_OPTIONS,
  type ServerOptions,
} from "./shared/server/options.ts";
import { defaultHost } from "./shared/server/public-port.ts";
import { type ServerStats, SessionRegistry } from "./shared/server/registry.ts";

export { parseServerArgs, type ServerOptions, type ServerStats };

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

/** Limits of a client's WebSocket: tunnel frames stay far below them (the codec bounds frames). */
const CLIENT_WEBSOCKET = { maxPayloadLength: 16 * 1024 * 1024, backpressureLimit: 64 * 1024 * 1024 };

/** Starts a server; resolves once the control port listens. */
export async function startServer(options: ServerOptions = {}): Promise<ServerHandle> {
  const log = createLogger("server", options.quiet);
  const host = options.host ?? (await defaultHost());
  const registry = new SessionRegistry(options, host, log);
  const { context } = registry;

  // HTTP tunnels are routed by Host (NAME.DOMAIN) by the same code on the control port and --http-port.
  const http = {
    domain: context.domain,
    route: (name: string) => registry.route(name),
    requestTimeoutSeconds: options.requestTimeoutSeconds,
    heads: new HeadBudget(),
    tls: options.tls,
    log,
  };
  // Accept: the control port serves the clients' upgrade and /health (the app), and HTTP tunnels.
  const app = controlApp({
    registry,
    apiKey: options.apiKey,
    authFailLimit: options.authFailLimit ?? SERVER_OPTIONS["auth-fail-limit"].default,
    log,
  });
  const port = options.port ?? SERVER_OPTIONS.port.default;
  const control = listenControl({
    ...http,
    host,
    port,
    app,
    limits: CLIENT_WEBSOCKET,
    websocket: registry.websocket,
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
  registry.watch();

  const url = `${options.tls ? "wss" : "ws"}://${formatHost(host)}:${control.port}`;
  log.info(`listening on ${url} (domain ${context.domain})`);
  log.info(`http tunnels on ${context.httpScheme}://*.${context.domain}:${context.httpPort}`);
  if (!options.apiKey) log.warn("no SOCKETS_SINGLE_API_KEY set: any client may open tunnels");
  return {
    host,
    port: control.port,
    url,
    httpPort: httpPort?.port,
    stats: () => registry.stats(),
    async close() {
      if (registry.draining) return;
      control.stop(false);
      httpPort?.stop(false);
      await registry.drainAll();
      httpPort?.stop(true);
      control.stop(true);
    },
  };
}

/** `--help`. */
export const HELP = helpText(`${commandName("server.ts")} [options]`, SERVER_OPTIONS, SERVER_ENVIRONMENT);

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
    const port = options.port ?? SERVER_OPTIONS.port.default;
    process.stderr.write(`error: cannot start server on port ${port}: ${describeError(error)}\n`);
    process.exit(1);
  }
}

if (import.meta.main) await main();
