/**
 * The server's clients: every {@link Session} by id, the settings they share, the timers that watch
 * them (heartbeat, visitor idle sweep), what `/health` reports, and the WebSocket events that bind a
 * client's connection to its session. The server role builds one and hands it the control port's
 * WebSockets; shutdown drains it.
 * @module
 */

import { deadAfter } from "../liveness.ts";
import type { Logger } from "../log.ts";
import { Budget } from "../relay/budget.ts";
import { releaseAfterBursts } from "../relay/release.ts";
import { DEFAULTS, Feature, PROTOCOL_VERSION } from "../wire/protocol.ts";
import { accessPermits, tunnelAccess } from "./access-list.ts";
import type { AcmeStats as CertificateStats } from "./acme/manager.ts";
import type { LinkEndpoint } from "./cluster/link.ts";
import type { ClusterNode, ClusterStats } from "./cluster/node.ts";
import { Namespace, type NamespaceSettings } from "./namespace/namespace.ts";
import type { ServerSettings } from "./options.ts";
import { Session, type SessionContext, type SessionSocketData, type WebSocketPeer } from "./session.ts";
import { type UdpStats, udpStats } from "./udp-port.ts";
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
  /** Places shared by pools (`--pool`), with each member's tunnel, its open visitors and whether its client is live. */
  pools?: { place: string; members: { tunnel: string; visitors: number; live: boolean }[] }[];
  /** With `--cluster`: this node's name, the nodes alive, names held here and elsewhere, Redis and links. */
  cluster?: ClusterStats;
  /** UDP tunnels: flows open, datagrams and bytes each way, drops by reason, and the flow settings. */
  udp: UdpStats;
  /** With certificates (`--tls-cert`, `--acme-email`): how many, the soonest expiry, ACME orders and the last failure. */
  certificates?: CertificateStats;
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
  /** The certificates' counts for /health (set by the server when it has an HTTPS side). */
  certificateStats?: () => CertificateStats | undefined;
  /** Sessions by id, live and reserved. */
  readonly sessions = new Map<string, Session>();
  /** Settings and registries every session uses. */
  readonly context: SessionContext;
  /** Where tunnels are placed and visitors routed. */
  readonly namespace: Namespace;
  /** True once shutdown began: no new clients. */
  draining = false;
  /** Who may connect: the config file's users and the single API key. */
  readonly users: UserDirectory;
  /** This server's cluster membership, once it joined one. */
  cluster?: ClusterNode;
  private timers: ReturnType<typeof setInterval>[] = [];
  private stopRelease?: () => void;

  /**
   * @param settings the server's options with their defaults applied.
   * @param host the bind address of public ports.
   * @param log the server's log.
   */
  constructor(
    private settings: ServerSettings,
    host: string,
    private readonly log: Logger,
  ) {
    this.namespace = new Namespace(namespaceSettings(settings, host), log);
    this.context = {
      namespace: this.namespace,
      limits: {
        protocol: PROTOCOL_VERSION,
        window: settings.window,
        initialWindow: Math.min(settings.window, DEFAULTS.initialWindow),
        maxFramePayload: DEFAULTS.maxFramePayload,
        maxStreamsPerTunnel: settings.maxStreamsPerTunnel,
        maxTunnelsPerClient: settings.maxTunnelsPerClient,
        features: [Feature.Udp],
      },
      graceSeconds: settings.graceSeconds,
      handshakeSeconds: settings.handshakeSeconds,
      budgets: {
        perClient: settings.clientBudget,
        received: new Budget(settings.serverBudget),
        sent: new Budget(settings.serverBudget),
      },
      log,
      onEnded: (session) => this.sessions.delete(session.id),
      healthDetail: settings.healthDetail,
    };
    this.users = new UserDirectory(settings.users, settings.apiKey);
  }

  /** The server joined a cluster: names and ports are leased there from now on. */
  join(cluster: ClusterNode): void {
    this.cluster = cluster;
    this.namespace.join(cluster);
    // Clients learn their node's name in hello: their standby connections watch it.
    this.context.limits.node = cluster.name;
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
   * with 4001 Revoked), and the limits that apply to new tunnels and visitors (the options the option
   * table marks as applying at once). Listeners, certificates and budgets stay as they are (a restart
   * applies those).
   */
  reconfigure(settings: ServerSettings, host: string): UsersChange {
    const context = this.context;
    context.limits.maxStreamsPerTunnel = settings.maxStreamsPerTunnel;
    context.limits.maxTunnelsPerClient = settings.maxTunnelsPerClient;
    context.graceSeconds = settings.graceSeconds;
    context.handshakeSeconds = settings.handshakeSeconds;
    context.healthDetail = settings.healthDetail;
    // The domain is in URLs already given out: it changes only with a restart (the option table says so).
    this.namespace.reconfigure(namespaceSettings({ ...settings, domain: this.settings.domain }, host));
    this.settings = { ...this.settings, drainSeconds: settings.drainSeconds, users: settings.users };
    const { added, revoked, limitsChanged } = this.users.update(settings.users);
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
   * Where the events of a control-port WebSocket go: the peer its upgrade made (a session, new or
   * resumed, or a node link). Liveness is ours (the heartbeat).
   */
  readonly websocket: WebSocketHandlers<SessionSocketData> = {
    open: (ws) => {
      const link = ws.data.link;
      if (link !== undefined) {
        link.attach(ws);
        ws.data.peer = linkPeer(link, this.log);
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
    message: (ws, message) => ws.data.peer?.onMessage(message),
    drain: (ws) => ws.data.peer?.onDrain(),
    ping: (ws) => ws.data.peer?.heard(),
    pong: (ws) => ws.data.peer?.heard(),
    close: (ws, code, reason) => ws.data.peer?.onClose(ws, code, reason),
  };

  /** Starts the heartbeat, the release of memory after bursts and, when asked for, the visitor idle sweep. */
  watch(): void {
    const budgets = this.context.budgets;
    if (budgets) this.stopRelease = releaseAfterBursts([budgets.received, budgets.sent]);
    // Heartbeat: ping every client each interval; one silent for three intervals is dead.
    const heartbeatMs = this.settings.heartbeatSeconds * 1000;
    this.timers.push(
      setInterval(() => {
        const now = Date.now();
        for (const session of this.sessions.values()) session.heartbeat(now, deadAfter(heartbeatMs));
      }, heartbeatMs),
    );
    // Visitor idle timeout: a sweep a few times per timeout period, off unless asked for.
    const idleMs = this.settings.visitorIdleSeconds * 1000;
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

  /** Every UDP place's counts and the closed ones' (for /health and /metrics). */
  udpStats(): UdpStats {
    const ns = this.namespace;
    return udpStats(ns.udpSettings, ns.udpClosed, ns.udpPorts());
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
    const pools = this.namespace.pools().map(({ key, members }) => ({
      place: key,
      members: members.map((tunnel) => ({
        tunnel: tunnel.id,
        visitors: tunnel.visitors.size,
        live: tunnel.holder.live,
      })),
    }));
    const certificates = this.certificateStats?.();
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
      udp: this.udpStats(),
      ...(pools.length > 0 ? { pools } : {}),
      ...(this.cluster ? { cluster: this.cluster.stats() } : {}),
      ...(certificates ? { certificates } : {}),
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
  /** Tells every client the server is about to shut down, before the drain starts (a leaving cluster node). */
  announceGoingAway(): void {
    for (const session of this.sessions.values())
      session.announceGoingAway(this.settings.drainSeconds * 1000);
  }

  async drainAll(): Promise<void> {
    this.draining = true;
    for (const timer of this.timers) clearInterval(timer);
    this.stopRelease?.();
    const drainMs = this.settings.drainSeconds * 1000;
    await Promise.all([...this.sessions.values()].map((session) => session.drain(drainMs)));
    for (const session of [...this.sessions.values()]) session.end();
  }
}

/** The namespace's rules, from the server's settings. */
function namespaceSettings(settings: ServerSettings, host: string): NamespaceSettings {
  const server = settings.access;
  return {
    host,
    domain: settings.domain,
    tcpPorts: settings.tcpPorts,
    maxTunnelsPerClient: settings.maxTunnelsPerClient,
    customDomains: settings.customDomains,
    // The server's lists and the user's bind every tunnel of the user; a reload swaps them at once.
    operatorRefuses: (account, ip) => !accessPermits(ip, server, account?.limits.access),
    tunnelFilter: (request) => tunnelAccess(request),
    udp: {
      idleMs: settings.udpIdleSeconds * 1000,
      maxFlows: settings.udpMaxFlows,
      rateBytes: ((settings.udpRateMbps ?? 0) * 1_000_000) / 8,
    },
  };
}

/** A node link as the peer of its WebSocket. */
function linkPeer(link: LinkEndpoint, log: Logger): WebSocketPeer {
  return {
    onMessage: (message) => link.onMessage(message),
    onDrain: () => link.onDrain(),
    heard: () => link.heard(),
    onClose: (_ws, code) => {
      link.onClose();
      log.info(`cluster: link from ${link.remote} closed (${code})`);
    },
  };
}
