/**
 * The server's public HTTP port: each visitor connection is framed request by request
 * (`RequestFramer`), routed by the authority of its first request (`NAME.DOMAIN`) to an HTTP tunnel,
 * and carried as one stream of kind Http: request heads are re-written with X-Forwarded-* (and the
 * Host the tunnel asked for), bodies pass through as they come (never buffered). Responses come back
 * as raw bytes and are framed too (`ResponseFramer`), without copying, so that the ingress knows:
 * - which answer belongs to an upgrade request: only a 101 switches the connection to raw bytes both
 *   ways; until that answer, bytes after the upgrade request wait in the framer (bounded), and any
 *   other answer returns them to request framing. (Switching on the request alone let a second
 *   request in the same packet reach the backend unrouted and unrewritten.)
 * - when the connection is idle (no request in progress, every response complete): an idle
 *   connection, or one whose head does not complete, is closed after the request timeout.
 *
 * Every path ends in the socket being closed: an error page is followed by our FIN and, if the
 * visitor does not close within {@link LINGER_MS}, by an abort; a visitor's FIN is passed on while a
 * response is due, and closes the connection once it is idle. The bytes every incomplete head holds
 * are counted against one budget per server ({@link HeadBudget}).
 *
 * With the server's certificate (a wildcard for `*.DOMAIN`) the port serves https.
 *
 * Unknown names get 404, a tunnel whose client is away or whose local service refuses gets 502, a
 * malformed request its 4xx/5xx: each a small text page, then the connection closes.
 * @module
 */

import { createHash } from "node:crypto";
import type { TCPSocketListener } from "bun";
import { formatHost, unmappedAddress } from "../args.ts";
import {
  ForwardCache,
  forwardRequestBytes,
  HttpParseError,
  headerValues,
  type RequestEvent,
  RequestFramer,
  type RequestHead,
  ResponseFramer,
  requestHost,
  ScannedRequestHead,
} from "../http1/framer.ts";
import { STATUS_CODES } from "../http1/status.ts";
import type { Logger } from "../log.ts";
import type { RelaySocket, RelaySocketData, Stream } from "../relay/stream.ts";
import { ResetCode } from "../wire/protocol.ts";
import { keyMatches } from "./auth.ts";
import type { HttpRoute, RouteAnswer } from "./namespace/holding.ts";

export type { HttpRoute, RouteAnswer };

/** The `data` slot of a visitor socket on the HTTP port. */
export interface HttpSocketData extends RelaySocketData {
  /** The connection's framing and state; set when the socket opens. */
  connection: HttpConnection;
}

/** A visitor socket on the HTTP port. */
export type HttpSocket = RelaySocket & { data: HttpSocketData };

/** Default seconds a visitor may take to complete a request head after connecting or after its last response. */
export const DEFAULT_REQUEST_TIMEOUT_SECONDS = 10;
/** Default bytes all incomplete request and response heads of one server may hold together. */
export const DEFAULT_HEAD_BUDGET = 32 * 1024 * 1024;
/** After an error page (or a visitor's FIN on an idle connection), how long the peer has to close. */
export const LINGER_MS = 2000;
/** How often deadlines are checked: a deadline is met at most this late. */
const SWEEP_MS = 250;

/** Bytes held by incomplete heads across every HTTP listener of a server, against one limit. */
export class HeadBudget {
  /** Bytes held now. */
  used = 0;
  /** @param limit most bytes all incomplete heads may hold together. */
  constructor(readonly limit = DEFAULT_HEAD_BUDGET) {}
}

/** Where to listen and how to find routes. */
export interface HttpIngressOptions {
  host: string;
  port: number;
  /** Public names are `NAME.<domain>`. */
  domain: string;
  /** The tunnel behind a name, if any. */
  route(name: string): HttpRoute | undefined;
  /** PEM certificate (a wildcard for `*.DOMAIN`) and key: serve https. */
  tls?: { cert: string; key: string };
  /** Seconds to complete a head after connecting or after the previous response (default 10). */
  requestTimeoutSeconds?: number;
  /** Shared by the server's HTTP listeners (default: one of their own with the default limit). */
  heads?: HeadBudget;
  /**
   * Requests whose Host names no tunnel, on a port that serves more than tunnels (the control port:
   * clients' upgrades, `/health`). Without it they get 404.
   */
  local?: LocalRequests;
  /** Told of every response to a visitor (absent: nothing timed or counted). */
  metrics?: HttpResponseCounter;
  /**
   * The visitor's address when the socket's peer is not the visitor (the HTTPS front's loopback
   * connection, see acme/tls-front.ts); undefined to use the peer's.
   */
  visitorAddress?: (socket: HttpSocket) => string | undefined;
  /** Answers HTTP-01 validations (`/.well-known/acme-challenge/TOKEN`): the key authorization, if any. */
  acmeChallenge?: (token: string) => string | undefined;
  log: Logger;
}

/** Counts responses by status and times them (see metrics.ts). */
export interface HttpResponseCounter {
  /** A response head left for a visitor: the local service's (with its seconds since the request head), or the server's own page. */
  httpResponse(status: number, seconds?: number): void;
}

/** A listening HTTP ingress. */
export interface HttpIngress {
  /** The bound port. */
  readonly port: number;
  /**
   * Stops accepting; with `closeActive`, closes every visitor connection too; without, each connection
   * carried to a tunnel closes at its next request boundary (a draining server: keep-alive visitors
   * come back on new connections, to wherever the tunnel is then, instead of holding the drain).
   */
  stop(closeActive?: boolean): void;
}

/** The port's own requests (see {@link HttpIngressOptions.local}). */
export interface LocalRequests {
  /**
   * Answers one request (its body, if any, is skipped). The connection is not read until the promise
   * settles; the handler may write a response, or take the socket over ({@link HttpConnection.takeOver}).
   */
  handle(connection: HttpConnection, head: RequestHead): Promise<void>;
}

/** What runs a connection once the ingress handed it over (a WebSocket). */
export interface SocketTakeover {
  onData(chunk: Uint8Array): void;
  onDrain(): void;
  /** The peer sent FIN. */
  onEnd(): void;
  /** Whether the new owner wants the socket unread for now. */
  readonly paused?: boolean;
  onClose(): void;
}

const UNAUTHORIZED = 'www-authenticate: Basic realm="sockets tunnel", charset="UTF-8"\r\n';

/** A request's first Authorization value, "" without one. */
function authorizationOf(head: RequestHead): string {
  if (head instanceof ScannedRequestHead) return head.authorization ?? "";
  return headerValues(head.headers, "authorization")[0] ?? "";
}

/** Whether a request carries the tunnel's basic-auth credentials (constant-time compare). */
function authorized(head: RequestHead, route: HttpRoute): boolean {
  if (route.basicAuth === undefined && route.basicAuthHash === undefined) return true;
  const value = authorizationOf(head);
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(value);
  const presented = match ? Buffer.from(match[1] as string, "base64").toString("utf8") : undefined;
  if (route.basicAuth !== undefined) return keyMatches(presented, route.basicAuth);
  return presented !== undefined && keyMatches(sha256Hex(presented), route.basicAuthHash as string);
}

/** The sha256 (hex) of a text: how a cluster shares a tunnel's basic-auth credentials. */
function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** The tunnel name in a Host value (`NAME.DOMAIN[:port]`), or undefined. */
export function nameOf(host: string, domain: string): string | undefined {
  const bare = host.toLowerCase().replace(/:\d+$/, "");
  const suffix = `.${domain.toLowerCase()}`;
  return bare.endsWith(suffix) && bare.length > suffix.length ? bare.slice(0, -suffix.length) : undefined;
}

/** Where ACME HTTP-01 validations ask for their token (RFC 8555 §8.3). */
const ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/";

/** A request body up to this size that arrived with its head is sent on in the head's buffer. */
const JOIN_BODY_MAX = 16 * 1024;

/**
 * One visitor connection: its two framers, the tunnel it was routed to, and where it is in its life.
 * Its stream (once routed) is `socket.data.stream`, set and cleared by the stream itself.
 */
export class HttpConnection {
  /** Heads read from their bytes and forwarded as copies of them (`forwardRequestBytes`). */
  readonly requests = new RequestFramer(true);
  /** Responses pass on untouched: only where each ends, its status and keep-alive are read. */
  readonly responses = new ResponseFramer(false, false);
  route: HttpRoute | null = null;
  /** The tunnel name the connection was routed to. */
  name: string | undefined;
  /** An error page was sent: whatever else the visitor sends is ignored. */
  answered = false;
  /** The visitor sent FIN. */
  visitorEnded = false;
  /** A request or response said `Connection: close` (or was HTTP/1.0 without keep-alive). */
  lastExchange = false;
  /** A 101 came back: raw bytes both ways, no framing. */
  upgraded = false;
  /** To be closed at its next request boundary (the node its stream goes to is leaving). */
  retiring = false;
  /** A local request is being answered: events wait in {@link backlog}. */
  busy = false;
  /** Inside a local request's body (skipped). */
  inLocalBody = false;
  backlog: RequestEvent[] = [];
  /** Set when the connection now runs something else (a WebSocket): every socket event goes there. */
  takenOver: SocketTakeover | null = null;
  /** Bytes this connection's incomplete heads hold, as counted in the budget. */
  heldBytes = 0;
  /** When (performance.now) the connection is closed unless something moves it on; 0 = no deadline. */
  deadline = 0;
  /** Response bytes not yet taken by the visitor when the deadline was set: a reader that moves is kept. */
  unwrittenAtArm = 0;
  /** When (performance.now) each request still waiting for its response was relayed, oldest first (with metrics only). */
  readonly started: number[] = [];
  /**
   * What does not change between the requests of a connection, worked out once (per request it cost
   * ~1 µs of the server's time under load): the visitor's address for X-Forwarded-For, the fields
   * appended to each head, the last Host seen to name the routed tunnel, the last Authorization
   * value that passed the tunnel's basic auth.
   */
  remoteIp: string | null = null;
  readonly forwarding = new ForwardCache();
  routedHost: string | null = null;
  authorizedAs: string | null = null;

  /**
   * @param socket the visitor's socket.
   * @param linger gives a connection that was answered and sent FIN {@link LINGER_MS} to close.
   */
  constructor(
    readonly socket: HttpSocket,
    private readonly linger: (connection: HttpConnection) => void,
  ) {}

  /** After a final answer: FIN now; the visitor has {@link LINGER_MS} to close, then it is dropped. */
  close(): void {
    this.answered = true;
    this.socket.end();
    this.linger(this);
  }

  /** The stream of the tunnel this connection was routed to, while it lives. */
  get stream(): Stream | null {
    return this.socket.data.stream;
  }

  /**
   * Hands the socket to `takeover` after a local upgrade; returns the bytes the visitor sent after the
   * upgrade request, which now belong to it.
   */
  takeOver(takeover: SocketTakeover): Uint8Array[] {
    this.takenOver = takeover;
    return this.requests.switchToPassthrough().map((event) => (event as { bytes: Uint8Array }).bytes);
  }

  /** No request in progress and every response complete (a keep-alive connection between requests). */
  get idle(): boolean {
    return (
      !this.upgraded &&
      this.responses.pendingRequests === 0 &&
      this.responses.betweenMessages &&
      this.requests.betweenMessages
    );
  }
}

/** How to retire the connection whose stream this is (see {@link retireAtRequestBoundary}). */
const retirers = new WeakMap<Stream, () => void>();

/**
 * Closes the visitor connection carried on `stream` at its next request boundary: at once if it is
 * between requests (our FIN to the visitor, END to the tunnel), else as soon as the response in flight
 * ended. A cluster node does this to the keep-alive connections it carries to a node that is leaving:
 * their next requests come on new connections, which go to wherever the name moves, and the leaving
 * node's drain does not wait for connections that would otherwise stay open for its whole drain.
 * False when the stream carries no HTTP connection (a TCP visitor), or one that was upgraded.
 */
export function retireAtRequestBoundary(stream: Stream): boolean {
  const retire = retirers.get(stream);
  if (retire === undefined) return false;
  retire();
  return true;
}

/** Opens the HTTP port; visitors are routed as described in the module comment. */
export function listenHttp(options: HttpIngressOptions): HttpIngress {
  return new HttpListener(options);
}

/**
 * An open HTTP port: its listener, the connections that have a deadline, and what a visitor's
 * connection goes through (route, relay, respond, expire), each a method taking the connection.
 */
class HttpListener implements HttpIngress {
  private readonly domain: string;
  private readonly log: Logger;
  private readonly metrics?: HttpResponseCounter;
  private readonly proto: "http" | "https";
  private readonly heads: HeadBudget;
  private readonly requestTimeoutMs: number;
  /**
   * Every open connection; the sweep looks at those with a deadline (waiting for a head, lingering
   * after an answer or a FIN). A connection stays in the set from open to close: disarming is then a
   * field write, where a delete and an add per request cost ~0.1 µs under load.
   */
  private readonly timed = new Set<HttpConnection>();
  private readonly sweep: ReturnType<typeof setInterval>;
  private readonly listener: TCPSocketListener<HttpSocketData>;
  private readonly lingerFor = (conn: HttpConnection) => this.arm(conn, LINGER_MS);

  constructor(private readonly options: HttpIngressOptions) {
    this.domain = options.domain;
    this.log = options.log;
    this.metrics = options.metrics;
    this.proto = options.tls ? "https" : "http";
    this.heads = options.heads ?? new HeadBudget();
    this.requestTimeoutMs = (options.requestTimeoutSeconds ?? DEFAULT_REQUEST_TIMEOUT_SECONDS) * 1000;
    this.sweep = setInterval(() => {
      const now = performance.now();
      for (const conn of this.timed) if (conn.deadline !== 0 && now >= conn.deadline) this.expire(conn);
    }, SWEEP_MS);
    this.sweep.unref?.();
    this.listener = this.listen();
  }

  /** The bound port. */
  get port(): number {
    return this.listener.port;
  }

  /** Stopped: connections routed from now on close after their first request. */
  private stopping = false;

  /** @inheritdoc */
  stop(closeActive = false): void {
    this.stopping = true;
    this.listener.stop(closeActive);
    if (closeActive) {
      clearInterval(this.sweep);
      for (const conn of this.timed) conn.socket.terminate();
      this.timed.clear();
    } else
      for (const conn of this.timed) if (conn.takenOver === null && conn.stream !== null) this.retire(conn);
  }

  private arm(conn: HttpConnection, ms: number): void {
    conn.deadline = performance.now() + ms;
    conn.unwrittenAtArm = conn.stream?.unwritten ?? 0;
    this.timed.add(conn);
  }

  private disarm(conn: HttpConnection): void {
    conn.deadline = 0;
  }

  /** A deadline passed: a head never completed, an idle connection, or a visitor that never closed. */
  private expire(conn: HttpConnection): void {
    const stream = conn.stream;
    // A response the visitor is still reading (slowly) is not idle: only a stalled one is.
    const unwritten = stream?.unwritten ?? 0;
    if (unwritten > 0 && unwritten !== conn.unwrittenAtArm) {
      this.arm(conn, this.requestTimeoutMs);
      return;
    }
    this.disarm(conn);
    if (stream) stream.reset(ResetCode.Idle, conn.visitorEnded ? "visitor done" : "request timeout");
    else if (!conn.answered && !conn.visitorEnded && !conn.busy && !conn.requests.betweenMessages)
      // A head begun and not finished in time: say so (RFC 9110 §15.5.9) before closing.
      this.respond(conn, 408, "request timeout: the request head did not arrive in time");
    else conn.socket.terminate();
  }

  /** Writes a small text response, sends FIN, and gives the visitor {@link LINGER_MS} to close. */
  private respond(conn: HttpConnection, status: number, message: string, extraHeaders = ""): void {
    const body = `${message}\n`;
    this.metrics?.httpResponse(status);
    const head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Error"}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extraHeaders}connection: close\r\n\r\n`;
    conn.socket.write(head + body);
    conn.close();
  }

  /** A visitor broke HTTP: a page if nothing was relayed yet, else a reset of its stream. */
  private refuse(conn: HttpConnection, error: unknown): void {
    const status = error instanceof HttpParseError ? error.status : 400;
    const message = (error as Error).message;
    this.log.info(`http visitor ${formatHost(unmappedAddress(conn.socket.remoteAddress))}: ${message}`);
    const stream = conn.stream;
    if (stream) stream.reset(ResetCode.Protocol, `bad request: ${message}`);
    else this.respond(conn, status, message);
  }

  /** Counts what the connection's this.heads hold now; false (and a 503) when the server's budget is spent. */
  private account(conn: HttpConnection): boolean {
    const held = conn.requests.pendingBytes + conn.responses.pendingBytes;
    const grown = held - conn.heldBytes;
    this.heads.used += grown;
    conn.heldBytes = held;
    if (grown <= 0 || this.heads.used <= this.heads.limit) return true;
    this.log.warn(
      `http visitor refused: incomplete this.heads hold ${this.heads.used} bytes (limit ${this.heads.limit})`,
    );
    this.release(conn);
    const stream = conn.stream;
    if (stream) stream.reset(ResetCode.Limit, "server busy");
    else this.respond(conn, 503, "server busy: too many incomplete requests; try again shortly");
    return false;
  }

  private release(conn: HttpConnection): void {
    this.heads.used -= conn.heldBytes;
    conn.heldBytes = 0;
  }

  /**
   * The route key of a Host value: the tunnel name of `NAME.DOMAIN`, or a custom domain's whole host
   * name when a tunnel holds it (so that the control port still answers its own requests).
   */
  private keyOf(host: string): string | undefined {
    const name = nameOf(host, this.domain);
    if (name !== undefined) return name;
    const bare = host.toLowerCase().replace(/:\d+$/, "");
    return bare.includes(".") && this.options.route(bare) !== undefined ? bare : undefined;
  }

  /**
   * Route: the first request's authority picks the tunnel for the whole connection. "waiting": the
   * route answers later (see {@link HttpRoute.open}); the request's events wait in the backlog.
   */
  private route(conn: HttpConnection, head: RequestHead): Stream | null | "waiting" {
    const host = requestHost(head);
    const name = this.keyOf(host);
    const target = name === undefined ? undefined : this.options.route(name);
    if (target === undefined || target.passthrough) {
      const why = target === undefined ? "no tunnel" : "only an end-to-end TLS tunnel (use https)";
      this.respond(conn, 404, `${why} at ${host || "(no Host header)"}`);
      return null;
    }
    if (!authorized(head, target)) {
      this.respond(conn, 401, "this tunnel needs a user name and password", UNAUTHORIZED);
      return null;
    }
    const opened = target.open(conn.socket);
    if (opened instanceof Promise) {
      // A cluster's name whose node is a moment away: the connection waits unread, as for a local request.
      this.disarm(conn);
      conn.busy = true;
      conn.socket.pause();
      opened.then(
        (answer) => {
          conn.busy = false;
          if (conn.answered) return;
          if (this.routed(conn, target, name as string, answer) === null) return;
          conn.socket.resume();
          const backlog = conn.backlog;
          conn.backlog = [];
          this.relay(conn, backlog);
        },
        (error) => {
          this.log.error(`routing to ${name} failed: ${(error as Error).message}`);
          conn.socket.terminate();
        },
      );
      return "waiting";
    }
    return this.routed(conn, target, name as string, opened);
  }

  /** Route, continued: the route's answer (a stream, or a refusal the visitor is answered with). */
  private routed(conn: HttpConnection, target: HttpRoute, name: string, opened: RouteAnswer): Stream | null {
    if (!(opened as Stream).id) {
      const refusal = opened as { status: number; message: string; retryAfter?: number };
      const retry = refusal.retryAfter === undefined ? "" : `retry-after: ${refusal.retryAfter}\r\n`;
      this.respond(conn, refusal.status, refusal.message, retry);
      return null;
    }
    const stream = opened as Stream;
    conn.route = target;
    conn.name = name;
    // Nothing came back yet: answer the visitor with a page rather than a reset. The reason (which
    // names the client's loopback addresses) goes to the this.log, not to the visitor.
    stream.onPeerReset = (_code, reason, received) => {
      if (received > 0) return false;
      this.log.info(`tunnel ${name}: ${reason}`);
      this.respond(conn, 502, "the tunnel's local service did not answer");
      return true;
    };
    retirers.set(stream, () => this.retire(conn));
    // Routed after the port stopped (it waited for a moving name): this request is its last.
    if (this.stopping) conn.retiring = true;
    stream.tap = {
      toSocket: (bytes) => this.onResponseBytes(conn, bytes),
      fromSocket: () => {},
      end: () => this.onBackendEnd(conn),
      // The response framer copies what it keeps (a partial head): bodies are freed early as without it.
      keepsViews: false,
    };
    return stream;
  }

  /** Relays the visitor's request events onto the tunnel's stream. */
  private relay(conn: HttpConnection, events: RequestEvent[]): void {
    for (let i = 0; i < events.length; i++) {
      const event = events[i] as RequestEvent;
      if (conn.busy) {
        conn.backlog.push(...events.slice(i));
        return;
      }
      if (conn.inLocalBody) {
        if (event.type === "end-of-message") conn.inLocalBody = false;
        continue;
      }
      if (event.type === "head") {
        if (
          conn.stream === null &&
          this.options.acmeChallenge &&
          event.head.target.startsWith(ACME_CHALLENGE_PATH)
        ) {
          this.answerChallenge(
            conn,
            event.head.target.slice(ACME_CHALLENGE_PATH.length),
            this.options.acmeChallenge,
          );
          return;
        }
        if (conn.stream === null && this.options.local && this.keyOf(requestHost(event.head)) === undefined) {
          this.answerLocally(conn, event.head, this.options.local);
          continue;
        }
        const stream = conn.stream ?? this.route(conn, event.head);
        if (stream === "waiting") {
          conn.backlog.push(...events.slice(i));
          return;
        }
        if (stream === null || conn.route === null) return;
        this.disarm(conn); // a request is in progress: its response is the backend's business
        const host = requestHost(event.head);
        if (host !== conn.routedHost) {
          if (this.keyOf(host) !== conn.name) {
            // A connection belongs to the tunnel of its first request: never carry a request elsewhere.
            stream.reset(ResetCode.Protocol, "request for another host on the same connection");
            return;
          }
          conn.routedHost = host;
        }
        const basicAuth = conn.route.basicAuth !== undefined || conn.route.basicAuthHash !== undefined;
        if (basicAuth && authorizationOf(event.head) !== conn.authorizedAs) {
          if (!authorized(event.head, conn.route)) {
            // Responses to earlier requests may still be on their way: no page, just close.
            stream.reset(ResetCode.Protocol, "basic auth failed on a later request");
            return;
          }
          conn.authorizedAs = authorizationOf(event.head);
        }
        conn.remoteIp ??=
          this.options.visitorAddress?.(conn.socket) ?? unmappedAddress(conn.socket.remoteAddress);
        // A small body read with its head goes on in the same buffer: one DATA frame and one write
        // into the local service rather than two.
        const next = events[i + 1];
        const body = next?.type === "body" && next.bytes.length <= JOIN_BODY_MAX ? next.bytes : undefined;
        const head = forwardRequestBytes(
          event.head,
          {
            remoteIp: conn.remoteIp,
            proto: this.proto,
            rewriteHost: conn.route.hostHeader,
            dropAuthorization: basicAuth,
            cache: conn.forwarding,
          },
          body?.length ?? 0,
        );
        if (body !== undefined) {
          head.set(body, head.length - body.length);
          i++;
        }
        conn.responses.expectResponse(event.head.method);
        if (this.metrics) conn.started.push(performance.now());
        if (!event.head.keepAlive) conn.lastExchange = true;
        stream.onSocketData(head);
      } else if (event.type === "body" || event.type === "passthrough")
        conn.stream?.onSocketData(event.bytes);
    }
  }

  /** An ACME HTTP-01 validation: the key authorization as the whole body (or 404), then close. */
  private answerChallenge(
    conn: HttpConnection,
    token: string,
    challenge: (token: string) => string | undefined,
  ): void {
    const answer = challenge(token);
    if (answer === undefined) {
      this.respond(conn, 404, "no such ACME challenge");
      return;
    }
    this.metrics?.httpResponse(200);
    conn.socket.write(
      `HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: ${answer.length}\r\nconnection: close\r\n\r\n${answer}`,
    );
    conn.close();
  }

  /** A request for the port itself: the connection waits (unread) until it is answered. */
  private answerLocally(conn: HttpConnection, head: RequestHead, local: LocalRequests): void {
    this.disarm(conn);
    conn.busy = true;
    conn.inLocalBody = true;
    conn.socket.pause();
    local.handle(conn, head).then(
      () => {
        conn.busy = false;
        if (conn.answered) return;
        if (conn.takenOver) {
          // Reading was paused for the answer; the new owner pauses again if it wants to.
          if (!(conn.takenOver.paused ?? false)) conn.socket.resume();
          return;
        }
        conn.socket.resume();
        const backlog = conn.backlog;
        conn.backlog = [];
        this.relay(conn, backlog);
        if (conn.idle && !conn.busy && conn.stream === null) this.becameIdle(conn);
      },
      (error) => {
        this.log.error(`local request failed: ${(error as Error).message}`);
        conn.socket.terminate();
      },
    );
  }

  /** Bytes of the backend's responses, about to be written to the visitor: framed, never changed. */
  private onResponseBytes(conn: HttpConnection, bytes: Uint8Array): void {
    if (conn.upgraded) return;
    let events: ReturnType<ResponseFramer["feed"]>;
    try {
      events = conn.responses.feed(bytes);
    } catch (error) {
      this.log.info(`tunnel ${conn.name}: bad response from the local service: ${(error as Error).message}`);
      // Inside the stream's own receive path: reset once it returned.
      const stream = conn.stream;
      queueMicrotask(() => stream?.reset(ResetCode.Protocol, "bad response"));
      return;
    }
    if (!this.account(conn)) return;
    for (const event of events) {
      if (event.type === "head") {
        const head = event.head;
        // The answer to an upgrade request is the only final answer outstanding (bytes after that
        // request wait in the framer): 101 switches to raw bytes, anything else resumes framing.
        if (head.status < 200 && head.status !== 101) continue;
        if (this.metrics) {
          const started = conn.started.shift();
          this.metrics.httpResponse(
            head.status,
            started === undefined ? undefined : (performance.now() - started) / 1000,
          );
        }
        if (!head.keepAlive && head.status !== 101) conn.lastExchange = true;
        const answersUpgrade = conn.requests.awaitingUpgrade && conn.responses.pendingRequests === 0;
        if (head.status === 101) {
          if (!answersUpgrade) {
            const stream = conn.stream;
            queueMicrotask(() => stream?.reset(ResetCode.Protocol, "101 to a request that asked no upgrade"));
            return;
          }
          conn.upgraded = true;
          this.release(conn);
          this.relay(conn, conn.requests.switchToPassthrough());
          if (conn.visitorEnded) conn.stream?.onSocketEnd();
          return;
        }
        if (answersUpgrade) this.declined(conn);
      } else if (event.type === "end-of-message" && conn.idle) this.becameIdle(conn);
    }
  }

  /**
   * The backend closed its side: nothing more will come back, so once the visitor has what came (the
   * stream then sends it FIN), it has {@link LINGER_MS} to close, more while it is still reading.
   */
  private onBackendEnd(conn: HttpConnection): void {
    if (!conn.upgraded)
      try {
        conn.responses.end(); // ends a close-delimited body
      } catch {}
    if (!conn.upgraded || conn.visitorEnded) this.arm(conn, LINGER_MS);
  }

  /** The upgrade was answered with a final status: held bytes are requests again. */
  private declined(conn: HttpConnection): void {
    let events: RequestEvent[];
    try {
      events = conn.requests.declineUpgrade();
    } catch (error) {
      this.refuse(conn, error);
      return;
    }
    this.relay(conn, events);
    if (conn.visitorEnded && !conn.requests.awaitingUpgrade) conn.stream?.onSocketEnd();
  }

  /** Between requests: wait for the next head, or for a visitor that sent FIN to close. */
  private becameIdle(conn: HttpConnection): void {
    if (conn.retiring && !conn.visitorEnded && !conn.answered) this.closeRetired(conn);
    else this.arm(conn, conn.visitorEnded || conn.lastExchange ? LINGER_MS : this.requestTimeoutMs);
  }

  /** {@link retireAtRequestBoundary}: an upgraded connection (a WebSocket) is left to the drain. */
  private retire(conn: HttpConnection): void {
    if (conn.upgraded || conn.answered || conn.retiring) return;
    conn.retiring = true;
    if (conn.idle && !conn.busy) this.closeRetired(conn);
  }

  /**
   * A retiring connection between requests: FIN to the visitor at once when the kernel has every
   * response byte (the sooner it knows, the less likely it sends another request on this connection),
   * and END to the tunnel, whose FIN then comes back after any bytes still queued. What the visitor
   * sends meanwhile is ignored: it comes again on a new connection. Deferred: the last response's end
   * is seen before its bytes are written.
   */
  private closeRetired(conn: HttpConnection): void {
    conn.answered = true;
    queueMicrotask(() => {
      const stream = conn.stream;
      if (stream === null) return;
      if (stream.unwritten === 0) conn.socket.end();
      stream.onSocketEnd();
      this.arm(conn, LINGER_MS);
    });
  }

  private listen(): TCPSocketListener<HttpSocketData> {
    return Bun.listen<HttpSocketData>({
      hostname: this.options.host,
      port: this.options.port,
      tls: this.options.tls,
      allowHalfOpen: true,
      socket: {
        open: (socket) => {
          const conn = new HttpConnection(socket as HttpSocket, this.lingerFor);
          socket.data = { stream: null, connection: conn };
          this.arm(conn, this.requestTimeoutMs);
        },
        data: (socket, chunk: Uint8Array) => {
          const conn = socket.data.connection;
          if (conn.takenOver) {
            conn.takenOver.onData(chunk);
            return;
          }
          if (conn.answered) return;
          if (conn.upgraded) {
            socket.data.stream?.onSocketData(chunk, true);
            return;
          }
          let events: RequestEvent[];
          try {
            events = conn.requests.feed(chunk);
          } catch (error) {
            this.refuse(conn, error);
            return;
          }
          if (this.account(conn)) this.relay(conn, events);
        },
        drain: (socket) => {
          const conn = socket.data.connection;
          if (conn.takenOver) conn.takenOver.onDrain();
          else socket.data.stream?.onSocketDrain();
        },
        end: (socket) => {
          const conn = socket.data.connection;
          if (conn.takenOver) {
            conn.takenOver.onEnd();
            return;
          }
          conn.visitorEnded = true;
          const stream = socket.data.stream;
          if (conn.answered || stream === null) {
            // Nothing to relay (never routed, or answered with a page): both sides are done.
            socket.end();
            this.arm(conn, LINGER_MS);
          } else if (conn.upgraded || !conn.requests.awaitingUpgrade) {
            // Passed on as END: the backend may still answer what it got (the bytes after an upgrade
            // request wait for its answer, and so does this FIN).
            stream.onSocketEnd();
            if (conn.idle) this.becameIdle(conn);
          }
        },
        close: (socket, error?: Error) => {
          // A TLS handshake that failed closes a socket that never opened: no data slot.
          const conn = socket.data?.connection;
          if (conn === undefined) return;
          this.disarm(conn);
          this.timed.delete(conn);
          this.release(conn);
          conn.takenOver?.onClose();
          socket.data.stream?.onSocketClose(error);
        },
        error: (socket, error?: Error) => {
          const conn = socket.data?.connection;
          if (conn !== undefined && !conn.takenOver) socket.data.stream?.onSocketClose(error);
        },
      },
    });
  }
}
