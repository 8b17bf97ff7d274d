/**
 * Inspector capture: a {@link StreamTap} that records what crosses one visitor's stream, for the
 * client's inspector. On an HTTP tunnel, each exchange (request and response heads, bodies up to a cap
 * per body, sizes, timing, the visitor's address); on a TCP tunnel, one connection record (bytes each
 * way, duration, how it ended: FIN, RST or error). It reads the bytes the stream relays without
 * changing or holding them; parsing trouble stops the HTTP capture for that connection, never the relay.
 *
 * ```text
 * toSocket (visitor → local service) ──RequestFramer──▶ exchange: request head, body…
 * fromSocket (local service → visitor) ─ResponseFramer─▶ exchange: response head, body…, end → store
 * ```
 * @module
 */

import {
  type HeaderList,
  type RequestEvent,
  RequestFramer,
  type ResponseEvent,
  ResponseFramer,
  type ResponseHead,
} from "../../http1/framer.ts";
import type { StreamTap, TapReset } from "../../relay/stream.ts";
import { ResetCode } from "../../wire/protocol.ts";
import type { InspectorStore } from "./store.ts";

/** The most of each body an exchange keeps, by default (the rest is counted, not kept). */
export const DEFAULT_BODY_CAP = 1024 * 1024;

/** A body as captured: its first bytes (up to the cap) and its whole size. */
export interface CapturedBody {
  /** The bytes kept, as they crossed the wire (a chunked body with its chunk framing). */
  bytes: Uint8Array;
  /** Bytes the body had in all (on the wire). */
  size: number;
  /** Whether bytes past the cap were dropped. */
  truncated: boolean;
  /** Whether the bytes are chunked transfer coding (see {@link decodedBody}). */
  chunked: boolean;
}

/** One request as the local service received it. */
export interface CapturedRequest {
  method: string;
  /** The request target (path and query). */
  target: string;
  version: string;
  headers: HeaderList;
  body: CapturedBody;
}

/** One response as the local service sent it. */
export interface CapturedResponse {
  status: number;
  reason: string;
  version: string;
  headers: HeaderList;
  body: CapturedBody;
}

/** One HTTP request and its response through a tunnel (or a replay). */
export interface HttpExchange {
  /** Set by the store: `req_` and a number. */
  id: string;
  tunnelName: string;
  /** The visitor's `ip:port` (the OPEN frame's `meta.remote`), or `replay`. */
  remote: string;
  /** When the request head arrived (ms since the epoch). */
  start: number;
  /** `performance.now()` at the start, for durations. */
  startedAt: number;
  /** Milliseconds from the request head to the response head, once it came. */
  headersMs?: number;
  /** Milliseconds from the request head to the response's end, once complete. */
  durationMs?: number;
  request: CapturedRequest;
  response?: CapturedResponse;
  /** `pending` until the response ended; `error` when the connection ended first (see `error`). */
  state: "pending" | "complete" | "error";
  error?: string;
  /** The id of the exchange this one replays. */
  replayOf?: string;
  /** The connection switched protocols (a 101 answer, e.g. a WebSocket). */
  upgraded?: boolean;
}

/** How a TCP connection ended: both sides closed (FIN), one reset it (RST), or an error. */
export type ConnectionEnd = "fin" | "rst" | "error";

/** One visitor connection of a TCP tunnel. */
export interface TcpConnection {
  /** Set by the store: `conn_` and a number. */
  id: string;
  tunnelName: string;
  remote: string;
  start: number;
  startedAt: number;
  /** Bytes from the visitor to the local service. */
  bytesIn: number;
  /** Bytes from the local service to the visitor. */
  bytesOut: number;
  durationMs?: number;
  /** Absent while open. */
  end?: ConnectionEnd;
  /** What the reset or error said. */
  reason?: string;
}

/** Collects a body's first `cap` bytes in chunks, counting the rest. */
class BodyCollector {
  private chunks: Uint8Array[] = [];
  private kept = 0;
  size = 0;

  constructor(
    private readonly cap: number,
    readonly chunked: boolean,
  ) {}

  add(bytes: Uint8Array): void {
    this.size += bytes.length;
    const room = this.cap - this.kept;
    if (room <= 0) return;
    // Framer events are views into the stream's buffers: copy what is kept.
    const take = bytes.length <= room ? bytes.slice() : bytes.slice(0, room);
    this.chunks.push(take);
    this.kept += take.length;
  }

  done(): CapturedBody {
    const bytes =
      this.chunks.length === 1 ? (this.chunks[0] as Uint8Array) : joinChunks(this.chunks, this.kept);
    this.chunks = [];
    return {
      bytes,
      size: this.size,
      truncated: this.size > this.kept,
      chunked: this.chunked,
    };
  }
}

/** The chunks as one array of `length` bytes. */
function joinChunks(chunks: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

const EMPTY_BODY: CapturedBody = { bytes: new Uint8Array(0), size: 0, truncated: false, chunked: false };

/** An exchange being captured, with the collectors of its bodies. */
interface Open {
  exchange: HttpExchange;
  requestBody: BodyCollector | null;
  responseBody: BodyCollector | null;
}

/** What an {@link InspectorTap} records and where. */
export interface CaptureSettings {
  store: InspectorStore;
  /** The tunnel's name in the client's set. */
  tunnelName: string;
  /** The visitor's address (the OPEN frame's `meta.remote`). */
  remote: string;
  /** `http` frames exchanges; `tcp` records one connection. */
  kind: "http" | "tcp";
  /** For a replay: the exchange replayed. */
  replayOf?: string;
}

/**
 * Records one stream for the inspector (see the module header). Every stream counts into the store's
 * figures (bytes each way, open connections); HTTP streams add exchanges, TCP streams a connection.
 */
export class InspectorTap implements StreamTap {
  private readonly store: InspectorStore;
  private readonly requests: RequestFramer | null;
  private readonly responses: ResponseFramer | null;
  /** Exchanges whose response has not ended, oldest first. */
  private readonly waiting: Open[] = [];
  /** The exchange whose request body is arriving. */
  private sending: Open | null = null;
  private readonly connection: TcpConnection | null;
  private off = false;
  private ended = false;
  /** The exchange whose request head came last (a replay reads its own). */
  lastExchange: HttpExchange | null = null;
  /** TCP connections are only counted: the relay may free their buffers early (HTTP bodies are kept). */
  readonly keepsViews: boolean;

  constructor(private readonly settings: CaptureSettings) {
    this.store = settings.store;
    const http = settings.kind === "http";
    this.keepsViews = http;
    this.requests = http ? new RequestFramer() : null;
    this.responses = http ? new ResponseFramer() : null;
    this.connection = http ? null : settings.store.openConnection(settings.tunnelName, settings.remote);
    this.store.stats.connectionsOpen++;
    this.store.stats.connectionsTotal++;
  }

  /** Request bytes on their way to the local service. */
  toSocket(bytes: Uint8Array): void {
    this.store.stats.bytesIn += bytes.length;
    const connection = this.connection;
    if (connection !== null) {
      connection.bytesIn += bytes.length;
      return;
    }
    if (this.off) return;
    try {
      this.onRequestEvents((this.requests as RequestFramer).feed(bytes));
    } catch (error) {
      this.stop(`request not HTTP/1.1: ${(error as Error).message}`);
    }
  }

  private onRequestEvents(events: RequestEvent[]): void {
    for (const event of events) {
      if (event.type === "head") {
        const { head } = event;
        (this.responses as ResponseFramer).expectResponse(head.method);
        const chunked = head.body === "chunked";
        const exchange: HttpExchange = {
          id: "",
          tunnelName: this.settings.tunnelName,
          remote: this.settings.remote,
          start: Date.now(),
          startedAt: performance.now(),
          request: {
            method: head.method,
            target: head.target,
            version: head.version,
            headers: head.headers,
            body: EMPTY_BODY,
          },
          state: "pending",
        };
        if (this.settings.replayOf !== undefined) exchange.replayOf = this.settings.replayOf;
        const open: Open = {
          exchange,
          requestBody: head.body === "none" ? null : new BodyCollector(this.store.bodyCap, chunked),
          responseBody: null,
        };
        this.waiting.push(open);
        this.sending = open;
        this.lastExchange = exchange;
        this.store.add(exchange);
      } else if (event.type === "body") this.sending?.requestBody?.add(event.bytes);
      else if (event.type === "end-of-message") this.endRequest();
    }
  }

  private endRequest(): void {
    const open = this.sending;
    if (open === null) return;
    this.sending = null;
    if (open.requestBody !== null) {
      open.exchange.request.body = open.requestBody.done();
      open.requestBody = null;
    }
  }

  /** Response bytes on their way back to the visitor. */
  fromSocket(bytes: Uint8Array): void {
    this.store.stats.bytesOut += bytes.length;
    const connection = this.connection;
    if (connection !== null) {
      connection.bytesOut += bytes.length;
      return;
    }
    if (this.off) return;
    try {
      this.onResponseEvents((this.responses as ResponseFramer).feed(bytes));
    } catch (error) {
      this.stop(`response not HTTP/1.1: ${(error as Error).message}`);
    }
  }

  private onResponseEvents(events: ResponseEvent[]): void {
    for (const event of events) {
      const current = this.waiting[0];
      if (current === undefined) return;
      if (event.type === "head") this.onResponseHead(current, event.head);
      else if (event.type === "body") current.responseBody?.add(event.bytes);
      else if (event.type === "end-of-message" && current.exchange.response !== undefined) this.finish();
      if (this.off) return;
    }
  }

  private onResponseHead(current: Open, head: ResponseHead): void {
    const requests = this.requests as RequestFramer;
    if (head.status < 200 && head.status !== 101) return; // 100 Continue and friends: the final one follows
    const { exchange } = current;
    exchange.headersMs = performance.now() - exchange.startedAt;
    exchange.response = {
      status: head.status,
      reason: head.reason,
      version: head.version,
      headers: head.headers,
      body: EMPTY_BODY,
    };
    if (head.body !== "none" && head.body !== "passthrough")
      current.responseBody = new BodyCollector(this.store.bodyCap, head.body === "chunked");
    // An upgrade refused: the requests held behind it are HTTP after all.
    if (head.status >= 200 && requests.awaitingUpgrade) this.onRequestEvents(requests.declineUpgrade());
    if (head.status === 101 || head.body === "passthrough") {
      exchange.upgraded = true;
      this.finish();
      this.off = true; // the connection is no longer HTTP
    }
  }

  /** The response at the head of the queue ended: the exchange is complete. */
  private finish(): void {
    const open = this.waiting.shift();
    if (open === undefined) return;
    const { exchange } = open;
    if (open === this.sending) this.endRequest();
    const response = exchange.response;
    if (response !== undefined && open.responseBody !== null) response.body = open.responseBody.done();
    exchange.durationMs = performance.now() - exchange.startedAt;
    exchange.state = "complete";
    this.store.update(exchange);
  }

  /** Stops framing this connection; exchanges still open end with `why`. */
  private stop(why: string): void {
    this.off = true;
    this.failWaiting(why);
  }

  private failWaiting(why: string): void {
    for (const open of this.waiting.splice(0)) {
      const { exchange } = open;
      if (open.requestBody !== null) exchange.request.body = open.requestBody.done();
      if (exchange.response !== undefined && open.responseBody !== null)
        exchange.response.body = open.responseBody.done();
      exchange.durationMs = performance.now() - exchange.startedAt;
      exchange.state = "error";
      exchange.error = why;
      this.store.update(exchange);
    }
    this.sending = null;
  }

  /** The stream was freed: ends a close-delimited response, fails exchanges left open, closes the record. */
  closed(reset?: TapReset): void {
    if (this.ended) return;
    this.ended = true;
    this.store.stats.connectionsOpen--;
    const connection = this.connection;
    if (connection !== null) {
      const [end, reason] = connectionEnd(reset);
      connection.durationMs = performance.now() - connection.startedAt;
      connection.end = end;
      if (reason !== undefined) connection.reason = reason;
      this.store.closeConnection(connection);
      return;
    }
    if (this.off) return;
    if (reset === undefined)
      try {
        this.onResponseEvents((this.responses as ResponseFramer).end());
      } catch {}
    if (this.waiting.length > 0)
      this.failWaiting(
        reset === undefined ? "connection closed before the response ended" : describeReset(reset),
      );
  }
}

/** A reset as one line: who and why. */
function describeReset(reset: TapReset): string {
  const who =
    reset.by === "peer"
      ? "reset from the visitor's side"
      : reset.by === "local"
        ? "reset here"
        : "session ended";
  return reset.reason === "" ? who : `${who}: ${reset.reason}`;
}

/** How a TCP connection ended, from the tap's view of the stream's end. */
export function connectionEnd(reset?: TapReset): [ConnectionEnd, string | undefined] {
  if (reset === undefined) return ["fin", undefined];
  const reason = describeReset(reset);
  if (reset.by === "gone") return ["error", reason];
  if (reset.code === ResetCode.Aborted) return ["rst", reason];
  return ["error", reason];
}

/**
 * A captured body's content without its chunked framing (a chunked body kept whole), else its bytes
 * as kept. Returns null when a chunked body was cut by the cap or is malformed.
 */
export function decodedBody(body: CapturedBody): Uint8Array | null {
  if (!body.chunked) return body.bytes;
  if (body.truncated) return null;
  const bytes = body.bytes;
  const parts: Uint8Array[] = [];
  let at = 0;
  for (let guard = 0; guard <= bytes.length; guard++) {
    const lineEnd = bytes.indexOf(10, at);
    if (lineEnd < 0) return null;
    const line = Buffer.from(bytes.subarray(at, lineEnd)).toString("latin1").trim();
    const size = Number.parseInt(line.split(";")[0] ?? "", 16);
    if (!Number.isFinite(size) || size < 0) return null;
    at = lineEnd + 1;
    if (size === 0) break;
    if (at + size > bytes.length) return null;
    parts.push(bytes.subarray(at, at + size));
    at += size + 2; // the data's CRLF
  }
  const joined = Buffer.concat(parts);
  return new Uint8Array(joined.buffer, joined.byteOffset, joined.length);
}

/** Runs several taps on one stream, in order (the request log and the inspector). */
export class TeeTap implements StreamTap {
  /** False only when no tap keeps views of the bytes. */
  readonly keepsViews: boolean;

  constructor(private readonly taps: StreamTap[]) {
    this.keepsViews = taps.some((tap) => tap.keepsViews !== false);
  }

  /** Hands the visitor's bytes to every tap. */
  toSocket(bytes: Uint8Array): void {
    for (const tap of this.taps) tap.toSocket(bytes);
  }

  /** Hands the local service's bytes to every tap. */
  fromSocket(bytes: Uint8Array): void {
    for (const tap of this.taps) tap.fromSocket(bytes);
  }

  /** Tells every tap the peer's END arrived. */
  end(): void {
    for (const tap of this.taps) tap.end?.();
  }

  /** Tells every tap the stream was freed. */
  closed(reset?: TapReset): void {
    for (const tap of this.taps) tap.closed?.(reset);
  }
}

/** One tap for a stream out of those wanted (undefined for none): no composite for a single one. */
export function combineTaps(...taps: (StreamTap | undefined)[]): StreamTap | undefined {
  const wanted = taps.filter((tap): tap is StreamTap => tap !== undefined);
  return wanted.length <= 1 ? wanted[0] : new TeeTap(wanted);
}
