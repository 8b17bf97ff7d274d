/**
 * The server's clients: every {@link Session} by id, the settings they share, the timers that watch
 * them (heartbeat, visitor idle sweep), what `/health` reports, and the WebSocket events that bind a
 * client's connection to its session. The server role builds one and hands it the control port's
 * WebSockets; shutdown drains it.
 * @module
 */

import type { Logger } from "../log.ts";
import { Budget } from "../relay/budget.ts";
import type { SpliceSocket } from "../relay/splice.ts";
import type { Stream } from "../relay/stream.ts";
import { DEFAULTS, PROTOCOL_VERSION, type StreamKind } from "../wire/protocol.ts";
import type { ClusterStats, LeaseKey } from "./cluster/node.ts";
import type { HttpRoute, HttpSocket } from "./http-ingress.ts";
import { SERVER_OPTIONS, type ServerOptions } from "./options.ts";
import { Session, type SessionContext, type SessionSocketData } from "./session.ts";
import { type Account, SINGLE_KEY_USER, UserDirectory } from "./users.ts";
import type { WebSocketHandlers } from "./ws-server.ts";

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
  /** Per user, with `--health-detail` only: its tunnels (live and reserved), visitors and clients. */
  users?: Record<string, { tunnels: number; visitors: number; clients: number }>;
  /** With `--cluster`: this node's name, the nodes alive, names held here and elsewhere, Redis and links. */
  cluster?: ClusterStats;
}

/** What a reload changed among the users. */
export interface UsersChange {
  added: string[];
  removed: string[];
  /** Users whose token changed: their sessions were closed. */
  tokenChanged: string[];
  limitsChanged: string[];
  /** Sessions closed because their user's credentials were withdrawn. */
  sessionsClosed: number;
}

/** Every session of a server and what they share. */
export class SessionRegistry {
  /** Sessions by id, live and reserved. */
  readonly sessions = new Map<string, Session>();
  /** Settings and registries every session uses. */
  readonly context: SessionContext;
  /** True once shutdown began: no new clients. */
  draining = false;
  /** Who may connect: the config file's users and the single API key. */
  readonly users: UserDirectory;
  private timers: ReturnType<typeof setInterval>[] = [];

  /**
   * @param options the server's options (defaults from its option table).
   * @param host the bind address of public ports.
   * @param log the server's log.
   */
  constructor(
    private options: ServerOptions,
    host: string,
    private readonly log: Logger,
  ) {
    const window = options.window ?? SERVER_OPTIONS.window.default;
    const budget = options.serverBudget ?? SERVER_OPTIONS["server-budget"].default;
    this.context = {
      host,
      domain: options.domain ?? SERVER_OPTIONS.domain.default,
      tcpPorts: options.tcpPorts,
      limits: {
        protocol: PROTOCOL_VERSION,
        window,
        initialWindow: Math.min(window, DEFAULTS.initialWindow),
        maxFramePayload: DEFAULTS.maxFramePayload,
        maxStreamsPerTunnel: options.maxStreamsPerTunnel ?? SERVER_OPTIONS["max-streams"].default,
        maxTunnelsPerClient: options.maxTunnelsPerClient ?? SERVER_OPTIONS["max-tunnels"].default,
      },
      graceSeconds: options.graceSeconds ?? SERVER_OPTIONS.grace.default,
      handshakeSeconds: options.handshakeSeconds ?? SERVER_OPTIONS["handshake-timeout"].default,
      budgets: {
        perClient: options.clientBudget ?? SERVER_OPTIONS["client-budget"].default,
        received: new Budget(budget),
        sent: new Budget(budget),
      },
      log,
      // With --https-port, --http-port serves plain http (the control port keeps --tls-cert).
      httpScheme:
        options.tls && (options.httpsPort === undefined || options.httpPort === undefined) ? "https" : "http",
      tunnelIds: new Set(),
      httpRoutes: new Map(),
      portHolders: new Map(),
      onEnded: (session) => this.sessions.delete(session.id),
      healthDetail: options.healthDetail === true,
    };
    this.users = new UserDirectory(options.users ?? [], options.apiKey);
  }

  /**
   * The account a presented token opens: null when none (refuse with 401), undefined on a server
   * that needs no token.
   */
  authenticate(token: string | undefined): Account | null | undefined {
    return this.users.authenticate(token);
  }

  /**
   * Takes up a reloaded configuration without touching anything it did not change: the users (an
   * added one may connect at once; a removed one, or one whose token changed, has its sessions closed
   * with 4001 Revoked), and the limits that apply to new tunnels and visitors (`--max-streams`,
   * `--max-tunnels`, `--tcp-ports`, `--grace`, `--handshake-timeout`, `--drain-timeout`,
   * `--health-detail`). Listeners, certificates and budgets stay as they are (a restart applies those).
   */
  reconfigure(options: ServerOptions): UsersChange {
    const context = this.context;
    context.limits.maxStreamsPerTunnel = options.maxStreamsPerTunnel ?? SERVER_OPTIONS["max-streams"].default;
    context.limits.maxTunnelsPerClient = options.maxTunnelsPerClient ?? SERVER_OPTIONS["max-tunnels"].default;
    context.tcpPorts = options.tcpPorts;
    context.graceSeconds = options.graceSeconds ?? SERVER_OPTIONS.grace.default;
    context.handshakeSeconds = options.handshakeSeconds ?? SERVER_OPTIONS["handshake-timeout"].default;
    context.healthDetail = options.healthDetail === true;
    this.options = { ...this.options, drainSeconds: options.drainSeconds, users: options.users };
    const { added, revoked, limitsChanged } = this.users.update(options.users ?? []);
    let sessionsClosed = 0;
    const gone = new Map(revoked.map(({ account, why }) => [account, why]));
    for (const session of [...this.sessions.values()]) {
      const why = session.account && gone.get(session.account);
      if (why === undefined) continue;
      session.revoke(why);
      sessionsClosed++;
    }
    const removed = revoked.filter(({ account }) => !this.users.accounts.has(account.name));
    return {
      added,
      removed: removed.map(({ account }) => account.name),
      tokenChanged: revoked.filter((r) => !removed.includes(r)).map(({ account }) => account.name),
      limitsChanged,
      sessionsClosed,
    };
  }

  /**
   * The HTTP tunnel behind a name, if any: this node's own, or in a cluster another node's (reached
   * over the link). A local tunnel whose lease lapsed is not served here (see {@link ClusterNode.holds}).
   */
  route(name: string): HttpRoute | undefined {
    const local = this.context.httpRoutes.get(name);
    const cluster = this.context.cluster;
    if (cluster === undefined) return local;
    if (local !== undefined && cluster.holds(`http:${name}`)) return local;
    return cluster.remoteRoute(name);
  }

  /**
   * Cluster: a visitor another node carried here for `target` (`http:NAME` or `tcp:PORT`), on one end
   * of a splice: the stream of the tunnel's session, or why not.
   */
  acceptRemote(target: string, kind: StreamKind, socket: SpliceSocket): Stream | string {
    const cluster = this.context.cluster;
    if (cluster !== undefined && !cluster.holds(target as LeaseKey)) return `${target} is not held here`;
    if (target.startsWith("http:")) {
      const route = this.context.httpRoutes.get(target.slice(5));
      if (route === undefined) return `no tunnel ${target} here`;
      const opened = route.open(socket as HttpSocket);
      return "id" in opened ? opened : opened.message;
    }
    const port = Number(target.slice(4));
    const session = this.context.portHolders?.get(port);
    const tunnel = session && [...session.tunnels.values()].find((t) => t.port === port && t.listener);
    if (session === undefined || tunnel === undefined) return `no tunnel ${target} here`;
    return session.acceptRemote(tunnel, socket, kind);
  }

  /** Cluster: the lease of `key` went to another node: the tunnel holding it here stops at once. */
  leaseLost(key: LeaseKey): void {
    for (const session of this.sessions.values())
      for (const tunnel of session.tunnels.values()) if (tunnel.lease === key) session.lose(tunnel);
  }

  /** Whether a local tunnel listens on `port` (cluster: no mirror there then). */
  listensOn(port: number): boolean {
    return this.context.portHolders?.has(port) ?? false;
  }

  /** Where the events of a client's WebSocket go: its session. Liveness is ours (the heartbeat). */
  readonly websocket: WebSocketHandlers<SessionSocketData> = {
    open: (ws) => {
      const link = ws.data.link;
      if (link !== undefined) {
        link.attach(ws);
        this.log.info(`cluster: link from ${link.remote} open`);
        return;
      }
      const session = ws.data.resume ?? new Session(this.context, ws.data.account);
      if (ws.data.claim !== undefined) session.claim = ws.data.claim;
      ws.data.resume = null;
      this.sessions.set(session.id, session);
      session.attach(ws);
      this.log.info(`client ${ws.data.remote} connected`);
    },
    message: (ws, message) => (ws.data.link ?? ws.data.session)?.onMessage(message),
    drain: (ws) => (ws.data.link ?? ws.data.session)?.onDrain(),
    ping: (ws) => (ws.data.link ?? ws.data.session?.liveness)?.heard(),
    pong: (ws) => (ws.data.link ?? ws.data.session?.liveness)?.heard(),
    close: (ws, code, reason) => {
      if (ws.data.link !== undefined) {
        ws.data.link.onClose();
        this.log.info(`cluster: link from ${ws.data.link.remote} closed (${code})`);
        return;
      }
      ws.data.session?.onClose(ws, code, reason);
      this.log.info(`client ${ws.data.remote} disconnected (${code})`);
    },
  };

  /** Starts the heartbeat and, when asked for, the visitor idle sweep. */
  watch(): void {
    // Heartbeat: ping every client each interval; one silent for three intervals is dead.
    const heartbeatMs = (this.options.heartbeatSeconds ?? SERVER_OPTIONS.heartbeat.default) * 1000;
    this.timers.push(
      setInterval(() => {
        const now = Date.now();
        for (const session of this.sessions.values()) session.heartbeat(now, 3 * heartbeatMs);
      }, heartbeatMs),
    );
    // Visitor idle timeout: a sweep a few times per timeout period, off unless asked for.
    const idleMs = (this.options.visitorIdleSeconds ?? SERVER_OPTIONS["visitor-idle-timeout"].default) * 1000;
    if (idleMs > 0)
      this.timers.push(
        setInterval(
          () => {
            const now = Date.now();
            for (const session of this.sessions.values()) session.sweepIdle(now, idleMs);
          },
          Math.min(1000, idleMs / 4),
        ),
      );
  }

  /** What `/health` says. */
  stats(): ServerStats {
    const all = [...this.sessions.values()];
    const largestWindow = { send: 0, receive: 0 };
    for (const session of all)
      for (const stream of session.mux.streams.values()) {
        largestWindow.send = Math.max(largestWindow.send, stream.sendWindowBytes);
        largestWindow.receive = Math.max(largestWindow.receive, stream.recvWindowBytes);
      }
    const budgets = this.context.budgets;
    return {
      status: this.draining ? "draining" : "ok",
      protocol: PROTOCOL_VERSION,
      clients: all.filter((s) => !s.reserved).length,
      tunnels: all.reduce((n, s) => n + s.tunnels.size, 0),
      streams: all.reduce((n, s) => n + s.mux.streams.size, 0),
      reserved: all.filter((s) => s.reserved).length,
      buffered: { received: budgets?.received.used ?? 0, sent: budgets?.sent.used ?? 0 },
      largestWindow,
      ...(this.context.healthDetail ? { users: this.userStats(all) } : {}),
      ...(this.context.cluster ? { cluster: this.context.cluster.stats() } : {}),
    };
  }

  /** Per-user counts for `/health` (`--health-detail`): every account, holding something or not. */
  private userStats(all: Session[]): NonNullable<ServerStats["users"]> {
    const users: NonNullable<ServerStats["users"]> = {};
    for (const [name, account] of this.users.accounts)
      if (name !== SINGLE_KEY_USER || account.tunnels > 0)
        users[name] = { tunnels: account.tunnels, visitors: account.visitors, clients: 0 };
    for (const session of all) {
      const entry = session.account && users[session.account.name];
      if (entry && !session.reserved) entry.clients++;
    }
    return users;
  }

  /**
   * Shutdown: no new clients; every session is told and its streams may finish for the drain timeout;
   * then every session ends.
   */
  async drainAll(): Promise<void> {
    this.draining = true;
    for (const timer of this.timers) clearInterval(timer);
    const drainMs = (this.options.drainSeconds ?? SERVER_OPTIONS["drain-timeout"].default) * 1000;
    await Promise.all([...this.sessions.values()].map((session) => session.drain(drainMs)));
    for (const session of [...this.sessions.values()]) session.end();
  }
}
