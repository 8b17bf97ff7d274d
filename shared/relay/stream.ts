/**
 * One stream: a TCP socket on this side relayed to a stream id on the WebSocket, with per-stream credit
 * flow control and half-close. The same class serves the server (visitor sockets) and the client
 * (local-service sockets).
 *
 * Rules (see PROTOCOL.md, part 1, "Flow control"):
 * - Credit is receiver-driven. Each direction's receiver grants a window (initially `initialWindow`)
 *   and enforces exactly that: a sender past it is a protocol error. It returns credit (WINDOW) for the
 *   bytes its socket took, batched, and grows the window (GROW) when its socket consumed half of it
 *   within a few round trips (auto-tuning, as QUIC receivers do): a window then follows the
 *   bandwidth-delay product up to the session's `window`, while a visitor that reads slowly or not at
 *   all never gets more than it consumes. The receiver decides because only the receiver can tell a
 *   slow reader from a long path, and because what it enforces must be what it granted.
 * - A sender keeps at most its granted window unacknowledged; out of credit, the rest of the chunk is
 *   held and the socket paused until a WINDOW or GROW arrives. Unacknowledged bytes are kept (by
 *   reference) so that a resumed session can resend what a blip lost.
 * - Buffered bytes are counted into the host's memory budgets (per chunk, never per byte).
 *
 * Lifecycle (PROTOCOL.md, part 1, "Stream lifecycle", states the same for the wire). Each direction
 * ends on its own; the fields named are the whole state (no other flag says where a stream is):
 *
 * ```text
 * direction  state         fields                          left by
 * sending    open          held empty, !endSent            no credit for a read → held; FIN read → END sent
 *            held          held not empty (socket paused)  WINDOW/GROW → open (END goes then if FIN was read)
 *            END sent      endSent                         WINDOW for the last byte → acknowledged
 *            acknowledged  endSent, ackedSeq = sentSeq     (done)
 * receiving  open          !endReceived                    END → END received
 *            END received  endReceived, pending bytes      pending written, shutdown() → write shut
 *            write shut    writeShut                       (done: the last credit went back at once)
 * ```
 *
 * The stream is freed (`closed`, `release(clean)`, `onClosed`) at the first of:
 * - both directions done: END sent and acknowledged, END received and write shut (clean: the id goes
 *   to the finished list a resume reports);
 * - a RESET, sent or received: at once, the socket aborted, every buffer dropped;
 * - `destroy()`: the session is over (no frame).
 *
 * {@link Stream.phase} names the combination for logs: `open`, `half-closed-local` (END sent),
 * `half-closed-remote` (END received), `closing` (both ENDs, waiting for the write side or the last
 * WINDOW), `freed`.
 * @module
 */

import type { Socket } from "bun";
import { DEFAULTS, type OpenMeta, ProtocolError, ResetCode, type StreamKind } from "../wire/protocol.ts";
import { ByteQueue } from "./byte-queue.ts";
import { dispose, forgetDisposable, markDisposable } from "./disposable.ts";

/** What a stream needs from the multiplexer that owns it. */
export interface StreamHost {
  /** The most a stream's window may grow to (the session's `window`). */
  readonly window: number;
  /** What every stream's window starts at, both directions (default {@link INITIAL_WINDOW}). */
  readonly initialWindow?: number;
  /** Buffers from this size on are freed once relayed (default 16 KiB, `DISPOSE_MIN_BYTES` of disposable.ts; tests: 1). */
  readonly disposeMinBytes?: number;
  /** Milliseconds for the window's growth rule (default `performance.now`; tests step it). */
  readonly clock?: () => number;
  /** The session's smoothed round trip in ms, 0 while unknown (reading it may send a PING). */
  readonly rtt?: number;
  readonly maxFramePayload: number;
  /** Whether a stream's window may grow by `n` bytes within the memory budgets (absent: yes). */
  mayGrow?(n: number): boolean;
  /** Counts bytes received and not yet written into our socket (negative: fewer). */
  accountReceived?(n: number): void;
  /** Counts bytes read from our socket and not yet acknowledged by the peer (negative: fewer). */
  accountSent?(n: number): void;
  sendData(stream: number, payload: Uint8Array): void;
  sendWindow(stream: number, increment: number): void;
  sendGrow(stream: number, increment: number): void;
  sendEnd(stream: number): void;
  sendReset(stream: number, code: number, reason: string): void;
  /** The stream is freed; `clean` when both directions ended and every byte was acknowledged. */
  release(stream: Stream, clean: boolean): void;
}

/** The `data` slot of every relayed Bun socket. */
export interface RelaySocketData {
  stream: Stream | null;
}

/** A relayed Bun TCP socket. */
export type RelaySocket = Socket<RelaySocketData>;

/** One stream's receive position, as told to the peer when a session resumes (see PROTOCOL.md). */
export interface StreamPosition {
  /** Bytes received on this stream so far. */
  received: number;
  /** Bytes written into the socket and credited back to the sender so far. */
  acked: number;
  /** Whether the peer's END arrived. */
  endReceived: boolean;
  /** The window this side grants the peer (GROW frames lost in a blip are not needed again). */
  window: number;
}

/** How the opening side announced a stream, kept so that an OPEN lost in a blip can be sent again. */
export interface OpenInfo {
  kind: StreamKind;
  tunnel: number;
  meta: OpenMeta;
}

/** Who reset a stream, and why, as a {@link StreamTap} hears it. */
export interface TapReset {
  /** `peer`: a RESET arrived; `local`: this side reset it; `gone`: the session ended under it. */
  by: "peer" | "local" | "gone";
  code: number;
  reason: string;
}

/** Watches the bytes a stream relays, without changing them (the client's request log and inspector). */
export interface StreamTap {
  /** Bytes from the peer, about to be written into our socket. */
  toSocket(bytes: Uint8Array): void;
  /** Bytes read from our socket, about to be sent to the peer. */
  fromSocket(bytes: Uint8Array): void;
  /** The peer's END arrived: no more bytes toward our socket. */
  end?(): void;
  /** The stream was freed: cleanly (both ENDs, every byte acknowledged), or reset (`reset` says how). */
  closed?(reset?: TapReset): void;
  /**
   * False when the tap keeps no view of the bytes it sees (it counts them, or copies what it keeps):
   * the relay may then free its buffers early as without a tap. Absent means it may keep views.
   */
  readonly keepsViews?: boolean;
}

/** The window every stream starts with, both directions, unless the session says otherwise. */
export const INITIAL_WINDOW = DEFAULTS.initialWindow;
/**
 * Growth rule (QUIC receive-window auto-tuning, as quic-go does it): when the socket consumed half the
 * window or more since the last check, the window doubles if that took less than
 * `fraction × GROW_RTTS × rtt`, `fraction` being the share of the window consumed. A stream limited
 * by its window consumes half of it in half a round trip, so it grows until the window is a few
 * bandwidth-delay products or the session's `window`; one limited by its reader stops where the reader
 * is.
 */
export const GROW_RTTS = 4;
/**
 * ... with this floor (ms) in place of `GROW_RTTS × rtt`: on loopback or a LAN the round trip is
 * shorter than the event loop's own turns, and the socket buffers on the way need more than one
 * round trip's worth. A reader faster than ~a window per 20 ms (400 Mbit/s at 1 MiB) still grows it.
 */
export const GROW_FLOOR_MS = 20;

/**
 * Where a stream is in its lifecycle, as a log line prints it (derived: see {@link Stream.phase}).
 * The names are HTTP/2's (RFC 9113, 5.1), seen from this side: `half-closed-local` = we sent END.
 */
export type StreamPhase = "open" | "half-closed-local" | "half-closed-remote" | "closing" | "freed";

const PAUSED_BY_CREDIT = 1;
const PAUSED_BY_TRANSPORT = 2;

/** Relays one TCP socket over one stream id. */
export class Stream {
  /** The socket, once connected; null before (client side) and after it closed. */
  private socket: RelaySocket | null = null;
  /** Set by the opening side: how the stream was announced. */
  open: OpenInfo | null = null;
  /** Optional observer of the relayed bytes. */
  tap?: StreamTap;
  /** DATA bytes sent so far (sequence number of the next byte). */
  private sentSeq = 0;
  /** Of those, bytes the peer credited back (wrote into its socket). */
  private ackedSeq = 0;
  /** Bytes sent but not yet credited, kept (by reference) to resend after a resume. */
  private readonly unacked = new ByteQueue(dispose);
  /**
   * The window the peer granted us: the most we may have unacknowledged. Starts at the initial window,
   * grows by the peer's GROW frames, never past the session's `window` (a peer granting more does not
   * make us buffer more).
   */
  private sendWindow: number;
  /** The window we grant the peer, and enforce: the initial one plus every GROW we sent. */
  private recvWindow: number;
  /**
   * Bytes written into the socket after which this receiver returns credit: a quarter of the initial
   * window, whatever the window has grown to (frames stay as rare as before growth, and the sender's
   * unacknowledged bytes are freed as often).
   */
  private readonly creditBatch: number;
  /** When the current growth epoch began (the host's clock), or 0 before the first DATA. */
  private epochAt = 0;
  /** {@link Stream.writtenSeq} when it began. */
  private epochWritten = 0;
  /**
   * Bytes read from the socket but not yet sent, for lack of credit: a queue, not one buffer, because
   * reads keep coming after pause() when the socket is closing (Bun reads what the kernel queued
   * first): joining them cost a copy of everything held per read (156 MiB allocated for 40 visitors
   * that reset at once). Chunks leave it into `unacked`, which frees them.
   */
  private readonly held = new ByteQueue();
  /** DATA bytes received so far. */
  private recvSeq = 0;
  /** Of those, bytes written into the socket. */
  private writtenSeq = 0;
  /** Of those, bytes credited back to the peer (WINDOW or resume). */
  private creditedSeq = 0;
  /** Bytes from the peer that the socket has not taken yet (bounded by the window). */
  private readonly pending = new ByteQueue((chunk) => {
    if (!this.keepsWrites) dispose(chunk);
  });
  /**
   * The socket keeps what it is written by reference and frees it itself (a splice: the other stream
   * holds the bytes until its peer acknowledges them), so written bytes are not freed here.
   */
  private keepsWrites = false;
  private readEnded = false;
  private endSent = false;
  private endReceived = false;
  private writeShut = false;
  private pauses = 0;
  /** True once the stream was freed (both directions ended and acknowledged, or reset). */
  closed = false;

  /**
   * @param id stream id on the WebSocket.
   * @param host the multiplexer that frames and sends for this stream.
   * @param onClosed called once when the stream is freed.
   */
  constructor(
    readonly id: number,
    private readonly host: StreamHost,
    private readonly onClosed?: (stream: Stream) => void,
  ) {
    this.sendWindow = Math.min(host.window, host.initialWindow ?? INITIAL_WINDOW);
    this.recvWindow = this.sendWindow;
    this.creditBatch = Math.max(1, this.sendWindow >>> 2);
  }

  /** Binds the socket (at once on the server, after connect on the client) and flushes what waited. */
  attach(socket: RelaySocket): void {
    if (this.closed) {
      socket.terminate();
      return;
    }
    socket.data.stream = this;
    this.socket = socket;
    this.keepsWrites = (socket as { keepsWrites?: boolean }).keepsWrites === true;
    if (this.pauses !== 0) socket.pause();
    this.flushPending();
  }

  /**
   * Bytes read from our socket: frame them within credit, hold the rest and pause.
   * @param owned the chunk is a fresh socket read that nothing else keeps: the stream frees it once
   * acknowledged.
   */
  onSocketData(chunk: Uint8Array, owned = false): void {
    if (this.closed) return;
    const tap = this.tap;
    if (tap) tap.fromSocket(chunk);
    // Freed early once relayed (page faults otherwise), unless a tap may keep a view of it.
    if (owned && (tap === undefined || tap.keepsViews === false))
      markDisposable(chunk, this.host.disposeMinBytes);
    this.host.accountSent?.(chunk.length);
    if (this.held.length !== 0) {
      // A read that raced our pause() (or a closing socket's last reads): behind what is held.
      this.held.push(chunk);
      this.pause(PAUSED_BY_CREDIT);
      return;
    }
    const sent = this.sendWithinCredit(chunk);
    if (sent < chunk.length) {
      this.held.push(sent === 0 ? chunk : chunk.subarray(sent));
      this.pause(PAUSED_BY_CREDIT);
    }
  }

  /** Frames what credit allows of `chunk`; returns how many bytes that was. */
  private sendWithinCredit(chunk: Uint8Array): number {
    const max = this.host.maxFramePayload;
    let credit = this.sendWindow - (this.sentSeq - this.ackedSeq);
    let offset = 0;
    while (offset < chunk.length && credit > 0) {
      const n = Math.min(chunk.length - offset, credit, max);
      const piece = n === chunk.length ? chunk : chunk.subarray(offset, offset + n);
      this.host.sendData(this.id, piece);
      this.unacked.push(piece);
      this.sentSeq += n;
      credit -= n;
      offset += n;
    }
    return offset;
  }

  /**
   * Forgets `n` acknowledged bytes. The budget is told what memory that frees, not the bytes: a read
   * acknowledged in part stays alive whole until its last byte is (40 streams each keeping half a
   * 512 KiB read put the server 10-20 MiB past its budget).
   */
  private dropAcknowledged(n: number): void {
    const unacked = this.unacked;
    const before = unacked.retained;
    unacked.drop(n);
    this.host.accountSent?.(unacked.retained - before);
  }

  private now(): number {
    return this.host.clock?.() ?? performance.now();
  }

  /** The socket can take more: write what the peer sent earlier. */
  onSocketDrain(): void {
    if (!this.closed) this.flushPending();
  }

  /** FIN from our socket: END once held bytes are out. */
  onSocketEnd(): void {
    if (this.closed || this.readEnded) return;
    this.readEnded = true;
    if (this.held.length === 0) this.sendEnd();
  }

  /** Our socket closed. Clean if both directions were done; a FIN seen only as a close counts as END. */
  onSocketClose(error?: Error): void {
    this.socket = null;
    if (this.closed) return;
    if (!error && !this.readEnded) this.onSocketEnd();
    if (!error && !this.writeShut && this.endReceived && this.pending.length === 0) this.shutWrite();
    if (error || !this.writeShut) {
      this.reset(ResetCode.Aborted, error ? `connection aborted: ${error.message}` : "connection closed");
      return;
    }
    this.maybeFree();
  }

  /** DATA from the peer. */
  onData(payload: Uint8Array): void {
    if (this.endReceived) throw new ProtocolError(`DATA after END on stream ${this.id} (${this.phase})`);
    // Exactly what we granted: the initial window plus our GROWs, past what we credited back.
    if (this.recvSeq + payload.length - this.creditedSeq > this.recvWindow)
      throw new ProtocolError(`stream ${this.id}: peer sent ${payload.length} bytes past its window`);
    if (this.epochAt === 0) this.epochAt = this.now();
    this.recvSeq += payload.length;
    // A tap may keep what it saw (a request head split across frames): nothing is freed early then.
    const tap = this.tap;
    if (tap) {
      tap.toSocket(payload);
      if (tap.keepsViews !== false) forgetDisposable(payload);
    }
    const socket = this.socket;
    if (socket === null || this.pending.length !== 0) {
      this.pending.push(payload);
      this.host.accountReceived?.(payload.length);
      return;
    }
    const written = socket.write(payload);
    if (written < 0) return; // closing: the close handler settles the stream
    this.wrote(written);
    if (written < payload.length) {
      this.pending.push(payload.subarray(written));
      this.host.accountReceived?.(payload.length - written);
    } else if (!this.keepsWrites) dispose(payload);
  }

  /** WINDOW from the peer: forget what it acknowledged, send what was held, resume reading. */
  onWindow(increment: number): void {
    if (this.ackedSeq + increment > this.sentSeq)
      throw new ProtocolError(`stream ${this.id} (${this.phase}): WINDOW acknowledges bytes never sent`);
    this.ackedSeq += increment;
    this.dropAcknowledged(increment);
    this.sendHeld();
    this.maybeFree();
  }

  /** GROW from the peer: it grants a larger window (never past the session's `window` here). */
  onGrow(increment: number): void {
    if (this.closed) return;
    this.sendWindow = Math.min(this.host.window, this.sendWindow + increment);
    this.sendHeld();
  }

  private sendHeld(): void {
    const held = this.held;
    if (held.length === 0) return;
    for (let chunk = held.peek(); chunk !== undefined; chunk = held.peek()) {
      const sent = this.sendWithinCredit(chunk);
      held.drop(sent);
      if (sent < chunk.length) return;
    }
    this.unpause(PAUSED_BY_CREDIT);
    if (this.readEnded) this.sendEnd();
  }

  /** END from the peer: shut our socket's write side once pending bytes are written. */
  onEnd(): void {
    if (this.endReceived) return;
    this.endReceived = true;
    this.tap?.end?.();
    this.flushPending();
  }

  /**
   * Set by a role that can answer a visitor better than an abort (the HTTP ingress answers 502 when
   * nothing came back yet). Returning true means it took the socket and will close it.
   */
  onPeerReset?: (code: number, reason: string, received: number) => boolean;

  /** RESET from the peer: drop everything and abort the socket (unless {@link onPeerReset} took it). */
  onReset(code: number = ResetCode.Aborted, reason = ""): void {
    const socket = this.socket;
    if (socket && this.onPeerReset?.(code, reason, this.recvSeq)) {
      socket.data.stream = null;
      this.socket = null;
    }
    this.destroy(this.tap && { by: "peer", code, reason });
  }

  /** Aborts the stream from this side: tells the peer, then drops everything. */
  reset(code: number, reason: string): void {
    if (this.closed) return;
    this.host.sendReset(this.id, code, reason);
    this.destroy(this.tap && { by: "local", code, reason });
  }

  /**
   * Drops the stream without telling the peer (the transport is gone, or the peer reset it).
   * @param why what a tap is told (default: the session ended under the stream).
   */
  destroy(why?: TapReset): void {
    if (this.closed) return;
    this.closed = true;
    this.host.accountSent?.(-(this.held.length + this.unacked.retained));
    this.host.accountReceived?.(-this.pending.length);
    // Freed now, not at the next collection: a burst of resets (a client's visitors gone at once)
    // would otherwise leave the budget's worth of bytes in the heap until then. Oldest first: a held
    // tail frees the read it shares with an unacknowledged head only once that head went.
    this.unacked.dropAll();
    this.held.forEachFrom(0, dispose);
    this.held.clear();
    this.pending.dropAll();
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.data.stream = null;
      // Both directions already finished at the socket (every byte written, FIN both ways): only the
      // peer's last acknowledgement was missing. A reset would throw away what the kernel still holds
      // for the socket; a close delivers it (a cluster node leaving right after its visitors finished).
      if (this.writeShut && this.endSent) socket.end();
      else socket.terminate();
    }
    this.host.release(this, false);
    this.onClosed?.(this);
    this.tap?.closed?.(why ?? { by: "gone", code: ResetCode.Shutdown, reason: "session ended" });
  }

  /** Connection-level backpressure or a resume in progress: stop or restart reading. */
  setTransportBlocked(blocked: boolean): void {
    if (blocked) this.pause(PAUSED_BY_TRANSPORT);
    else this.unpause(PAUSED_BY_TRANSPORT);
  }

  /**
   * The lifecycle phase, derived from the END flags and `closed` (module header): `open`, then
   * `half-closed-local` (END sent) or `half-closed-remote` (END received), `closing` once both ENDs
   * passed (until the write side is shut and every byte acknowledged), `freed` at the end.
   */
  get phase(): StreamPhase {
    if (this.closed) return "freed";
    if (this.endSent) return this.endReceived ? "closing" : "half-closed-local";
    return this.endReceived ? "half-closed-remote" : "open";
  }

  /** Bytes from the peer that our socket has not taken yet. */
  get unwritten(): number {
    return this.pending.length;
  }

  /** Bytes buffered by this stream: held, unacknowledged and pending (for tests and /health). */
  get bufferedBytes(): number {
    return this.held.length + this.unacked.retained + this.pending.length;
  }

  /** The window the peer granted us (what we may have in flight), for /health and tests. */
  get sendWindowBytes(): number {
    return this.sendWindow;
  }

  /** The window we grant the peer, for /health and tests. */
  get recvWindowBytes(): number {
    return this.recvWindow;
  }

  /** DATA bytes this side sent so far (read from its socket; resent bytes count once), for metrics. */
  get bytesSent(): number {
    return this.sentSeq;
  }

  /** DATA bytes received so far (for its socket), for metrics. */
  get bytesReceived(): number {
    return this.recvSeq;
  }

  /** Bytes moved so far in both directions; unchanged between two looks means the stream is idle. */
  get progress(): number {
    return this.sentSeq + this.recvSeq;
  }

  /**
   * This side's receive position, for the peer after a resume. Everything written so far counts as
   * credited: the position itself returns that credit, so WINDOW frames lost in the blip do not matter.
   */
  position(): StreamPosition {
    this.creditedSeq = this.writtenSeq;
    return {
      received: this.recvSeq,
      acked: this.writtenSeq,
      endReceived: this.endReceived,
      window: this.recvWindow,
    };
  }

  /**
   * Applies the peer's position after a resume: forget what it acknowledged, resend what it never
   * received (DATA lost in the blip), and END again if that was lost too.
   * @throws {ProtocolError} when the position claims bytes this side never sent.
   */
  resume(peer: StreamPosition): void {
    if (this.closed) return;
    if (peer.acked > peer.received || peer.received > this.sentSeq || peer.acked < this.ackedSeq)
      throw new ProtocolError(`stream ${this.id}: resume position out of range`);
    this.dropAcknowledged(peer.acked - this.ackedSeq);
    this.ackedSeq = peer.acked;
    // The peer's grant as it stands (GROWs lost in the blip included); windows never shrink.
    this.sendWindow = Math.min(this.host.window, Math.max(this.sendWindow, peer.window));
    const max = this.host.maxFramePayload;
    this.unacked.forEachFrom(peer.received - this.ackedSeq, (chunk) => {
      for (let at = 0; at < chunk.length; at += max)
        this.host.sendData(this.id, chunk.subarray(at, Math.min(chunk.length, at + max)));
    });
    if (this.endSent && !peer.endReceived) this.host.sendEnd(this.id);
    this.sendHeld();
    this.maybeFree();
  }

  /**
   * The peer freed this stream cleanly while the transport was down: it received and wrote all our
   * bytes and our END, and we had all of its bytes; only its END may have been lost.
   */
  finishedByPeer(): void {
    if (this.closed) return;
    this.host.accountSent?.(-this.unacked.retained);
    this.unacked.dropAll();
    this.ackedSeq = this.sentSeq;
    this.onEnd();
    this.maybeFree();
  }

  private flushPending(): void {
    const socket = this.socket;
    if (socket === null) return;
    const pending = this.pending;
    for (let chunk = pending.peek(); chunk !== undefined; chunk = pending.peek()) {
      const written = socket.write(chunk);
      if (written < 0) return;
      pending.drop(written);
      this.host.accountReceived?.(-written);
      this.wrote(written);
      if (written < chunk.length) return;
    }
    if (this.endReceived && !this.writeShut) {
      socket.shutdown();
      this.shutWrite();
      this.maybeFree();
    }
  }

  /** Our write side is done: return the last credit at once, so the peer can free the stream. */
  private shutWrite(): void {
    this.writeShut = true;
    this.returnCredit();
  }

  private wrote(n: number): void {
    this.writtenSeq += n;
    if (this.writtenSeq - this.epochWritten >= this.recvWindow >>> 1) this.tuneWindow();
    // Batch credit: a WINDOW per quarter of the initial window keeps the sender busy without a frame
    // per chunk.
    if (this.writtenSeq - this.creditedSeq >= this.creditBatch) this.returnCredit();
  }

  /**
   * Half the window or more was consumed since the epoch began: double the window if that was fast
   * for the round trip ({@link GROW_RTTS}, {@link GROW_FLOOR_MS}) and the budgets have room, then start
   * a new epoch. Runs once per half window, so the clock is read rarely.
   */
  private tuneWindow(): void {
    const now = this.now();
    const host = this.host;
    const window = this.recvWindow;
    if (window < host.window) {
      const fraction = (this.writtenSeq - this.epochWritten) / window;
      const within = fraction * Math.max(GROW_RTTS * (host.rtt ?? 0), GROW_FLOOR_MS);
      const grown = Math.min(host.window, window * 2);
      if (now - this.epochAt < within && (host.mayGrow?.(grown - window) ?? true)) {
        this.recvWindow = grown;
        host.sendGrow(this.id, grown - window);
      }
    }
    this.epochAt = now;
    this.epochWritten = this.writtenSeq;
  }

  private returnCredit(): void {
    const increment = this.writtenSeq - this.creditedSeq;
    if (increment === 0) return;
    this.creditedSeq = this.writtenSeq;
    this.host.sendWindow(this.id, increment);
  }

  private sendEnd(): void {
    if (this.endSent) return;
    this.endSent = true;
    this.host.sendEnd(this.id);
    this.maybeFree();
  }

  private maybeFree(): void {
    if (this.closed || !this.endSent || !this.endReceived || !this.writeShut) return;
    if (this.ackedSeq !== this.sentSeq) return; // the peer may still need a resend after a blip
    this.closed = true;
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.data.stream = null;
      socket.end(); // both directions are done: close the descriptor
    }
    this.host.release(this, true);
    this.onClosed?.(this);
    this.tap?.closed?.();
  }

  private pause(reason: number): void {
    if (this.pauses === 0) this.socket?.pause();
    this.pauses |= reason;
  }

  private unpause(reason: number): void {
    if (this.pauses === 0) return;
    this.pauses &= ~reason;
    if (this.pauses === 0) this.socket?.resume();
  }
}

/**
 * Bun socket handlers that route every event of a relayed socket to its stream.
 * `allowHalfOpen` must be set on the listener or connect call, or Bun closes both directions on FIN.
 */
export const relaySocketHandlers = {
  data(socket: RelaySocket, chunk: Uint8Array) {
    socket.data.stream?.onSocketData(chunk, true);
  },
  drain(socket: RelaySocket) {
    socket.data.stream?.onSocketDrain();
  },
  end(socket: RelaySocket) {
    socket.data.stream?.onSocketEnd();
  },
  close(socket: RelaySocket, error?: Error) {
    socket.data.stream?.onSocketClose(error);
  },
  error(socket: RelaySocket, error: Error) {
    socket.data.stream?.onSocketClose(error);
  },
};
