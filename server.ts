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
 * bun server.ts --config server.toml --watch     # users with their own tokens and limits
 * ```
 * @module
 */

import { hostname } from "node:os";
import { formatHost, usageLine } from "./shared/args.ts";
import { commandName, createLogger, describeError } from "./shared/log.ts";
import { helpText } from "./shared/options.ts";
import { HttpsSide } from "./shared/server/acme/https.ts";
import { type AdminListener, startAdmin } from "./shared/server/admin.ts";
import { controlApp } from "./shared/server/app.ts";
import { ClusterNode } from "./shared/server/cluster/node.ts";
import {
  ConfigReloader,
  describeUsersChange,
  hashTokenCommand,
  parseServerCommand,
  restartNeeded,
} from "./shared/server/config.ts";
import { listenControl } from "./shared/server/control-port.ts";
import { HeadBudget, type HttpIngress, listenHttp } from "./shared/server/http-ingress.ts";
import { ServerMetrics } from "./shared/server/metrics.ts";
import {
  parseServerArgs,
  SERVER_ENVIRONMENT,
  SERVER_OPTIONS,
  type ServerOptions,
} from "./shared/server/options.ts";
import { defaultHost } from "./shared/server/public-port.ts";
import { type ServerStats, SessionRegistry } from "./shared/server/registry.ts";

export { parseServerArgs, type ServerOptions, type ServerStats };

/** What the command line asked for: the options, and how to read the config file again. */
type ServerCommand = Exclude<ReturnType<typeof parseServerCommand>, "help">;

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
  /** Bound HTTPS port, when `httpsPort` was given. */
  httpsPort?: number;
  /** `http://HOST:PORT` of the admin listener (dashboard, API, /metrics), when `admin` was given. */
  adminUrl?: string;
  stats(): ServerStats;
  /**
   * Takes up a reloaded configuration: users and run-time limits apply at once (a removed user's or a
   * changed token's sessions close with 4001); changed options that need a restart are logged.
   */
  reload(options: ServerOptions): void;
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
  // Metrics: counted only when someone can read them (the admin listener); nothing otherwise.
  const metrics =
    options.admin === undefined
      ? undefined
      : new ServerMetrics(registry.sessions, {
          perTunnel: options.metricsPerTunnel === true,
          buffered: () => registry.stats().buffered,
          cluster: () => context.cluster?.stats(),
        });
  context.metrics = metrics;

  // Certificates, ACME and the HTTPS front (--https-port): see shared/server/acme/.
  const https = new HttpsSide(options, log);
  context.names = https.names;
  context.customDomains = options.customDomains;
  // HTTP tunnels are routed by Host (NAME.DOMAIN) by the same code on the control port and --http-port.
  const http = {
    domain: context.domain,
    route: (name: string) => registry.route(name),
    requestTimeoutSeconds: options.requestTimeoutSeconds,
    heads: new HeadBudget(),
    tls: options.tls,
    metrics,
    acmeChallenge: https.acmeChallenge,
    log,
  };
  // Accept: the control port serves the clients' upgrade and /health (the app), and HTTP tunnels.
  const app = controlApp({
    registry,
    authFailLimit: options.authFailLimit ?? SERVER_OPTIONS["auth-fail-limit"].default,
    log,
    metrics,
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
    // With --https-port, --http-port stays plain http (HTTP-01 validations, http:// visitors).
    const plain = options.httpsPort !== undefined ? { tls: undefined } : {};
    if (options.httpPort !== undefined)
      httpPort = listenHttp({ ...http, ...plain, host, port: options.httpPort });
  } catch (error) {
    control.stop(true);
    throw new Error(`--http-port ${options.httpPort}: ${describeError(error)}`);
  }
  let httpsPort: number | undefined;
  try {
    const { tls: _, ...terminated } = http;
    httpsPort = https.listen(host, context.domain, terminated, (key) => registry.route(key));
  } catch (error) {
    httpPort?.stop(true);
    control.stop(true);
    throw new Error(`--https-port ${options.httpsPort}: ${describeError(error)}`);
  }
  context.httpsPort = httpsPort;
  let admin: AdminListener | undefined;
  if (metrics !== undefined && options.admin !== undefined)
    try {
      admin = startAdmin({ metrics, stats: () => registry.stats() }, options.admin, options.adminToken);
    } catch (error) {
      https.stop(true);
      httpPort?.stop(true);
      control.stop(true);
      throw error;
    }
  context.httpPort = httpPort?.port ?? control.port;
  context.ownPorts = [
    control.port,
    ...(httpPort ? [httpPort.port] : []),
    ...(httpsPort !== undefined ? [httpsPort] : []),
    ...(admin ? [admin.port] : []),
  ];
  // Cluster: names and ports are leased in Redis, visitors for other nodes' tunnels carried there.
  if (options.cluster !== undefined)
    try {
      context.cluster = await joinCluster(options, registry, host, control.port);
    } catch (error) {
      admin?.stop();
      https.stop(true);
      httpPort?.stop(true);
      control.stop(true);
      const why = describeError(error);
      throw new Error(why.startsWith("cluster:") ? why : `--cluster: ${why}`);
    }
  registry.watch();

  const url = `${options.tls ? "wss" : "ws"}://${formatHost(host)}:${control.port}`;
  log.info(`listening on ${url} (domain ${context.domain})`);
  log.info(`http tunnels on ${context.httpScheme}://*.${context.domain}:${context.httpPort}`);
  if (httpsPort !== undefined)
    log.info(
      `https on port ${httpsPort} (names chosen by SNI${https.acme ? `; ACME certificates from ${https.acme.settings.directory}` : ""})`,
    );
  if (context.cluster)
    log.info(`cluster: node ${context.cluster.name} joined (${redacted(options.cluster)})`);
  if (admin) log.info(`admin on ${admin.url}/ (dashboard, /api, /metrics)`);
  if (registry.users.open) log.warn("no SOCKETS_SINGLE_API_KEY set: any client may open tunnels");
  if (options.users?.length) log.info(`users: ${options.users.map((u) => u.name).join(", ")}`);
  return {
    host,
    port: control.port,
    url,
    httpPort: httpPort?.port,
    httpsPort,
    adminUrl: admin?.url,
    stats: () => registry.stats(),
    reload(next) {
      // Compared with what runs (the start-up options): a restart-only change warns on every reload.
      const restart = restartNeeded(options, next);
      if (restart.length > 0)
        log.warn(
          `config: ${restart.join(", ")} changed; a restart is needed to apply that (the rest applies now)`,
        );
      log.info(describeUsersChange(registry.reconfigure(next)));
    },
    async close() {
      if (registry.draining) return;
      control.stop(false);
      httpPort?.stop(false);
      https.stop(false);
      await registry.drainAll();
      await context.cluster?.leave();
      https.stop(true);
      httpPort?.stop(true);
      control.stop(true);
      admin?.stop();
    },
  };
}

/** Joins the cluster `--cluster` names, as `--node-name` at `--node-url` (defaults from the control port). */
function joinCluster(options: ServerOptions, registry: SessionRegistry, host: string, port: number) {
  const reachable = host === "::" || host === "0.0.0.0" ? "127.0.0.1" : host;
  return ClusterNode.join({
    redis: options.cluster as string,
    ca: options.clusterCa,
    name: options.nodeName ?? `${hostname()}:${port}`,
    url: options.nodeUrl ?? `${options.tls ? "wss" : "ws"}://${formatHost(reachable)}:${port}`,
    leaseSeconds: options.clusterLeaseSeconds ?? SERVER_OPTIONS["cluster-lease"].default,
    host,
    settings: registry.context.limits,
    budgets: registry.context.budgets,
    acceptRemote: (target, kind, socket) => registry.acceptRemote(target, kind, socket),
    onLost: (key) => registry.leaseLost(key),
    listensOn: (port) => registry.listensOn(port),
    log: registry.context.log,
  });
}

/** A Redis URL for the log: without its password. */
function redacted(url: string | undefined): string {
  if (url === undefined) return "";
  const parsed = new URL(url);
  if (parsed.password) parsed.password = "***";
  return parsed.href;
}

/** `--help`. */
export const HELP = helpText(
  `${commandName("server.ts")} [options]\n       ${commandName("server.ts")} hash-token [TOKEN | -]`,
  SERVER_OPTIONS,
  SERVER_ENVIRONMENT,
  "\nConfig file (--config): every option above as a key (tcp_ports for --tcp-ports), plus [[users]]\n" +
    "with name, token_hash (from hash-token) and limits; SIGHUP or --watch reloads it.\n" +
    'See README.md, section "Config file".\n',
);

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let command: ServerCommand | "help";
  try {
    if (argv[0] === "hash-token") {
      process.stdout.write(await hashTokenCommand(argv.slice(1), () => Bun.stdin.text()));
      return;
    }
    command = parseServerCommand(argv, process.env);
  } catch (error) {
    process.stderr.write(`${usageLine(error)}\n`);
    process.exit(2);
  }
  if (command === "help") {
    process.stdout.write(HELP);
    return;
  }
  const { options, reload } = command;
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
  // SIGHUP from the first moment too (its default kills the process): one during start-up is applied
  // once the server is up.
  let reloadOnSignal: (() => void) | "pending" | undefined;
  process.on("SIGHUP", () => {
    if (typeof reloadOnSignal === "function") reloadOnSignal();
    else reloadOnSignal = "pending";
  });
  try {
    handle = await startServer(options);
  } catch (error) {
    const port = options.port ?? SERVER_OPTIONS.port.default;
    process.stderr.write(`error: cannot start server on port ${port}: ${describeError(error)}\n`);
    process.exit(1);
  }
  // Reload: SIGHUP, and with --watch a change of the file; a bad file changes nothing.
  if (reload !== undefined && options.config !== undefined) {
    const started = handle;
    const log = createLogger("server", options.quiet);
    const reloader = new ConfigReloader(options.config, reload, (next) => started.reload(next), log);
    const early = reloadOnSignal === "pending";
    reloadOnSignal = () => reloader.reload("SIGHUP");
    if (early) reloadOnSignal();
    if (options.watch) reloader.watch();
  }
}

if (import.meta.main) await main();
