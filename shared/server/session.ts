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
import { nanoid } from "nanoid";
import { formatHost, unmappedAddress } from "../args.ts";
import { joinAddress } from "../ip.ts";
import { Liveness } from "../liveness.ts";
import { describeError, type Logger } from "../log.ts";
import type { Budget } from "../relay/budget.ts";
import { Mux } from "../relay/mux.ts";
import type { RelaySocket, Stream } from "../relay/stream.ts";
import {
  CloseCode,
  type ExposeRequest,
  type Hello,
  ProtocolError,
  parseControl,
  ResetCode,
  type StreamKind,
  type SyncMessage,
  type UnexposeRequest,
} from "../wire/protocol.ts";
import { keyMatches } from "./auth.ts";
import type { LinkEndpoint } from "./cluster/link.ts";
import { secretHash } from "./cluster/node.ts";
import type { ServerMetrics } from "./metrics.ts";
import type { Namespace, Refusal, Tunnel, TunnelHolder } from "./namespace/namespace.ts";
import { UdpSessionFlows } from "./udp-port.ts";
import type { Account } from "./users.ts";
import type { RawWebSocket } from "./ws-server.ts";

/**
 * What a WebSocket on the control port serves: a client's session, or another node's link. Each
 * connection has one; the WebSocket events go to it and nowhere else.
 */
export interface WebSocketPeer {
  onMessage(message: string | Uint8Array): void;
  onDrain(): void;
  /** A ping or pong arrived: the peer is alive. */
  heard(): void;
  onClose(ws: SessionSocket, code: number, reason: string): void;
}

/** The `data` slot of every control-port WebSocket. */
export interface SessionSocketData {
  /** Where its events go (null before it opened, and once a newer connection replaced it). */
  peer: WebSocketPeer | null;
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
  /** Set instead of a session when another node of the cluster opened this connection (its link), or a client's standby connection. */
  link?: LinkEndpoint;
}

/** A client's WebSocket on the server (the control port's own, see ws-server.ts). */
export type SessionSocket = RawWebSocket<SessionSocketData>;

/** Server-wide settings and registries every session uses. */
export interface SessionContext {
  /** Where tunnels are placed and visitors routed (ports, names, pools, leases). */
  namespace: Namespace;
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
  /** Called once when the session ended for good. */
  onEnded(session: Session): void;
  /** Whether log lines about tunnels name their user (`--health-detail`: the operator asked). */
  healthDetail?: boolean;
  /** Counters for the admin listener's `/metrics` (absent without `--admin`: nothing counted). */
  metrics?: ServerMetrics;
}

export type { Tunnel };

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
export class Session implements TunnelHolder, WebSocketPeer {
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
  graceEnds = 0;
  private handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  /** Exposes waiting for a cluster lease: the handshake deadline waits for them. */
  private exposing = 0;
  private nextRef = 1;
  /** Per stream: its byte count at the last idle sweep that saw it move, and when. */
  private readonly idleMarks = new Map<number, { progress: number; since: number }>();

  /** True while the receive budget is spent: the WebSocket is not read (see {@link Session.applyPause}). */
  private receivePaused = false;
  /** The session's UDP flows, made with its first UDP tunnel (udp-port.ts). */
  private udp?: UdpSessionFlows;
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

  /** The client's IP address (its certificate orders count against it without users). */
  get address(): string {
    return this.remote.replace(/:\d+$/, "");
  }

  /** True while its client is connected and frames flow: visitors are carried only then. */
  get live(): boolean {
    return this.state === "live";
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
      old.data.peer = null;
      this.mux.detach();
      old.close(CloseCode.Replaced, "session resumed on a newer connection");
    }
    clearTimeout(this.graceTimer);
    // A replaced connection's handshake deadline is not this one's: it would end the session later.
    clearTimeout(this.handshakeTimer);
    this.ws = ws;
    ws.data.peer = this;
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
    if (this.tunnels.size === 0 || resumed) this.armHandshake();
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

  /**
   * The handshake deadline. An expose still waiting for its cluster lease (Redis away) is no silent
   * connection: the deadline waits for its answer, which tells the client the real reason.
   */
  private armHandshake(): void {
    this.handshakeTimer = setTimeout(() => {
      if (this.exposing > 0) this.armHandshake();
      else
        this.fail(CloseCode.PolicyViolation, `no expose or sync within ${this.context.handshakeSeconds} s`);
    }, this.context.handshakeSeconds * 1000);
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

  /** A ping or pong from the client. */
  heard(): void {
    this.liveness.heard();
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

  /** Expose: the namespace places the tunnel (in a cluster, once Redis leased it); tell the client. */
  private expose(request: ExposeRequest): void {
    const claimed = this.context.namespace.claim(this, request, this.nextRef++, this.tunnels.size);
    // Alone, a tunnel opens at once; in a cluster, once Redis has leased its name or port.
    if (claimed instanceof Promise) {
      this.exposing++;
      claimed
        .finally(() => this.exposing--)
        .then(
          (result) => this.exposed(request, result),
          (error) => this.exposed(request, { code: "internal", message: describeError(error) }),
        );
    } else this.exposed(request, claimed);
  }

  /** Expose, continued: the tunnel is live (or refused); tell the client. */
  private exposed(request: ExposeRequest, result: Tunnel | Refusal): void {
    if ("code" in result) {
      this.refuse(request, result.code, result.message);
      // The cluster's Redis is away: the client asks again; its deadline starts again with the answer.
      if (result.code === "cluster_unavailable" && this.tunnels.size === 0 && this.state === "live") {
        clearTimeout(this.handshakeTimer);
        this.armHandshake();
      }
      return;
    }
    const tunnel = result;
    if (this.state === "ended") {
      // The session ended while a cluster lease was being taken: give everything back.
      this.context.namespace.release(tunnel, true);
      this.refuse(request, "gone", "session ended");
      return;
    }
    this.tunnels.set(tunnel.ref, tunnel);
    // Only a live tunnel ends the handshake: refused requests alone do not keep a connection open.
    clearTimeout(this.handshakeTimer);
    const { id, ref, port, name, url } = tunnel;
    this.context.log.info(
      `tunnel ${id} for ${this.remote}${this.context.healthDetail ? this.who : ""}: ${url}`,
    );
    const domain = this.context.namespace.http.domain;
    const host = name === undefined ? domain : `${name}.${domain}`;
    // access: this server checks the tunnel's allow and deny lists (a client refuses to rely on an older one).
    const exposed = { type: "exposed", id: request.id, tunnel: id, ref, name, host, port, url, access: true };
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

  /** Closes a tunnel for good: its visitors (reset: the client hears of each), its place and id. */
  private removeTunnel(tunnel: Tunnel): void {
    for (const stream of [...tunnel.visitors]) stream.reset(ResetCode.Shutdown, "tunnel closed");
    this.context.namespace.release(tunnel, true);
    this.tunnels.delete(tunnel.ref);
  }

  /**
   * A visitor the namespace routed to one of this session's tunnels (a public socket, or one end of a
   * splice from another node): announced to the client as a new stream, or why not.
   */
  openVisitor(tunnel: Tunnel, socket: RelaySocket, kind: StreamKind): Stream | string {
    if (this.state !== "live") return "the tunnel's client is offline; try again shortly";
    const limit = this.context.limits.maxStreamsPerTunnel;
    if (tunnel.visitors.size >= limit) return `${tunnel.visitors.size} streams open (limit)`;
    const account = this.account;
    const max = account?.limits.maxVisitors;
    // In a cluster `elsewhere` counts the user's visitors on the other nodes (a second or two old).
    if (account !== undefined && max !== undefined && account.visitors + account.elsewhere >= max)
      return `${account} has ${account.visitors + account.elsewhere} visitors open (max_visitors)`;
    if (account !== undefined) account.visitors++;
    const stream = this.mux.createStream((closed) => {
      tunnel.visitors.delete(closed);
      if (account !== undefined) account.visitors--;
      this.context.metrics?.visitorClosed(tunnel, closed);
    });
    tunnel.visitors.add(stream);
    const remote = `${formatHost(unmappedAddress(socket.remoteAddress))}:${socket.remotePort}`;
    // The public address the visitor reached (for PROXY protocol headers); a spliced socket (a visitor
    // another node carried here) reports the address at that node.
    const local = socket.localAddress ? joinAddress(socket.localAddress, socket.localPort) : undefined;
    this.mux.sendOpen(stream, kind, tunnel.ref, { remote, local });
    stream.attach(socket);
    return stream;
  }

  /** @inheritdoc */
  udpFlows(): UdpSessionFlows {
    this.udp ??= new UdpSessionFlows(
      this.mux,
      () => this.ws?.getBufferedAmount() ?? 0,
      this.context.namespace.udpClosed,
    );
    return this.udp;
  }

  private refuse(request: ExposeRequest, code: string, message: string): void {
    this.context.log.info(`expose refused for ${this.remote}${this.who}: ${message}`);
    this.ws?.send(JSON.stringify({ type: "error", id: request.id, code, message }));
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

  /**
   * Heartbeat tick: ping a live client that was silent this interval, or declare it dead after
   * `timeoutMs` of silence. A client heard from since the last tick is not pinged: `client.ts` pings
   * at its own heartbeat and hears our pong (sent by Bun, no JS), so our ping would tell neither side
   * anything; it halves what an idle client costs the server (a ping out and a pong in each interval).
   * A client paused for its budget is pinged still: we do not read its pings then.
   */
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
    // silence is 0 when the client was heard (or excused) since the last tick.
    if (silence > 0 || ws.isPaused) ws.ping();
  }

  /**
   * The WebSocket closed. A client that said goodbye (1000) ends the session; any other loss keeps
   * the tunnels and streams reserved for the grace period.
   */
  onClose(ws: SessionSocket, code: number, reason = ""): void {
    if (ws !== this.ws) return; // an old connection that a resume replaced
    this.ws = null;
    ws.data.peer = null;
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
  /** Tells the client the server is about to shut down (a cluster node leaving: see server.ts). */
  announceGoingAway(drainMs: number): void {
    if (this.state === "live")
      this.ws?.send(JSON.stringify({ type: "going-away", drain: Math.round(drainMs / 1000) }));
  }

  async drain(drainMs: number): Promise<void> {
    if (this.state !== "live") return this.end();
    this.state = "draining";
    for (const tunnel of this.tunnels.values()) this.context.namespace.release(tunnel, false);
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

  /** Ends the session for good: closes its public ports, every visitor and the WebSocket. */
  end(code: number = CloseCode.GoingAway, reason = "server shutting down"): void {
    if (this.state === "ended") return;
    this.state = "ended";
    clearTimeout(this.graceTimer);
    clearTimeout(this.handshakeTimer);
    for (const tunnel of this.tunnels.values()) this.context.namespace.release(tunnel, true);
    this.tunnels.clear();
    this.mux.destroyAll();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.data.peer = null;
      ws.close(code, reason);
    }
    this.context.onEnded(this);
  }
}
