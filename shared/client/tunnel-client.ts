/**
 * The client's view of its session with the server, mirroring the server's `Session`: the control
 * connection (while connected), the stream multiplexer, the tunnels it asked for, and its life cycle:
 *
 * ```text
 * connect ──exposed all──▶ live ──ws lost/silent──▶ reconnecting ──resumed──▶ live
 *                                                        │
 *                                                        └──session gone (server restart)──▶ expose again ──▶ live
 * (closed by the user, or a fatal refusal such as a revoked key: closed for good)
 * ```
 *
 * With several servers (`--server` repeated, or a name with several addresses) the first that answers
 * is used; a lost connection is first resumed on the same server (its visitors carry on), then the
 * others are tried in turn, and a server that does not know the session gets the tunnels exposed again
 * with the same names, ports and ids (the old session id and secret still go along: a cluster node
 * takes them as proof that the names are this client's).
 *
 * Each visitor arrives as an OPEN and becomes its own connection to the local service. Tunnels are
 * asked for one by one and kept by name: {@link TunnelClient.add} and {@link TunnelClient.unexpose}
 * change the set at run time (a config reload), and a server restart exposes the current set again.
 * A close with code 4001 (Revoked: the client's credentials were withdrawn) ends the client for good.
 * @module
 */

import { formatHost } from "../args.ts";
import { deadAfter, Liveness } from "../liveness.ts";
import { describeError, type Logger } from "../log.ts";
import { Mux } from "../relay/mux.ts";
import { type RelaySocket, type RelaySocketData, relaySocketHandlers } from "../relay/stream.ts";
import type { OpenFrame } from "../wire/codec.ts";
import {
  CloseCode,
  type Exposed,
  type ExposeRequest,
  Feature,
  ProtocolError,
  parseControl,
  ResetCode,
  StreamKind,
  type SyncMessage,
  type Unexposed,
  type UnexposeRequest,
} from "../wire/protocol.ts";
import { encodeProxyHeader, visitorAddresses } from "../wire/proxy-protocol.ts";
import { backoffDelay } from "./backoff.ts";
import {
  ConnectError,
  type ControlConnection,
  connectControl,
  openStandby,
  resolveServers,
  type ServerTarget,
  sameTarget,
  targetLabel,
} from "./connect.ts";
import { InspectorTap } from "./inspector/capture.ts";
import type { InspectorStore } from "./inspector/store.ts";
import type { NamedService } from "./options.ts";
import { RequestLogTap } from "./request-log.ts";
import { UdpFlows } from "./udp-flows.ts";

/** A live tunnel, as the server announced it. */
export interface TunnelInfo {
  id: string;
  /** HTTP tunnels: the name under the server's domain. */
  name?: string;
  url: string;
  host: string;
  port: number;
  /** The service it publishes (its `name` is the tunnel's name in the client's set). */
  local: NamedService;
}

/** Client-side failure with a one-line message (auth, TLS, unreachable, port taken, …). */
export class ClientError extends Error {
  override name = "ClientError";
}

/** What a {@link TunnelClient} needs to know. */
export interface TunnelClientSettings {
  /** The servers, in order of preference (never empty); a name with several addresses counts as several. */
  servers: readonly URL[];
  apiKey?: string;
  /** PEM CA certificate(s) to trust for wss. */
  ca?: string;
  insecure?: boolean;
  heartbeatMs: number;
  maxBackoffMs: number;
  /** One line per HTTP request on HTTP tunnels, when set. */
  logRequest?: (line: string) => void;
  /** The inspector's store, when the inspector is on: every visitor's stream is captured into it. */
  inspector?: InspectorStore;
  /** Called for every tunnel the server confirms: at start, when added, and again after a server restart. */
  onExposed?: (tunnel: TunnelInfo) => void;
  /** Called for every tunnel closed at run time ({@link TunnelClient.unexpose}). */
  onClosed?: (tunnel: TunnelInfo) => void;
  /** `--udp-idle-timeout` in ms: a UDP flow's local socket closes after this long without a datagram. */
  udpIdleMs?: number;
  /** Called when the connection to the server is lost, and again once it is back (resumed or not). */
  onConnection?: (change: ConnectionChange) => void;
  /** Called for every visitor connection a tunnel receives (once per connection, not per byte). */
  onVisitor?: (visitor: VisitorInfo) => void;
  log: Logger;
}

/** The connection to the server was lost (the client is reconnecting), or is back. */
export type ConnectionChange =
  | { type: "disconnected"; reason: string }
  /** `resumed`: the same session went on (visitors carried on); else the tunnels were exposed again. */
  | { type: "reconnected"; server: string; resumed: boolean };

/** A visitor connection that arrived through a tunnel. */
export interface VisitorInfo {
  /** The tunnel it came through. */
  tunnel: TunnelInfo;
  /** The visitor's address as the server saw it (`HOST:PORT`). */
  remote: string;
}

/** Where a tunnel's visitors go: its local service, and its public address as the server announced it. */
interface LocalTarget {
  service: NamedService;
  announced: { host: string; port: number };
}

/** A tunnel the client holds: what it asked for, what the server gave, and the ref its OPEN frames use. */
interface Held {
  info: TunnelInfo;
  ref: number;
}

/** What to ask the server for again: a port or name (and a tunnel id, after a server restart). */
interface Wanted {
  port?: number;
  name?: string;
  id?: string;
}

/** A request waiting for the server's answer. */
interface Waiter {
  resolve: (message: Exposed | Unexposed) => void;
  reject: (error: Error) => void;
  /** What the server refused, for the error line. */
  refused: string;
}

/** The server refused a request (as opposed to the connection failing under it). */
export class RefusedError extends ClientError {
  override name = "RefusedError";
  /** The server's error code (`subdomain_taken`, `cluster_unavailable`…). */
  constructor(
    message: string,
    readonly code = "",
  ) {
    super(message);
  }
}

/**
 * Refusals that pass by themselves: the request is asked again (with backoff) rather than given up.
 * `cluster_unavailable`: the cluster's Redis is unreachable from the server's node.
 */
const TEMPORARY_REFUSALS = new Set(["cluster_unavailable"]);

/** One client's session with the server, across the connections it resumes it with. */
export class TunnelClient {
  /** Replaced only when a new server's hello asks for other stream settings (then nothing is open). */
  mux: Mux;
  /** Resolves with the reason once the client gave up or was closed. */
  readonly closed: Promise<string>;
  private giveUp: (reason: string) => void = () => {};
  private connection: ControlConnection;
  /** Local service of each tunnel (and its public address), by the ref the server's OPEN frames use. */
  private readonly targets = new Map<number, LocalTarget>();
  private readonly pending = new Map<number, Waiter>();
  private nextRequest = 1;
  private closing = false;
  /** The tunnels held, by name, in the order they came (exposed again, same ports, after a server restart). */
  private readonly held = new Map<string, Held>();
  /** Tunnels whose unexpose a lost connection cut short: closed again once the session is resumed. */
  private readonly orphans = new Map<string, number>();
  /** UDP tunnels' flows, each with its socket toward the local service; they outlive a blip. */
  readonly udp: UdpFlows;

  /** The server the connection goes (or last went) to. */
  private target: ServerTarget;
  /** The servers as last resolved (a standby connection goes to the first other one). */
  private known: ServerTarget[];
  /** Cluster: the idle connection to another node that says when to move there (see {@link keepStandby}). */
  private standby: { ws: WebSocket; target: ServerTarget; ping: ReturnType<typeof setInterval> } | null =
    null;
  private standbyRetry: ReturnType<typeof setTimeout> | undefined;
  /** The server said going-away: it closes the connection once its streams finished. */
  private serverLeaving = false;
  /** Where the next reconnect goes first (a standby said its node is the one to move to). */
  private preferred: ServerTarget | undefined;
  /** Drops the current connection at once and starts the reconnect (set by {@link bind}). */
  private dropConnection: (reason: string) => void = () => {};

  private constructor(
    private readonly settings: TunnelClientSettings,
    connection: ControlConnection,
    target: ServerTarget,
    known: ServerTarget[],
  ) {
    this.connection = connection;
    this.target = target;
    this.known = known;
    this.closed = new Promise<string>((resolve) => {
      this.giveUp = resolve;
    });
    this.udp = new UdpFlows({
      mux: () => this.mux,
      queued: () => this.connection.ws.bufferedAmount,
      idleMs: settings.udpIdleMs ?? 60_000,
      log: settings.log,
    });
    this.mux = new Mux(null, connection.hello, (frame) => this.accept(frame));
    this.mux.datagrams = this.udp;
    this.bind(connection);
    this.mux.start((frame) => this.connection.send(frame));
  }

  /**
   * Connects: TLS, API key, protocol version; resolves with a client whose connection is live. Tries
   * the servers in order (one info line per failure) until one answers; a fatal refusal (API key,
   * protocol version) stops at once.
   * @throws {ClientError} with one line, the last failure's, when no server can be reached or one refuses.
   */
  static async connect(settings: TunnelClientSettings): Promise<TunnelClient> {
    const targets = await resolveServers(settings.servers);
    let last: unknown = new ConnectError("no server to connect to");
    for (const [i, target] of targets.entries()) {
      try {
        const timeout = targets.length > 1 ? SEVERAL_TIMEOUT_MS : undefined;
        return new TunnelClient(
          settings,
          await TunnelClient.dial(settings, target, undefined, timeout),
          target,
          targets,
        );
      } catch (error) {
        last = failure(target, error);
        if (error instanceof ConnectError && error.fatal) break;
        const next = targets[i + 1];
        if (next !== undefined) settings.log.info(`${last}; trying ${targetLabel(next)}`);
      }
    }
    throw new ClientError(describeError(last));
  }

  private static dial(
    settings: TunnelClientSettings,
    target: ServerTarget,
    resume?: { session: string; secret: string },
    timeout?: number,
  ) {
    const { apiKey, ca, insecure } = settings;
    const { url, address } = target;
    return connectControl({ url, address, apiKey, ca, insecure, resume, timeout });
  }

  /** The server connected to (or, while reconnecting, last connected to), as logs name it. */
  get server(): string {
    return targetLabel(this.target);
  }

  /** The tunnels as last confirmed by the server, in the order they came. */
  get tunnels(): TunnelInfo[] {
    return [...this.held.values()].map((held) => held.info);
  }

  /** The services of the tunnels held, by name order of arrival (what a reload compares with). */
  get services(): NamedService[] {
    return this.tunnels.map((tunnel) => tunnel.local);
  }

  /**
   * Exposes every service; announces them only once all are up, so that a refusal of one never leaves
   * the others printed as live (the caller closes the connection, and the server releases them).
   * `previous`: the tunnels held before a server restart, by name (same ports, names and ids again).
   */
  async exposeAll(services: NamedService[], previous = new Map<string, TunnelInfo>()): Promise<void> {
    const all = await Promise.all(
      services.map((service) => this.exposeAgain(service, previous.get(service.name), true)),
    );
    this.held.clear();
    for (const held of all) this.held.set(held.info.local.name, held);
    for (const held of all) this.settings.onExposed?.(held.info);
  }

  /**
   * Adds a tunnel to the set (a config reload) and announces it. `previous`, when given, is the tunnel
   * it replaces: its port or name is asked for again when the service does not name one.
   * @throws {ClientError} when the server refuses it or the connection is down; the set is unchanged.
   */
  async add(service: NamedService, previous?: TunnelInfo): Promise<TunnelInfo> {
    if (this.held.has(service.name)) throw new ClientError(`tunnel '${service.name}' is already exposed`);
    const held = await this.exposeAgain(service, previous, false);
    this.held.set(service.name, held);
    this.settings.onExposed?.(held.info);
    return held.info;
  }

  /**
   * Closes the tunnel named `name` (the server releases its port or name and closes its visitor
   * connections) and announces it. It leaves the set at once: a server restart does not bring it back.
   * Resolves with the tunnel closed, or undefined when none has that name.
   * @throws {ClientError} when the server refuses or the connection is down (then it is closed again
   * once the session resumes; a restarted server has forgotten it anyway).
   */
  async unexpose(name: string): Promise<TunnelInfo | undefined> {
    const held = this.held.get(name);
    if (held === undefined) return undefined;
    this.held.delete(name);
    try {
      await this.closeTunnel(held.info.id, held.ref);
    } catch (error) {
      if (!(error instanceof RefusedError)) this.orphans.set(held.info.id, held.ref);
      throw error;
    }
    this.settings.onClosed?.(held.info);
    return held.info;
  }

  /** Asks the server to close one tunnel; forgets its ref once the server confirmed (no OPEN follows). */
  private async closeTunnel(tunnel: string, ref: number): Promise<void> {
    const request: UnexposeRequest = { type: "unexpose", id: this.nextRequest++, tunnel };
    await this.ask(request, "server refused to close the tunnel");
    this.targets.delete(ref);
    this.udp.removeTunnel(ref);
  }

  /** Exposes `service`, asking for what `previous` had; when that is refused and the service did not name a port or name, takes any. */
  private async exposeAgain(
    service: NamedService,
    previous: TunnelInfo | undefined,
    sameId: boolean,
  ): Promise<Held> {
    if (previous === undefined) return this.expose(service);
    const wanted: Wanted = { port: previous.port, name: previous.name, id: sameId ? previous.id : undefined };
    return this.expose(service, wanted).catch((error) => {
      if (
        service.publicPort !== undefined ||
        service.subdomain !== undefined ||
        service.hostname !== undefined
      )
        throw error;
      this.settings.log.warn(`${describeError(error)}; asking for another one`);
      return this.expose(service);
    });
  }

  /** Expose: asks for one tunnel (the same port, name and id again when `wanted` says so). */
  private async expose(local: NamedService, wanted: Wanted = {}): Promise<Held> {
    const http = local.kind === "http";
    const udp = local.kind === "udp";
    // An older server would take `kind: "udp"` for a broken client and end the session: ask first.
    if (udp && !this.connection.hello.features?.includes(Feature.Udp))
      throw new RefusedError(
        `server ${this.server} does not serve UDP tunnels (an older sockets server): upgrade it, or drop --expose-udp ${formatHost(local.host)}:${local.port}`,
      );
    // HTTP and end-to-end TLS tunnels hold a name: a subdomain, or a custom domain's full host name.
    const named = local.kind === "http" || local.kind === "tls";
    const wantedName = local.hostname ?? local.subdomain ?? wanted.name;
    const custom = wantedName?.includes(".") === true;
    const request: ExposeRequest = {
      type: "expose",
      id: this.nextRequest++,
      kind: local.kind ?? "tcp",
      port: named ? undefined : (local.publicPort ?? wanted.port),
      subdomain: named && !custom ? wantedName : undefined,
      hostname: named && custom ? wantedName : undefined,
      hostHeader: http && !local.preserveHost ? `${formatHost(local.host)}:${local.port}` : undefined,
      basicAuth: http ? local.basicAuth : undefined,
      tunnel: wanted.id,
      pool: local.pool === true ? true : undefined,
      allow: local.allow,
      deny: local.deny,
    };
    const m = (await this.askUntilAnswered(request)) as Exposed;
    if (udp) this.udp.addTunnel(m.ref, local);
    else this.targets.set(m.ref, { service: local, announced: { host: m.host, port: m.port } });
    const lists = (local.allow?.length ?? 0) + (local.deny?.length ?? 0) > 0;
    if (lists && m.access !== true) {
      // An older server ignores the lists: better no tunnel than one open to everyone.
      await this.closeTunnel(m.tunnel, m.ref).catch(() => {});
      throw new RefusedError(
        "server refused the tunnel: it does not enforce --allow/--deny lists (older than this client); tunnel closed",
      );
    }
    const info = { id: m.tunnel, name: m.name, url: m.url, host: m.host, port: m.port, local: { ...local } };
    return { info, ref: m.ref };
  }

  /**
   * Sends an expose; a temporary refusal (the cluster's Redis is away) is logged with its reason and
   * asked again after a backoff, as long as the connection stands (a lost connection rejects, and the
   * reconnect exposes everything again).
   */
  private async askUntilAnswered(request: ExposeRequest): Promise<Exposed | Unexposed> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.ask(request, "server refused the tunnel");
      } catch (error) {
        if (!(error instanceof RefusedError) || !TEMPORARY_REFUSALS.has(error.code)) throw error;
        // The server itself waited for Redis before it answered: a short pause is enough here.
        const delay = backoffDelay(attempt, 500, 1000);
        this.settings.log.warn(`${error.message}; asking again in ${(delay / 1000).toFixed(1)} s`);
        await Bun.sleep(delay);
        request = { ...request, id: this.nextRequest++ };
      }
    }
  }

  /** Sends a request and resolves with the server's answer to it. */
  private ask(request: ExposeRequest | UnexposeRequest, refused: string): Promise<Exposed | Unexposed> {
    const { ws } = this.connection;
    if (this.closing || ws.readyState !== WebSocket.OPEN)
      return Promise.reject(new ClientError("not connected to the server (reconnecting)"));
    const answer = new Promise<Exposed | Unexposed>((resolve, reject) =>
      this.pending.set(request.id, { resolve, reject, refused }),
    );
    ws.send(JSON.stringify(request));
    return answer;
  }

  /** Closes the tunnels and the connection (the server releases them at once). */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.closeStandby();
    const { ws } = this.connection;
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
      const done = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
      ws.close(CloseCode.Normal, "client closing");
      await Promise.race([done, Bun.sleep(2000)]);
    }
    this.mux.destroyAll();
    this.udp.destroyAll();
    this.giveUp("client closed");
  }

  /** Route: a visitor arrived; connect to the local service and relay, or reset the stream. */
  private accept(frame: OpenFrame): void {
    const local = this.targets.get(frame.tunnel);
    if (local === undefined) throw new ProtocolError(`OPEN for unknown tunnel ${frame.tunnel}`);
    const target = local.service;
    const stream = this.mux.acceptStream(frame.stream);
    const { log, logRequest, inspector, onVisitor } = this.settings;
    if (onVisitor !== undefined) {
      const tunnel = this.held.get(target.name)?.info;
      if (tunnel !== undefined) onVisitor({ tunnel, remote: frame.meta.remote });
    }
    if (frame.kind !== StreamKind.Tcp && frame.kind !== StreamKind.Http) {
      stream.reset(ResetCode.Protocol, `stream kind ${frame.kind} is not supported by this client`);
      return;
    }
    const http = frame.kind === StreamKind.Http;
    const printRequest = http && target.logRequests !== false ? logRequest : undefined;
    // The inspector's tap only when it is on: off, a stream has no tap (or the request log's alone).
    // On, its capture prints the request log's lines too: the bytes are read once.
    if (inspector === undefined)
      stream.tap = printRequest === undefined ? undefined : new RequestLogTap(printRequest);
    else
      stream.tap = new InspectorTap({
        store: inspector,
        tunnelName: target.name,
        remote: frame.meta.remote,
        kind: http ? "http" : "tcp",
        logRequest: printRequest,
      });
    // The PROXY header goes first, once per connection to the local service (for HTTP tunnels too:
    // each visitor connection is one), written on its own: the relay's chunks are never copied for it.
    const version = target.proxyProtocol;
    const header =
      version === undefined
        ? undefined
        : encodeProxyHeader(version, visitorAddresses(frame.meta.remote, frame.meta.local, local.announced));
    Bun.connect<RelaySocketData>({
      hostname: target.host,
      port: target.port,
      allowHalfOpen: true,
      data: { stream: null },
      socket: relaySocketHandlers,
    }).then(
      (socket: RelaySocket) => {
        // A fresh connection's send buffer is empty: the header (at most 232 bytes) goes whole, or the
        // service has already closed it.
        if (header !== undefined && socket.write(header) !== header.length) {
          socket.terminate();
          const reason = `local service ${target.host}:${target.port} closed before the PROXY header was written`;
          log.warn(reason);
          stream.reset(ResetCode.ConnectFailed, reason);
          return;
        }
        stream.attach(socket);
      },
      (error: unknown) => {
        const reason = `local service ${target.host}:${target.port} refused ${frame.meta.remote}: ${describeError(error)}`;
        log.warn(reason);
        stream.reset(ResetCode.ConnectFailed, reason);
      },
    );
  }

  /** A control message from the server: an answer to an expose, or news. */
  private onControl(text: string): void {
    const message = parseControl(text);
    if (message.type === "going-away") {
      this.settings.log.info(
        `server is shutting down; connections in flight have ${message.drain} s to finish`,
      );
      // When it closes the connection, go straight to the standby's server (the one that is staying).
      this.serverLeaving = true;
      if (this.standby !== null) this.preferred = this.standby.target;
      return;
    }
    if (message.type !== "exposed" && message.type !== "unexposed" && message.type !== "error")
      throw new ProtocolError(`unexpected '${message.type}' from the server`);
    const waiter = message.id === undefined ? undefined : this.pending.get(message.id);
    if (waiter === undefined) {
      if (message.type === "error") this.settings.log.error(`server: ${message.message}`);
      return;
    }
    this.pending.delete(message.id as number);
    if (message.type === "error")
      waiter.reject(new RefusedError(`${waiter.refused}: ${message.message}`, message.code));
    else waiter.resolve(message);
  }

  /** Binds a greeted connection: frames, control messages, heartbeat, and what to do when it is lost. */
  private bind(conn: ControlConnection): void {
    this.connection = conn;
    const { ws } = conn;
    const { log, heartbeatMs } = this.settings;
    const liveness = new Liveness();
    const heard = () => liveness.heard();
    ws.addEventListener("message", (event) => {
      liveness.heard();
      try {
        if (typeof event.data === "string") this.onControl(event.data);
        else {
          this.mux.receive(new Uint8Array(event.data as ArrayBuffer), true);
          // The datagrams of this message, each flow's in one sendmmsg (their views die with the message).
          this.udp.flush();
        }
      } catch (error) {
        const reason = `protocol error: ${describeError(error)}`;
        log.error(reason);
        ws.close(CloseCode.ProtocolError, reason.slice(0, 120));
      }
    });
    ws.addEventListener("ping", heard);
    ws.addEventListener("pong", heard);
    // Pings only a server silent for the last interval (its ping or our pong was heard otherwise): the
    // server does the same, so an idle connection carries one ping and pong every 10-20 s, not two
    // every 10 s (each costs a server with thousands of idle clients a wake-up, a read and a write).
    const heartbeat = setInterval(() => {
      const silence = liveness.silence(Date.now());
      if (silence === 0) return;
      if (silence <= deadAfter(heartbeatMs)) return ws.ping();
      log.warn(`server silent for ${Math.round(silence / 1000)} s: connection is dead`);
      ws.terminate();
      // A frozen server takes a connection and never answers: with other servers, go there first.
      lost("server silent", false, true);
    }, heartbeatMs);
    let gone = false;
    const lost = (reason: string, revoked = false, skipHome = false) => {
      if (gone) return;
      gone = true;
      this.closeStandby();
      clearInterval(heartbeat);
      this.mux.detach();
      for (const waiter of this.pending.values())
        waiter.reject(new ClientError(revoked ? reason : `connection lost: ${reason}`));
      this.pending.clear();
      if (revoked) {
        // Credentials withdrawn: trying again cannot help. One line, from whoever awaits `closed`.
        this.closing = true;
        this.mux.destroyAll();
        this.udp.destroyAll();
        this.giveUp(reason);
      } else if (!this.closing) void this.reconnect(reason, skipHome);
    };
    this.dropConnection = (reason) => {
      ws.terminate();
      lost(reason, false, true);
    };
    ws.addEventListener("close", (event) => {
      if (event.code === CloseCode.Revoked)
        lost(`the server revoked this client's credentials: ${event.reason || "no reason given"}`, true);
      else lost(`closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`);
    });
    conn.onBlocked = (blocked) => this.mux.setBlocked(blocked);
    this.serverLeaving = false;
    this.keepStandby();
  }

  /**
   * Cluster (the hello names this server's node) with another server known: keeps an idle standby
   * connection to the first other server. That node closes it with 4002 (MoveHere) the moment this
   * client's node leaves the cluster (killed, frozen, cut off from Redis, shut down): the client then
   * moves there at once, within the node's lease, where its own heartbeat would take three silent
   * intervals (and a node cut off from Redis never falls silent at all).
   */
  private keepStandby(): void {
    this.closeStandby();
    const node = this.connection.hello.node;
    const target = this.known.find((t) => !sameTarget(t, this.target));
    if (node === undefined || target === undefined || this.closing) return;
    const { apiKey, ca, insecure, heartbeatMs, log } = this.settings;
    const ws = openStandby({ url: target.url, address: target.address, apiKey, ca, insecure, node });
    const primary = this.connection;
    // The node drops a standby silent for 35 s: ping well within that.
    const ping = setInterval(
      () => {
        if (ws.readyState === WebSocket.OPEN) ws.ping();
      },
      Math.min(heartbeatMs, 10_000),
    );
    const standby = { ws, target, ping };
    this.standby = standby;
    ws.addEventListener("close", (event) => {
      clearInterval(ping);
      if (this.standby !== standby) return;
      this.standby = null;
      if (this.closing || this.connection !== primary) return;
      if (event.code === CloseCode.MoveHere && this.serverLeaving) {
        // The node is shutting down and finishing what is in flight: move when it closes, not before.
        this.preferred = target;
        return;
      }
      if (event.code === CloseCode.MoveHere) {
        log.warn(`${event.reason || `node ${node} left the cluster`}: moving to ${targetLabel(target)}`);
        this.preferred = target;
        this.dropConnection(`node ${node} left the cluster`);
        return;
      }
      // Not in a cluster after all, or refused: no standby there. Anything else: open it again shortly.
      if (event.code === 1002 || event.code === 4001) return;
      this.standbyRetry = setTimeout(() => {
        if (this.connection === primary && this.standby === null) this.keepStandby();
      }, 2000);
    });
  }

  private closeStandby(): void {
    clearTimeout(this.standbyRetry);
    const standby = this.standby;
    if (standby === null) return;
    this.standby = null;
    clearInterval(standby.ping);
    standby.ws.close(CloseCode.Normal, "standby no longer needed");
  }

  /**
   * Reconnect: back off with jitter; the first attempt goes to the same server (resume: visitors carry
   * on), later ones to the next servers in turn. A server that does not know the session (restarted, or
   * another one) gets the tunnels exposed again with the same ports, names and ids.
   */
  private async reconnect(reason: string, skipHome = false): Promise<void> {
    const { log, maxBackoffMs } = this.settings;
    log.warn(`connection to server lost (${reason}); reconnecting`);
    this.settings.onConnection?.({ type: "disconnected", reason });
    const home = this.target;
    // A frozen server takes the TCP connection and never answers: with others to go to, wait less.
    const several = this.settings.servers.length > 1 || home.address !== undefined;
    // A server that answers pings within a heartbeat answers an upgrade within two.
    const timeout = several
      ? Math.min(SEVERAL_TIMEOUT_MS, Math.max(1000, 2 * this.settings.heartbeatMs))
      : undefined;
    for (let attempt = 1; !this.closing; attempt++) {
      // A standby said where to go: there first, at once. A silent server: not back to it first.
      const preferred = this.preferred;
      this.preferred = undefined;
      const first = attempt === 1 && !(skipHome && several);
      // Resolved again at each attempt: a round robin's records may have changed.
      const targets = first ? [home] : await resolveServers(this.settings.servers);
      if (!first) this.known = targets;
      const at = targets.findIndex((target) => sameTarget(target, home));
      const step = skipHome && several ? attempt : attempt - 1;
      const target = preferred ?? (first ? home : (targets[(at + step) % targets.length] ?? home));
      // The first round over the other servers waits no longer than the first attempt (a dead server
      // refuses at once, and the client should be elsewhere within a second or two); then back off.
      const delay =
        preferred !== undefined
          ? 0
          : backoffDelay(Math.max(1, attempt - Math.max(targets.length, 1) + 1), 250, maxBackoffMs);
      const where = several || targets.length > 1 ? ` to ${targetLabel(target)}` : "";
      log.info(`reconnecting${where} in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})`);
      await Bun.sleep(delay);
      if (this.closing) return;
      // The old session's id and secret go to every server: a cluster node takes them as the claim.
      const { session, secret } = this.connection.hello;
      let conn: ControlConnection;
      try {
        conn = await TunnelClient.dial(this.settings, target, { session, secret }, timeout);
      } catch (error) {
        if (error instanceof ConnectError && error.fatal) {
          log.error(failure(target, error));
          return this.giveUp(failure(target, error));
        }
        log.warn(`reconnect attempt ${attempt} failed: ${failure(target, error)}`);
        continue;
      }
      const moved = !sameTarget(target, this.target);
      this.target = target;
      if (moved) log.info(`moved to server ${targetLabel(target)}`);
      this.bind(conn);
      try {
        if (conn.hello.resumed) {
          this.resume(conn.sync as SyncMessage);
          this.settings.onConnection?.({ type: "reconnected", server: this.server, resumed: true });
          return;
        }
        log.info(
          moved
            ? "the new server does not know the session; exposing the tunnels again (same ports, names and ids)"
            : "server lost the session (restarted?); exposing the tunnels again",
        );
        this.mux.destroyAll();
        this.udp.destroyAll();
        this.targets.clear();
        this.orphans.clear();
        this.renewMux(conn);
        this.mux.start((frame) => this.connection.send(frame));
        const previous = new Map(this.tunnels.map((tunnel) => [tunnel.local.name, tunnel]));
        await this.exposeAll(this.services, previous);
        this.settings.onConnection?.({ type: "reconnected", server: this.server, resumed: false });
        return;
      } catch (error) {
        // Lost again while exposing: the close handler has already started the next reconnect.
        if (conn.ws.readyState !== WebSocket.OPEN) return;
        log.error(describeError(error));
        this.closing = true;
        conn.ws.close(CloseCode.Normal, "client giving up");
        return this.giveUp(describeError(error));
      }
    }
  }

  /**
   * A new session (after a restart or a move) whose server announces other window or frame sizes
   * than the multiplexer was made with gets a new one (no stream is open then); the same sizes keep it.
   */
  private renewMux(conn: ControlConnection): void {
    const { window, initialWindow, maxFramePayload } = conn.hello;
    const mux = this.mux;
    if (
      mux.window === window &&
      mux.initialWindow === initialWindow &&
      mux.maxFramePayload === maxFramePayload
    )
      return;
    this.mux = new Mux(null, conn.hello, (frame) => this.accept(frame));
    this.mux.datagrams = this.udp;
  }

  /** Resume: tell the server our positions, then resend what the blip lost. */
  private resume(sync: SyncMessage): void {
    this.connection.ws.send(JSON.stringify({ type: "sync", ...this.mux.syncState() } satisfies SyncMessage));
    this.mux.resume((frame) => this.connection.send(frame), sync);
    for (const tunnel of this.tunnels)
      this.settings.log.info(`resumed: tunnel ${tunnel.id} still at url: ${tunnel.url}`);
    // Tunnels removed while the connection was down are still open on the server: close them now.
    for (const [id, ref] of this.orphans) {
      this.orphans.delete(id);
      this.closeTunnel(id, ref).then(
        () => this.settings.log.info(`closed tunnel ${id}, removed while the connection was down`),
        (error) => {
          if (!(error instanceof RefusedError)) this.orphans.set(id, ref);
          this.settings.log.warn(`closing tunnel ${id}: ${describeError(error)}`);
        },
      );
    }
  }
}

/**
 * Most one server may take to answer a reconnect when there are others to try (one alone: connect.ts's
 * 10 s); less with a short `--heartbeat`.
 */
const SEVERAL_TIMEOUT_MS = 5000;

/** A failure's line, with the address dialled when the server is one address of several. */
function failure(target: ServerTarget, error: unknown): string {
  const line = describeError(error);
  return target.address === undefined ? line : `${line} (address ${target.address})`;
}
