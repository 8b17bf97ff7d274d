/**
 * One stream: a TCP socket on this side relayed to a stream id on the WebSocket, with per-stream credit
 * flow control and half-close. The same class serves the server (visitor sockets) and the client
 * (local-service sockets).
 *
 * Rules (see PROTOCOL.md):
 * - We send at most `sendCredit` DATA bytes; out of credit, the rest of the chunk is held and the socket
 *   paused until a WINDOW frame arrives. Memory per stream is bounded by one read chunk on the send side
 *   and by the window on the receive side (`pending`), whatever the peers do.
 * - Bytes received are written to the socket; credit goes back (WINDOW) once the kernel took them,
 *   batched per quarter window.
 * - FIN from our socket becomes END (after held bytes); END from the peer becomes `shutdown()` (after
 *   pending bytes). The stream is freed when both directions ended, or at once on RESET.
 * @module
 */

import type { Socket } from "bun";
import { ProtocolError, ResetCode } from "./protocol.ts";

/** What a stream needs from the multiplexer that owns it. */
export interface StreamHost {
  readonly window: number;
  readonly maxFramePayload: number;
  sendData(stream: number, payload: Uint8Array): void;
  sendWindow(stream: number, increment: number): void;
  sendEnd(stream: number): void;
  sendReset(stream: number, code: number, reason: string): void;
  release(stream: Stream): void;
}

/** The `data` slot of every relayed Bun socket. */
export interface RelaySocketData {
  stream: Stream | null;
}

/** A relayed Bun TCP socket. */
export type RelaySocket = Socket<RelaySocketData>;

const PAUSED_BY_CREDIT = 1;
const PAUSED_BY_TRANSPORT = 2;

/** Relays one TCP socket over one stream id. */
export class Stream {
  /** The socket, once connected; null before (client side) and after it closed. */
  private socket: RelaySocket | null = null;
  private sendCredit: number;
  /** Bytes the peer may still send before our next WINDOW; exceeding it is a protocol error. */
  private recvAllowance: number;
  /** Bytes written into the socket whose credit was not yet returned. */
  private unacked = 0;
  /** Bytes read from the socket but not yet sent, for lack of credit. */
  private held: Uint8Array | null = null;
  /** Bytes from the peer that the socket has not taken yet (bounded by the window). */
  private pending: Uint8Array[] = [];
  private readEnded = false;
  private endSent = false;
  private endReceived = false;
  private writeShut = false;
  private pauses = 0;
  /** True once the stream was freed (both directions ended, or reset). */
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
    this.sendCredit = host.window;
    this.recvAllowance = host.window;
  }

  /** Binds the socket (at once on the server, after connect on the client) and flushes what waited. */
  attach(socket: RelaySocket): void {
    if (this.closed) {
      socket.terminate();
      return;
    }
    socket.data.stream = this;
    this.socket = socket;
    if (this.pauses !== 0) socket.pause();
    this.flushPending();
  }

  /** Bytes read from our socket: frame them within credit, hold the rest and pause. */
  onSocketData(chunk: Uint8Array): void {
    if (this.closed) return;
    if (this.held !== null) {
      // A read that raced our pause(): keep it behind what is held, order intact.
      this.held = concat(this.held, chunk);
      this.pause(PAUSED_BY_CREDIT);
      return;
    }
    this.sendWithinCredit(chunk);
  }

  private sendWithinCredit(chunk: Uint8Array): void {
    const max = this.host.maxFramePayload;
    let offset = 0;
    while (offset < chunk.length && this.sendCredit > 0) {
      const n = Math.min(chunk.length - offset, this.sendCredit, max);
      this.host.sendData(this.id, n === chunk.length ? chunk : chunk.subarray(offset, offset + n));
      this.sendCredit -= n;
      offset += n;
    }
    if (offset < chunk.length) {
      this.held = chunk.subarray(offset);
      this.pause(PAUSED_BY_CREDIT);
    }
  }

  /** The socket can take more: write what the peer sent earlier. */
  onSocketDrain(): void {
    if (!this.closed) this.flushPending();
  }

  /** FIN from our socket: END once held bytes are out. */
  onSocketEnd(): void {
    if (this.closed || this.readEnded) return;
    this.readEnded = true;
    if (this.held === null) this.sendEnd();
  }

  /** Our socket closed. Clean if both directions were done; a FIN seen only as a close counts as END. */
  onSocketClose(error?: Error): void {
    this.socket = null;
    if (this.closed) return;
    if (!error && !this.readEnded) this.onSocketEnd();
    if (!error && !this.writeShut && this.endReceived && this.pending.length === 0) this.writeShut = true;
    if (error || !this.writeShut) {
      this.reset(ResetCode.Aborted, error ? `connection aborted: ${error.message}` : "connection closed");
      return;
    }
    this.maybeFree();
  }

  /** DATA from the peer. */
  onData(payload: Uint8Array): void {
    if (this.endReceived) throw new ProtocolError(`DATA after END on stream ${this.id}`);
    if (payload.length > this.recvAllowance)
      throw new ProtocolError(`stream ${this.id}: peer sent ${payload.length} bytes past its window`);
    this.recvAllowance -= payload.length;
    const socket = this.socket;
    if (socket === null || this.pending.length !== 0) {
      this.pending.push(payload);
      return;
    }
    const written = socket.write(payload);
    if (written < 0) return; // closing: the close handler settles the stream
    this.credit(written);
    if (written < payload.length) this.pending.push(payload.subarray(written));
  }

  /** WINDOW from the peer: send what was held, then resume reading. */
  onWindow(increment: number): void {
    this.sendCredit += increment;
    if (this.sendCredit > 0x7fffffff) throw new ProtocolError(`stream ${this.id}: window overflow`);
    const held = this.held;
    if (held === null) return;
    this.held = null;
    this.sendWithinCredit(held);
    if (this.held !== null) return;
    this.unpause(PAUSED_BY_CREDIT);
    if (this.readEnded) this.sendEnd();
  }

  /** END from the peer: shut our socket's write side once pending bytes are written. */
  onEnd(): void {
    if (this.endReceived) return;
    this.endReceived = true;
    this.flushPending();
  }

  /** RESET from the peer: drop everything and abort the socket. */
  onReset(): void {
    this.destroy();
  }

  /** Aborts the stream from this side: tells the peer, then drops everything. */
  reset(code: number, reason: string): void {
    if (this.closed) return;
    this.host.sendReset(this.id, code, reason);
    this.destroy();
  }

  /** Drops the stream without telling the peer (the transport is gone, or the peer reset it). */
  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.held = null;
    this.pending.length = 0;
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.data.stream = null;
      socket.terminate();
    }
    this.host.release(this);
    this.onClosed?.(this);
  }

  /** Connection-level backpressure: the WebSocket is full, so stop or restart reading. */
  setTransportBlocked(blocked: boolean): void {
    if (blocked) this.pause(PAUSED_BY_TRANSPORT);
    else this.unpause(PAUSED_BY_TRANSPORT);
  }

  /** Bytes buffered by this stream in either direction (for tests and /health). */
  get bufferedBytes(): number {
    let n = this.held?.length ?? 0;
    for (const chunk of this.pending) n += chunk.length;
    return n;
  }

  private flushPending(): void {
    const socket = this.socket;
    if (socket === null) return;
    const pending = this.pending;
    while (pending.length !== 0) {
      const chunk = pending[0] as Uint8Array;
      const written = socket.write(chunk);
      if (written < 0) return;
      this.credit(written);
      if (written < chunk.length) {
        pending[0] = chunk.subarray(written);
        return;
      }
      pending.shift();
    }
    if (this.endReceived && !this.writeShut) {
      this.writeShut = true;
      socket.shutdown();
      this.maybeFree();
    }
  }

  private credit(written: number): void {
    this.unacked += written;
    // Batch credit: a WINDOW per quarter window keeps the sender busy without a frame per chunk.
    if (this.unacked >= this.host.window >>> 2) {
      this.host.sendWindow(this.id, this.unacked);
      this.recvAllowance += this.unacked;
      this.unacked = 0;
    }
  }

  private sendEnd(): void {
    if (this.endSent) return;
    this.endSent = true;
    this.host.sendEnd(this.id);
    this.maybeFree();
  }

  private maybeFree(): void {
    if (this.closed || !this.endSent || !this.endReceived || !this.writeShut) return;
    this.closed = true;
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.data.stream = null;
      socket.end(); // both directions are done: close the descriptor
    }
    this.host.release(this);
    this.onClosed?.(this);
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

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Bun socket handlers that route every event of a relayed socket to its stream.
 * `allowHalfOpen` must be set on the listener or connect call, or Bun closes both directions on FIN.
 */
export const relaySocketHandlers = {
  data(socket: RelaySocket, chunk: Uint8Array) {
    socket.data.stream?.onSocketData(chunk);
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
