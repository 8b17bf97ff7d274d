/**
 * The server's view of one client: its WebSocket (while connected), its stream multiplexer, its
 * tunnels with their public listeners, and its life cycle:
 *
 * ```text
 * live ──ws lost/silent──▶ reserved ──grace over──▶ ended
 *   ▲                          │
 *   └──── syncing ◀──resumed───┘     (client closes with 1000, or server shuts down: ended at once)
 * ```
 *
 * While reserved, the public ports stay bound (refusing new visitors at once) and visitor connections
 * stay open and paused with their unacknowledged bytes, so a client that resumes within the grace
 * period gets the same tunnels back and loses no connection and no byte.
 * @module
 */

import { randomBytes } from "node:crypto";
import type { TCPSocketListener } from "bun";
import { customAlphabet, nanoid } from "nanoid";
import { formatHost, type PortRange, unmappedAddress } from "../args.ts";
import { Liveness } from "../liveness.ts";
import { describeError, type Logger } from "../log.ts";
import type { Budget } from "../relay/budget.ts";
import { Mux } from "../relay/mux.ts";
import { type RelaySocket, type RelaySocketData, relaySocketHandlers, type Stream } from "../relay/stream.ts";
import {
  CloseCode,
  type ExposeRequest,
  type Hello,
  ProtocolError,
  parseControl,
  ResetCode,
  StreamKind,
  SUBDOMAIN,
  type SyncMessage,
  type UnexposeRequest,
} from "../wire/protocol.ts";
import { customHost, hostOfKey, type NameHooks } from "./acme/hostnames.ts";
import { keyMatches } from "./auth.ts";
import type { InboundLink } from "./cluster/link.ts";
import type { ClusterNode, LeaseKey, LeaseRefusal } from "./cluster/node.ts";
import { secretHash } from "./cluster/node.ts";
import type { HttpRoute } from "./http-ingress.ts";
import type { ServerMetrics } from "./metrics.ts";
import { listenPublic, PortError } from "./public-port.ts";
import { type Account, describeRanges, portAllowed, randomNameFor, subdomainAllowed } from "./users.ts";
import type { RawWebSocket } from "./ws-server.ts";

/** The `data` slot of every client WebSocket. */
export interface SessionSocketData {
  session: Session | null;
  /** A reserved session this connection resumes (set by the upgrade handler). */
  resume: Session | null;
  remote: string;
  /** The user the upgrade's token opened (absent on a server without users or key). */
  account?: Account;
  /**
   * Cluster: sha256 of the resume secret presented for a session this node does not know (the
   * client moved here from another node): proves it owns that session's names and ports.
   */
  claim?: string;
  /** Set instead of a session when another node of the cluster opened this connection (its link). */
  link?: InboundLink;
}

/** A client's WebSocket on the server (the control port's own, see ws-server.ts). */
export type SessionSocket = RawWebSocket<SessionSocketData>;

/** Server-wide settings and registries every session uses. */
export interface SessionContext {
  host: string;
  domain: string;
  tcpPorts?: PortRange;
  /** Settings announced in hello (session fields are filled per session). */
  limits: Omit<Hello, "type" | "session" | "secret" | "resumed">;
  /** Seconds a dropped client's tunnels stay reserved. */
  graceSeconds: number;
  /** Seconds a client may take, after the upgrade, to send its first expose or sync. */
  handshakeSeconds: number;
  /**
   * Memory budgets (bytes buffered per direction): `perClient` for each session, within the
   * server-wide `received` and `sent` budgets every session counts into. Absent: unbounded.
   */
  budgets?: { perClient: number; received: Budget; sent: Budget };
  log: Logger;
  /** Tunnel ids in use server-wide (live and reserved). */
  tunnelIds: Set<string>;
  /** The public HTTP port, if the server has one. */
  httpPort?: number;
  /** "https" when the HTTP port has the server's certificate. */
  httpScheme?: "http" | "https";
  /** HTTP tunnels by name, server-wide (live and reserved). */
  httpRoutes: Map<string, HttpRoute>;
  /** TCP tunnels' public ports and the session holding each, server-wide (live and reserved). */
  portHolders?: Map<number, Session>;
  /** The server's own ports (control, HTTP): never a tunnel's. */
  ownPorts?: readonly number[];
  /** Called once when the session ended for good. */
  onEnded(session: Session): void;
  /** Whether log lines about tunnels name their user (`--health-detail`: the operator asked). */
  healthDetail?: boolean;
  /** Counters for the admin listener's `/metrics` (absent without `--admin`: nothing counted). */
  metrics?: ServerMetrics;
  /** This server's cluster membership (`--cluster`): every name and port is leased there first. */
  cluster?: ClusterNode;
  /** The HTTPS port (`--https-port`): HTTP tunnels get https URLs there, and TLS tunnels live there. */
  httpsPort?: number;
  /** Without users: the custom domains (`--custom-domains` patterns) clients may hold. */
  customDomains?: readonly string[];
  /** Told when an HTTP tunnel starts or stops holding a host name (automatic HTTPS orders for it). */
  names?: NameHooks;
}

/** One public TCP tunnel of a session. */
export interface Tunnel {
  id: string;
  ref: number;
  /** Its public port (for HTTP tunnels, the server's HTTP port). */
  port: number;
  /** TCP tunnels: the public listener. */
  listener?: TCPSocketListener<RelaySocketData>;
  /** HTTP tunnels: the name under the server's domain, or a custom domain's whole host name. */
  name?: string;
  /** The host name it holds and for whom, when told to {@link SessionContext.names}. */
  claimed?: { host: string; owner: string };
  /** The URL its client was told. */
  url?: string;
  /**
   * Its open visitor streams (their count is what `--max-streams` limits): closed with it when its
   * client unexposes it.
   */
  visitors: Set<Stream>;
  /** Cluster: the lease it holds (`http:NAME` or `tcp:PORT`). */
  lease?: LeaseKey;
}

/** A random HTTP tunnel name: DNS-safe, lower-case letters and digits. */
const randomName = customAlphabet("abcdefghijklmnopqrstuvwxyz0123456789", 10);

/** Bytes queued on a client's WebSocket past which every stream stops reading until it drains. */
const SEND_HIGH_WATER = 4 * 1024 * 1024;

/** Close codes with which Bun ends a WebSocket whose peer broke RFC 6455 (1002, 1007, 1009). */
const BROKEN_CLOSE_CODES = new Set<number>([CloseCode.ProtocolError, 1007, 1009]);

/**
 * Bun reports a message over `maxPayloadLength` to the server as 1006 with this reason (the client
 * gets 1009): checked on Bun 1.4.5.
 */
const BUN_TOO_BIG = /too big message/i;

type State = "live" | "syncing" | "reserved" | "draining" | "ended";

/** One client, across the WebSocket connections it resumes the session with. */
export class Session {
  /** Session id, sent in hello; public within the connection, useless without the secret. */
  readonly id = nanoid(16);
  /** Resume secret: 32 random bytes, sent only to this client. */
  readonly secret = randomBytes(32).toString("base64url");
  readonly mux: Mux;
  readonly tunnels = new Map<number, Tunnel>();
  /** When the client was last heard from (any message, ping or pong). */
  readonly liveness = new Liveness();
  /** When the session began (ms since the epoch). */
  readonly since = Date.now();
  /** Times its client resumed it on a new connection. */
  resumes = 0;
  private ws: SessionSocket | null = null;
  private state: State = "live";
  private graceTimer: ReturnType<typeof setTimeout> | undefined;
  /** When the grace period ends (ms since the epoch), while reserved: told to whoever wants its ports. */
  private graceEnds = 0;
  private handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  private nextRef = 1;
  /** Per stream: its byte count at the last idle sweep that saw it move, and when. */
  private readonly idleMarks = new Map<number, { progress: number; since: number }>();

  /** True while the receive budget is spent: the WebSocket is not read (see {@link Session.applyPause}). */
  private receivePaused = false;
  /** Cluster: what the client proved it owned on another node (see {@link SessionSocketData.claim}). */
  claim?: string;
  private ownerHash?: string;

  /** Cluster: who owns this session's leases, as Redis stores it (sha256 of the resume secret). */
  get owner(): string {
    this.ownerHash ??= secretHash(this.secret);
    return this.ownerHash;
  }

  /**
   * @param context what every session shares.
   * @param account the user whose token opened the session (absent on a server without users or key).
   */
  constructor(
    private readonly context: SessionContext,
    readonly account?: Account,
  ) {
    const budgets = context.budgets;
    this.mux = new Mux(
      null,
      context.limits,
      undefined,
      budgets && {
        limit: budgets.perClient,
        shared: budgets,
        // Bytes from this client wait for visitors that do not read them: stop reading the client's
        // WebSocket (TCP backpressure reaches it, and its own streams pause) rather than hold more.
        onReceivePressure: (over) => {
          this.receivePaused = over;
          this.applyPause();
        },
      },
    );
  }

  /** Reads the WebSocket or not, as the receive budget says (only while live: a sync must get through). */
  private applyPause(): void {
    const ws = this.ws;
    if (ws === null) return;
    if (this.receivePaused && (this.state === "live" || this.state === "draining")) ws.pause();
    else if (ws.isPaused) ws.resume();
  }

  /** The client's address, for logs. */
  get remote(): string {
    return this.ws?.data.remote ?? "(disconnected)";
  }

  /** True while the grace period runs. */
  get reserved(): boolean {
    return this.state === "reserved";
  }

  /** Checks a presented resume secret in constant time. */
  secretMatches(presented: string): boolean {
    return keyMatches(presented, this.secret);
  }

  /**
   * Binds a WebSocket: a new session starts live; a resumed one sends its stream positions and waits
   * for the client's before frames flow. A still-connected older WebSocket is replaced.
   */
  attach(ws: SessionSocket): void {
    const resumed = this.ws !== null || this.state === "reserved";
    if (this.ws) {
      const old = this.ws;
      old.data.session = null;
      this.mux.detach();
      old.close(CloseCode.Replaced, "session resumed on a newer connection");
    }
    clearTimeout(this.graceTimer);
    // A replaced connection's handshake deadline is not this one's: it would end the session later.
    clearTimeout(this.handshakeTimer);
    this.ws = ws;
    ws.data.session = this;
    this.liveness.restart();
    const hello: Hello = {
      type: "hello",
      ...this.context.limits,
      session: this.id,
      secret: this.secret,
      resumed,
    };
    ws.send(JSON.stringify(hello));
    // A connection that upgrades and then says nothing holds resources for nothing: bound it.
    if (this.tunnels.size === 0 || resumed)
      this.handshakeTimer = setTimeout(
        () =>
          this.fail(CloseCode.PolicyViolation, `no expose or sync within ${this.context.handshakeSeconds} s`),
        this.context.handshakeSeconds * 1000,
      );
    if (resumed) {
      this.resumes++;
      if (this.context.metrics) this.context.metrics.resumes++;
      this.state = "syncing";
      ws.send(JSON.stringify({ type: "sync", ...this.mux.syncState() } satisfies SyncMessage));
    } else {
      this.state = "live";
      this.mux.start((frame) => this.sendFrame(frame));
    }
    this.applyPause();
  }

  private sendFrame(frame: Uint8Array): void {
    const ws = this.ws;
    if (ws === null) return;
    const sent = ws.send(frame);
    // -1: part of it is queued. Pause every reader only past a high-water mark: pausing on any queue
    // cost two epoll_ctl per stream per bulk frame. 0: dropped → the socket is dead.
    if (sent === -1 && ws.getBufferedAmount() > SEND_HIGH_WATER) this.mux.setBlocked(true);
    else if (sent === 0) this.fail(CloseCode.InternalError, "WebSocket send failed");
  }

  /** One message from the client's WebSocket. */
  onMessage(message: string | Uint8Array): void {
    this.liveness.heard();
    try {
      if (typeof message === "string") this.onControl(message);
      else if (this.state === "live" || this.state === "draining") this.mux.receive(message, true);
      else throw new ProtocolError("binary frame before sync");
    } catch (error) {
      // A broken protocol is no network blip: the session ends instead of being reserved.
      if (error instanceof ProtocolError)
        this.fail(CloseCode.ProtocolError, `protocol error: ${error.message}`);
      else this.fail(CloseCode.InternalError, `internal error: ${describeError(error)}`);
    }
  }

  /** The WebSocket can take more: resume reading every stream. */
  onDrain(): void {
    if (this.state === "live" || this.state === "draining") this.mux.setBlocked(false);
  }

  private onControl(text: string): void {
    const message = parseControl(text);
    if (message.type === "expose" && this.state === "live") this.expose(message);
    else if (message.type === "unexpose" && this.state === "live") this.unexpose(message);
    else if (message.type === "sync" && this.state === "syncing") {
      clearTimeout(this.handshakeTimer);
      this.state = "live";
      this.mux.resume((frame) => this.sendFrame(frame), message);
      this.applyPause();
      this.context.log.info(
        `client ${this.remote} resumed session: ${this.tunnels.size} tunnels, ${this.mux.streams.size} streams kept`,
      );
    } else throw new ProtocolError(`unexpected '${message.type}' from a client (${this.state})`);
  }

  /** ` (user NAME)` for log lines, or "" without users. */
  private get who(): string {
    return this.account === undefined ? "" : ` (${this.account})`;
  }

  private expose(request: ExposeRequest): void {
    const { limits, tunnelIds } = this.context;
    if (this.tunnels.size >= limits.maxTunnelsPerClient) {
      this.refuse(request, "limit", `a client may hold at most ${limits.maxTunnelsPerClient} tunnels`);
      return;
    }
    const account = this.account;
    const maxTunnels = account?.limits.maxTunnels;
    if (account !== undefined && maxTunnels !== undefined && account.tunnels >= maxTunnels) {
      this.refuse(request, "limit", `${account} may hold at most ${maxTunnels} tunnels`);
      return;
    }
    // A client re-exposing after a server restart keeps its tunnel id unless another client holds it.
    const wanted = request.tunnel;
    const id = wanted !== undefined && !tunnelIds.has(wanted) ? wanted : nanoid(12);
    const tunnel: Tunnel = { id, ref: this.nextRef++, port: 0, visitors: new Set() };
    // Taken before a cluster lease is awaited: two exposes in flight never get one id.
    tunnelIds.add(id);
    const opened = request.kind === "tcp" ? this.openTcp(tunnel, request) : this.openHttp(tunnel, request);
    // Alone, a tunnel opens at once; in a cluster, once Redis has leased its name or port.
    if (opened instanceof Promise)
      opened.then(
        (result) => this.opened(request, tunnel, result),
        (error) => this.opened(request, tunnel, { code: "internal", message: describeError(error) }),
      );
    else this.opened(request, tunnel, opened);
  }

  /** Expose, continued: the tunnel's port or name is open (or refused); tell the client. */
  private opened(request: ExposeRequest, tunnel: Tunnel, result: LeaseRefusal | null): void {
    const { log, domain, tunnelIds } = this.context;
    const { id } = tunnel;
    const account = this.account;
    let opened = result;
    if (opened === null && this.state === "ended") {
      // The session ended while a cluster lease was being taken: give everything back.
      this.closeTunnel(tunnel, true);
      opened = { code: "gone", message: "session ended" };
    }
    if (opened !== null) {
      tunnelIds.delete(id);
      this.refuse(request, opened.code, opened.message);
      return;
    }
    this.tunnels.set(tunnel.ref, tunnel);
    if (account !== undefined) account.tunnels++;
    // Only a live tunnel ends the handshake: refused requests alone do not keep a connection open.
    clearTimeout(this.handshakeTimer);
    const named = tunnel.name === undefined ? undefined : hostOfKey(tunnel.name, domain);
    const url =
      named === undefined
        ? `${formatHost(domain)}:${tunnel.port}`
        : request.kind === "tls"
          ? `tls://${named}:${tunnel.port}`
          : `${this.context.httpsPort !== undefined ? "https" : (this.context.httpScheme ?? "http")}://${named}:${tunnel.port}`;
    tunnel.url = url;
    log.info(`tunnel ${tunnel.id} for ${this.remote}${this.context.healthDetail ? this.who : ""}: ${url}`);
    const host = named ?? domain;
    const { ref, port, name } = tunnel;
    const exposed = { type: "exposed", id: request.id, tunnel: id, ref, name, host, port, url };
    this.ws?.send(JSON.stringify(exposed));
  }

  /**
   * Closes one of this session's tunnels at its client's request: its visitors, its public port or
   * name and its id are released at once. A tunnel id this session does not hold gets an error that
   * says no more (whether another session holds it is not this client's business).
   */
  private unexpose(request: UnexposeRequest): void {
    const tunnel = [...this.tunnels.values()].find((t) => t.id === request.tunnel);
    if (tunnel === undefined) {
      this.context.log.info(
        `unexpose refused for ${this.remote}${this.who}: no tunnel ${request.tunnel} in its session`,
      );
      const message = `this session holds no tunnel ${request.tunnel}`;
      this.ws?.send(JSON.stringify({ type: "error", id: request.id, code: "unknown_tunnel", message }));
      return;
    }
    this.removeTunnel(tunnel);
    this.context.log.info(`tunnel ${tunnel.id} of ${this.remote}${this.who} closed by its client`);
    this.ws?.send(JSON.stringify({ type: "unexposed", id: request.id, tunnel: tunnel.id }));
  }

  /** Closes a tunnel for good: its visitors (reset: the client hears of each), port or name, and id. */
  private removeTunnel(tunnel: Tunnel): void {
    for (const stream of [...tunnel.visitors]) stream.reset(ResetCode.Shutdown, "tunnel closed");
    this.closeTunnel(tunnel, true);
    this.tunnels.delete(tunnel.ref);
    this.context.tunnelIds.delete(tunnel.id);
    if (this.account !== undefined) this.account.tunnels--;
  }

  /**
   * Where a TCP tunnel may listen: the server's range, narrowed to the user's ranges when it has
   * some (each range that overlaps the server's). Null: no port at all (a refusal says why).
   */
  private tcpRanges(
    request: ExposeRequest,
  ): { ranges: (PortRange | undefined)[] } | { code: string; message: string } {
    const { tcpPorts } = this.context;
    const account = this.account;
    const allowed = account?.limits.tcpPorts;
    if (account === undefined || allowed === undefined) return { ranges: [tcpPorts] };
    const outside = { code: "not_allowed", message: "" };
    if (request.port !== undefined && !portAllowed(request.port, allowed))
      return {
        ...outside,
        message: `port ${request.port} is outside user ${account.name}'s ports ${describeRanges(allowed)}`,
      };
    const ranges = allowed
      .map((r) => (tcpPorts ? { min: Math.max(r.min, tcpPorts.min), max: Math.min(r.max, tcpPorts.max) } : r))
      .filter((r) => r.min <= r.max)
      .filter((r) => request.port === undefined || (request.port >= r.min && request.port <= r.max));
    // An operator who lists a user's ports outside the server's range (or no range) means them.
    if (ranges.length === 0 && tcpPorts !== undefined)
      return {
        ...outside,
        message: `user ${account.name}'s ports ${describeRanges(allowed)} are outside the server's range ${describeRanges([tcpPorts])}`,
      };
    return { ranges };
  }

  /** What this session's tunnels are leased with in a cluster. */
  private leaseRequest() {
    const account = this.account;
    return {
      owner: this.owner,
      claim: this.claim,
      user: account?.name,
      userLimit: account?.limits.maxTunnels,
    };
  }

  /**
   * A TCP tunnel: its own public port. In a cluster the port is leased too: a port asked for is
   * leased before it is bound (a port this node opens for another node's tunnel is given up only when
   * the lease says so); any other port is bound first and then leased, another one tried when some
   * node already holds it.
   */
  private openTcp(
    tunnel: Tunnel,
    request: ExposeRequest,
  ): LeaseRefusal | null | Promise<LeaseRefusal | null> {
    const cluster = this.context.cluster;
    if (cluster === undefined) return this.bindTcp(tunnel, request);
    return this.leaseTcp(cluster, tunnel, request);
  }

  /** {@link Session.openTcp} in a cluster. */
  private async leaseTcp(
    cluster: ClusterNode,
    tunnel: Tunnel,
    request: ExposeRequest,
  ): Promise<LeaseRefusal | null> {
    if (request.port !== undefined) {
      const key: LeaseKey = `tcp:${request.port}`;
      const refused = await cluster.acquire(key, this.leaseRequest());
      if (refused !== null) return refused;
      cluster.unmirror(request.port);
      const bound = this.bindTcp(tunnel, request);
      if (bound !== null) cluster.release(key);
      else tunnel.lease = key;
      return bound;
    }
    for (let attempt = 0; attempt < 8; attempt++) {
      const bound = this.bindTcp(tunnel, request);
      if (bound !== null) return bound;
      const key: LeaseKey = `tcp:${tunnel.port}`;
      const refused = await cluster.acquire(key, this.leaseRequest());
      if (refused === null) {
        tunnel.lease = key;
        return null;
      }
      this.closeTunnel(tunnel, true);
      tunnel.listener = undefined;
      if (refused.code !== "port_taken") return refused;
    }
    return { code: "no_free_port", message: "no port free on this node that no other node holds" };
  }

  /** Binds a TCP tunnel's public port. */
  private bindTcp(tunnel: Tunnel, request: ExposeRequest): LeaseRefusal | null {
    const { host, ownPorts, portHolders } = this.context;
    const where = this.tcpRanges(request);
    if (!("ranges" in where)) return where;
    try {
      let lastError: unknown;
      for (const range of where.ranges) {
        try {
          tunnel.listener = listenPublic<RelaySocketData>(
            { host, port: request.port, range, own: ownPorts },
            { ...relaySocketHandlers, open: (socket) => this.acceptVisitor(tunnel, socket) },
          );
          break;
        } catch (error) {
          lastError = error;
          // Another of the user's ranges may have a free port; a port asked for is in one range only.
          if (!(error instanceof PortError && error.code === "no_free_port")) throw error;
        }
      }
      if (tunnel.listener === undefined) {
        const allowed = this.account?.limits.tcpPorts;
        if (allowed !== undefined && lastError instanceof PortError)
          throw new PortError(
            "no_free_port",
            `no free port in user ${this.account?.name}'s ports ${describeRanges(allowed)}`,
          );
        throw lastError;
      }
    } catch (error) {
      // "In use" is true but useless when a dropped client's session holds the port: say for how long.
      const holder = request.port === undefined ? undefined : portHolders?.get(request.port);
      if (holder?.reserved) {
        const left = Math.max(1, Math.ceil((holder.graceEnds - Date.now()) / 1000));
        return {
          code: "port_reserved",
          message: `port ${request.port} is reserved for a dropped client's session for up to ${left} s more (the server's --grace); wait, or ask for another port`,
        };
      }
      return {
        code: error instanceof PortError ? error.code : "listen_failed",
        message: describeError(error),
      };
    }
    tunnel.port = tunnel.listener.port;
    portHolders?.set(tunnel.port, this);
    return null;
  }

  /** An HTTP tunnel: a name on the server's HTTP port (leased first in a cluster). */
  private openHttp(
    tunnel: Tunnel,
    request: ExposeRequest,
  ): LeaseRefusal | null | Promise<LeaseRefusal | null> {
    const { httpPort, httpRoutes } = this.context;
    if (httpPort === undefined) return { code: "no_http", message: "this server has no --http-port" };
    if (request.kind === "tls" && this.context.httpsPort === undefined)
      return { code: "no_https", message: "this server has no --https-port for end-to-end TLS tunnels" };
    const account = this.account;
    const custom = customHost(request.hostname, this.context.domain, account, this.context.customDomains);
    if (custom !== undefined && typeof custom !== "string") return custom;
    const patterns = account?.limits.subdomains;
    const allowedText = patterns === undefined ? "" : ` (allowed: ${patterns.join(", ")})`;
    let name = custom ?? request.subdomain;
    if (
      custom === undefined &&
      name !== undefined &&
      account !== undefined &&
      patterns !== undefined &&
      !subdomainAllowed(name, patterns)
    )
      return {
        code: "not_allowed",
        message: `subdomain '${name}' is not allowed for ${account}${allowedText}`,
      };
    if (name === undefined) {
      if (account !== undefined && account.limits.randomSubdomain === false)
        return {
          code: "not_allowed",
          message: `${account} may not get a random subdomain: ask for one with --subdomain${allowedText}`,
        };
      name = randomNameFor(patterns, randomName());
      if (name === undefined)
        return {
          code: "not_allowed",
          message: `${account} has no subdomain pattern with '*' to draw a random name from: ask for one with --subdomain${allowedText}`,
        };
    }
    if (custom === undefined && !SUBDOMAIN.test(name))
      return {
        code: "bad_subdomain",
        message: `subdomain '${name}' is not a DNS label (a-z, 0-9, inner '-', at most 63)`,
      };
    if (httpRoutes.has(name))
      return {
        code: "subdomain_taken",
        message: `${custom === undefined ? "subdomain" : "host name"} '${name}' is taken`,
      };
    const cluster = this.context.cluster;
    if (cluster !== undefined) return this.leaseHttp(cluster, tunnel, request, name);
    this.route(tunnel, request, name);
    return null;
  }

  /** {@link Session.openHttp} in a cluster: the name is leased first. */
  private async leaseHttp(
    cluster: ClusterNode,
    tunnel: Tunnel,
    request: ExposeRequest,
    name: string,
  ): Promise<LeaseRefusal | null> {
    const key: LeaseKey = `http:${name}`;
    const refused = await cluster.acquire(key, {
      ...this.leaseRequest(),
      hostHeader: request.hostHeader,
      basicAuth: request.basicAuth,
    });
    if (refused !== null) return refused;
    if (this.context.httpRoutes.has(name)) {
      cluster.release(key);
      return { code: "subdomain_taken", message: `subdomain '${name}' is taken` };
    }
    tunnel.lease = key;
    this.route(tunnel, request, name);
    return null;
  }

  /** Routes `NAME.DOMAIN` to an HTTP tunnel of this session. */
  private route(tunnel: Tunnel, request: ExposeRequest, name: string): void {
    const { httpPort, httpRoutes } = this.context;
    tunnel.name = name;
    tunnel.port = httpPort as number;
    const passthrough = request.kind === "tls";
    httpRoutes.set(name, {
      hostHeader: request.hostHeader,
      basicAuth: request.basicAuth,
      passthrough: passthrough || undefined,
      open: (socket) =>
        this.acceptHttpVisitor(tunnel, socket, passthrough ? StreamKind.Tcp : StreamKind.Http),
    });
    // A terminated name gets its certificate ordered now (automatic HTTPS); a passthrough one needs none.
    if (!passthrough && this.context.names !== undefined) {
      tunnel.claimed = { host: hostOfKey(name, this.context.domain), owner: this.orderOwner };
      this.context.names.claimed(tunnel.claimed.host, tunnel.claimed.owner);
    }
  }

  /** Who a name's certificate orders count against: the user, or without users the client's address. */
  private get orderOwner(): string {
    return this.account !== undefined
      ? `user ${this.account.name}`
      : `client ${this.remote.replace(/:\d+$/, "")}`;
  }

  /** A visitor's first request named an HTTP tunnel of this session: announce it as a new stream. */
  private acceptHttpVisitor(
    tunnel: Tunnel,
    socket: RelaySocket,
    kind: StreamKind = StreamKind.Http,
  ): Stream | { status: number; message: string } {
    if (this.state !== "live")
      return { status: 502, message: "the tunnel's client is offline; try again shortly" };
    if (tunnel.visitors.size >= this.context.limits.maxStreamsPerTunnel)
      return { status: 502, message: "too many connections to this tunnel" };
    if (this.overVisitorLimit(tunnel)) return { status: 502, message: "too many connections to this tunnel" };
    return this.relayVisitor(tunnel, socket, kind);
  }

  /** True (and logged) when the user's `max_visitors` is reached: the visitor is refused. */
  private overVisitorLimit(tunnel: Tunnel): boolean {
    const account = this.account;
    const max = account?.limits.maxVisitors;
    if (account === undefined || max === undefined || account.visitors < max) return false;
    this.context.log.warn(
      `tunnel ${tunnel.id}: visitor refused, ${account} has ${account.visitors} visitors open (max_visitors)`,
    );
    return true;
  }

  /** Announces a visitor as a new stream of `tunnel` (OPEN) and relays its socket. */
  private relayVisitor(tunnel: Tunnel, socket: RelaySocket, kind: StreamKind): Stream {
    const account = this.account;
    if (account !== undefined) account.visitors++;
    const stream = this.mux.createStream((closed) => {
      tunnel.visitors.delete(closed);
      if (account !== undefined) account.visitors--;
      this.context.metrics?.visitorClosed(tunnel, closed);
    });
    tunnel.visitors.add(stream);
    const remote = `${formatHost(unmappedAddress(socket.remoteAddress))}:${socket.remotePort}`;
    this.mux.sendOpen(stream, kind, tunnel.ref, { remote });
    stream.attach(socket);
    return stream;
  }

  private refuse(request: ExposeRequest, code: string, message: string): void {
    this.context.log.info(`expose refused for ${this.remote}${this.who}: ${message}`);
    this.ws?.send(JSON.stringify({ type: "error", id: request.id, code, message }));
  }

  /** A visitor connected to a tunnel's public port: announce it as a new stream and relay. */
  private acceptVisitor(tunnel: Tunnel, socket: RelaySocket): void {
    socket.data = { stream: null };
    // A node whose lease lapsed (frozen, or taken over before it heard) serves the port no more: the
    // visitor goes to whichever node holds it now, if any.
    const cluster = this.context.cluster;
    if (tunnel.lease !== undefined && cluster !== undefined && !cluster.holds(tunnel.lease)) {
      if (!cluster.forwardTcp(tunnel.port, socket)) socket.terminate();
      return;
    }
    // While the client is away (or the server drains) a visitor is refused at once, not left hanging.
    if (this.state !== "live") {
      socket.terminate();
      return;
    }
    const limit = this.context.limits.maxStreamsPerTunnel;
    if (tunnel.visitors.size >= limit) {
      this.context.log.warn(
        `tunnel ${tunnel.id}: visitor refused, ${tunnel.visitors.size} streams open (limit)`,
      );
      socket.terminate();
      return;
    }
    if (this.overVisitorLimit(tunnel)) {
      socket.terminate();
      return;
    }
    this.relayVisitor(tunnel, socket, StreamKind.Tcp);
  }

  /**
   * Idle sweep (`--visitor-idle-timeout`): resets visitors whose byte counts did not move for
   * `idleMs`. A sweep instead of Bun's `socket.timeout()`, which fires on a 4 s grid and keeps the
   * socket open; the counters it reads already exist, so the relay's hot path pays nothing.
   */
  sweepIdle(now: number, idleMs: number): void {
    if (this.state !== "live") return;
    const marks = this.idleMarks;
    for (const [id, stream] of this.mux.streams) {
      const mark = marks.get(id);
      if (mark === undefined || mark.progress !== stream.progress)
        marks.set(id, { progress: stream.progress, since: now });
      else if (now - mark.since >= idleMs) stream.reset(ResetCode.Idle, "idle timeout");
    }
    for (const id of marks.keys()) if (!this.mux.streams.has(id)) marks.delete(id);
  }

  /** Heartbeat tick: ping a live client, or declare it dead after `timeoutMs` of silence. */
  heartbeat(now: number, timeoutMs: number): void {
    const ws = this.ws;
    if (ws === null || this.state === "reserved") return;
    // While paused for its budget we do not read the client, so its silence is ours.
    const silence = this.liveness.silence(now, ws.isPaused);
    if (silence > timeoutMs) {
      this.context.log.warn(`client ${this.remote} silent for ${Math.round(silence / 1000)} s: dead`);
      if (this.context.metrics) this.context.metrics.heartbeatMisses++;
      ws.terminate();
      this.onClose(ws, 1006);
      return;
    }
    ws.ping();
  }

  /**
   * The WebSocket closed. A client that said goodbye (1000) ends the session; any other loss keeps
   * the tunnels and streams reserved for the grace period.
   */
  onClose(ws: SessionSocket, code: number, reason = ""): void {
    if (ws !== this.ws) return; // an old connection that a resume replaced
    this.ws = null;
    ws.data.session = null;
    clearTimeout(this.handshakeTimer);
    const nothingToKeep = this.tunnels.size === 0 || this.context.graceSeconds === 0;
    // A client that broke the WebSocket protocol (Bun closed it: bad frame, bad UTF-8, a message over
    // the size limit) is no network blip: nothing is reserved for it.
    const broken = BROKEN_CLOSE_CODES.has(code) || BUN_TOO_BIG.test(reason);
    if (code === CloseCode.Normal || this.state === "draining" || nothingToKeep || broken) {
      if (broken)
        this.context.log.warn(
          `client ${ws.data.remote} broke the protocol (${code} ${reason}): session ended`,
        );
      this.end();
      return;
    }
    this.state = "reserved";
    this.graceEnds = Date.now() + this.context.graceSeconds * 1000;
    this.mux.detach();
    this.context.log.info(
      `client ${ws.data.remote} lost (${code}): ${this.tunnels.size} tunnels reserved for ${this.context.graceSeconds} s`,
    );
    this.graceTimer = setTimeout(() => {
      this.context.log.info(`session ${this.id}: grace period over, tunnels released`);
      this.end();
    }, this.context.graceSeconds * 1000);
  }

  /**
   * Server shutdown: no new visitors (the public ports close), tell the client, let streams finish.
   * Resolves when no stream is left or `drainMs` passed.
   */
  async drain(drainMs: number): Promise<void> {
    if (this.state !== "live") return this.end();
    this.state = "draining";
    for (const tunnel of this.tunnels.values()) this.closeTunnel(tunnel, false);
    this.ws?.send(JSON.stringify({ type: "going-away", drain: Math.round(drainMs / 1000) }));
    const deadline = Date.now() + drainMs;
    while (this.mux.streams.size > 0 && this.ws !== null && Date.now() < deadline) await Bun.sleep(50);
  }

  /**
   * Closes the WebSocket with a code, after logging why. A protocol error or policy violation ends the
   * session; a failed send keeps the tunnels reserved, as any other loss of the connection does.
   */
  fail(code: number, reason: string): void {
    const ws = this.ws;
    if (ws === null) return;
    this.context.log.warn(`closing client ${ws.data.remote}: ${reason}`);
    if (code === CloseCode.ProtocolError || code === CloseCode.PolicyViolation) {
      this.end(code, reason.slice(0, 120));
      return;
    }
    ws.close(code, reason.slice(0, 120));
    this.onClose(ws, code);
  }

  /**
   * The user's credentials were withdrawn (removed, or its token changed, by a reload): the session
   * ends at once, tunnels and visitors with it, and the client hears {@link CloseCode.Revoked} (it must
   * not retry). Nothing is reserved: the token that could resume it no longer opens anything.
   */
  revoke(reason: string): void {
    this.context.log.warn(`closing client ${this.remote}${this.who}: ${reason}`);
    // The code says "revoked"; the reason says why, for the client's one line (a close reason is ≤ 123 bytes).
    this.end(CloseCode.Revoked, reason.slice(0, 120));
  }

  /**
   * Cluster: another node took this tunnel's name or port (its client moved there): it stops here at
   * once, with its visitors, and the client (if still connected here) hears why.
   */
  lose(tunnel: Tunnel): void {
    if (!this.tunnels.has(tunnel.ref)) return;
    this.context.log.warn(`tunnel ${tunnel.id} (${tunnel.url}): lease lost to another node; closed here`);
    this.removeTunnel(tunnel);
    const message = `tunnel ${tunnel.id} (${tunnel.url}) is now served by another node of the cluster`;
    this.ws?.send(JSON.stringify({ type: "error", code: "tunnel_moved", message }));
  }

  /**
   * Cluster: a visitor another node carried here for one of this session's tunnels (`socket` is one
   * end of a splice). A stream, or why not.
   */
  acceptRemote(tunnel: Tunnel, socket: RelaySocket, kind: StreamKind): Stream | string {
    if (this.state !== "live") return "the tunnel's client is offline; try again shortly";
    if (tunnel.visitors.size >= this.context.limits.maxStreamsPerTunnel || this.overVisitorLimit(tunnel))
      return "too many connections to this tunnel";
    return this.relayVisitor(tunnel, socket, kind);
  }

  /** Stops a tunnel taking visitors: its public port closes, or its name goes. */
  private closeTunnel(tunnel: Tunnel, closeVisitors: boolean): void {
    if (tunnel.lease !== undefined) {
      this.context.cluster?.release(tunnel.lease);
      tunnel.lease = undefined;
    }
    tunnel.listener?.stop(closeVisitors);
    if (tunnel.listener && this.context.portHolders?.get(tunnel.port) === this)
      this.context.portHolders.delete(tunnel.port);
    if (tunnel.name !== undefined) this.context.httpRoutes.delete(tunnel.name);
    if (tunnel.claimed !== undefined) {
      this.context.names?.released(tunnel.claimed.host, tunnel.claimed.owner);
      tunnel.claimed = undefined;
    }
  }

  /** Ends the session for good: closes its public ports, every visitor and the WebSocket. */
  end(code: number = CloseCode.GoingAway, reason = "server shutting down"): void {
    if (this.state === "ended") return;
    this.state = "ended";
    clearTimeout(this.graceTimer);
    clearTimeout(this.handshakeTimer);
    for (const tunnel of this.tunnels.values()) {
      this.closeTunnel(tunnel, true);
      this.context.tunnelIds.delete(tunnel.id);
    }
    if (this.account !== undefined) this.account.tunnels -= this.tunnels.size;
    this.tunnels.clear();
    this.mux.destroyAll();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.data.session = null;
      ws.close(code, reason);
    }
    this.context.onEnded(this);
  }
}
