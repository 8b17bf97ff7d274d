/**
 * sockets client: publishes local services through a sockets server. It holds one WebSocket to the
 * server; each visitor of a tunnel arrives as a stream and becomes its own connection to the local
 * service.
 *
 * Story: read the command line (and the `--config` file) → connect (TLS, API key, protocol version) →
 * expose each service and print its URL → for each visitor, connect locally and relay with flow
 * control → on SIGHUP (or a change with `--watch`), bring the tunnels to what the file says now → on
 * a lost connection, resume (or expose again after a server restart) → on a fatal refusal (a revoked
 * key), one clear line and exit.
 *
 * ```sh
 * bun client.ts --expose 127.0.0.1:8000 --server wss://tunnel.example.com:7070
 * bun client.ts --config sockets.toml --watch        # bun client.ts --init writes an example
 * ```
 * @module
 */

import { lookup } from "node:dns/promises";
import { existsSync } from "node:fs";
import { usageLine } from "./shared/args.ts";
import { DEFAULT_CONFIG_FILE, parseClientArgs } from "./shared/client/config.ts";
import { writeExample } from "./shared/client/init.ts";
import { type InspectorListener, serveInspector } from "./shared/client/inspector/server.ts";
import type { InspectSetting } from "./shared/client/inspector/settings.ts";
import { InspectorStore } from "./shared/client/inspector/store.ts";
import {
  CLIENT_ENVIRONMENT,
  CLIENT_OPTIONS,
  type ClientArgs,
  type ExposeOption,
  type NamedService,
  nameServices,
} from "./shared/client/options.ts";
import { type ApplyResult, applyTunnels, ConfigReloader, type TunnelSet } from "./shared/client/reload.ts";
import { batchedLines } from "./shared/client/request-log.ts";
import {
  ClientError,
  type ConnectionChange,
  RefusedError,
  TunnelClient,
  type TunnelInfo,
  type VisitorInfo,
} from "./shared/client/tunnel-client.ts";
import type { UdpClientCounters } from "./shared/client/udp-flows.ts";
import { commandName, createLogger, describeError } from "./shared/log.ts";
import { helpText } from "./shared/options.ts";
import { versionLine } from "./shared/version.ts";

export {
  ClientError,
  type ConnectionChange,
  type ExposeOption,
  type NamedService,
  parseClientArgs,
  type TunnelInfo,
  type VisitorInfo,
};

/** Everything the client can be told; the CLI fills it from flags, env and the config file. */
export type ClientOptions = Omit<ClientArgs, "server" | "servers" | "expose" | "inspect"> & {
  /**
   * `ws://` or `wss://` URL of the server, or several in order of preference: the client uses the
   * first that answers and moves to the next ones when it loses its server.
   */
  server: string | URL | readonly (string | URL)[];
  /** The services to publish; those without a name get `tcp-1`, `http-1`, … */
  expose: ExposeOption[];
  /** Prints one line per HTTP request on HTTP tunnels (method, path, status, duration, bytes). */
  logRequest?: (line: string) => void;
  /** Called for every tunnel the server confirms: at start, when added, and again after a server restart. */
  onExposed?: (tunnel: TunnelInfo) => void;
  /** Called for every tunnel closed at run time (removed or changed by a reload). */
  onClosed?: (tunnel: TunnelInfo) => void;
  /** Called when the connection to the server is lost (the client reconnects by itself) and when it is back. */
  onConnection?: (change: ConnectionChange) => void;
  /** Called for every visitor connection a tunnel receives. */
  onVisitor?: (visitor: VisitorInfo) => void;
  /** The request inspector: off when absent; `default` is 127.0.0.1:4040 or the next free port. */
  inspect?: InspectSetting | "default";
};

/** A running client. */
export interface ClientHandle extends TunnelSet {
  /** The tunnels as last confirmed by the server (same ids and ports across reconnects when possible). */
  tunnels: TunnelInfo[];
  /** The server connected to (or, while reconnecting, last connected to). */
  readonly server: string;
  /** Brings the tunnels to `services` by name: adds, closes, re-exposes the changed, leaves the rest. */
  update(services: NamedService[]): Promise<ApplyResult>;
  /** Open streams (visitor connections) on this client, and its UDP tunnels' flows and counts. */
  stats(): { streams: number; udp: { open: number } & UdpClientCounters };
  /** The request inspector, when on: its URL and what it captured. */
  inspector?: { url: string; store: InspectorStore };
  /** Resolves with the reason once the client gave up (auth rejected, …) or was closed. */
  closed: Promise<string>;
  /** Closes the tunnels and the connection (the server releases them at once). */
  close(): Promise<void>;
}

/**
 * Connects, exposes every service and resolves once all tunnels are live. From then on the client
 * stays up by itself: a lost connection is resumed (same tunnels, same visitor connections) or, after
 * a server restart, the tunnels are exposed again on the same ports.
 */
export async function startClient(options: ClientOptions): Promise<ClientHandle> {
  const log = createLogger("client", options.quiet);
  await Promise.all(options.expose.map(checkResolves));
  const { inspect = "off" } = options;
  const store = inspect === "off" ? undefined : new InspectorStore({ capacity: options.inspectBuffer });
  const servers = Array.isArray(options.server) ? options.server : [options.server];
  const client = await TunnelClient.connect({
    servers: servers.map((server) => new URL(server)),
    apiKey: options.apiKey,
    ca: options.ca,
    insecure: options.insecure,
    heartbeatMs: (options.heartbeatSeconds ?? CLIENT_OPTIONS.heartbeat.default) * 1000,
    maxBackoffMs: (options.maxBackoffSeconds ?? CLIENT_OPTIONS["max-backoff"].default) * 1000,
    udpIdleMs: (options.udpIdleSeconds ?? CLIENT_OPTIONS["udp-idle-timeout"].default) * 1000,
    logRequest: options.logRequest,
    inspector: store,
    onExposed: options.onExposed,
    onClosed: options.onClosed,
    onConnection: options.onConnection,
    onVisitor: options.onVisitor,
    log,
  });
  let inspector: InspectorListener | undefined;
  try {
    await client.exposeAll(nameServices(options.expose));
    if (store && inspect !== "off") inspector = serveInspector(store, inspect, () => client.tunnels, log);
  } catch (error) {
    await client.close();
    throw error;
  }
  return {
    get tunnels() {
      return client.tunnels;
    },
    get server() {
      return client.server;
    },
    get services() {
      return client.services;
    },
    add: (service, previous) => client.add(service, previous),
    unexpose: (name) => client.unexpose(name),
    update: (services) => applyTunnels(client, services, log),
    stats: () => ({
      streams: client.mux.streams.size,
      udp: { ...client.udp.counters, open: client.udp.flows.size },
    }),
    inspector: inspector && store && { url: inspector.url, store },
    closed: client.closed,
    close: () => {
      inspector?.stop();
      return client.close();
    },
  };
}

/** Fails early, with one line, when an `--expose` host does not resolve. */
async function checkResolves(target: ExposeOption): Promise<void> {
  try {
    await lookup(target.host);
  } catch {
    const flag = target.kind === "udp" ? "--expose-udp" : target.kind === "http" ? "--http" : "--expose";
    throw new ClientError(`${flag}: cannot resolve host '${target.host}'`);
  }
}

/** `--help`. */
export const HELP = helpText(
  `${commandName("client.ts")} (--expose HOST:PORT | --http HOST:PORT | --config FILE) [options]`,
  CLIENT_OPTIONS,
  CLIENT_ENVIRONMENT,
  `\nConfig file: ${commandName("client.ts")} --init writes a commented example; README.md, section "Config file",\nlists every key, which tunnels are published, and what a reload (SIGHUP, --watch) changes.\n`,
);

/** The `client` command: reads process.argv and runs until a signal (the package's `bin` entry calls it too). */
export async function main(): Promise<void> {
  let options: Awaited<ReturnType<typeof parseClientArgs>>;
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
  if (options === "version") return void process.stdout.write(versionLine("client"));
  if ("init" in options) {
    try {
      return void process.stdout.write(writeExample(options.init));
    } catch (error) {
      process.stderr.write(`error: ${describeError(error)}\n`);
      process.exit(1);
    }
  }
  const log = createLogger("client", options.quiet);
  if (options.config === undefined && existsSync(DEFAULT_CONFIG_FILE))
    log.info(
      `./${DEFAULT_CONFIG_FILE} was not read: a config file is used only when named (--config ${DEFAULT_CONFIG_FILE})`,
    );
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
  // A SIGHUP that arrives while the tunnels come up is applied once they are up (never a kill).
  let reloadAsked = false;
  let reload = (_why: string) => {
    reloadAsked = true;
  };
  if (options.config !== undefined) process.on("SIGHUP", () => reload("SIGHUP"));
  try {
    // One stdout line per tunnel the server confirms: at start, and again after a server restart.
    handle = await startClient({
      ...options,
      server: options.servers,
      inspect: options.inspect ?? "default",
      // Each HTTP service says whether its requests are logged (the flag, or its config file entry).
      logRequest: batchedLines((text) => process.stdout.write(text)),
      onExposed(tunnel) {
        process.stdout.write(`exposed with tunnel id ${tunnel.id}, url: ${tunnel.url}\n`);
        log.info(
          `tunnel ${tunnel.id} (${tunnel.local.name}): ${tunnel.url} -> ${tunnel.local.host}:${tunnel.local.port}`,
        );
      },
      onClosed: (tunnel) => process.stdout.write(`closed tunnel ${tunnel.id} (${tunnel.local.name})\n`),
    });
  } catch (error) {
    if (stopping) return;
    process.stderr.write(`error: ${describeError(error)}\n`);
    // The server refused what the command line asked for (a name, a port, a pool): as bad input, 2.
    process.exit(error instanceof RefusedError ? 2 : 1);
  }
  // The server actually connected to (with several, the first that answered); logged once the tunnels
  // are up, so that a refused tunnel still leaves one error line alone on stderr.
  log.info(`connected to server ${handle.server}`);
  if (handle.inspector) process.stdout.write(`inspector: ${handle.inspector.url}\n`);
  // With --config: SIGHUP (and with --watch, each save) brings the tunnels to what the file says now.
  if (options.config !== undefined) {
    const reloader = new ConfigReloader({ ...options.config, client: handle, log }, options.config.values);
    reload = (why) => void reloader.reload(why);
    if (reloadAsked) reload("SIGHUP during start-up");
    if (options.watch) reloader.watch();
  }
  const reason = await handle.closed;
  if (stopping) return;
  process.stderr.write(`error: ${reason}\n`);
  process.exit(1);
}

if (import.meta.main) await main();
