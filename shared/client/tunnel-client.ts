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
 * Each visitor arrives as an OPEN and becomes its own connection to the local service. Tunnels are
 * asked for one by one ({@link TunnelClient.expose}), which leaves room for adding and removing them
 * at run time.
 * @module
 */

import { formatHost, type HostPort } from "../args.ts";
import { Liveness } from "../liveness.ts";
import { describeError, type Logger } from "../log.ts";
import { Mux } from "../relay/mux.ts";
import { type RelaySocket, type RelaySocketData, relaySocketHandlers } from "../relay/stream.ts";
import type { OpenFrame } from "../wire/codec.ts";
import {
  CloseCode,
  type Exposed,
  type ExposeRequest,
  ProtocolError,
  parseControl,
  ResetCode,
  StreamKind,
  type SyncMessage,
} from "../wire/protocol.ts";
import { backoffDelay } from "./backoff.ts";
import { ConnectError, type ControlConnection, connectControl } from "./connect.ts";
import type { ExposeOption } from "./options.ts";
import { RequestLogTap } from "./request-log.ts";

/** A live tunnel, as the server announced it. */
export interface TunnelInfo {
  id: string;
  /** HTTP tunnels: the name under the server's domain. */
  name?: string;
  url: string;
  host: string;
  port: number;
  local: HostPort;
}

/** Client-side failure with a one-line message (auth, TLS, unreachable, port taken, …). */
export class ClientError extends Error {
  override name = "ClientError";
}

/** What a {@link TunnelClient} needs to know. */
export interface TunnelClientSettings {
  url: URL;
  apiKey?: string;
  /** PEM CA certificate(s) to trust for wss. */
  ca?: string;
  insecure?: boolean;
  heartbeatMs: number;
  maxBackoffMs: number;
  /** One line per HTTP request on HTTP tunnels, when set. */
  logRequest?: (line: string) => void;
  /** Called for every tunnel the server confirms: at start, and again after a server restart. */
  onExposed?: (tunnel: TunnelInfo) => void;
  log: Logger;
}

/** One client's session with the server, across the connections it resumes it with. */
export class TunnelClient {
  readonly mux: Mux;
  /** The tunnels as last confirmed by the server. */
  tunnels: TunnelInfo[] = [];
  /** Resolves with the reason once the client gave up or was closed. */
  readonly closed: Promise<string>;
  private giveUp: (reason: string) => void = () => {};
  private connection: ControlConnection;
  /** Local service of each tunnel, by the ref the server's OPEN frames use. */
  private readonly targets = new Map<number, HostPort>();
  private readonly pending = new Map<number, { resolve: (m: Exposed) => void; reject: (e: Error) => void }>();
  private nextRequest = 1;
  private closing = false;
  /** The services asked for, in order (exposed again, same ports, after a server restart). */
  private services: ExposeOption[] = [];

  private constructor(
    private readonly settings: TunnelClientSettings,
    connection: ControlConnection,
  ) {
    this.connection = connection;
    this.closed = new Promise<string>((resolve) => {
      this.giveUp = resolve;
    });
    this.mux = new Mux(null, connection.hello, (frame) => this.accept(frame));
    this.bind(connection);
    this.mux.start((frame) => this.connection.send(frame));
  }

  /**
   * Connects: TLS, API key, protocol version; resolves with a client whose connection is live.
   * @throws {ClientError} with one line when the server cannot be reached or refuses.
   */
  static async connect(settings: TunnelClientSettings): Promise<TunnelClient> {
    try {
      return new TunnelClient(settings, await TunnelClient.dial(settings));
    } catch (error) {
      throw new ClientError(describeError(error));
    }
  }

  private static dial(settings: TunnelClientSettings, resume?: { session: string; secret: string }) {
    const { url, apiKey, ca, insecure } = settings;
    return connectControl({ url, apiKey, ca, insecure, resume });
  }

  /**
   * Exposes every service; announces them only once all are up, so that a refusal of one never leaves
   * the others printed as live (the caller closes the connection, and the server releases them).
   */
  async exposeAll(services: ExposeOption[], previous: TunnelInfo[] = []): Promise<void> {
    this.services = services;
    const all = await Promise.all(
      services.map((local, i) => {
        const before = previous[i];
        if (before === undefined) return this.expose(local);
        // After a server restart: the same port or name again if free, else (when not asked for) another.
        return this.expose(local, before).catch((error) => {
          if (local.publicPort !== undefined || local.subdomain !== undefined) throw error;
          this.settings.log.warn(`${describeError(error)}; asking for another one`);
          return this.expose(local);
        });
      }),
    );
    this.tunnels = all;
    for (const tunnel of all) this.settings.onExposed?.(tunnel);
  }

  /** Expose: asks for one tunnel (the same port and id again after a server restart). */
  expose(local: ExposeOption, previous?: TunnelInfo): Promise<TunnelInfo> {
    const id = this.nextRequest++;
    const answer = new Promise<Exposed>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    const http = local.kind === "http";
    const request: ExposeRequest = {
      type: "expose",
      id,
      kind: http ? "http" : "tcp",
      port: http ? undefined : (local.publicPort ?? previous?.port),
      subdomain: http ? (local.subdomain ?? previous?.name) : undefined,
      hostHeader: http && !local.preserveHost ? `${formatHost(local.host)}:${local.port}` : undefined,
      basicAuth: http ? local.basicAuth : undefined,
      tunnel: previous?.id,
    };
    this.connection.ws.send(JSON.stringify(request));
    return answer.then((m) => {
      this.targets.set(m.ref, { host: local.host, port: local.port });
      return { id: m.tunnel, name: m.name, url: m.url, host: m.host, port: m.port, local: { ...local } };
    });
  }

  /** Closes the tunnels and the connection (the server releases them at once). */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const { ws } = this.connection;
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
      const done = new Promise((resolve) => ws.addEventListener("close", resolve, { once: true }));
      ws.close(CloseCode.Normal, "client closing");
      await Promise.race([done, Bun.sleep(2000)]);
    }
    this.mux.destroyAll();
    this.giveUp("client closed");
  }

  /** Route: a visitor arrived; connect to the local service and relay, or reset the stream. */
  private accept(frame: OpenFrame): void {
    const target = this.targets.get(frame.tunnel);
    if (target === undefined) throw new ProtocolError(`OPEN for unknown tunnel ${frame.tunnel}`);
    const stream = this.mux.acceptStream(frame.stream);
    const { log, logRequest } = this.settings;
    if (frame.kind === StreamKind.Http && logRequest) stream.tap = new RequestLogTap(logRequest);
    if (frame.kind !== StreamKind.Tcp && frame.kind !== StreamKind.Http) {
      stream.reset(ResetCode.Protocol, `stream kind ${frame.kind} is not supported by this client`);
      return;
    }
    Bun.connect<RelaySocketData>({
      hostname: target.host,
      port: target.port,
      allowHalfOpen: true,
      data: { stream: null },
      socket: relaySocketHandlers,
    }).then(
      (socket: RelaySocket) => stream.attach(socket),
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
      return;
    }
    if (message.type !== "exposed" && message.type !== "error")
      throw new ProtocolError(`unexpected '${message.type}' from the server`);
    const waiter = message.id === undefined ? undefined : this.pending.get(message.id);
    if (waiter === undefined) {
      if (message.type === "error") this.settings.log.error(`server: ${message.message}`);
      return;
    }
    this.pending.delete(message.id as number);
    if (message.type === "exposed") waiter.resolve(message);
    else waiter.reject(new ClientError(`server refused the tunnel: ${message.message}`));
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
        else this.mux.receive(new Uint8Array(event.data as ArrayBuffer), true);
      } catch (error) {
        const reason = `protocol error: ${describeError(error)}`;
        log.error(reason);
        ws.close(CloseCode.ProtocolError, reason.slice(0, 120));
      }
    });
    ws.addEventListener("ping", heard);
    ws.addEventListener("pong", heard);
    const heartbeat = setInterval(() => {
      const silence = liveness.silence(Date.now());
      if (silence <= 3 * heartbeatMs) return ws.ping();
      log.warn(`server silent for ${Math.round(silence / 1000)} s: connection is dead`);
      ws.terminate();
      lost("server silent");
    }, heartbeatMs);
    let gone = false;
    const lost = (reason: string) => {
      if (gone) return;
      gone = true;
      clearInterval(heartbeat);
      this.mux.detach();
      for (const waiter of this.pending.values())
        waiter.reject(new ClientError(`connection lost: ${reason}`));
      this.pending.clear();
      if (!this.closing) void this.reconnect(reason);
    };
    ws.addEventListener("close", (event) =>
      lost(`closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`),
    );
    conn.onBlocked = (blocked) => this.mux.setBlocked(blocked);
  }

  /** Reconnect: back off with jitter, resume the session, or expose again if the server lost it. */
  private async reconnect(reason: string): Promise<void> {
    const { log, maxBackoffMs } = this.settings;
    log.warn(`connection to server lost (${reason}); reconnecting`);
    for (let attempt = 1; !this.closing; attempt++) {
      const delay = backoffDelay(attempt, 250, maxBackoffMs);
      log.info(`reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})`);
      await Bun.sleep(delay);
      if (this.closing) return;
      const { session, secret } = this.connection.hello;
      let conn: ControlConnection;
      try {
        conn = await TunnelClient.dial(this.settings, { session, secret });
      } catch (error) {
        if (error instanceof ConnectError && error.fatal) {
          log.error(describeError(error));
          return this.giveUp(describeError(error));
        }
        log.warn(`reconnect attempt ${attempt} failed: ${describeError(error)}`);
        continue;
      }
      this.bind(conn);
      try {
        if (conn.hello.resumed) return this.resume(conn.sync as SyncMessage);
        log.info("server lost the session (restarted?); exposing the tunnels again");
        this.mux.destroyAll();
        this.targets.clear();
        this.mux.start((frame) => this.connection.send(frame));
        return await this.exposeAll(this.services, this.tunnels);
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

  /** Resume: tell the server our positions, then resend what the blip lost. */
  private resume(sync: SyncMessage): void {
    this.connection.ws.send(JSON.stringify({ type: "sync", ...this.mux.syncState() } satisfies SyncMessage));
    this.mux.resume((frame) => this.connection.send(frame), sync);
    for (const tunnel of this.tunnels)
      this.settings.log.info(`resumed: tunnel ${tunnel.id} still at url: ${tunnel.url}`);
  }
}
