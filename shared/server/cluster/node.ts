/**
 * One server as a node of a cluster: its leases in Redis (the directory), its links to the other
 * nodes, and the public TCP and UDP ports it opens for tunnels held elsewhere ("mirrors"; UDP's are
 * server/udp-mirror.ts's, driven from here). The server's
 * sessions ask it for leases before a name or port goes live, and the HTTP ingress and the mirrors ask
 * it where a visitor for a name or port held by another node goes.
 *
 * ```text
 * visitor ──▶ node A ══link══▶ node B ──session──▶ client      (A: not the holder; B: the holder)
 * ```
 * @module
 */

import { createHash } from "node:crypto";
import type { TCPSocketListener } from "bun";
import { formatHost, unmappedAddress } from "../../args.ts";
import { joinAddress } from "../../ip.ts";
import type { Logger } from "../../log.ts";
import type { Budget } from "../../relay/budget.ts";
import type { SpliceSocket } from "../../relay/splice.ts";
import {
  type RelaySocket,
  type RelaySocketData,
  relaySocketHandlers,
  type Stream,
} from "../../relay/stream.ts";
import { type Hello, StreamKind } from "../../wire/protocol.ts";
import { retireAtRequestBoundary } from "../http-ingress.ts";
import {
  ClusterDirectory,
  type LeaseKey,
  type LeaseRecord,
  type NodeInfo,
  placeOfLease,
  poolMemberKey,
} from "./directory.ts";
import { InboundLink, type LinkDatagrams, type NodeLink, OutboundLink, type RemoteAcceptor } from "./link.ts";
import { StandbyWatch } from "./standby.ts";

export type { LeaseKey };

/** What a session asks for when a tunnel goes live. */
export interface LeaseRequest {
  /** sha256 of the session's resume secret: who owns the lease (and may take it back from another node). */
  owner: string;
  /** sha256 of the resume secret of the session the client had before (its proof of ownership). */
  claim?: string;
  /** The user holding it, and that user's most tunnels (counted over the whole cluster). */
  user?: string;
  userLimit?: number;
  /** HTTP tunnels: what the other nodes need to serve its visitors (Host rewrite, basic auth). */
  hostHeader?: string;
  basicAuth?: string;
  /** The tunnel shares its place with the same user's other `--pool` tunnels, on any node. */
  pool?: boolean;
  /** "tls": an end-to-end TLS tunnel (visitors carried raw). */
  kind?: "tls";
}

/** How the node reaches its own server. */
export interface ClusterNodeOptions {
  /** Redis URL (`--cluster`). */
  redis: string;
  /** PEM certificate(s) trusted for a rediss:// Redis and for links to wss:// nodes (`--cluster-ca`). */
  ca?: string;
  name: string;
  /** Where the other nodes reach this one (`--node-url`). */
  url: string;
  /** Hashes of its users and shared settings, compared with the other nodes' (identity.ts). */
  digest?: { users: string; settings: string };
  leaseSeconds: number;
  /** Bind address of public ports (the mirrors too). */
  host: string;
  /** This node's stream settings, announced on links other nodes open. */
  settings: Omit<Hello, "type" | "session" | "secret" | "resumed">;
  /** The server's memory budgets, which inbound links count against (absent: unbounded). */
  budgets?: { perClient: number; received: Budget; sent: Budget };
  /** Hands a stream from another node to the local tunnel its target names. */
  acceptRemote: RemoteAcceptor;
  /** A lease this node held was lost (taken over elsewhere): the tunnel stops at once. */
  onLost(key: LeaseKey): void;
  /**
   * The users whose `max_visitors` counts over the cluster: their visitors here are published, and
   * `elsewhere` set to theirs on the other nodes (every lease/3).
   */
  accounts?: () => Iterable<{
    name: string;
    visitors: number;
    elsewhere: number;
    limits: { maxVisitors?: number };
  }>;
  /** Whether a local tunnel listens on this port now (then no mirror is opened on it). */
  listensOn(port: number): boolean;
  /** UDP tunnels across the cluster (server/udp-mirror.ts); absent: UDP leases get no mirrors here. */
  udp?: ClusterUdpHooks;
  log: Logger;
}

/** What the node drives of the server's UDP mirrors (server/udp-mirror.ts). */
export interface ClusterUdpHooks {
  /** The UDP flow table of each new connection of the link to node `peer`. */
  datagrams(peer: string): LinkDatagrams;
  /** Opens (wanted) or closes the mirror of UDP port `port`, held by node `holder`. */
  mirror(port: number, wanted: boolean, holder: string | undefined): void;
  /** Whether a local UDP tunnel listens on `port` (then no mirror is opened on it). */
  listensOn(port: number): boolean;
  /** Mirrors open now. */
  readonly size: number;
  /** Closes every mirror (the node leaves). */
  close(): void;
}

/** Most a leaving node waits for the streams on its links to finish before it closes them. */
const LINK_DRAIN_MS = 5000;

/** How long a visitor for a moving name or port waits before it is refused (503 with Retry-After). */
const VISITOR_WAIT_MS = 5000;
/** Visitors that may wait at once; more are refused at once (each wait polls every 50 ms). */
const MAX_WAITING = 1024;

/** How long a new tunnel waits for Redis to come back before it is refused. */
const REDIS_WAIT_MS = 15_000;

/** The sha256 (hex) of a resume secret: all Redis ever stores of it. */
export function secretHash(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

/** What a route answers a visitor: its stream, or the refusal it is answered with (an HTTP status, a line). */
export type RouteAnswer = Stream | { status: number; message: string; retryAfter?: number };

/** An HTTP name held by another node: what its visitors must present, and how to carry one there. */
export interface RemoteRoute {
  hostHeader?: string;
  /** sha256 hex of the tunnel's `user:password` (basic auth), if it asks for one. */
  basicAuthHash?: string;
  /** An end-to-end TLS tunnel: carried raw from the HTTPS front, no plain HTTP route. */
  passthrough?: boolean;
  /**
   * Carries a visitor's connection to the holding node; a promise while that node is a moment away
   * (see {@link ClusterNode.remoteRoute}); undefined when it cannot.
   */
  open(socket: RelaySocket): Stream | Promise<RouteAnswer> | undefined;
}

/** Why a lease was refused, for the client's one line. */
export interface LeaseRefusal {
  code: string;
  message: string;
}

/** This server's membership in a cluster. */
export class ClusterNode {
  /** One link per other node: dialled by this node when its name sorts first, else the one it opened. */
  private readonly links = new Map<string, NodeLink>();
  private readonly mirrors = new Map<number, TCPSocketListener<RelaySocketData>>();
  /** The last holder of each key that left the view, and when: a move may bring it back. */
  private readonly vanished = new Map<LeaseKey, { record: LeaseRecord; at: number; instance?: string }>();
  /** The process (instance) last seen under each node name: a restarted node is another one. */
  private readonly instances = new Map<string, string | undefined>();
  /** The record of each key in the view, as last told (what `vanished` keeps when it goes). */
  private readonly records = new Map<LeaseKey, LeaseRecord>();
  /** Looks at the node list again once a Redis outage's settling time is over (see syncLinks). */
  private settleTimer: ReturnType<typeof setTimeout> | undefined;
  /** Publishes and reads the cluster's visitor counts (see syncVisitors). */
  private visitorTimer: ReturnType<typeof setInterval> | undefined;
  private syncing = false;
  /** Visitors waiting for a moving name or port now. */
  private waiting = 0;
  /** Standby connections of other nodes' clients, each watching its client's node. */
  private readonly standbys = new Set<StandbyWatch>();
  private closed = false;

  private constructor(
    private readonly options: ClusterNodeOptions,
    readonly directory: ClusterDirectory,
  ) {}

  /**
   * Joins: connects to Redis, registers the node, learns the others and their ports.
   * @throws {Error} with one line when Redis cannot be reached.
   */
  static async join(options: ClusterNodeOptions): Promise<ClusterNode> {
    let node: ClusterNode | undefined;
    const directory = await ClusterDirectory.open({
      url: options.redis,
      ca: options.ca,
      node: { name: options.name, url: options.url, ...(options.digest ? { digest: options.digest } : {}) },
      leaseMs: options.leaseSeconds * 1000,
      log: options.log,
      onLost: (key) => {
        options.onLost(key);
        node?.reconcile(key);
      },
      onChange: (key, record) => node?.changed(key, record),
      onNodes: (nodes) => node?.syncLinks(nodes),
    });
    node = new ClusterNode(options, directory);
    // The view loaded at start came without callbacks: its holders are the ones a vanishing key had.
    for (const [key, record] of directory.entries()) node.records.set(key, record);
    node.syncLinks(directory.nodes());
    for (const port of directory.ports().keys()) node.reconcile(`tcp:${port}`);
    for (const [key] of directory.entries()) if (key.startsWith("udp:")) node.reconcile(key);
    node.reportDifferences();
    node.visitorTimer = setInterval(
      () => void node?.syncVisitors(),
      Math.max(100, (options.leaseSeconds * 1000) / 3),
    );
    return node;
  }

  /** Publishes this node's visitors per limited user and takes in the other nodes' (see `accounts`). */
  private async syncVisitors(): Promise<void> {
    if (this.syncing || this.closed || this.options.accounts === undefined) return;
    this.syncing = true;
    try {
      const limited = [...this.options.accounts()].filter((a) => a.limits.maxVisitors !== undefined);
      const sums = await this.directory.syncVisitors(new Map(limited.map((a) => [a.name, a.visitors])));
      if (sums !== undefined) for (const account of limited) account.elsewhere = sums.get(account.name) ?? 0;
    } finally {
      this.syncing = false;
    }
  }

  /** The node's users or settings were reloaded: the others see the new digest; differences are logged. */
  async reloaded(digest: { users: string; settings: string }): Promise<void> {
    await this.directory.setDigest(digest);
    this.reportDifferences();
  }

  /** Logs, once, which live nodes have other users or shared settings than this one. */
  private reportDifferences(): void {
    const differences = this.directory.differences();
    if (differences.length === 0) return;
    const users = differences.filter((d) => d.users).map((d) => d.node);
    const settings = differences.filter((d) => d.settings).map((d) => d.node);
    const parts = [
      users.length > 0 ? `users or API key differ from node ${users.join(", ")}` : "",
      settings.length > 0
        ? `settings (domain, TCP ports, lease, TLS) differ from node ${settings.join(", ")}`
        : "",
    ].filter(Boolean);
    this.options.log.warn(
      `cluster: this node's ${parts.join("; its ")}: give every node the same --config, users and SOCKETS_SINGLE_API_KEY`,
    );
  }

  /** The node's name. */
  get name(): string {
    return this.options.name;
  }

  /**
   * Takes the lease of `key` for a session's tunnel.
   * @returns null when it holds it now, else why not.
   */
  async acquire(key: LeaseKey, request: LeaseRequest): Promise<LeaseRefusal | null> {
    const record = {
      owner: request.owner,
      user: request.user,
      hostHeader: request.hostHeader,
      basicAuthHash: request.basicAuth === undefined ? undefined : secretHash(request.basicAuth),
      pool: request.pool === true ? true : undefined,
      kind: request.kind,
    };
    let result = await this.directory.acquire(key, record, request.claim, request.userLimit);
    // Redis away: a new tunnel waits a while for it (a restart takes seconds) before it is refused.
    const deadline = Date.now() + REDIS_WAIT_MS;
    if (!result.ok && result.code === "redis_down")
      this.options.log.warn(
        `cluster: Redis is unreachable; ${key} waits up to ${REDIS_WAIT_MS / 1000} s for it`,
      );
    while (!result.ok && result.code === "redis_down" && Date.now() < deadline && !this.closed) {
      await Bun.sleep(200);
      if (this.directory.redisUp)
        result = await this.directory.acquire(key, record, request.claim, request.userLimit);
    }
    if (result.ok) {
      if (result.tookOver) this.options.log.info(`cluster: took ${key} back for its owner`);
      return null;
    }
    const what = key.startsWith("http:") ? `subdomain '${key.slice(5)}'` : `port ${key.slice(4)}`;
    if (result.code === "taken")
      return {
        code: key.startsWith("http:") ? "subdomain_taken" : "port_taken",
        message: `${what} is taken${result.holder ? ` (held by node ${result.holder.node})` : ""}`,
      };
    if (result.code === "limit") return { code: "limit", message: result.message };
    return {
      code: "cluster_unavailable",
      message: `the cluster's Redis is unreachable: new tunnels are refused until it is back (${result.message})`,
    };
  }

  /**
   * A pool that other nodes serve `key` with, if any: its user and nodes (the place's holder when it
   * was leased as a pool, and every node with a member lease beside it). Undefined when `key` is free
   * or held by one tunnel alone.
   */
  poolOf(key: LeaseKey): { user?: string; nodes: string[] } | undefined {
    const main = this.directory.holder(key);
    const members = this.directory.poolMembers(key);
    if (main !== undefined && main.pool !== true) return undefined;
    const first = main ?? members[0]?.record;
    if (first === undefined) return undefined;
    const nodes = [...(main ? [main.node] : []), ...members.map((m) => m.record.node)];
    return { user: first.user, nodes: [...new Set(nodes)] };
  }

  /** The member lease this node's members of pool `key` hold beside the place's own. */
  memberKey(key: LeaseKey): LeaseKey {
    return poolMemberKey(key, this.options.name);
  }

  /** Gives a lease back (the tunnel closed). */
  release(key: LeaseKey): void {
    void this.directory.release(key);
  }

  /** Whether this node may serve `key` now (it holds a valid lease). */
  holds(key: LeaseKey): boolean {
    return this.directory.holds(key);
  }

  /** A port this node mirrors for another node is wanted by a local tunnel: let go of it. */
  unmirror(port: number): void {
    const mirror = this.mirrors.get(port);
    if (mirror === undefined) return;
    this.mirrors.delete(port);
    mirror.stop(false);
  }

  /**
   * The route to an HTTP name held by another node, if the cluster knows one. While the name's node is
   * a moment away (the link to it coming up, or the name moving: its node left the cluster and its
   * client is moving), the route's visitors wait for it (at most {@link VISITOR_WAIT_MS}), then get a
   * 503 with Retry-After; a name nobody holds any more and that no move can bring back is undefined (404).
   */
  remoteRoute(name: string): RemoteRoute | undefined {
    const key: LeaseKey = `http:${name}`;
    const where = this.where(key);
    if (where.kind === "none" || where.kind === "self") return undefined;
    const { record } = where;
    return {
      hostHeader: record.hostHeader,
      basicAuthHash: record.basicAuthHash,
      passthrough: record.kind === "tls" || undefined,
      open: (socket) => {
        const kind = record.kind === "tls" ? StreamKind.Tcp : StreamKind.Http;
        if (where.kind === "route") {
          const stream = this.carry(record, where.target, kind, socket);
          if (stream !== undefined) return stream;
        }
        return this.waitFor(key, kind, socket, record).then(
          (answer) =>
            answer ?? {
              status: 404,
              message: `no tunnel named ${name} any more (it was held by node ${record.node})`,
            },
        );
      },
    };
  }

  /**
   * A visitor on a TCP port held by another node (a mirror, or a local tunnel's port whose lease was
   * lost): carries it there, after a wait while the port is moving (as {@link remoteRoute}). False when
   * no node can take it (the caller closes the socket).
   */
  forwardTcp(port: number, socket: RelaySocket): boolean {
    const key: LeaseKey = `tcp:${port}`;
    const where = this.where(key);
    if (where.kind === "none" || where.kind === "self") return false;
    if (
      where.kind === "route" &&
      this.carry(where.record, where.target, StreamKind.Tcp, socket) !== undefined
    )
      return true;
    socket.pause();
    this.waitFor(key, StreamKind.Tcp, socket, where.record).then(
      (answer) => {
        if (answer === undefined || !("id" in answer)) socket.terminate();
        else socket.resume();
      },
      () => socket.terminate(),
    );
    return true;
  }

  /**
   * Where a new UDP flow of port `port` goes (a mirror's visitor): the holder's node and the lease to
   * name, when its link is up; "offline" otherwise (datagrams do not wait: they are dropped, counted).
   */
  routeUdp(port: number): { node: string; target: LeaseKey } | "offline" {
    const where = this.where(`udp:${port}`);
    return where.kind === "route" ? { node: where.record.node, target: where.target } : "offline";
  }

  /** A UDP port this node mirrors is wanted by a local tunnel: let go of it. */
  unmirrorUdp(port: number): void {
    this.options.udp?.mirror(port, false, undefined);
  }

  /**
   * Where a visitor for `key` goes now: over a link that is up ("route"), to a tunnel of this node
   * ("self"), nowhere yet but maybe soon ("moving": its node's link is not up, its node just left, or
   * its lease just lapsed while a move is possible), or nowhere ("none").
   */
  private where(
    key: LeaseKey,
  ):
    | { kind: "route"; record: LeaseRecord; target: LeaseKey }
    | { kind: "moving"; record: LeaseRecord }
    | { kind: "self"; record: LeaseRecord }
    | { kind: "none" } {
    const record = this.directory.holder(key);
    // A pool served from other nodes: the next node in turn whose link is up.
    if (record === undefined || record.pool === true) {
      const pooled = this.poolRoute(key, record);
      if (pooled !== undefined) return pooled;
    }
    if (record !== undefined) {
      if (record.node === this.options.name)
        return this.directory.holds(key) ? { kind: "self", record } : { kind: "moving", record };
      // A node that left the list (shutting down, or gone) takes no new visitors: its names are moving.
      return this.routable(record.node) ? { kind: "route", record, target: key } : { kind: "moving", record };
    }
    const gone = this.vanished.get(key);
    if (gone === undefined) return { kind: "none" };
    // Released by a node that is still here: gone for good. Its node left (or is another process under
    // that name by now, restarted): its client may bring it back.
    const holder = this.directory.nodes().find((node) => node.name === gone.record.node);
    const sameProcess = holder !== undefined && holder.instance === gone.instance;
    if (performance.now() - gone.at > this.moveWindowMs || sameProcess) {
      this.vanished.delete(key);
      return { kind: "none" };
    }
    return { kind: "moving", record: gone.record };
  }

  /** Where the turn of pool place `key` goes among the other nodes serving it (undefined: no pool, or none up). */
  private poolRoute(
    key: LeaseKey,
    main: LeaseRecord | undefined,
  ): { kind: "route"; record: LeaseRecord; target: LeaseKey } | undefined {
    const members = this.directory.poolMembers(key);
    if (members.length === 0) return undefined;
    const candidates = main === undefined ? members : [{ key, record: main }, ...members];
    const count = candidates.length;
    const turn = this.poolTurns.get(key) ?? 0;
    for (let i = 0; i < count; i++) {
      const at = (turn + i) % count;
      const candidate = candidates[at] as { key: LeaseKey; record: LeaseRecord };
      if (candidate.record.node === this.options.name || !this.routable(candidate.record.node)) continue;
      this.poolTurns.set(key, (at + 1) % count);
      return { kind: "route", record: candidate.record, target: candidate.key };
    }
    return undefined;
  }

  /** Whether new visitors may be carried to node `name`: its link is up and it is in the node list. */
  private routable(name: string): boolean {
    return this.links.get(name)?.up === true && this.alive(name);
  }

  /** Pool places: where each one's next visitor from this node goes among the nodes serving it. */
  private readonly poolTurns = new Map<LeaseKey, number>();

  /**
   * Waits (polling every 50 ms, at most {@link VISITOR_WAIT_MS}) until `key` can be served, then carries
   * the visitor there. Undefined: nobody holds it and nobody will (404, or a closed socket). A holder
   * whose Host rewrite or basic auth differ from what the visitor was checked against (another client
   * took the name meanwhile) is not served: 503, asked again.
   */
  private async waitFor(
    key: LeaseKey,
    kind: StreamKind,
    socket: RelaySocket,
    expected: LeaseRecord,
  ): Promise<RouteAnswer | undefined> {
    const retry = {
      status: 503,
      message: "this tunnel is moving to another node; try again shortly",
      retryAfter: 2,
    };
    if (this.waiting >= MAX_WAITING) return retry;
    this.waiting++;
    try {
      const deadline = performance.now() + VISITOR_WAIT_MS;
      for (
        let round = 0;
        round < VISITOR_WAIT_MS / 50 && performance.now() < deadline && !this.closed;
        round++
      ) {
        await Bun.sleep(50);
        if (socket.readyState !== 1) return undefined;
        const where = this.where(key);
        if (where.kind === "none") return undefined;
        if (where.kind === "moving") continue;
        const { record } = where;
        if (
          kind === StreamKind.Http &&
          (record.hostHeader !== expected.hostHeader || record.basicAuthHash !== expected.basicAuthHash)
        )
          return { ...retry, message: "this tunnel changed hands; try again", retryAfter: 0 };
        if (where.kind === "route") {
          const stream = this.carry(record, where.target, kind, socket);
          if (stream !== undefined) return stream;
          continue;
        }
        const local = this.options.acceptRemote(key, kind, socket as unknown as SpliceSocket);
        return typeof local === "string" ? { status: 502, message: local } : local;
      }
      return retry;
    } finally {
      this.waiting--;
    }
  }

  /** Opens a stream for the visitor on the link to the holder's node (undefined while that link is down). */
  private carry(
    record: LeaseRecord,
    key: LeaseKey,
    kind: StreamKind,
    socket: RelaySocket,
  ): Stream | undefined {
    const link = this.links.get(record.node);
    if (link === undefined) return undefined;
    const remote = `${formatHost(unmappedAddress(socket.remoteAddress))}:${socket.remotePort}`;
    // The visitor's own public address goes along: the client sees where it connected, not this hop.
    const local = socket.localAddress ? joinAddress(socket.localAddress, socket.localPort) : undefined;
    return link.open(kind, key, { remote, local }, socket);
  }

  /**
   * A link node `peer` opened to this one (the control port authenticated it): it carries that node's
   * visitors here and, while it is up, this node's visitors there.
   */
  inbound(remote: string, peer: string): InboundLink {
    const { settings, acceptRemote, log, budgets } = this.options;
    const link = new InboundLink(
      settings,
      acceptRemote,
      log,
      `node ${peer} (${remote})`,
      budgets,
      (gone) => {
        if (this.links.get(peer) === gone) this.links.delete(peer);
      },
      this.options.udp?.datagrams(peer),
    );
    // The dialler is the node whose name sorts first; a newer link from it replaces an older one.
    if (!this.closed && dials(peer, this.options.name)) {
      const old = this.links.get(peer);
      this.links.set(peer, link);
      old?.close();
    }
    return link;
  }

  /**
   * A client of node `watched` opens a standby connection here: it is told to move here the moment
   * that node leaves the cluster (see standby.ts).
   */
  standby(remote: string, watched: string): StandbyWatch {
    const standby = new StandbyWatch(watched, remote, (gone) => this.standbys.delete(gone));
    if (this.closed) standby.close();
    else this.standbys.add(standby);
    return standby;
  }

  /** Whether node `name` is alive in the cluster now (as this node last read it). */
  alive(name: string): boolean {
    return this.directory.nodes().some((node) => node.name === name);
  }

  /** Whether a presented link secret is the cluster's. */
  get secret(): string {
    return this.directory.secret;
  }

  /**
   * Dials every other live node whose name sorts after this one's (the others dial this one), and drops
   * links to nodes that left.
   */
  private syncLinks(nodes: NodeInfo[]): void {
    if (this.closed) return;
    const alive = new Set<string>();
    // Just after this node's own Redis outage, a missing node may be reconnecting too: its links and
    // its clients stay until the lease has passed (then the list is looked at again).
    const settling = this.directory.settlingMs;
    clearTimeout(this.settleTimer);
    if (settling > 0)
      this.settleTimer = setTimeout(() => this.syncLinks(this.directory.nodes()), settling + 10);
    for (const node of nodes) this.instances.set(node.name, node.instance);
    // A node that left (stopped renewing, or shut down): its clients' standbys here move them here now.
    const names = new Set(nodes.map((node) => node.name));
    for (const standby of [...this.standbys])
      if (!names.has(standby.watched) && this.directory.redisUp && settling === 0) {
        this.options.log.info(
          `cluster: node ${standby.watched} left: its client ${standby.remote} moves here`,
        );
        standby.moveHere();
      }
    const { name, acceptRemote, log, ca } = this.options;
    for (const peer of nodes) {
      if (peer.name === name) continue;
      alive.add(peer.name);
      if (!dials(name, peer.name)) continue;
      const link = this.links.get(peer.name);
      if (link instanceof OutboundLink && link.peer.url === peer.url) continue;
      link?.close();
      const datagrams = this.options.udp?.datagrams(peer.name);
      this.links.set(
        peer.name,
        new OutboundLink(peer, name, this.directory.secret, acceptRemote, log, ca, datagrams),
      );
    }
    // A link to a node that left is closed once nothing travels on it: a node shutting down finishes
    // the visitors in flight over it (a dead one's link drops by itself within 3 s).
    for (const [name, link] of this.links)
      if (!alive.has(name) && settling === 0) {
        this.links.delete(name);
        if (link.up && link.streams > 0) this.retire(name, link);
        else link.close();
      }
  }

  /**
   * Closes a link of a node that left once its streams are done or it went down (checked every second,
   * at most a minute). The keep-alive HTTP connections it carries are closed at their next request
   * boundary: their next requests go where the names move, and the leaving node's drain is not held
   * for its whole timeout by visitors that would keep their connections open (a rolling restart).
   */
  private retire(peer: string, link: NodeLink): void {
    let retired = 0;
    for (const stream of [...link.openStreams()]) if (retireAtRequestBoundary(stream)) retired++;
    if (retired > 0)
      this.options.log.info(
        `cluster: node ${peer} left: ${retired} keep-alive HTTP connection(s) to it close at their next request boundary`,
      );
    let rounds = 0;
    const timer = setInterval(() => {
      if (!this.closed && link.up && link.streams > 0 && ++rounds < 60) return;
      clearInterval(timer);
      link.close();
    }, 1000);
  }

  /** A key's holder changed in the view: remember who held a key that went (it may be moving). */
  private changed(key: LeaseKey, record: LeaseRecord | undefined): void {
    const before = this.records.get(key);
    if (record !== undefined) {
      this.records.set(key, record);
      this.vanished.delete(key);
    } else if (before !== undefined) {
      this.records.delete(key);
      const instance = this.instances.get(before.node);
      this.vanished.set(key, { record: before, at: performance.now(), instance });
    }
    this.reconcile(key);
  }

  /** How long after its lease went a name counts as moving (its client has other servers to move to). */
  private get moveWindowMs(): number {
    return 2 * this.options.leaseSeconds * 1000 + 5000;
  }

  /**
   * Brings a TCP port's mirror in line with who holds it: open while another node holds it and no
   * local tunnel listens there, closed otherwise.
   */
  private reconcile(key: LeaseKey): void {
    if (this.closed) return;
    const udp = key.startsWith("udp:");
    if (!udp && !key.startsWith("tcp:")) return;
    const place = placeOfLease(key);
    const port = Number(place.slice(4));
    const holders = [this.directory.holder(place), ...this.directory.poolMembers(place).map((m) => m.record)];
    const record = holders.find((r) => r !== undefined && r.node !== this.options.name);
    if (udp) {
      const hooks = this.options.udp;
      hooks?.mirror(port, record !== undefined && !hooks.listensOn(port), record?.node);
      return;
    }
    const wanted = record !== undefined && !this.options.listensOn(port);
    const mirror = this.mirrors.get(port);
    if (!wanted) {
      if (mirror !== undefined) this.unmirror(port);
      return;
    }
    if (mirror !== undefined) return;
    try {
      const listener = Bun.listen<RelaySocketData>({
        hostname: this.options.host,
        port,
        allowHalfOpen: true,
        socket: {
          ...relaySocketHandlers,
          open: (socket) => {
            socket.data = { stream: null };
            if (!this.forwardTcp(port, socket)) socket.terminate();
          },
        },
      });
      this.mirrors.set(port, listener);
    } catch (error) {
      this.options.log.warn(
        `cluster: cannot open port ${port} for node ${record?.node}'s tunnel here: ${(error as Error).message}`,
      );
    }
  }

  /** What /health and the metrics say about the cluster. */
  stats(): ClusterStats {
    const directory = this.directory.stats();
    const links: ClusterStats["links"] = {};
    for (const [name, link] of this.links) links[name] = { up: link.up, streams: link.streams };
    return { ...directory, links, mirrors: this.mirrors.size + (this.options.udp?.size ?? 0) };
  }

  /**
   * Shutting down: out of the cluster's node list at once (the drain follows, and then {@link leave}).
   * The other nodes take this node's names as moving (their visitors wait for the clients to arrive)
   * rather than released, and its clients' standbys move them.
   */
  async leaving(): Promise<void> {
    await this.directory.deregister();
  }

  /** Leaves: closes links and mirrors, gives back every lease, deregisters. */
  async leave(): Promise<void> {
    this.closed = true;
    clearTimeout(this.settleTimer);
    clearInterval(this.visitorTimer);
    for (const standby of [...this.standbys]) standby.close();
    // Streams still on the links (visitors of this node's tunnels carried from other nodes, their last
    // bytes and acknowledgements on their way) finish first: a closed link resets what is left on it.
    const deadline = performance.now() + LINK_DRAIN_MS;
    for (let round = 0; round < LINK_DRAIN_MS / 50 && performance.now() < deadline; round++) {
      if (![...this.links.values()].some((link) => link.up && link.streams > 0)) break;
      await Bun.sleep(50);
    }
    for (const link of this.links.values()) link.close();
    this.links.clear();
    for (const port of [...this.mirrors.keys()]) this.unmirror(port);
    this.options.udp?.close();
    await this.directory.close();
  }
}

/** Whether node `self` dials node `peer` (the one whose name sorts first does): one link per pair. */
function dials(self: string, peer: string): boolean {
  return self < peer;
}

/** The node's view of the cluster, for /health and /metrics. */
export interface ClusterStats {
  node: string;
  redis: "up" | "down";
  /** Live nodes' names, this one included. */
  nodes: string[];
  /** Names and ports held here, and held by other nodes. */
  held: number;
  elsewhere: number;
  /** Links to the other nodes. */
  links: Record<string, { up: boolean; streams: number }>;
  /** Public ports open here for tunnels held elsewhere. */
  mirrors: number;
}
