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

import { formatHost, usageLine } from "./shared/args.ts";
import { commandName, createLogger, describeError, type Logger } from "./shared/log.ts";
import { helpText } from "./shared/options.ts";
import { HttpsSide } from "./shared/server/acme/https.ts";
import { controlApp } from "./shared/server/app.ts";
import { defaultNodeName, defaultNodeUrl, settingsDigest } from "./shared/server/cluster/identity.ts";
import { ClusterNode } from "./shared/server/cluster/node.ts";
import { isSentinelUrl, redactSentinelUrl } from "./shared/server/cluster/sentinel.ts";
import {
  ConfigReloader,
  describeUsersChange,
  hashTokenCommand,
  parseServerCommand,
  restartNeeded,
} from "./shared/server/config.ts";
import { type Listeners, openListeners } from "./shared/server/listeners.ts";
import { ServerMetrics } from "./shared/server/metrics.ts";
import {
  parseServerArgs,
  resolveServerSettings,
  SERVER_ENVIRONMENT,
  SERVER_OPTIONS,
  type ServerOptions,
} from "./shared/server/options.ts";
import { defaultHost } from "./shared/server/public-port.ts";
import { type ServerStats, SessionRegistry } from "./shared/server/registry.ts";
import { ClusterUdp } from "./shared/server/udp-mirror.ts";
import { versionLine } from "./shared/version.ts";

export { parseServerArgs, type ServerOptions, type ServerStats };

/** What the command line asked for: the options, and how to read the config file again. */
type ServerCommand = Exclude<ReturnType<typeof parseServerCommand>, "help" | "version">;

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

/** Starts a server; resolves once the control port listens (and, with `--cluster`, it joined). */
export async function startServer(options: ServerOptions = {}): Promise<ServerHandle> {
  const settings = resolveServerSettings(options);
  const log = createLogger("server", options.quiet);
  const host = options.host ?? (await defaultHost());
  const registry = new SessionRegistry(settings, host, log);
  // Certificates, ACME and the HTTPS front (--https-port): see shared/server/acme/.
  const https = new HttpsSide(options, log);
  registry.namespace.names = https.names;
  registry.certificateStats = () => https.stats();
  const metrics = options.admin === undefined ? undefined : countMetrics(registry, options);
  // Accept: the control port serves the clients' upgrade and /health (the app), and HTTP tunnels.
  const app = controlApp({ registry, authFailLimit: settings.authFailLimit, log, metrics });
  let listeners: Listeners | undefined;
  try {
    listeners = openListeners({
      options,
      host,
      domain: settings.domain,
      app,
      websocket: registry.websocket,
      route: (name) => registry.namespace.routeHttp(name),
      stats: () => registry.stats(),
      metrics,
      https,
      log,
    });
    const { control, http, httpsPort } = listeners;
    registry.namespace.bind({
      httpPort: http?.port ?? control.port,
      // With --https-port, --http-port serves plain http (the control port keeps --tls-cert).
      https: options.tls !== undefined && (options.httpsPort === undefined || http === undefined),
      httpsPort,
      ownPorts: listeners.ownPorts,
    });
    // Cluster: names and ports are leased in Redis, visitors for other nodes' tunnels carried there.
    if (options.cluster !== undefined) {
      const node = await joinCluster(options, registry, host, control.port);
      registry.join(node);
      await https.joinCluster(node);
    }
  } catch (error) {
    listeners?.stop(true);
    throw error;
  }
  registry.watch();
  const url = `${options.tls ? "wss" : "ws"}://${formatHost(host)}:${listeners.control.port}`;
  logStart(log, url, registry, listeners, options);
  return serverHandle(options, registry, listeners, { host, url, log });
}

/** The running server's handle: its addresses, /health's counts, reload and close. */
function serverHandle(
  options: ServerOptions,
  registry: SessionRegistry,
  running: Listeners,
  { host, url, log }: { host: string; url: string; log: Logger },
): ServerHandle {
  let closing = false;
  return {
    host,
    port: running.control.port,
    url,
    httpPort: running.http?.port,
    httpsPort: running.httpsPort,
    adminUrl: running.admin?.url,
    stats: () => registry.stats(),
    reload(next) {
      // Compared with what runs (the start-up options): a restart-only change warns on every reload.
      const restart = restartNeeded(options, next);
      if (restart.length > 0)
        log.warn(
          `config: ${restart.join(", ")} changed; a restart is needed to apply that (the rest applies now)`,
        );
      log.info(describeUsersChange(registry.reconfigure(resolveServerSettings(next), host)));
      void registry.cluster?.reloaded(settingsDigest(next));
    },
    async close() {
      if (registry.draining || closing) return;
      closing = true;
      running.stop(false);
      // A cluster node first tells its clients (so that their standbys' 4002 does not cut what is in
      // flight: they move when the drain closes them), then leaves the node list while it still serves:
      // the other nodes stop carrying new visitors here and hold them while the names move, rather
      // than have them refused by the drain or answered 404. Then the drain, as alone.
      if (registry.cluster !== undefined) {
        registry.announceGoingAway();
        await registry.cluster.leaving();
        // The others learn of it by pub/sub within a Redis round trip or two.
        await Bun.sleep(LEAVE_PROPAGATION_MS);
      }
      await registry.drainAll();
      await registry.cluster?.leave();
      running.stop(true);
    },
  };
}

/** How long a leaving cluster node keeps serving after it left the node list, before it drains. */
const LEAVE_PROPAGATION_MS = 250;

/** Metrics, counted only when someone can read them (the admin listener); nothing otherwise. */
function countMetrics(registry: SessionRegistry, options: ServerOptions): ServerMetrics {
  const metrics = new ServerMetrics(registry.sessions, {
    perTunnel: options.metricsPerTunnel === true,
    buffered: () => registry.stats().buffered,
    cluster: () => registry.cluster?.stats(),
    certificates: () => registry.certificateStats?.(),
    pools: () =>
      registry.namespace.pools().map(({ key, members }) => ({ place: key, members: members.length })),
    udp: () => registry.udpStats(),
  });
  registry.context.metrics = metrics;
  registry.namespace.onRefused = (reason) => metrics.visitorRefused(reason);
  return metrics;
}

/** The start-up lines: where clients and visitors connect, and what the operator should know. */
function logStart(
  log: Logger,
  url: string,
  registry: SessionRegistry,
  listeners: Listeners,
  options: ServerOptions,
): void {
  const { port, scheme, domain } = registry.namespace.http;
  log.info(`listening on ${url} (domain ${domain})`);
  log.info(`http tunnels on ${scheme}://*.${domain}:${port}`);
  if (listeners.httpsPort !== undefined)
    log.info(`https on port ${listeners.httpsPort} (names chosen by SNI)`);
  if (registry.cluster)
    log.info(`cluster: node ${registry.cluster.name} joined (${redacted(options.cluster)})`);
  if (listeners.admin) log.info(`admin on ${listeners.admin.url}/ (dashboard, /api, /metrics)`);
  if (registry.users.open) log.warn("no SOCKETS_SINGLE_API_KEY set: any client may open tunnels");
  if (options.users?.length) log.info(`users: ${options.users.map((u) => u.name).join(", ")}`);
}

/**
 * Joins the cluster `--cluster` names, as `--node-name` at `--node-url`. Defaults: the URL of the
 * control port at the bind address (bound to all addresses: at this machine's address toward Redis),
 * and a name made of that URL's HOST:PORT, unique as node URLs are.
 */
async function joinCluster(options: ServerOptions, registry: SessionRegistry, host: string, port: number) {
  const { namespace } = registry;
  const cluster = options.cluster as string;
  let node: ClusterNode | undefined;
  // UDP tunnels of other nodes: their public ports open here too, datagrams carried over the links.
  const udp = new ClusterUdp({
    host,
    route: (udpPort) => node?.routeUdp(udpPort) ?? "offline",
    place: (target) => namespace.udpPlace(target),
    settings: () => namespace.udpSettings,
    listensOn: (udpPort) => namespace.listensOnUdp(udpPort),
    closed: namespace.udpClosed,
    log: registry.context.log,
  });
  namespace.udpMirrors = udp;
  try {
    const url = options.nodeUrl ?? (await defaultNodeUrl(host, port, options.tls !== undefined, cluster));
    node = await ClusterNode.join({
      redis: cluster,
      ca: options.clusterCa,
      name: options.nodeName ?? defaultNodeName(url),
      url,
      digest: settingsDigest(options),
      leaseSeconds: options.clusterLeaseSeconds ?? SERVER_OPTIONS["cluster-lease"].default,
      host,
      settings: registry.context.limits,
      budgets: registry.context.budgets,
      acceptRemote: (target, kind, socket) => namespace.acceptRemote(target, kind, socket),
      onLost: (key) => namespace.leaseLost(key),
      listensOn: (port) => namespace.listensOn(port),
      udp,
      accounts: () => registry.users.accounts.values(),
      log: registry.context.log,
    });
    return node;
  } catch (error) {
    const why = describeError(error);
    throw new Error(why.startsWith("cluster:") ? why : `--cluster: ${why}`);
  }
}

/** A Redis URL for the log: without its password. */
function redacted(url: string | undefined): string {
  if (url === undefined) return "";
  if (isSentinelUrl(url)) return redactSentinelUrl(url);
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

/** The `server` command: reads process.argv and runs until a signal (the package's `bin` entry calls it too). */
export async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let command: ServerCommand | "help" | "version";
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
  if (command === "version") return void process.stdout.write(versionLine("server"));
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
