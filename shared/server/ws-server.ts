/**
 * The server side of a WebSocket (RFC 6455) on a raw Bun TCP socket: the control port frames HTTP
 * itself (so that HTTP tunnels on it take the same single path as on `--http-port`), and a client's
 * upgrade then continues on the same socket as this class.
 *
 * Why not `Bun.serve`'s WebSocket: `Bun.serve` cannot hand a connection's socket to other code, and
 * as an HTTP front it loses what a tunnel must keep (pipelining, Content-Length on streamed bodies,
 * bodies over `maxRequestBodySize`, requests without `User-Agent`); see `../shared/notes`. Measured
 * against it in PERFORMANCE.md. The cost of doing it here is small: client frames are unmasked in
 * place, 4 bytes at a time (a frame wholly inside one socket read is delivered as a view of it, no
 * copy); a frame split across reads is copied once into a buffer of its own size; each outgoing
 * message is copied once, header and payload together, into one write.
 *
 * The API is the part of Bun's `ServerWebSocket` the server uses (`send` returning bytes, -1 when
 * queued or 0 when dropped; `getBufferedAmount`; `pause`/`resume`; `ping`; `close`; `terminate`;
 * `data`), so sessions do not care which one they hold.
 * @module
 */

import { createHash } from "node:crypto";
import type { Socket } from "bun";

/** Events of a {@link RawWebSocket}, as Bun.serve's `websocket` handlers. */
export interface WebSocketHandlers<T> {
  open(ws: RawWebSocket<T>): void;
  message(ws: RawWebSocket<T>, message: string | Uint8Array): void;
  /** The send queue emptied after a `send` returned -1. */
  drain(ws: RawWebSocket<T>): void;
  ping?(ws: RawWebSocket<T>): void;
  pong?(ws: RawWebSocket<T>): void;
  /** Once, when the connection is gone: the close code received (or sent first), else 1006. */
  close(ws: RawWebSocket<T>, code: number, reason: string): void;
}

/** Limits of a {@link RawWebSocket}. */
export interface WebSocketLimits {
  /** Largest message accepted; a bigger one closes the connection with 1009. */
  maxPayloadLength: number;
  /** Bytes queued for sending past which the connection is closed (the peer does not read). */
  backpressureLimit: number;
}

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** Messages up to this size go out in one write with their header (copied); larger ones in two. */
const SMALL_FRAME = 16 * 1024;
/** Every connection's small messages are built here, then written or copied: one per process. */
const SEND_SCRATCH = new Uint8Array(SMALL_FRAME + 10);
/** And every outgoing header (used within one send). */
const SEND_HEADER = new Uint8Array(10);
/** How long a closing handshake may take before the socket is dropped. */
const CLOSE_TIMEOUT_MS = 2000;

const Opcode = { Continuation: 0, Text: 1, Binary: 2, Close: 8, Ping: 9, Pong: 10 } as const;

/** `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2). */
export function acceptKey(key: string): string {
  return createHash("sha1")
    .update(key + GUID)
    .digest("base64");
}

/**
 * Why a request cannot be upgraded to a WebSocket (RFC 6455 §4.2.1), or undefined when it can:
 * `GET` on HTTP/1.1, `Upgrade: websocket`, `Connection: upgrade`, version 13 and a 16-byte key.
 */
export function upgradeProblem(headers: Headers, method: string): string | undefined {
  if (method !== "GET") return "a WebSocket upgrade must be a GET";
  if ((headers.get("upgrade") ?? "").toLowerCase() !== "websocket") return "expected Upgrade: websocket";
  const connection = (headers.get("connection") ?? "").toLowerCase().split(",");
  if (!connection.some((token) => token.trim() === "upgrade")) return "expected Connection: upgrade";
  if (headers.get("sec-websocket-version") !== "13") return "only WebSocket version 13 is spoken";
  const key = headers.get("sec-websocket-key") ?? "";
  if (!/^[A-Za-z0-9+/]{22}==$/.test(key)) return "bad Sec-WebSocket-Key";
  return undefined;
}

/** The 101 response head that completes an upgrade, with `extra` fields (e.g. the subprotocol). */
export function switchingProtocols(key: string, extra: Record<string, string> = {}): string {
  let head = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(key)}\r\n`;
  for (const [name, value] of Object.entries(extra)) head += `${name}: ${value}\r\n`;
  return `${head}\r\n`;
}

/** XORs `bytes` with the 4-byte mask, starting at mask position `phase`; 4 bytes at a time where aligned. */
function unmask(bytes: Uint8Array, mask: Uint8Array, phase: number): void {
  const n = bytes.length;
  let i = 0;
  // Bytes up to a 4-byte boundary of the underlying buffer, one by one.
  while (i < n && (bytes.byteOffset + i) % 4 !== 0) {
    bytes[i] = (bytes[i] as number) ^ (mask[(phase + i) & 3] as number);
    i++;
  }
  const words = (n - i) >>> 2;
  if (words > 0) {
    // The mask as a little-endian word lined up with byte i.
    const m0 = mask[(phase + i) & 3] as number;
    const m1 = mask[(phase + i + 1) & 3] as number;
    const m2 = mask[(phase + i + 2) & 3] as number;
    const m3 = mask[(phase + i + 3) & 3] as number;
    const word = (m0 | (m1 << 8) | (m2 << 16) | (m3 << 24)) >>> 0;
    const view = new Uint32Array(bytes.buffer, bytes.byteOffset + i, words);
    for (let w = 0; w < words; w++) view[w] = (view[w] as number) ^ word;
    i += words * 4;
  }
  for (; i < n; i++) bytes[i] = (bytes[i] as number) ^ (mask[(phase + i) & 3] as number);
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/** A WebSocket on a raw Bun socket, server side. */
export class RawWebSocket<T> {
  /** Whatever the role keeps with the connection. */
  data: T;
  private readonly header = new Uint8Array(14);
  private headerLength = 0;
  private readonly mask = new Uint8Array(4);
  /** Outgoing frame header, and small frames whole: reused, never queued (queued bytes are copies). */
  private readonly outHeader = SEND_HEADER;
  /** Where a small message is joined to its header (one per process: a send copies it or writes it). */
  private readonly scratch = SEND_SCRATCH;
  /** The frame being read: its opcode, whether it ends a message, its payload length and where we are. */
  private opcode = 0;
  private fin = false;
  private payloadLength = 0;
  private payloadRead = 0;
  /** Where a frame split across reads is gathered; null while frames arrive whole. */
  private partial: Uint8Array | null = null;
  /** The parts of a fragmented message so far, and its opcode. */
  private fragments: Uint8Array[] = [];
  private fragmentsLength = 0;
  private messageOpcode = 0;
  /** Bytes not yet taken by the kernel, in order. */
  private queue: Uint8Array[] = [];
  private queued = 0;
  private paused = false;
  private closeSent = false;
  private closeCode = 1006;
  private closeReason = "";
  private closed = false;
  private reported = false;
  private closeTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly socket: Socket<unknown>,
    data: T,
    private readonly handlers: WebSocketHandlers<T>,
    private readonly limits: WebSocketLimits,
  ) {
    this.data = data;
  }

  /** Whether reading is paused ({@link pause}). */
  get isPaused(): boolean {
    return this.paused;
  }

  /** The peer's address. */
  get remoteAddress(): string {
    return this.socket.remoteAddress;
  }

  /** Bytes queued for sending that the kernel has not taken yet. */
  getBufferedAmount(): number {
    return this.queued;
  }

  /** Stops reading the socket: the peer sees TCP backpressure. */
  pause(): void {
    this.paused = true;
    this.socket.pause();
  }

  /** Reads the socket again. */
  resume(): void {
    this.paused = false;
    this.socket.resume();
  }

  /**
   * Sends a message (binary for bytes, text for a string): the byte count when the kernel took it all,
   * -1 when some of it is queued (wait for `drain`), 0 when the connection is closing or gone.
   */
  send(message: string | Uint8Array): number {
    if (this.closeSent || this.closed) return 0;
    const payload = typeof message === "string" ? Buffer.from(message) : message;
    return this.sendFrame(typeof message === "string" ? Opcode.Text : Opcode.Binary, payload);
  }

  /** Sends a ping; the peer's pong reaches the `pong` handler. */
  ping(): void {
    if (!this.closeSent && !this.closed) this.sendFrame(Opcode.Ping, new Uint8Array(0));
  }

  /** Starts the closing handshake; the socket is dropped if the peer does not answer in time. */
  close(code = 1000, reason = ""): void {
    if (this.closed || this.closeSent) return;
    const text = Buffer.from(reason).subarray(0, 123);
    const payload = new Uint8Array(2 + text.length);
    payload[0] = code >> 8;
    payload[1] = code & 255;
    payload.set(text, 2);
    this.sendFrame(Opcode.Close, payload);
    this.closeSent = true;
    this.closeCode = code;
    this.closeReason = reason;
    this.closeTimer = setTimeout(() => this.socket.terminate(), CLOSE_TIMEOUT_MS);
  }

  /** Drops the connection at once. */
  terminate(): void {
    this.socket.terminate();
  }

  /**
   * Bytes read from the socket, which this may unmask in place.
   * @param owned `chunk` is the socket's fresh read buffer, whole, that nothing else keeps: when no
   * frame was delivered as a view of it (every payload in it was gathered into a buffer of its own, as
   * a node link's 512 KiB messages are), it is freed here at once, not left to the collector (garbage
   * piling up between collections made the allocator hand out freshly faulted pages for each read).
   */
  onData(chunk: Uint8Array, owned = false): void {
    this.viewDelivered = false;
    this.readPayloadFrom(chunk);
    if (
      owned &&
      !this.viewDelivered &&
      chunk.byteOffset === 0 &&
      chunk.byteLength === chunk.buffer.byteLength
    )
      (chunk.buffer as ArrayBuffer).transfer(0);
  }

  /** Set when a frame was delivered as a view of the current read (which must then stay alive). */
  private viewDelivered = false;

  private readPayloadFrom(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length && !this.closed) {
      if (this.payloadLength === 0 && this.headerLength === 0 && this.partial === null) {
        // Fast path: a whole header in this chunk.
        const end = this.parseHeader(chunk, at);
        if (end < 0) {
          at = this.bufferHeader(chunk, at);
          continue;
        }
        at = end;
      } else if (this.headerLength > 0) {
        at = this.bufferHeader(chunk, at);
        continue;
      }
      at = this.readPayload(chunk, at);
    }
  }

  /** Header bytes split across reads: gather them, then parse. Returns where it stopped. */
  private bufferHeader(chunk: Uint8Array, at: number): number {
    while (at < chunk.length && this.headerLength < 14) {
      this.header[this.headerLength++] = chunk[at++] as number;
      const end = this.parseHeader(this.header.subarray(0, this.headerLength), 0);
      if (end >= 0) {
        this.headerLength = 0;
        return this.payloadLength === 0 ? this.readPayload(chunk, at) : at;
      }
      if (this.closed) return chunk.length;
    }
    return at;
  }

  /**
   * Parses a frame header at `b[at]`; returns the index after it, or -1 if incomplete. Fails the
   * connection on what RFC 6455 forbids a client to send.
   */
  private parseHeader(b: Uint8Array, at: number): number {
    if (b.length - at < 2) return -1;
    const b0 = b[at] as number;
    const b1 = b[at + 1] as number;
    let length = b1 & 127;
    let p = at + 2;
    if (length === 126) {
      if (b.length - p < 2) return -1;
      length = ((b[p] as number) << 8) | (b[p + 1] as number);
      p += 2;
    } else if (length === 127) {
      if (b.length - p < 8) return -1;
      const high =
        (((b[p] as number) << 24) |
          ((b[p + 1] as number) << 16) |
          ((b[p + 2] as number) << 8) |
          (b[p + 3] as number)) >>>
        0;
      const low =
        (((b[p + 4] as number) << 24) |
          ((b[p + 5] as number) << 16) |
          ((b[p + 6] as number) << 8) |
          (b[p + 7] as number)) >>>
        0;
      length = high * 2 ** 32 + low;
      p += 8;
    }
    if (b.length - p < 4) return -1;
    this.mask.set(b.subarray(p, p + 4));
    p += 4;
    const opcode = b0 & 15;
    const fin = (b0 & 128) !== 0;
    if ((b0 & 0x70) !== 0) return this.fail(1002, "reserved bits set");
    if ((b1 & 128) === 0) return this.fail(1002, "client frames must be masked");
    if (opcode >= 8) {
      if (opcode > Opcode.Pong) return this.fail(1002, `unknown opcode ${opcode}`);
      if (!fin || length > 125) return this.fail(1002, "bad control frame");
    } else if (opcode > Opcode.Binary) return this.fail(1002, `unknown opcode ${opcode}`);
    else if (opcode === Opcode.Continuation ? this.messageOpcode === 0 : this.messageOpcode !== 0)
      return this.fail(1002, "bad fragmentation");
    if (opcode < 8 && this.fragmentsLength + length > this.limits.maxPayloadLength)
      return this.fail(1009, "Received too big message");
    this.opcode = opcode;
    this.fin = fin;
    this.payloadLength = length;
    this.payloadRead = 0;
    return p;
  }

  /** Reads payload bytes of the current frame from `chunk[at]`; returns where it stopped. */
  private readPayload(chunk: Uint8Array, at: number): number {
    const want = this.payloadLength - this.payloadRead;
    const available = chunk.length - at;
    if (this.partial === null && want <= available) {
      // The whole payload is in this read: unmask in place, deliver a view.
      const payload = chunk.subarray(at, at + want);
      unmask(payload, this.mask, 0);
      this.payloadLength = 0;
      this.viewDelivered = true;
      this.frame(payload);
      return at + want;
    }
    if (this.partial === null) this.partial = new Uint8Array(this.payloadLength);
    const take = Math.min(want, available);
    const piece = chunk.subarray(at, at + take);
    unmask(piece, this.mask, this.payloadRead);
    this.partial.set(piece, this.payloadRead);
    this.payloadRead += take;
    if (this.payloadRead === this.payloadLength) {
      const payload = this.partial;
      this.partial = null;
      this.payloadLength = 0;
      this.frame(payload);
    }
    return at + take;
  }

  /** One complete frame's payload. */
  private frame(payload: Uint8Array): void {
    const opcode = this.opcode;
    if (opcode === Opcode.Ping) {
      this.sendFrame(Opcode.Pong, payload.slice());
      this.handlers.ping?.(this);
    } else if (opcode === Opcode.Pong) this.handlers.pong?.(this);
    else if (opcode === Opcode.Close) this.onCloseFrame(payload);
    else if (this.fin && opcode !== Opcode.Continuation) this.deliver(opcode, payload);
    else {
      // A fragment: keep a copy (the read buffer is reused by nothing, but views would pin it).
      if (opcode !== Opcode.Continuation) this.messageOpcode = opcode;
      this.fragments.push(payload.slice());
      this.fragmentsLength += payload.length;
      if (this.fin) {
        const whole = new Uint8Array(this.fragmentsLength);
        let offset = 0;
        for (const part of this.fragments) {
          whole.set(part, offset);
          offset += part.length;
        }
        const messageOpcode = this.messageOpcode;
        this.fragments = [];
        this.fragmentsLength = 0;
        this.messageOpcode = 0;
        this.deliver(messageOpcode, whole);
      }
    }
  }

  private deliver(opcode: number, payload: Uint8Array): void {
    if (this.closeSent) return; // closing: what the peer still sends is dropped
    if (opcode === Opcode.Binary) {
      this.handlers.message(this, payload);
      return;
    }
    let text: string;
    try {
      text = decoder.decode(payload);
    } catch {
      this.fail(1007, "invalid UTF-8 in a text message");
      return;
    }
    this.handlers.message(this, text);
  }

  private onCloseFrame(payload: Uint8Array): void {
    const code = payload.length >= 2 ? ((payload[0] as number) << 8) | (payload[1] as number) : 1005;
    const reason = payload.length > 2 ? Buffer.from(payload.subarray(2)).toString("utf8") : "";
    if (!this.closeSent) {
      // Echo the close (RFC 6455 §5.5.1), then both sides are done.
      const echo = payload.length >= 2 ? payload.slice(0, 2) : new Uint8Array(0);
      this.sendFrame(Opcode.Close, echo);
      this.closeSent = true;
      this.closeCode = code;
      this.closeReason = reason;
    }
    this.socket.end();
  }

  /** A protocol violation: close with `code` and drop the socket. Returns -1 for the parser. */
  private fail(code: number, reason: string): number {
    if (!this.closeSent) this.close(code, reason);
    // Bun reports a too-big message to the server as 1006 with this reason: the same here.
    this.closeCode = code === 1009 ? 1006 : code;
    this.closeReason = reason;
    this.socket.end();
    this.closed = true;
    return -1;
  }

  /** Frames and writes one message; see {@link send} for the result. */
  private sendFrame(opcode: number, payload: Uint8Array): number {
    const n = payload.length;
    // What a complete send returns: the byte count, 1 for an empty message (0 means dropped).
    const sent = n === 0 ? 1 : n;
    const head = this.outHeader;
    const headerLength = n < 126 ? 2 : n < 65536 ? 4 : 10;
    head[0] = 0x80 | opcode;
    if (n < 126) head[1] = n;
    else if (n < 65536) {
      head[1] = 126;
      head[2] = n >> 8;
      head[3] = n & 255;
    } else {
      // The high 32 bits are 0: messages are far below 4 GiB.
      head[1] = 127;
      head[2] = head[3] = head[4] = head[5] = 0;
      head[6] = n >>> 24;
      head[7] = (n >>> 16) & 255;
      head[8] = (n >>> 8) & 255;
      head[9] = n & 255;
    }
    if (this.queued > 0) {
      this.enqueue(head.slice(0, headerLength));
      return this.enqueue(payload.slice());
    }
    if (n <= SMALL_FRAME) {
      // One write for header and payload: small messages are latency, and a copy of them is cheap.
      const frame = this.scratch;
      frame.set(head.subarray(0, headerLength));
      frame.set(payload, headerLength);
      return this.write(frame.subarray(0, headerLength + n), sent);
    }
    // Large: no copy of the payload; the header goes first on its own.
    const wrote = this.write(head.subarray(0, headerLength), 0);
    if (wrote !== 0) return wrote === -1 ? this.enqueue(payload.slice()) : 0;
    return this.write(payload, sent);
  }

  /** Writes `bytes`, queueing (a copy of) what the kernel did not take: `ok`, -1 when queued, 0 when closed. */
  private write(bytes: Uint8Array, ok: number): number {
    const written = this.socket.write(bytes);
    if (written === bytes.length) return ok;
    if (written < 0) return 0;
    return this.enqueue(bytes.slice(written));
  }

  private enqueue(bytes: Uint8Array): number {
    this.queue.push(bytes);
    this.queued += bytes.length;
    if (this.queued > this.limits.backpressureLimit) {
      this.socket.terminate();
      return 0;
    }
    return -1;
  }

  /** The socket can take more: write what is queued; tell the role once all of it went. */
  onDrain(): void {
    if (this.queued === 0) return;
    while (this.queue.length > 0) {
      const bytes = this.queue[0] as Uint8Array;
      const written = this.socket.write(bytes);
      if (written < 0) return;
      this.queued -= written;
      if (written < bytes.length) {
        this.queue[0] = bytes.subarray(written);
        return;
      }
      this.queue.shift();
      // Every queued chunk is a copy of our own (or the rest of one): freed now, not at the next
      // collection (a flood through a slow client queued copies faster than the collector ran:
      // 70 MiB of them past the server's budget).
      (bytes.buffer as ArrayBuffer).transfer(0);
    }
    this.handlers.drain(this);
  }

  /** The socket closed: report it once. */
  onClose(): void {
    clearTimeout(this.closeTimer);
    this.closed = true;
    this.queue = [];
    this.queued = 0;
    if (this.reported) return;
    this.reported = true;
    this.handlers.close(this, this.closeCode, this.closeReason);
  }
}
