/**
 * The server's namespace: which public TCP and UDP ports and HTTP names exist, who holds each (a session's
 * tunnel, a pool of them, a session in its grace period, or another node through its cluster lease),
 * the rules for taking one, and where each visitor goes (port or name → a tunnel → a stream).
 *
 * Sessions ask it ({@link Namespace.claim}) and are told; they never place a port or a name
 * themselves. A place outlives any one tunnel in it: a pool's place stays while a member is left, and
 * a dropped client's place stays reserved (refusing visitors at once) until its grace period ends.
 * @module
 */

import type { TCPSocketListener } from "bun";
import { nanoid } from "nanoid";
import { formatHost, type PortRange } from "../../args.ts";
import type { Logger } from "../../log.ts";
import type { RelaySocket, RelaySocketData, Stream } from "../../relay/stream.ts";
import { relaySocketHandlers } from "../../relay/stream.ts";
import { type ExposeRequest, StreamKind } from "../../wire/protocol.ts";
import { customHost, hostOfKey, type NameHooks } from "../acme/hostnames.ts";
import { placeOfLease } from "../cluster/directory.ts";
import type { ClusterNode } from "../cluster/node.ts";
import { clusterPickRange, listenPublic, PortError } from "../public-port.ts";
import type { ClusterUdp } from "../udp-mirror.ts";
import { newUdpCounters, type UdpCounters, UdpPort, type UdpSettings } from "../udp-port.ts";
import { type Account, describeRanges } from "../users.ts";
import type {
  Holding,
  HttpRoute,
  PlaceKey,
  Refusal,
  Tunnel,
  TunnelHolder,
  VisitorFilter,
} from "./holding.ts";
import { httpName, poolJoin, tcpRanges, tunnelAllowance } from "./placement.ts";

export type { Holding, HttpRoute, PlaceKey, Refusal, Tunnel, TunnelHolder, VisitorFilter };

/** A TCP place's public listener. */
type PublicListener = TCPSocketListener<RelaySocketData>;

/** What the namespace is told at start and on each reload. */
export interface NamespaceSettings {
  /** Bind address of public ports. */
  host: string;
  /** Public names are `NAME.<domain>`. */
  domain: string;
  /** `--tcp-ports`: where public ports may be; absent: any unprivileged port. */
  tcpPorts?: PortRange;
  /** `--max-tunnels`: most tunnels one client may hold. */
  maxTunnelsPerClient: number;
  /**
   * Whether the operator's lists (the server's own, and the user's in its config) refuse a visitor
   * from `ip` to a place of `account` (absent: none refuses). A user cannot allow what these deny.
   */
  operatorRefuses?(account: Account | undefined, ip: string): boolean;
  /**
   * The lists a tunnel asked for (`--allow`, `--deny`), built once when it is claimed.
   * @throws {Error} one line naming a bad rule: the claim is refused with it.
   */
  tunnelFilter?(request: ExposeRequest): VisitorFilter | undefined;
  /** UDP places' flow settings (a reload applies them to UDP ports opened afterwards); default 60 s, 1,024. */
  udp?: UdpSettings;
  /** Without users: the custom domains (`--custom-domains` patterns) clients may hold. */
  customDomains?: readonly string[];
}

/** `--udp-idle-timeout` and `--udp-max-flows` when the settings name none. */
const DEFAULT_UDP: UdpSettings = { idleMs: 60_000, maxFlows: 1024 };

/** Why a visitor was refused before reaching a client (`sockets_visitors_refused_total{reason}`). */
export type RefusedReason = "denied" | "offline" | "limit" | "unknown";

/** One public port or HTTP name and the tunnels in it (one, or a pool's several). */
class Place {
  readonly tunnels: Tunnel[] = [];
  /** TCP: the public listener, shared by a pool's members. */
  listener?: PublicListener;
  /**
   * Cluster: the lease this node holds for the place (taken before it went live): its key itself, or
   * for a pool that other nodes hold too, this node's member lease beside it (`KEY~NODE`).
   */
  lease?: PlaceKey;
  /** UDP: the public socket and its flows, shared by a pool's members. */
  udp?: UdpPort;
  /** Where the next visitor's round-robin turn starts among equally loaded members. */
  turn = 0;
  /** HTTP: the route the ingress uses, made once. */
  route?: HttpRoute;
  /** The host name told to {@link Namespace.names} for it, and for whom (automatic HTTPS). */
  claimed?: { host: string; owner: string };

  constructor(
    readonly key: PlaceKey,
    readonly pool: boolean,
    readonly account: Account | undefined,
  ) {}
}

/** The server's one namespace (see the module comment). */
export class Namespace {
  private readonly places = new Map<PlaceKey, Place>();
  private readonly placeOf = new Map<Tunnel, Place>();
  /** Tunnel ids in use server-wide (live and reserved). */
  readonly tunnelIds = new Set<string>();
  /** The public HTTP port, once the server listens (HTTP tunnels need one). */
  private httpPort?: number;
  private httpScheme: "http" | "https" = "http";
  /** The server's own ports (control, HTTP, admin): never a tunnel's. */
  private ownPorts: readonly number[] = [];
  /** This server's cluster membership: every place is leased there first. */
  private cluster?: ClusterNode;
  /** Told of each visitor refused before it reached a client (the metrics count them). */
  onRefused?: (reason: RefusedReason) => void;
  /** UDP counts of places already closed, and of datagrams no place can be named for. */
  readonly udpClosed: UdpCounters = newUdpCounters();

  /** The UDP flow settings now (`--udp-idle-timeout`, `--udp-max-flows`). */
  get udpSettings(): UdpSettings {
    return this.settings.udp ?? DEFAULT_UDP;
  }

  /** Cluster: the UDP ports this node opens for other nodes' tunnels (server/udp-mirror.ts). */
  udpMirrors?: ClusterUdp;

  /** Every UDP place's public port, and every UDP mirror (for /health and /metrics). */
  udpPorts(): { readonly counters: UdpCounters; readonly flowCount: number }[] {
    const ports: { readonly counters: UdpCounters; readonly flowCount: number }[] = [];
    for (const place of this.places.values()) if (place.udp !== undefined) ports.push(place.udp);
    if (this.udpMirrors !== undefined) ports.push(...this.udpMirrors.mirrorList());
    return ports;
  }
  /** The HTTPS port (`--https-port`): HTTP tunnels get https URLs on it, and TLS tunnels live there. */
  private httpsPort?: number;
  /** Told when an HTTP name opens or closes (automatic HTTPS orders its certificate). */
  names?: NameHooks;

  /**
   * @param settings the rules (replaced on reload by {@link Namespace.reconfigure}).
   * @param log where refusals of visitors are logged.
   */
  constructor(
    private settings: NamespaceSettings,
    private readonly log: Logger,
  ) {}

  /** The server's listeners are bound: HTTP tunnels go on `httpPort`, and no tunnel gets an own port. */
  bind(listeners: {
    httpPort: number;
    https: boolean;
    ownPorts: readonly number[];
    httpsPort?: number;
  }): void {
    this.httpPort = listeners.httpPort;
    this.httpsPort = listeners.httpsPort;
    this.httpScheme = listeners.https ? "https" : "http";
    this.ownPorts = listeners.ownPorts;
  }

  /** The server joined a cluster: places are leased in it from now on. */
  join(cluster: ClusterNode): void {
    this.cluster = cluster;
  }

  /** A reload: the rules apply to the next claim and the next visitor. */
  reconfigure(settings: NamespaceSettings): void {
    this.settings = settings;
  }

  /** The bound HTTP port and its scheme, for the start-up log. */
  get http(): { port?: number; scheme: "http" | "https"; domain: string } {
    return { port: this.httpPort, scheme: this.httpScheme, domain: this.settings.domain };
  }

  /** How `key` is held now. */
  holding(key: PlaceKey): Holding {
    const place = this.places.get(key);
    const cluster = this.cluster;
    if (place === undefined || (place.lease && cluster !== undefined && !cluster.holds(place.lease))) {
      const remote = cluster?.directory.holder(key);
      return remote === undefined || remote.node === cluster?.name
        ? { state: "free" }
        : { state: "remote", node: remote.node };
    }
    const [first] = place.tunnels;
    if (place.pool || place.tunnels.length > 1) return { state: "pooled", tunnels: place.tunnels };
    if (first === undefined) return { state: "free" };
    if (first.holder.reserved) return { state: "reserved", tunnel: first, until: first.holder.graceEnds };
    return { state: "held", tunnel: first };
  }

  /**
   * A session asks for a place for one of its tunnels. The answer is the live tunnel, or why not; in a
   * cluster it comes once Redis has leased the place.
   * @param holder the session.
   * @param request what its client asked for.
   * @param ref the session's number for the tunnel (OPEN frames name it).
   * @param clientTunnels how many tunnels the session holds now.
   */
  claim(
    holder: TunnelHolder,
    request: ExposeRequest,
    ref: number,
    clientTunnels: number,
  ): Tunnel | Refusal | Promise<Tunnel | Refusal> {
    const refused = tunnelAllowance(clientTunnels, this.settings.maxTunnelsPerClient, holder.account);
    if (refused !== null) return refused;
    let filter: VisitorFilter | undefined;
    try {
      filter = this.settings.tunnelFilter?.(request);
    } catch (error) {
      return { code: "bad_request", message: (error as Error).message };
    }
    // A client re-exposing after a server restart keeps its tunnel id unless another client holds it.
    const wanted = request.tunnel;
    const id = wanted !== undefined && !this.tunnelIds.has(wanted) ? wanted : nanoid(12);
    const tunnel: Tunnel = {
      id,
      ref,
      kind: request.kind,
      port: 0,
      visitors: new Set(),
      holder,
      pool: request.pool === true,
      filter,
      hostHeader: request.hostHeader,
      basicAuth: request.basicAuth,
    };
    // Taken before a cluster lease is awaited: two claims in flight never get one id.
    this.tunnelIds.add(id);
    const placed =
      request.kind === "tcp"
        ? this.placeTcp(tunnel, request)
        : request.kind === "udp"
          ? this.placeUdp(tunnel, request)
          : this.placeHttp(tunnel, request);
    if (placed instanceof Promise) return placed.then((result) => this.settle(tunnel, result));
    return this.settle(tunnel, placed);
  }

  /** A claim is decided: count the tunnel against its user, name its URL (or give the id back). */
  private settle(tunnel: Tunnel, refused: Refusal | null): Tunnel | Refusal {
    if (refused !== null) {
      this.tunnelIds.delete(tunnel.id);
      return refused;
    }
    const account = tunnel.holder.account;
    if (account !== undefined) account.tunnels++;
    const domain = this.settings.domain;
    const host = tunnel.name === undefined ? undefined : hostOfKey(tunnel.name, domain);
    // With --https-port, HTTP tunnels are announced there (their plain port serves http:// too).
    const https = this.httpsPort;
    const scheme = tunnel.kind === "tls" ? "tls" : https !== undefined ? "https" : this.httpScheme;
    const port = tunnel.kind === "http" && https !== undefined ? https : tunnel.port;
    tunnel.url =
      host === undefined
        ? `${tunnel.kind === "udp" ? "udp://" : ""}${formatHost(domain)}:${tunnel.port}`
        : `${scheme}://${host}:${port}`;
    return tunnel;
  }

  /**
   * A tunnel leaves its place (unexposed, its session ended, or draining): the place closes when it was
   * the last one in it (its port stops listening, with `closeVisitors` its connections closed too; its
   * lease is given back). The tunnel's own visitors are its session's to end. Idempotent.
   */
  release(tunnel: Tunnel, closeVisitors: boolean): void {
    const place = this.placeOf.get(tunnel);
    if (place !== undefined) {
      this.placeOf.delete(tunnel);
      const at = place.tunnels.indexOf(tunnel);
      if (at >= 0) place.tunnels.splice(at, 1);
      if (place.tunnels.length === 0) this.close(place, closeVisitors);
      else if (tunnel.udpMember !== undefined) place.udp?.forgetMember(tunnel.udpMember);
    }
    if (this.tunnelIds.delete(tunnel.id) && tunnel.holder.account !== undefined)
      tunnel.holder.account.tunnels--;
  }

  private close(place: Place, closeVisitors: boolean): void {
    if (this.places.get(place.key) === place) this.places.delete(place.key);
    if (place.listener !== undefined) {
      this.listening.delete(place.listener);
      place.listener.stop(closeVisitors);
    }
    place.udp?.close(this.udpClosed);
    if (place.lease !== undefined) {
      this.cluster?.release(place.lease);
      place.lease = undefined;
    }
    if (place.claimed !== undefined) {
      this.names?.released(place.claimed.host, place.claimed.owner);
      place.claimed = undefined;
    }
  }

  private enter(place: Place, tunnel: Tunnel): null {
    place.tunnels.push(tunnel);
    this.placeOf.set(tunnel, place);
    return null;
  }

  /** What the cluster stores with a lease of this tunnel's. */
  private leaseRequest(tunnel: Tunnel) {
    const { holder } = tunnel;
    return {
      owner: holder.owner,
      claim: holder.claim,
      user: holder.account?.name,
      userLimit: holder.account?.limits.maxTunnels,
      hostHeader: tunnel.hostHeader,
      basicAuth: tunnel.basicAuth,
      pool: tunnel.pool,
      kind: tunnel.kind === "tls" ? ("tls" as const) : undefined,
    };
  }

  /**
   * Cluster: leases place `key` for a tunnel, or, when other nodes serve it as a pool of the same
   * user and the tunnel asks for a pool, a member lease beside it. The lease taken, or why not.
   */
  private async lease(
    cluster: ClusterNode,
    key: PlaceKey,
    tunnel: Tunnel,
    what: string,
  ): Promise<PlaceKey | Refusal> {
    const request = this.leaseRequest(tunnel);
    const pool = cluster.poolOf(key);
    if (pool !== undefined) {
      const code = key.startsWith("http:") ? "subdomain_taken" : "port_taken";
      const nodes = pool.nodes.join(", ");
      if (pool.user !== request.user)
        return {
          code,
          message: `${what} is taken (held by another user; pools are per user; node ${nodes})`,
        };
      if (!tunnel.pool)
        return { code, message: `${what} is served by a pool (node ${nodes}): ask with --pool to join it` };
      const member = cluster.memberKey(key);
      return (await cluster.acquire(member, request)) ?? member;
    }
    return (await cluster.acquire(key, request)) ?? key;
  }

  /** A place is held here already: join its pool, or be told which rule forbids it. */
  private joinHeld(place: Place, tunnel: Tunnel, what: string): Refusal | null {
    const refused = poolJoin(what, place, { pool: tunnel.pool, account: tunnel.holder.account });
    if (refused === null) return this.enter(place, tunnel);
    const [only] = place.tunnels;
    if (!place.pool && only?.holder.reserved) {
      const left = Math.max(1, Math.ceil((only.holder.graceEnds - Date.now()) / 1000));
      const code = what.startsWith("port") ? "port_reserved" : refused.code;
      const verb = what.startsWith("port") ? "is reserved" : "is taken: reserved";
      return {
        code,
        message: `${what} ${verb} for a dropped client's session for up to ${left} s more (the server's --grace); wait, or ask for another ${what.startsWith("port") ? "port" : "name"}`,
      };
    }
    return refused;
  }

  /** An HTTP tunnel: a name on the server's HTTP port (leased first in a cluster). */
  private placeHttp(tunnel: Tunnel, request: ExposeRequest): Refusal | null | Promise<Refusal | null> {
    if (this.httpPort === undefined) return { code: "no_http", message: "this server has no --http-port" };
    const tls = tunnel.kind === "tls";
    if (tls && this.httpsPort === undefined)
      return { code: "no_https", message: "this server has no --https-port for end-to-end TLS tunnels" };
    const { account } = tunnel.holder;
    const custom = customHost(request.hostname, this.settings.domain, account, this.settings.customDomains);
    const name = custom ?? httpName(request.subdomain, account);
    if (typeof name !== "string") return name;
    tunnel.name = name;
    tunnel.port = tls ? (this.httpsPort as number) : this.httpPort;
    const key: PlaceKey = `http:${name}`;
    const what = custom === undefined ? `subdomain '${name}'` : `host name '${name}'`;
    const held = this.places.get(key);
    if (held !== undefined && held.tunnels[0] !== undefined && held.tunnels[0].kind !== tunnel.kind)
      return { code: "subdomain_taken", message: `${what} is taken (by a tunnel of another type)` };
    if (held !== undefined) return this.joinHeld(held, tunnel, what);
    const cluster = this.cluster;
    if (cluster === undefined) return this.open(new Place(key, tunnel.pool, tunnel.holder.account), tunnel);
    return this.leaseThenOpen(cluster, key, tunnel, what);
  }

  /**
   * Cluster: leases `key`, then opens the place; `bind` first binds its public port (TCP), undone when
   * the lease is refused.
   */
  private async leaseThenOpen(
    cluster: ClusterNode,
    key: PlaceKey,
    tunnel: Tunnel,
    what: string,
    bind?: () => PublicListener | Refusal,
  ): Promise<Refusal | null> {
    const leased = await this.lease(cluster, key, tunnel, what);
    if (typeof leased !== "string") return leased;
    // Another local tunnel may have opened the place while Redis answered.
    const held = this.places.get(key);
    if (held !== undefined) {
      if (held.lease !== leased) cluster.release(leased);
      return this.joinHeld(held, tunnel, what);
    }
    const listener = bind?.();
    if (listener !== undefined && !("stop" in listener)) {
      cluster.release(leased);
      return listener;
    }
    const place = new Place(key, tunnel.pool, tunnel.holder.account);
    place.lease = leased;
    return this.open(place, tunnel, listener);
  }

  /** A new place goes live with its first tunnel (and, for TCP, its bound listener). */
  private open(place: Place, tunnel: Tunnel, listener?: PublicListener): null {
    this.places.set(place.key, place);
    if (listener !== undefined) {
      place.listener = listener;
      this.listening.set(listener, place);
    }
    if (tunnel.kind !== "tcp") place.route = this.httpRoute(place, tunnel.kind === "tls");
    // A terminated name gets its certificate ordered now (automatic HTTPS); a passthrough one needs none.
    if (tunnel.kind === "http" && tunnel.name !== undefined && this.names !== undefined) {
      const { account } = tunnel.holder;
      const owner =
        account !== undefined ? `user ${account.name}` : `client ${tunnel.holder.address ?? "(unknown)"}`;
      place.claimed = { host: hostOfKey(tunnel.name, this.settings.domain), owner };
      this.names.claimed(place.claimed.host, owner);
    }
    return this.enter(place, tunnel);
  }

  /**
   * A TCP tunnel: its own public port. In a cluster the port is leased too: a port asked for is leased
   * before it is bound (a port this node mirrors for another node's tunnel is given up only when the
   * lease says so); any other port is bound first and then leased, another one tried when some node
   * already holds it.
   */
  private placeTcp(tunnel: Tunnel, request: ExposeRequest): Refusal | null | Promise<Refusal | null> {
    const where = tcpRanges(request.port, tunnel.holder.account, this.settings.tcpPorts);
    if (!("ranges" in where)) return where;
    const asked = request.port;
    if (asked !== undefined) {
      tunnel.port = asked;
      const held = this.places.get(`tcp:${asked}`);
      if (held !== undefined) return this.joinHeld(held, tunnel, `port ${asked}`);
    }
    const bind = () => this.bindTcp(tunnel, where.ranges, asked);
    const cluster = this.cluster;
    if (cluster === undefined) {
      const listener = bind();
      if (!("stop" in listener)) return listener;
      return this.open(
        new Place(`tcp:${listener.port}`, tunnel.pool, tunnel.holder.account),
        tunnel,
        listener,
      );
    }
    if (asked !== undefined)
      return this.leaseThenOpen(cluster, `tcp:${asked}`, tunnel, `port ${asked}`, () => {
        cluster.unmirror(asked);
        return bind();
      });
    return this.leaseAnyPort(cluster, tunnel, bind);
  }

  /**
   * A UDP tunnel: its own public UDP port, under the TCP ports' rules (the server's `--tcp-ports`,
   * the user's ranges, no privileged port without a range, pools of one user, grace). Binding is
   * asynchronous; a port asked for that a claim in flight is binding is refused as taken. In a cluster
   * the port is leased as a TCP port is (`udp:PORT`): a port asked for is leased before it is bound
   * (this node's mirror of it let go first), any other bound first and then leased.
   */
  private placeUdp(tunnel: Tunnel, request: ExposeRequest): Refusal | null | Promise<Refusal | null> {
    const where = tcpRanges(request.port, tunnel.holder.account, this.settings.tcpPorts);
    if (!("ranges" in where)) return where;
    const asked = request.port;
    const flows = tunnel.holder.udpFlows?.();
    if (flows === undefined) return { code: "no_udp", message: "this session cannot hold UDP tunnels" };
    tunnel.udpMember = { ref: tunnel.ref, flows };
    if (asked !== undefined) {
      tunnel.port = asked;
      const held = this.places.get(`udp:${asked}`);
      if (held !== undefined) return this.joinUdp(held, tunnel, `port ${asked}/udp`);
    }
    const cluster = this.cluster;
    if (cluster === undefined) return this.bindUdp(tunnel, where.ranges, asked);
    if (asked !== undefined)
      return this.lease(cluster, `udp:${asked}`, tunnel, `port ${asked}/udp`).then((leased) => {
        if (typeof leased !== "string") return leased;
        const held = this.places.get(`udp:${asked}`);
        if (held !== undefined) {
          if (held.lease !== leased) cluster.release(leased);
          return this.joinUdp(held, tunnel, `port ${asked}/udp`);
        }
        cluster.unmirrorUdp(asked);
        return this.bindUdp(tunnel, where.ranges, asked, leased);
      });
    return this.leaseAnyUdpPort(cluster, tunnel, where.ranges);
  }

  /** Cluster, any UDP port: bind one, lease it; another one when some node holds it already (8 tries). */
  private async leaseAnyUdpPort(
    cluster: ClusterNode,
    tunnel: Tunnel,
    ranges: readonly (PortRange | undefined)[],
  ): Promise<Refusal | null> {
    for (let attempt = 0; attempt < 8; attempt++) {
      const opened = await this.openUdp(ranges, undefined);
      if (!(opened instanceof UdpPort)) return opened;
      const key: PlaceKey = `udp:${opened.port}`;
      const refused = await cluster.acquire(key, this.leaseRequest(tunnel));
      if (refused === null && !this.places.has(key)) return this.openUdpPlace(tunnel, opened, key);
      opened.close(this.udpClosed);
      if (refused === null) cluster.release(key);
      else if (refused.code !== "port_taken") return refused;
    }
    return { code: "no_free_port", message: "no UDP port free on this node that no other node holds" };
  }

  /** Binds a UDP tunnel's public socket (a fresh place with it), or why not; `lease`: taken already. */
  private async bindUdp(
    tunnel: Tunnel,
    ranges: readonly (PortRange | undefined)[],
    asked: number | undefined,
    lease?: PlaceKey,
  ): Promise<Refusal | null> {
    const opened = await this.openUdp(ranges, asked);
    if (!(opened instanceof UdpPort)) {
      if (lease !== undefined) this.cluster?.release(lease);
      // "In use" is true but useless when a dropped client's session holds it: say for how long.
      const held = asked === undefined ? undefined : this.places.get(`udp:${asked}`);
      return held === undefined ? opened : this.joinUdp(held, tunnel, `port ${asked}/udp`);
    }
    const key: PlaceKey = `udp:${opened.port}`;
    // Another claim opened the same place while this one was binding (port 0 twice cannot happen).
    const held = this.places.get(key);
    if (held !== undefined) {
      opened.close(this.udpClosed);
      if (lease !== undefined && held.lease !== lease) this.cluster?.release(lease);
      return this.joinUdp(held, tunnel, `port ${opened.port}/udp`);
    }
    return this.openUdpPlace(tunnel, opened, lease);
  }

  /** Opens a public UDP socket whose flows go to the members of the place on its port. */
  private openUdp(
    ranges: readonly (PortRange | undefined)[],
    asked: number | undefined,
  ): Promise<UdpPort | Refusal> {
    const choose = (address: string, port: UdpPort) => {
      const place = this.places.get(`udp:${port.port}`);
      if (place === undefined || place.udp !== port) return "offline" as const;
      // A node whose lease lapsed serves the port no more (its client is moving, or another holds it).
      const cluster = this.cluster;
      if (place.lease !== undefined && cluster !== undefined && !cluster.holds(place.lease))
        return "offline" as const;
      const chosen = this.choose(place, address);
      if (typeof chosen === "string") return chosen === "denied" ? ("denied" as const) : ("offline" as const);
      return chosen.udpMember ?? ("offline" as const);
    };
    let opened: UdpPort | undefined;
    // In a cluster, a port the kernel would pick comes from its ephemeral range, which every node's
    // own sockets use: as for TCP (clusterPickRange), pick below it instead.
    const pick = asked === undefined && this.cluster !== undefined ? clusterPickRange() : undefined;
    const request = {
      host: this.settings.host,
      port: asked,
      ranges: pick === undefined ? ranges : ranges.map((range) => range ?? pick),
      own: this.ownPorts,
    };
    return UdpPort.open(
      request,
      () => this.udpSettings,
      (address) => (opened === undefined ? "offline" : choose(address, opened)),
    ).then(
      (port) => {
        opened = port;
        return port;
      },
      (error: unknown) => ({
        code: error instanceof PortError ? error.code : "listen_failed",
        message: (error as Error).message,
      }),
    );
  }

  /** A UDP place goes live with its first tunnel and its bound socket. */
  private openUdpPlace(tunnel: Tunnel, port: UdpPort, lease?: PlaceKey): null {
    const place = new Place(`udp:${port.port}`, tunnel.pool, tunnel.holder.account);
    place.udp = port;
    place.lease = lease;
    tunnel.udp = port;
    tunnel.port = port.port;
    return this.open(place, tunnel);
  }

  /** A UDP place held here already: join its pool (sharing its socket), or be told why not. */
  private joinUdp(place: Place, tunnel: Tunnel, what: string): Refusal | null {
    const refused = this.joinHeld(place, tunnel, what);
    if (refused === null) tunnel.udp = place.udp;
    return refused;
  }

  /** Cluster, any port: bind one, lease it; another one when some node holds it already (8 tries). */
  private async leaseAnyPort(
    cluster: ClusterNode,
    tunnel: Tunnel,
    bind: () => PublicListener | Refusal,
  ): Promise<Refusal | null> {
    for (let attempt = 0; attempt < 8; attempt++) {
      const listener = bind();
      if (!("stop" in listener)) return listener;
      const key: PlaceKey = `tcp:${listener.port}`;
      const refused = await cluster.acquire(key, this.leaseRequest(tunnel));
      if (refused === null && !this.places.has(key)) {
        const place = new Place(key, tunnel.pool, tunnel.holder.account);
        place.lease = key;
        return this.open(place, tunnel, listener);
      }
      listener.stop(true);
      if (refused === null) cluster.release(key);
      else if (refused.code !== "port_taken") return refused;
    }
    return { code: "no_free_port", message: "no port free on this node that no other node holds" };
  }

  /** Which place each public listener serves (its port, so its key, is known only once it is bound). */
  private readonly listening = new Map<PublicListener, Place>();

  /** Binds a TCP tunnel's public port, in the first of `ranges` that has one free. */
  private bindTcp(
    tunnel: Tunnel,
    ranges: (PortRange | undefined)[],
    port: number | undefined,
  ): PublicListener | Refusal {
    let lastError: unknown;
    for (const range of ranges) {
      try {
        const listener: PublicListener = listenPublic<RelaySocketData>(
          {
            host: this.settings.host,
            port,
            range,
            own: this.ownPorts,
            pick: this.cluster && clusterPickRange(),
          },
          { ...relaySocketHandlers, open: (socket) => this.acceptTcp(this.listening.get(listener), socket) },
        );
        tunnel.port = listener.port;
        return listener;
      } catch (error) {
        lastError = error;
        // Another of the user's ranges may have a free port; a port asked for is in one range only.
        if (!(error instanceof PortError && error.code === "no_free_port")) break;
      }
    }
    const account = tunnel.holder.account;
    const allowed = account?.limits.tcpPorts;
    if (allowed !== undefined && lastError instanceof PortError && lastError.code === "no_free_port")
      return {
        code: "no_free_port",
        message: `no free port in user ${account?.name}'s ports ${describeRanges(allowed)}`,
      };
    return {
      code: lastError instanceof PortError ? lastError.code : "listen_failed",
      message: (lastError as Error).message,
    };
  }

  /**
   * The member of a place a visitor goes to: the live one (that the visitor's address may reach) with
   * the fewest open visitors, ties taken in turn. A string says why none.
   */
  private choose(place: Place, ip: string): Tunnel | RefusedReason {
    const { tunnels } = place;
    const count = tunnels.length;
    if (this.settings.operatorRefuses?.(place.account, ip) === true) return "denied";
    let best: Tunnel | undefined;
    let bestAt = 0;
    let live = false;
    for (let i = 0; i < count; i++) {
      const at = (place.turn + i) % count;
      const tunnel = tunnels[at] as Tunnel;
      if (!tunnel.holder.live) continue;
      live = true;
      if (tunnel.filter !== undefined && !tunnel.filter.permits(ip)) continue;
      if (best === undefined || tunnel.visitors.size < best.visitors.size) {
        best = tunnel;
        bestAt = at;
      }
    }
    if (best === undefined) return live ? "denied" : "offline";
    place.turn = (bestAt + 1) % count;
    return best;
  }

  private refused(reason: RefusedReason, key: PlaceKey, ip: string, tunnel?: Tunnel, why?: string): void {
    this.onRefused?.(reason);
    if (reason === "denied") this.log.info(`${key}: visitor ${ip} refused by the allow/deny lists`);
    else if (why !== undefined) this.log.warn(`tunnel ${tunnel?.id}: visitor refused, ${why}`);
  }

  /** A visitor connected to a TCP place's public port: a stream of the member it goes to, or closed at once. */
  private acceptTcp(place: Place | undefined, socket: RelaySocket): void {
    socket.data = { stream: null };
    if (place === undefined) {
      socket.terminate();
      return;
    }
    // A node whose lease lapsed (frozen, or taken over before it heard) serves the port no more: the
    // visitor goes to whichever node holds it now, if any.
    const cluster = this.cluster;
    if (place.lease !== undefined && cluster !== undefined && !cluster.holds(place.lease)) {
      if (!cluster.forwardTcp(Number(place.key.slice(4)), socket)) socket.terminate();
      return;
    }
    const ip = socket.remoteAddress;
    const chosen = this.choose(place, ip);
    if (typeof chosen === "string") {
      // While the client is away (or the server drains) a visitor is refused at once, not left hanging.
      this.refused(chosen, place.key, ip);
      socket.terminate();
      return;
    }
    const opened = chosen.holder.openVisitor(chosen, socket, StreamKind.Tcp);
    if (typeof opened === "string") {
      this.refused("limit", place.key, ip, chosen, opened);
      socket.terminate();
    }
  }

  /** An HTTP place's route: each visitor connection to the member it goes to, or a page saying why not. */
  private httpRoute(place: Place, passthrough: boolean): HttpRoute {
    const first = place.tunnels[0];
    const kind = passthrough ? StreamKind.Tcp : StreamKind.Http;
    return {
      passthrough: passthrough || undefined,
      // A pool's Host rewrite and basic auth are its first member's.
      get hostHeader() {
        return (place.tunnels[0] ?? first)?.hostHeader;
      },
      get basicAuth() {
        return (place.tunnels[0] ?? first)?.basicAuth;
      },
      open: (socket) => {
        const ip = socket.remoteAddress;
        const chosen = this.choose(place, ip);
        if (chosen === "denied") {
          this.refused(chosen, place.key, ip);
          return { status: 403, message: "forbidden: this address may not reach this tunnel" };
        }
        if (typeof chosen === "string") {
          this.refused(chosen, place.key, ip);
          return { status: 502, message: "the tunnel's client is offline; try again shortly" };
        }
        const opened = chosen.holder.openVisitor(chosen, socket, kind);
        if (typeof opened !== "string") return opened;
        this.refused("limit", place.key, ip, chosen, opened);
        return { status: 502, message: "too many connections to this tunnel" };
      },
    };
  }

  /**
   * The route behind an HTTP name, if any: a place here, or in a cluster another node's (reached over
   * the link). A place whose lease lapsed is not served here (see {@link ClusterNode.holds}).
   */
  routeHttp(name: string): HttpRoute | undefined {
    const key: PlaceKey = `http:${name}`;
    const place = this.places.get(key);
    const cluster = this.cluster;
    if (cluster === undefined) return place?.route;
    if (place?.lease !== undefined && cluster.holds(place.lease)) return place.route;
    const remote = cluster.remoteRoute(name);
    if (remote === undefined) return undefined;
    return {
      hostHeader: remote.hostHeader,
      basicAuthHash: remote.basicAuthHash,
      passthrough: remote.passthrough,
      open: (socket) =>
        remote.open(socket) ?? {
          status: 502,
          message: "the node holding this tunnel is unreachable; try again shortly",
        },
    };
  }

  /**
   * Cluster: a visitor another node carried here for `target` (a place key), on one end of a splice:
   * the stream of the member it goes to, or why not.
   */
  acceptRemote(target: string, kind: StreamKind, socket: RelaySocket): Stream | string {
    // A pool member lease (`KEY~NODE`) names this node's share of the place `KEY`.
    if (this.cluster !== undefined && !this.cluster.holds(target as PlaceKey))
      return `${target} is not held here`;
    const place = this.places.get(placeOfLease(target as PlaceKey));
    if (place === undefined) return `no tunnel ${target} here`;
    const chosen = this.choose(place, socket.remoteAddress);
    if (chosen === "denied") return "forbidden: this address may not reach this tunnel";
    if (typeof chosen === "string") return "the tunnel's client is offline; try again shortly";
    const opened = chosen.holder.openVisitor(chosen, socket, kind);
    if (typeof opened !== "string") return opened;
    this.refused("limit", place.key, socket.remoteAddress, chosen, opened);
    return "too many connections to this tunnel";
  }

  /** Cluster: the lease of `key` went to another node: every tunnel of that place stops here at once. */
  leaseLost(key: PlaceKey): void {
    const place = this.places.get(placeOfLease(key));
    if (place === undefined) return;
    for (const tunnel of [...place.tunnels]) tunnel.holder.lose(tunnel);
  }

  /**
   * Cluster: the UDP port serving lease `target` (held here) for flows another node's mirror carries
   * here (server/udp-mirror.ts), or why none.
   */
  udpPlace(target: PlaceKey): UdpPort | string {
    if (this.cluster !== undefined && !this.cluster.holds(target)) return `${target} is not held here`;
    return this.places.get(placeOfLease(target))?.udp ?? `no tunnel ${target} here`;
  }

  /** Whether a UDP place here listens on `port` (cluster: no UDP mirror there then). */
  listensOnUdp(port: number): boolean {
    return this.places.get(`udp:${port}`)?.udp !== undefined;
  }

  /** Whether a place here listens on `port` (cluster: no mirror there then). */
  listensOn(port: number): boolean {
    return this.places.get(`tcp:${port}`)?.listener !== undefined;
  }

  /** Places shared by a pool, with their members, for /health, the dashboard and /metrics. */
  pools(): { key: PlaceKey; members: Tunnel[] }[] {
    const pools: { key: PlaceKey; members: Tunnel[] }[] = [];
    for (const place of this.places.values())
      if (place.pool) pools.push({ key: place.key, members: [...place.tunnels] });
    return pools;
  }
}
