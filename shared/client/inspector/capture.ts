/**
 * Inspector capture: a {@link StreamTap} that records what crosses one visitor's stream, for the
 * client's inspector. On an HTTP tunnel, each exchange (request and response heads, bodies up to a cap
 * per body, sizes, timing, the visitor's address); on a TCP tunnel, one connection record (bytes each
 * way, duration, how it ended: FIN, RST or error). It reads the bytes the stream relays without
 * changing them or keeping views of them (what it keeps, it copies); parsing trouble stops the HTTP
 * capture for that connection, never the relay.
 *
 * Capture runs on every exchange, the page reads a few: the tap finds each message's boundaries with a
 * light scan of its head (the start line, Content-Length, Transfer-Encoding, an upgrade: see scan.ts)
 * and keeps the head's bytes as they were, in the same buffer as the body's first bytes (one copy per
 * message); header lists and strings are built only when read.
 *
 * ```text
 * toSocket (visitor → local service) ──scanRequestHead──▶ exchange: request head bytes, body…
 * fromSocket (local service → visitor) ─scanResponseHead─▶ exchange: response head bytes, body…, end → store
 * ```
 * @module
 */

import { ChunkedScanner, findHeadEnd, type HeaderList, latin1, MAX_HEAD_BYTES } from "../../http1/framer.ts";
import type { StreamTap, TapReset } from "../../relay/stream.ts";
import { ResetCode } from "../../wire/protocol.ts";
import { requestLine } from "../request-log.ts";
import { Body, fieldsOf, type HeadScan, ScanError, scanRequestHead, scanResponseHead } from "./scan.ts";
import { SLAB_MESSAGE_MAX, Slab } from "./slabs.ts";
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

/** What requests and responses share: the head's bytes as they were, and the body. */
interface CapturedMessage {
  /** The head's bytes, start line through the blank line. */
  readonly head: Uint8Array;
  /** The head's field lines (parsed when first read). */
  readonly headers: HeaderList;
  readonly version: string;
  readonly body: CapturedBody;
  /** Body bytes kept (what counts against the store's budget). */
  readonly kept: number;
}

/** One request as the local service received it. */
export interface CapturedRequest extends CapturedMessage {
  readonly method: string;
  /** The request target (path and query). */
  readonly target: string;
}

/** One response as the local service sent it. */
export interface CapturedResponse extends CapturedMessage {
  readonly status: number;
  readonly reason: string;
}

/** One HTTP request and its response through a tunnel (or a replay). */
export interface HttpExchange {
  /** Set by the store: the exchange's number, counting from 1 (ids are built from it when asked). */
  seq: number;
  /** `req_` and {@link seq}. */
  readonly id: string;
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
  /** The capture may reuse this object once the store has let it go (see store.ts). */
  readonly reusable?: boolean;
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

/** Bun's native copy of a range (no view of the source made); works on any Uint8Array. */
const copyRange = Buffer.prototype.copy;

/** Copies `src[from, to)` into `dst` at `at`. */
function copyInto(src: Uint8Array, from: number, to: number, dst: Uint8Array, at: number): void {
  if (from === 0 && to === src.length) dst.set(src, at);
  else copyRange.call(src as Buffer, dst, at, from, to);
}

/** `Date.now() - performance.now()`, read again at most once a second (a wall clock that moved shows then). */
let wallOffset = Date.now() - performance.now();
let wallReadAt = performance.now();

/** The wall-clock time (ms since the epoch) of `performance.now()` reading `now`, without a second clock read. */
export function wallClock(now: number): number {
  if (now - wallReadAt > 1000 || now < wallReadAt) {
    wallOffset = Date.now() - now;
    wallReadAt = now;
  }
  return Math.floor(now + wallOffset);
}

/** What a record of a reused slab reads as. */
const NO_BYTES = new Uint8Array(0);
/** The slab of a record not renewed yet. */
const EMPTY_SLAB = new Slab(NO_BYTES);

/**
 * One message's record: its head's bytes followed by its body's first bytes, at `at` in a slab (see
 * slabs.ts), room sized when the head arrived (a Content-Length body up to the cap: one copy, no more
 * allocation); a body of unknown length (chunked, close-delimited) gathers copies of its pieces, joined
 * when it ends or is read. Views of the bytes are made only when read.
 */
class MessageRecord {
  /** Body pieces past what `buf` has room for. */
  private pieces: Uint8Array[] | null = null;
  /** Body bytes kept in `buf` after the head. */
  private inBuf = 0;
  /** Body bytes kept in all. */
  kept = 0;
  /** Body bytes on the wire. */
  size = 0;
  private fields: HeaderList | null = null;
  // Set by renew(), which every use of a record starts with (a new one, or a recycled exchange's).
  /** The slab's use this record belongs to. */
  private gen = 0;
  /** Holds the head at `at`, then `inBuf` body bytes, within `room` bytes. */
  private slab: Slab = EMPTY_SLAB;
  protected at = 0;
  private room = 0;
  headLength = 0;
  chunked = false;
  private cap = 0;
  /** Where a joined body goes (settle). */
  private tap: InspectorTap | null = null;
  /** The exchange's number in the store. */
  private seq = 0;

  /**
   * Makes this record a message's: a new record's first call, and a recycled exchange's (a request's
   * line offsets and a response's status are then set by the caller).
   */
  renew(
    slab: Slab,
    at: number,
    room: number,
    headLength: number,
    chunked: boolean,
    cap: number,
    tap: InspectorTap,
    seq: number,
  ): void {
    this.pieces = null;
    this.inBuf = 0;
    this.kept = 0;
    this.size = 0;
    this.fields = null;
    this.slab = slab;
    this.gen = slab.gen;
    this.at = at;
    this.room = room;
    this.headLength = headLength;
    this.chunked = chunked;
    this.cap = cap;
    this.tap = tap;
    this.seq = seq;
  }

  /** The slab's bytes; none once the slab was reused (the store let this exchange go long ago). */
  protected get buf(): Uint8Array {
    return this.slab.gen === this.gen ? this.slab.bytes : NO_BYTES;
  }

  /** The head's bytes. */
  get head(): Uint8Array {
    return this.buf.subarray(this.at, this.at + this.headLength);
  }

  /** The head's field lines, parsed on first read. */
  get headers(): HeaderList {
    this.fields ??= fieldsOf(this.head);
    return this.fields;
  }

  /** Counts `b[from, to)` into the body, copying what fits under the cap. */
  addBody(b: Uint8Array, from: number, to: number): void {
    const length = to - from;
    this.size += length;
    const room = this.cap - this.kept;
    if (room <= 0) return;
    const take = Math.min(length, room);
    const used = this.headLength + this.inBuf;
    if (this.pieces === null && used + take <= this.room) {
      if (this.slab.gen === this.gen) copyInto(b, from, from + take, this.slab.bytes, this.at + used);
      this.inBuf += take;
    } else if (this.pieces === null) this.pieces = [b.slice(from, from + take)];
    else this.pieces.push(b.slice(from, from + take));
    this.kept += take;
  }

  /** Joins the pieces gathered into one record (when the body ends, or is read); gives back unused room. */
  settle(): void {
    const pieces = this.pieces;
    const used = this.headLength + this.inBuf;
    // Room a body that ended early did not use: a slab's stays there, a large own buffer is let go.
    if (pieces === null && this.room - used <= SLAB_MESSAGE_MAX) {
      this.room = used;
      return;
    }
    const buf = this.buf;
    const tap = this.tap as InspectorTap; // renewed before any body arrives
    const joined = tap.reserve(this.headLength + this.kept, this.seq);
    const at = tap.reservedAt;
    if (buf.length > 0) copyInto(buf, this.at, this.at + used, joined.bytes, at);
    let to = at + used;
    for (const piece of pieces ?? []) {
      joined.bytes.set(piece, to);
      to += piece.length;
    }
    this.slab = joined;
    this.gen = joined.gen;
    this.at = at;
    this.room = to - at;
    this.pieces = null;
    this.inBuf = this.kept;
  }

  /** The body as captured so far. */
  get body(): CapturedBody {
    if (this.pieces !== null) this.settle();
    const from = this.at + this.headLength;
    return {
      bytes: this.buf.subarray(from, from + this.inBuf),
      size: this.size,
      truncated: this.size > this.kept,
      chunked: this.chunked,
    };
  }

  /** Where the start line's end lies (its CR), from the record's start. */
  protected lineEnd(): number {
    const end = this.buf.indexOf(13, this.at) - this.at;
    return end < 0 || end > this.headLength ? this.headLength : end;
  }

  /** The record's bytes `[from, to)` as a string, one character per byte. */
  protected text(from: number, to: number): string {
    return latin1(this.buf.subarray(this.at + from, this.at + to));
  }
}

/** A request's record: method, target and version read from the head's bytes when asked. */
class RequestRecord extends MessageRecord implements CapturedRequest {
  /** Where the method ends and the target ends in the head. */
  methodEnd = 0;
  targetEnd = 0;

  get method(): string {
    return methodName(this.buf, this.at, this.methodEnd) ?? this.text(0, this.methodEnd);
  }

  get target(): string {
    return this.text(this.methodEnd + 1, this.targetEnd);
  }

  get version(): string {
    return this.text(this.targetEnd + 1, this.lineEnd());
  }
}

/** The usual methods as constants (no string built for them): the method at `b[at…]`, `length` long. */
function methodName(b: Uint8Array, at: number, length: number): string | undefined {
  const c = b[at];
  if (length === 3) return c === 71 ? "GET" : c === 80 ? "PUT" : undefined;
  if (length === 4) return c === 80 ? "POST" : c === 72 ? "HEAD" : undefined;
  return undefined;
}

/** A response's record: its status as a number, version and reason read from the head when asked. */
class ResponseRecord extends MessageRecord implements CapturedResponse {
  /** The status code. */
  status = 0;

  get version(): string {
    return this.text(0, 8);
  }

  get reason(): string {
    const end = this.lineEnd();
    return end > 13 ? this.text(13, end) : "";
  }
}

/**
 * An exchange as the tap builds it (one object per exchange, its shape fixed from the start). The
 * store hands one back for reuse, records and all, once it has let it go (see store.ts): an exchange
 * kept a few milliseconds lives long enough to reach the collector's old generation, and freeing
 * thousands a second there cost the client more than capturing them.
 */
class Exchange implements HttpExchange {
  seq = 0;
  tunnelName = "";
  /** The visitor's `ip:port`. */
  remote = "";
  /** The request was HEAD: its answer has no body. */
  head = false;
  /** `performance.now()` when the request head arrived. */
  startedAt = 0;
  start = 0;
  headersMs: number | undefined = undefined;
  durationMs: number | undefined = undefined;
  readonly request = new RequestRecord();
  response: ResponseRecord | undefined = undefined;
  /** The response record of this object's last use, kept for the next. */
  spareResponse: ResponseRecord | undefined = undefined;
  state: HttpExchange["state"] = "pending";
  error: string | undefined = undefined;
  upgraded: boolean | undefined = undefined;
  readonly reusable: boolean;

  constructor(readonly replayOf: string | undefined) {
    // A replay's exchange is read after an await, outside the store's say: never reused.
    this.reusable = replayOf === undefined;
  }

  /** Makes this object an exchange's: a new one's first call, and a recycled one's (its request record renewed by the caller). */
  renew(tunnelName: string, remote: string, head: boolean, startedAt: number): void {
    this.seq = 0;
    this.tunnelName = tunnelName;
    this.remote = remote;
    this.head = head;
    this.startedAt = startedAt;
    this.start = wallClock(startedAt);
    this.headersMs = undefined;
    this.durationMs = undefined;
    if (this.response !== undefined) this.spareResponse = this.response;
    this.response = undefined;
    this.state = "pending";
    this.error = undefined;
    this.upgraded = undefined;
  }

  /** Built when asked (the API and the page), not for every exchange. */
  get id(): string {
    return `req_${this.seq}`;
  }
}

/** Where a direction of the stream is. */
const At = { Head: 0, Length: 1, Chunked: 2, Close: 3, Pending: 4 } as const;
type At = (typeof At)[keyof typeof At];

/** What the scanner reports; one for all taps (the scan is synchronous). */
const SCAN: HeadScan = {
  methodEnd: 0,
  targetEnd: 0,
  status: 0,
  body: Body.None,
  contentLength: 0,
  upgrade: false,
};

/** A head arriving in pieces is scanned for errors while it is this short, then only once complete. */
const EARLY_CHECK = 1024;

/** A head that arrived in pieces, gathered (copied) until its blank line. */
class PartialHead {
  bytes = new Uint8Array(0);
  length = 0;

  /** Appends `b[from, to)`; throws past {@link MAX_HEAD_BYTES}. */
  append(b: Uint8Array, from: number, to: number): void {
    const needed = this.length + (to - from);
    if (needed > this.bytes.length) {
      const grown = new Uint8Array(Math.min(MAX_HEAD_BYTES, Math.max(needed, this.bytes.length * 2, 512)));
      grown.set(this.bytes.subarray(0, this.length));
      this.bytes = grown;
    }
    this.bytes.set(b.subarray(from, to), this.length);
    this.length = needed;
  }

  /**
   * Appends `b[from…]` and returns how many of those bytes complete the head (the head is then
   * `bytes[0, length)`), or -1 while it is still incomplete.
   */
  take(b: Uint8Array, from: number): number {
    const before = this.length;
    const take = Math.min(MAX_HEAD_BYTES - before, b.length - from);
    this.append(b, from, from + take);
    const end = findHeadEnd(this.bytes, Math.max(0, before - 3), this.length);
    if (end < 0) {
      if (this.length >= MAX_HEAD_BYTES) throw new ScanError("head larger than 64 KiB");
      return -1;
    }
    this.length = end;
    return end - before;
  }

  /** The gathered head, and forgets it. */
  done(): Uint8Array {
    const head = this.bytes.subarray(0, this.length);
    this.length = 0;
    if (this.bytes.length > 4096) this.bytes = new Uint8Array(0);
    return head;
  }
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
  /** Prints the request log's line for each exchange that completes (see request-log.ts). */
  logRequest?: (line: string) => void;
}

/**
 * Records one stream for the inspector (see the module header). Every stream counts into the store's
 * figures (bytes each way, open connections); HTTP streams add exchanges, TCP streams a connection.
 */
export class InspectorTap implements StreamTap {
  private readonly store: InspectorStore;
  private readonly connection: TcpConnection | null;
  /** Exchanges whose response has not ended, oldest first. */
  private readonly waiting: Exchange[] = [];
  /** The exchange whose request body is arriving (null once cut short by its answer). */
  private sending: Exchange | null = null;
  private requestAt: At = At.Head;
  private responseAt: At = At.Head;
  /** Body bytes left of a Content-Length body, each way. */
  private requestLeft = 0;
  private responseLeft = 0;
  private requestChunks: ChunkedScanner | null = null;
  private responseChunks: ChunkedScanner | null = null;
  private requestPartial: PartialHead | null = null;
  private responsePartial: PartialHead | null = null;
  /** The last request asked for an upgrade: bytes after it wait (copied) for the answer. */
  private upgradeAsked = false;
  private held: Uint8Array[] = [];
  private heldBytes = 0;
  private off = false;
  private ended = false;
  /** Where the last {@link reserve} placed its bytes. */
  reservedAt = 0;
  /** `performance.now()` once read for the response bytes at hand (-1: not yet): one read per chunk. */
  private clock = -1;
  /** A replay's exchange (the replay reads it once answered). */
  lastExchange: HttpExchange | null = null;
  /** The tap copies what it keeps (HTTP) or only counts (TCP): the relay may free buffers early. */
  readonly keepsViews = false;

  constructor(private readonly settings: CaptureSettings) {
    this.store = settings.store;
    const http = settings.kind === "http";
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
      this.requestBytes(bytes);
    } catch (error) {
      this.stop(`request not HTTP/1.1: ${(error as Error).message}`);
    }
  }

  private requestBytes(b: Uint8Array): void {
    let at = 0;
    while (at < b.length) {
      switch (this.requestAt) {
        case At.Head:
          at = this.requestHead(b, at);
          break;
        case At.Length: {
          const take = Math.min(this.requestLeft, b.length - at);
          this.sending?.request.addBody(b, at, at + take);
          at += take;
          this.requestLeft -= take;
          if (this.requestLeft === 0) this.endRequest();
          break;
        }
        case At.Chunked: {
          const end = (this.requestChunks as ChunkedScanner).scan(b, at);
          const stop = end < 0 ? b.length : end;
          this.sending?.request.addBody(b, at, stop);
          at = stop;
          if (end >= 0) this.endRequest();
          break;
        }
        default: {
          // Waiting for the answer to an upgrade: hold a copy, parsed only if it is refused.
          this.heldBytes += b.length - at;
          if (this.heldBytes > MAX_HEAD_BYTES) throw new ScanError("too much data before the upgrade answer");
          this.held.push(b.slice(at));
          at = b.length;
        }
      }
    }
  }

  /** Reads a request head from `b[at…]`; returns where it stopped. */
  private requestHead(b: Uint8Array, at: number): number {
    const partial = this.requestPartial;
    if (partial === null || partial.length === 0) {
      at = skipEmptyLines(b, at);
      if (at === b.length) return at;
      const end = scanRequestHead(b, at, SCAN);
      if (end >= 0) {
        this.startRequest(b, at, end);
        return end;
      }
    }
    if (this.requestPartial === null) this.requestPartial = new PartialHead();
    const into = this.requestPartial;
    const used = into.take(b, at);
    if (used < 0) {
      // Fails early on what is not HTTP (while the start line may still be in view: no quadratic rescans).
      if (into.length <= EARLY_CHECK) scanRequestHead(into.bytes.subarray(0, into.length), 0, SCAN);
      return b.length;
    }
    const head = into.done();
    if (scanRequestHead(head, 0, SCAN) !== head.length) throw new ScanError("malformed head");
    this.startRequest(head, 0, head.length);
    return at + used;
  }

  /** A request head lies at `b[from, to)` and {@link SCAN} describes it: a new exchange. */
  private startRequest(b: Uint8Array, from: number, to: number): void {
    const { store } = this;
    const { body, contentLength, upgrade } = SCAN; // read before anything else may scan
    const headLength = to - from;
    const room = headLength + (body === Body.Length ? Math.min(contentLength, store.bodyCap) : 0);
    const seq = store.nextSeq;
    const slab = this.reserve(room, seq);
    const at = this.reservedAt;
    copyInto(b, from, to, slab.bytes, at);
    const head =
      SCAN.methodEnd - from === 4 &&
      b[from] === 72 &&
      b[from + 1] === 69 &&
      b[from + 2] === 65 &&
      b[from + 3] === 68;
    const { settings } = this;
    const startedAt = performance.now();
    const spare = settings.replayOf === undefined ? (store.reusable() as Exchange | undefined) : undefined;
    const exchange = spare ?? new Exchange(settings.replayOf);
    exchange.renew(settings.tunnelName, settings.remote, head, startedAt);
    const request = exchange.request;
    request.renew(slab, at, room, headLength, body === Body.Chunked, store.bodyCap, this, seq);
    request.methodEnd = SCAN.methodEnd - from;
    request.targetEnd = SCAN.targetEnd - from;
    this.waiting.push(exchange);
    this.sending = exchange;
    if (settings.replayOf !== undefined) this.lastExchange = exchange;
    this.upgradeAsked = upgrade;
    store.add(exchange);
    if (body === Body.Length && contentLength > 0) {
      this.requestAt = At.Length;
      this.requestLeft = contentLength;
    } else if (body === Body.Chunked) {
      this.requestAt = At.Chunked;
      if (this.requestChunks === null) this.requestChunks = new ChunkedScanner();
      else this.requestChunks.reset();
    } else this.endRequest();
  }

  /** The request's body ended (or it had none). */
  private endRequest(): void {
    const exchange = this.sending;
    this.sending = null;
    exchange?.request.settle();
    this.requestAt = this.upgradeAsked ? At.Pending : At.Head;
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
    this.clock = -1;
    try {
      this.responseBytes(bytes);
    } catch (error) {
      this.stop(`response not HTTP/1.1: ${(error as Error).message}`);
    }
  }

  private responseBytes(b: Uint8Array): void {
    let at = 0;
    while (at < b.length && !this.off) {
      const current = this.waiting[0];
      if (current === undefined) throw new ScanError("a response without a request");
      switch (this.responseAt) {
        case At.Head:
          at = this.responseHead(b, at, current);
          break;
        case At.Length: {
          const take = Math.min(this.responseLeft, b.length - at);
          current.response?.addBody(b, at, at + take);
          at += take;
          this.responseLeft -= take;
          if (this.responseLeft === 0) this.finish();
          break;
        }
        case At.Chunked: {
          const end = (this.responseChunks as ChunkedScanner).scan(b, at);
          const stop = end < 0 ? b.length : end;
          current.response?.addBody(b, at, stop);
          at = stop;
          if (end >= 0) this.finish();
          break;
        }
        default:
          current.response?.addBody(b, at, b.length);
          at = b.length;
      }
    }
  }

  /** Reads a response head from `b[at…]`; returns where it stopped. */
  private responseHead(b: Uint8Array, at: number, current: Exchange): number {
    const partial = this.responsePartial;
    if (partial === null || partial.length === 0) {
      at = skipEmptyLines(b, at);
      if (at === b.length) return at;
      const end = scanResponseHead(b, at, current.head, SCAN);
      if (end >= 0) {
        this.startResponse(b, at, end, current);
        return end;
      }
    }
    if (this.responsePartial === null) this.responsePartial = new PartialHead();
    const into = this.responsePartial;
    const used = into.take(b, at);
    if (used < 0) {
      if (into.length <= EARLY_CHECK)
        scanResponseHead(into.bytes.subarray(0, into.length), 0, current.head, SCAN);
      return b.length;
    }
    const head = into.done();
    if (scanResponseHead(head, 0, current.head, SCAN) !== head.length) throw new ScanError("malformed head");
    this.startResponse(head, 0, head.length, current);
    return at + used;
  }

  /** A response head lies at `b[from, to)` and {@link SCAN} describes it. */
  private startResponse(b: Uint8Array, from: number, to: number, current: Exchange): void {
    const { status, body, contentLength } = SCAN;
    if (status < 200 && status !== 101) return; // 100 Continue and friends: the final one follows
    const cap = this.store.bodyCap;
    const headLength = to - from;
    const room = headLength + (body === Body.Length ? Math.min(contentLength, cap) : 0);
    const seq = current.seq;
    const slab = this.reserve(room, seq);
    const at = this.reservedAt;
    copyInto(b, from, to, slab.bytes, at);
    current.headersMs = this.now() - current.startedAt;
    const response = current.spareResponse ?? new ResponseRecord();
    current.spareResponse = undefined;
    response.renew(slab, at, room, headLength, body === Body.Chunked, cap, this, seq);
    response.status = status;
    current.response = response;
    // An upgrade refused: the requests held behind it are HTTP after all.
    if (status >= 200 && this.requestAt === At.Pending) this.declineUpgrade();
    if (body === Body.Passthrough) {
      current.upgraded = true;
      this.finish();
      this.off = true; // the connection is no longer HTTP
      this.held = [];
      this.requestPartial = this.responsePartial = null;
    } else if (body === Body.Length && contentLength > 0) {
      this.responseAt = At.Length;
      this.responseLeft = contentLength;
    } else if (body === Body.Chunked) {
      this.responseAt = At.Chunked;
      if (this.responseChunks === null) this.responseChunks = new ChunkedScanner();
      else this.responseChunks.reset();
    } else if (body === Body.Close) this.responseAt = At.Close;
    else this.finish();
  }

  /**
   * Room for `size` bytes of exchange `seq`'s record, at {@link reservedAt} in the returned slab: the
   * store's shared slabs, or a buffer of its own for a replay (whose exchange is read after an await).
   */
  reserve(size: number, seq: number): Slab {
    const { slabs } = this.store;
    const slab =
      this.settings.replayOf === undefined ? slabs.reserve(size, seq, this.store.firstKept) : slabs.own(size);
    this.reservedAt = slabs.at;
    return slab;
  }

  /** The time for the response bytes at hand: a head and the end in one chunk share one clock read. */
  private now(): number {
    if (this.clock < 0) this.clock = performance.now();
    return this.clock;
  }

  /** The upgrade was refused: the bytes held since are parsed as requests. */
  private declineUpgrade(): void {
    const held = this.held;
    this.held = [];
    this.heldBytes = 0;
    this.upgradeAsked = false;
    this.requestAt = At.Head;
    try {
      for (const bytes of held) this.requestBytes(bytes);
    } catch (error) {
      this.stop(`request not HTTP/1.1: ${(error as Error).message}`);
    }
  }

  /** The response at the head of the queue ended: the exchange is complete. */
  private finish(): void {
    this.responseAt = At.Head;
    const exchange = this.waiting.shift();
    if (exchange === undefined) return;
    if (exchange === this.sending) this.sending = null; // answered before its body ended: keep what came
    exchange.request.settle();
    exchange.response?.settle();
    exchange.durationMs = this.now() - exchange.startedAt;
    exchange.state = "complete";
    this.store.update(exchange);
    const log = this.settings.logRequest;
    const response = exchange.response;
    if (log !== undefined && response !== undefined)
      log(
        requestLine(
          exchange.request.method,
          exchange.request.target,
          response.status,
          exchange.durationMs,
          response.size,
        ),
      );
  }

  /** Stops framing this connection; exchanges still open end with `why`. */
  private stop(why: string): void {
    this.off = true;
    this.requestPartial = this.responsePartial = null;
    this.held = [];
    this.failWaiting(why);
  }

  private failWaiting(why: string): void {
    for (const exchange of this.waiting.splice(0)) {
      exchange.request.settle();
      exchange.response?.settle();
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
    this.clock = -1;
    if (reset === undefined && this.responseAt === At.Close && this.waiting[0]?.response !== undefined)
      this.finish();
    if (this.waiting.length > 0)
      this.failWaiting(
        reset === undefined ? "connection closed before the response ended" : describeReset(reset),
      );
  }
}

/** Skips CRLFs before a start line (RFC 9112 §2.2); returns where the next message starts. */
function skipEmptyLines(b: Uint8Array, at: number): number {
  while (at < b.length && (b[at] === 13 || b[at] === 10)) at++;
  return at;
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
