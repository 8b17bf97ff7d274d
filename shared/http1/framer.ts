/**
 * Streaming HTTP/1.1 framing for a reverse proxy: {@link RequestFramer} and {@link ResponseFramer} are
 * fed the bytes of one connection in chunks split anywhere and say where each message's head, body and
 * end lie, never buffering a body: body events are views into the fed chunks (valid as long as the
 * chunk is), and chunked bodies pass through verbatim (size lines, extensions and trailers included).
 * {@link forwardRequestHead} and {@link forwardResponseHead} make the head a proxy sends on.
 *
 * ```text
 * feed(chunk) → [head, body*, end-of-message]* … ; after a 101: passthrough*
 * ```
 * @module
 */

import { ChunkedScanner } from "./chunked.ts";
import {
  findHeadEnd,
  type HeaderList,
  HttpParseError,
  MAX_HEAD_BYTES,
  parseRequestHeadBytes,
  parseResponseHeadBytes,
  type RequestHead,
  type ResponseHead,
  ScannedRequestHead,
  scanRequestHead,
  scanResponseHeadIn,
} from "./head.ts";

export * from "./chunked.ts";
export * from "./forward.ts";
export * from "./head.ts";

/** What a framer reports, in stream order. */
export type FramerEvent<H> =
  | { type: "head"; head: H }
  /** Body bytes exactly as received (for chunked bodies: the chunked encoding itself). */
  | { type: "body"; bytes: Uint8Array }
  /** The message is complete; `trailers` are the chunked trailer fields, if any. */
  | { type: "end-of-message"; trailers: HeaderList }
  /** Bytes after the connection switched protocols (101, or {@link MessageFramer.switchToPassthrough}). */
  | { type: "passthrough"; bytes: Uint8Array };

/** Events of a {@link RequestFramer}. */
export type RequestEvent = FramerEvent<RequestHead>;
/** Events of a {@link ResponseFramer}. */
export type ResponseEvent = FramerEvent<ResponseHead>;

const CR = 13;
const LF = 10;
/** The trailers of every message that has none: one frozen list rather than a new one per message. */
const NO_TRAILERS = Object.freeze([]) as unknown as HeaderList;
/** The end of every message without trailers: one frozen event rather than a new one per message. */
const END_OF_MESSAGE = Object.freeze({ type: "end-of-message", trailers: NO_TRAILERS } as const);

const State = { Head: 0, Length: 1, Chunked: 2, Close: 3, Passthrough: 4, Pending: 5, Ended: 6 } as const;
type State = (typeof State)[keyof typeof State];

/**
 * The state machine both framers share: head, then a body as the head says, then the next head.
 * After an {@link HttpParseError} every call throws it again.
 */
export abstract class MessageFramer<H extends RequestHead | ResponseHead> {
  /** Where the stream is. */
  protected state: State = State.Head;
  private head = new Uint8Array(0);
  /** Bytes of an incomplete head held in `head`. */
  protected headLength = 0;
  private emptyLines = 0;
  private sawCr = false;
  private remaining = 0;
  private readonly chunked = new ChunkedScanner();
  private failure: Error | null = null;
  private last: H | null = null;
  /** False: no body events (only heads, ends and passthrough), for a reader that only needs where messages end. */
  protected bodies = true;

  /** Between two messages: no head or body in progress and no protocol switch awaited. */
  get betweenMessages(): boolean {
    return this.state === State.Head && this.headLength === 0 && !this.sawCr;
  }

  /** Bytes the framer holds copied: an incomplete head (and, for requests, bytes held for an upgrade). */
  get pendingBytes(): number {
    return this.headLength;
  }

  /**
   * Parses the exact bytes of one head.
   * @param buffered the bytes are the framer's own buffer (reused for the next head), not the fed chunk.
   */
  protected abstract parseHead(bytes: Uint8Array, buffered: boolean): H;

  /**
   * Parses the head at `chunk[at, end)` of a fed chunk. A head that is the whole chunk (a small
   * request) is parsed as it is: a view of a socket read cost ~0.6 µs in the profile of the server
   * under load (most likely the engine materializing the read's buffer), more than scanning the head.
   */
  protected parseHeadIn(chunk: Uint8Array, at: number, end: number): H {
    return this.parseHead(at === 0 && end === chunk.length ? chunk : chunk.subarray(at, end), false);
  }

  /** The state after a message ends (a framer may wait for a protocol switch). */
  protected abstract afterMessage(head: H): State;

  /**
   * Feeds the next bytes of the stream and returns what they complete, in order.
   * @throws {HttpParseError} when the stream is not valid HTTP/1.1.
   */
  feed(chunk: Uint8Array): FramerEvent<H>[] {
    // guard() without its closure: this runs for every read.
    if (this.failure) throw this.failure;
    const events: FramerEvent<H>[] = [];
    try {
      this.consume(chunk, events);
    } catch (error) {
      this.failure = error instanceof HttpParseError ? this.blame(error) : (error as Error);
      throw this.failure;
    }
    return events;
  }

  /**
   * The peer closed its side: ends a close-delimited body.
   * @throws {HttpParseError} when a head or a delimited body was cut short.
   */
  end(): FramerEvent<H>[] {
    return this.guard((events) => {
      const state = this.state;
      this.state = State.Ended;
      if (state === State.Close) events.push(END_OF_MESSAGE);
      else if (state === State.Length || state === State.Chunked)
        throw new HttpParseError("connection closed inside a body");
      else if (state === State.Head && (this.headLength > 0 || this.sawCr))
        throw new HttpParseError("connection closed inside a head");
    });
  }

  /**
   * Treats everything from here on as opaque bytes (after a 101 or a 2xx to CONNECT); bytes the
   * framer still holds (a partial head, data that arrived while it waited) come out as passthrough.
   */
  switchToPassthrough(): FramerEvent<H>[] {
    const held = this.takeHeld();
    return this.guard((events) => {
      if (this.state === State.Head && this.headLength > 0)
        events.push({ type: "passthrough", bytes: this.head.slice(0, this.headLength) });
      this.headLength = 0;
      this.state = State.Passthrough;
      for (const bytes of held) events.push({ type: "passthrough", bytes });
    });
  }

  /** Hands over (and forgets) the bytes held while waiting for a protocol switch. */
  protected takeHeld(): Uint8Array[] {
    return [];
  }

  /** Runs `work`, turning any HttpParseError into the framer's permanent failure. */
  protected guard(work: (events: FramerEvent<H>[]) => void): FramerEvent<H>[] {
    if (this.failure) throw this.failure;
    const events: FramerEvent<H>[] = [];
    try {
      work(events);
    } catch (error) {
      this.failure = error instanceof HttpParseError ? this.blame(error) : (error as Error);
      throw this.failure;
    }
    return events;
  }

  /** The error as this side reports it (a response framer blames the upstream: 502). */
  protected blame(error: HttpParseError): HttpParseError {
    return error;
  }

  /** Handles bytes that arrive while the framer waits for a protocol switch. */
  protected hold(_bytes: Uint8Array): void {
    throw new HttpParseError("data while waiting for a protocol switch");
  }

  /** Walks `chunk`, appending events. */
  protected consume(chunk: Uint8Array, events: FramerEvent<H>[]): void {
    let at = 0;
    while (at < chunk.length) {
      switch (this.state) {
        case State.Head:
          at = this.readHead(chunk, at, events);
          break;
        case State.Length: {
          const take = Math.min(this.remaining, chunk.length - at);
          if (this.bodies) events.push({ type: "body", bytes: chunk.subarray(at, at + take) });
          at += take;
          this.remaining -= take;
          if (this.remaining === 0) this.finish(events, NO_TRAILERS);
          break;
        }
        case State.Chunked: {
          const end = this.chunked.scan(chunk, at);
          const stop = end < 0 ? chunk.length : end;
          if (this.bodies) events.push({ type: "body", bytes: chunk.subarray(at, stop) });
          at = stop;
          if (end >= 0) this.finish(events, this.chunked.trailers());
          break;
        }
        case State.Close:
        case State.Passthrough:
          if (this.bodies || this.state === State.Passthrough)
            events.push({
              type: this.state === State.Close ? "body" : "passthrough",
              bytes: chunk.subarray(at),
            });
          at = chunk.length;
          break;
        case State.Pending:
          this.hold(chunk.subarray(at));
          at = chunk.length;
          break;
        default:
          throw new HttpParseError("data after the end of the stream");
      }
    }
  }

  /** Skips empty lines before a start line (RFC 9112 §2.2), at most a head's worth. */
  private skipEmptyLines(chunk: Uint8Array, at: number): number {
    while (at < chunk.length) {
      const c = chunk[at];
      if (this.sawCr) {
        if (c !== LF) throw new HttpParseError("bare CR before the start line");
        this.sawCr = false;
        if (++this.emptyLines > MAX_HEAD_BYTES / 2) throw new HttpParseError("too many empty lines");
      } else if (c === CR) this.sawCr = true;
      else if (c === LF) throw new HttpParseError("bare LF before the start line");
      else return at;
      at++;
    }
    return at;
  }

  /** Reads head bytes; emits the head once its blank line is in. Returns where it stopped. */
  private readHead(chunk: Uint8Array, at: number, events: FramerEvent<H>[]): number {
    if (this.headLength === 0) {
      at = this.skipEmptyLines(chunk, at);
      if (at === chunk.length) return at;
      const end = findHeadEnd(chunk, at, Math.min(chunk.length, at + MAX_HEAD_BYTES));
      if (end >= 0) {
        this.startMessage(this.parseHeadIn(chunk, at, end), events);
        return end;
      }
    }
    const before = this.headLength;
    const take = Math.min(MAX_HEAD_BYTES - before, chunk.length - at);
    this.append(chunk.subarray(at, at + take));
    const end = findHeadEnd(this.head, Math.max(0, before - 3), this.headLength);
    if (end < 0) {
      // A head with bare LF (or bare CR) line ends never shows CRLFCRLF: refuse it now rather than
      // wait for 64 KiB that never come.
      checkLineEnds(this.head, Math.max(0, before - 1), this.headLength);
      if (this.headLength >= MAX_HEAD_BYTES) throw new HttpParseError("head larger than 64 KiB", 431);
      return at + take;
    }
    this.headLength = 0;
    const head = this.parseHead(this.head.subarray(0, end), true);
    if (this.head.length > 4096) this.head = new Uint8Array(0);
    this.startMessage(head, events);
    return at + (end - before);
  }

  private append(bytes: Uint8Array): void {
    const needed = this.headLength + bytes.length;
    if (needed > this.head.length) {
      const grown = new Uint8Array(Math.min(MAX_HEAD_BYTES, Math.max(needed, this.head.length * 2, 1024)));
      grown.set(this.head.subarray(0, this.headLength));
      this.head = grown;
    }
    this.head.set(bytes, this.headLength);
    this.headLength = needed;
  }

  /** Emits a head and enters the state its body framing calls for. */
  private startMessage(head: H, events: FramerEvent<H>[]): void {
    this.emptyLines = 0;
    this.last = head;
    events.push({ type: "head", head });
    if (head.body === "length" && head.contentLength > 0) {
      this.state = State.Length;
      this.remaining = head.contentLength;
    } else if (head.body === "chunked") {
      this.state = State.Chunked;
      this.chunked.reset();
    } else if (head.body === "close") this.state = State.Close;
    else this.finish(events, NO_TRAILERS);
  }

  private finish(events: FramerEvent<H>[], trailers: HeaderList): void {
    events.push(trailers === NO_TRAILERS ? END_OF_MESSAGE : { type: "end-of-message", trailers });
    this.state = this.last ? this.afterMessage(this.last) : State.Head;
  }
}

/**
 * Throws when `bytes[from, to)` holds an LF not preceded by CR, or a CR followed by anything but LF
 * (a CR at `to - 1` may still be followed by its LF).
 */
function checkLineEnds(bytes: Uint8Array, from: number, to: number): void {
  for (let i = bytes.indexOf(LF, from); i >= 0 && i < to; i = bytes.indexOf(LF, i + 1))
    if (i === 0 || bytes[i - 1] !== CR) throw new HttpParseError("bare LF in the head");
  for (let i = bytes.indexOf(CR, from); i >= 0 && i < to - 1; i = bytes.indexOf(CR, i + 1))
    if (bytes[i + 1] !== LF) throw new HttpParseError("bare CR in the head");
}

/**
 * Frames the requests a visitor sends. After an upgrade request it waits for the answer: bytes that
 * arrive meanwhile are held (copied, at most {@link MAX_HEAD_BYTES}) until {@link switchToPassthrough}
 * (the answer was 101: they are passthrough) or {@link declineUpgrade} (it was not: they are parsed).
 * CONNECT is refused (501): a reverse proxy has no use for it.
 */
export class RequestFramer extends MessageFramer<RequestHead> {
  private held: Uint8Array[] = [];
  private heldBytes = 0;
  /** The previous request's Host, reused by the next head that names it (see scanRequestHead). */
  private lastHost: string | undefined = undefined;

  /**
   * @param scanned heads are read from their bytes where they have the common shape
   * (`ScannedRequestHead`: the field list is built only when read, and `forwardRequestBytes` copies
   * the head through): what a proxy that forwards every head wants. The head then keeps a view of the
   * fed chunk (or a copy of a head that came in pieces).
   */
  constructor(private readonly scanned = false) {
    super();
  }

  protected parseHead(bytes: Uint8Array, buffered: boolean): RequestHead {
    const head = this.scanned
      ? scanRequestHead(buffered ? bytes.slice() : bytes, this.lastHost)
      : parseRequestHeadBytes(bytes);
    if (head instanceof ScannedRequestHead) this.lastHost = head.host;
    if (head.method === "CONNECT") throw new HttpParseError("CONNECT is not supported", 501);
    return head;
  }

  protected afterMessage(head: RequestHead): State {
    return head.upgrade ? State.Pending : State.Head;
  }

  protected override hold(bytes: Uint8Array): void {
    this.heldBytes += bytes.length;
    if (this.heldBytes > MAX_HEAD_BYTES) throw new HttpParseError("too much data before the upgrade answer");
    this.held.push(bytes.slice());
  }

  override get pendingBytes(): number {
    return this.headLength + this.heldBytes; // not super's getter: that costs a slow lookup per read
  }

  /** Whether the last request asked for an upgrade whose answer has not been reported yet. */
  get awaitingUpgrade(): boolean {
    return this.state === State.Pending;
  }

  /** The upgrade was refused (a final status other than 101): held bytes are parsed as requests. */
  declineUpgrade(): RequestEvent[] {
    if (this.state !== State.Pending) return this.guard(() => {});
    const held = this.takeHeld();
    return this.guard((events) => {
      this.state = State.Head;
      for (const bytes of held) this.consume(bytes, events);
    });
  }

  /** Hands over (and forgets) the bytes held since the upgrade request ended. */
  protected override takeHeld(): Uint8Array[] {
    const held = this.held;
    this.held = [];
    this.heldBytes = 0;
    return held;
  }
}

/**
 * Frames the responses coming back on a connection. Tell it each request's method with
 * {@link expectResponse}, in order: HEAD answers have no body, a 2xx to CONNECT and any 101 switch to
 * passthrough; 1xx interim responses (100 Continue) end at their head and the final response follows.
 * Errors carry status 502.
 */
export class ResponseFramer extends MessageFramer<ResponseHead> {
  private methods: string[] = [];

  /**
   * @param keepFields false when only where each response ends matters (a proxy passing responses on
   * untouched): heads then come with an empty `headers` list, parsed at half the cost.
   * @param bodies false: no body events (the bytes are not looked at; the ingress never reads them,
   * and a view of each socket read cost ~0.6 µs under load).
   */
  constructor(
    private readonly keepFields = true,
    bodies = true,
  ) {
    super();
    this.bodies = bodies;
  }

  /** Records that a request with this method was sent; its response comes after earlier ones'. */
  expectResponse(method: string): void {
    this.methods.push(method);
  }

  /** Requests sent whose final response has not started yet. */
  get pendingRequests(): number {
    return this.methods.length;
  }

  protected parseHead(bytes: Uint8Array): ResponseHead {
    return this.parseHeadIn(bytes, 0, bytes.length);
  }

  protected override parseHeadIn(chunk: Uint8Array, at: number, end: number): ResponseHead {
    const method = this.methods[0];
    if (method === undefined) throw new HttpParseError("a response without a request", 502);
    const head = this.keepFields
      ? parseResponseHeadBytes(chunk.subarray(at, end), method)
      : scanResponseHeadIn(chunk, at, end, method);
    if (head.status >= 200 || head.status === 101) this.methods.shift();
    return head;
  }

  protected afterMessage(head: ResponseHead): State {
    return head.body === "passthrough" ? State.Passthrough : State.Head;
  }

  protected override blame(error: HttpParseError): HttpParseError {
    return error.status === 502 ? error : new HttpParseError(error.message, 502);
  }
}
