/**
 * The stream multiplexer over one WebSocket: frames outgoing stream events, decodes incoming binary
 * messages and dispatches them to their streams, and spreads connection-level backpressure to every
 * stream. Both roles own one per WebSocket; the role supplies how to send and what to do on OPEN.
 * @module
 */

import { Batcher } from "./batcher.ts";
import {
  DATA_SCRATCH_EXTRA,
  decodeFrame,
  encodeData,
  encodeEnd,
  encodeOpen,
  encodeReset,
  encodeWindow,
  forEachInBatch,
  type OpenFrame,
} from "./codec.ts";
import { markDisposable } from "./disposable.ts";
import { FrameType, type OpenMeta, ProtocolError, type StreamKind } from "./protocol.ts";
import { Stream, type StreamHost, type StreamPosition } from "./stream.ts";

/** Per-session settings, as announced in the server's hello. */
export interface MuxSettings {
  window: number;
  maxFramePayload: number;
  /** Where each stream's send window starts (tests); both sides must agree, as credit batches follow it. */
  initialWindow?: number;
  /** Received and read buffers from this size on are freed once relayed (tests lower it). */
  disposeMinBytes?: number;
}

/** Sends one binary frame on the WebSocket. The role reports backpressure with {@link Mux.setBlocked}. */
export type FrameSender = (frame: Uint8Array) => void;

/** Every stream's position, exchanged as a `sync` control message when a session resumes. */
export interface SyncState {
  /** `[id, received, acked, endReceived ? 1 : 0]` per open stream. */
  streams: [number, number, number, number][];
  /** Streams this side freed cleanly recently (the peer may have missed their last frames). */
  finished: number[];
  /** Highest stream id this side accepted from the peer (0 on the opening side). */
  accepted: number;
}

/** How many cleanly freed stream ids a mux remembers for the next resume. */
const FINISHED_MEMORY = 4096;

/** Multiplexes streams over one WebSocket. */
export class Mux implements StreamHost {
  /** Open streams by id. */
  readonly streams = new Map<number, Stream>();
  readonly window: number;
  readonly initialWindow?: number;
  readonly disposeMinBytes?: number;
  readonly maxFramePayload: number;
  /** One reused buffer for outgoing DATA frames: one copy per chunk, no allocation. */
  private readonly scratch: Uint8Array;
  private readonly small = new Uint8Array(16);
  private blocked = false;
  /** Whether frames reach the peer; while detached (WebSocket down or resuming) they are dropped. */
  private live = true;
  private nextId = 1;
  private highestAccepted = 0;
  /**
   * Ids of the streams freed cleanly most recently, a ring of {@link FINISHED_MEMORY}: a ring, not a
   * Set trimmed from its front, whose iterator walks every deleted slot (it was 6% of the client's
   * CPU at 8,000 connections/s).
   */
  private finished: number[] = [];
  private finishedNext = 0;
  /** Every frame leaves through here: small ones coalesced per event-loop round. */
  private readonly batcher: Batcher;

  /**
   * @param send writes one binary frame to the WebSocket.
   * @param settings window and frame size for every stream.
   * @param onOpen called for each OPEN frame; absent on the side that never accepts streams.
   */
  constructor(
    send: FrameSender,
    settings: MuxSettings,
    private readonly onOpen?: (frame: OpenFrame) => void,
  ) {
    this.batcher = new Batcher(send);
    this.window = settings.window;
    this.initialWindow = settings.initialWindow;
    this.disposeMinBytes = settings.disposeMinBytes;
    this.maxFramePayload = settings.maxFramePayload;
    this.scratch = new Uint8Array(DATA_SCRATCH_EXTRA + settings.maxFramePayload);
  }

  /** Creates a stream with a fresh id (the opening side). */
  createStream(onClosed?: (stream: Stream) => void): Stream {
    const id = this.nextId;
    this.nextId = id >= 0xffffffff ? 1 : id + 1;
    return this.addStream(id, onClosed);
  }

  /** Registers a stream the peer opened. */
  acceptStream(id: number, onClosed?: (stream: Stream) => void): Stream {
    if (this.streams.has(id)) throw new ProtocolError(`OPEN for stream ${id}, which is already open`);
    if (id > this.highestAccepted) this.highestAccepted = id;
    return this.addStream(id, onClosed);
  }

  private addStream(id: number, onClosed?: (stream: Stream) => void): Stream {
    const stream = new Stream(id, this, onClosed);
    this.streams.set(id, stream);
    if (this.blocked) stream.setTransportBlocked(true);
    return stream;
  }

  /**
   * Decodes and dispatches one binary message.
   * @param owned the message is a fresh buffer that nothing else keeps: a DATA frame's stream may free
   * it once its payload is written (a BATCH is left to the collector: its frames share the buffer).
   * @throws {ProtocolError} when the peer broke the protocol; the role closes the WebSocket with 1002.
   */
  receive(message: Uint8Array, owned = false): void {
    if (message[0] === FrameType.Batch) forEachInBatch(message, this.receiveFrameInBatch);
    else {
      if (owned && message[0] === FrameType.Data) markDisposable(message, this.disposeMinBytes);
      this.receiveFrame(message);
    }
  }

  /** {@link Mux.receiveFrame}, bound once: no closure per BATCH message. */
  private readonly receiveFrameInBatch = (frame: Uint8Array) => this.receiveFrame(frame);

  private receiveFrame(message: Uint8Array): void {
    const frame = decodeFrame(message, this.maxFramePayload);
    if (frame.type === FrameType.Open) {
      if (!this.onOpen) throw new ProtocolError("OPEN frames are not accepted in this direction");
      this.onOpen(frame);
      return;
    }
    // Frames for a stream that is gone are normal races with a RESET we sent: drop them.
    const stream = this.streams.get(frame.stream);
    if (stream === undefined) return;
    switch (frame.type) {
      case FrameType.Data:
        stream.onData(frame.payload);
        break;
      case FrameType.Window:
        stream.onWindow(frame.increment);
        break;
      case FrameType.End:
        stream.onEnd();
        break;
      case FrameType.Reset:
        stream.onReset(frame.code, frame.reason);
        break;
    }
  }

  /** Sends the small frames batched so far now, instead of when this event-loop round ends. */
  flush(): void {
    this.batcher.flush();
  }

  /** Pauses (true) or resumes (false) reading on every stream, for WebSocket backpressure. */
  setBlocked(blocked: boolean): void {
    if (blocked === this.blocked) return;
    this.blocked = blocked;
    for (const stream of this.streams.values()) stream.setTransportBlocked(blocked);
  }

  /** True while the WebSocket reported backpressure and no drain yet. */
  get isBlocked(): boolean {
    return this.blocked;
  }

  /** Drops every stream without frames (the session is over). */
  destroyAll(): void {
    for (const stream of [...this.streams.values()]) stream.destroy();
    // A new session numbers its streams from 1 again.
    this.finished = [];
    this.finishedNext = 0;
    this.highestAccepted = 0;
    this.nextId = 1;
  }

  /**
   * The WebSocket is gone: stop reading every socket and drop frames until {@link Mux.resume}. Streams
   * keep their sockets and their unacknowledged bytes; a blip loses nothing.
   */
  detach(): void {
    this.live = false;
    this.batcher.drop();
    this.setBlocked(true);
  }

  /** This side's stream positions for the peer; call while detached, on the new WebSocket. */
  syncState(): SyncState {
    const streams: SyncState["streams"] = [];
    for (const stream of this.streams.values()) {
      const p = stream.position();
      streams.push([stream.id, p.received, p.acked, p.endReceived ? 1 : 0]);
    }
    return { streams, finished: [...this.finished], accepted: this.highestAccepted };
  }

  /**
   * Goes live on a new WebSocket and reconciles with the peer's positions: resends what it missed,
   * OPENs it never saw (opening side), and drops streams the peer no longer has.
   * @throws {ProtocolError} when the peer's state is inconsistent with ours.
   */
  resume(send: FrameSender, peer: SyncState): void {
    this.batcher.send = send;
    this.live = true;
    const positions = new Map<number, StreamPosition>();
    for (const [id, received, acked, ended] of peer.streams)
      positions.set(id, { received, acked, endReceived: ended === 1 });
    const finished = new Set(peer.finished);
    for (const stream of [...this.streams.values()]) {
      const position = positions.get(stream.id);
      if (position) stream.resume(position);
      else if (finished.has(stream.id)) stream.finishedByPeer();
      else if (stream.open && stream.id > peer.accepted) {
        this.sendOpenFrame(stream);
        stream.resume({ received: 0, acked: 0, endReceived: false });
      } else stream.destroy();
    }
    this.setBlocked(false);
  }

  /** Announces a stream the opening side created (one OPEN per visitor). */
  sendOpen(stream: Stream, kind: StreamKind, tunnel: number, meta: OpenMeta): void {
    stream.open = { kind, tunnel, meta };
    this.sendOpenFrame(stream);
  }

  private sendOpenFrame(stream: Stream): void {
    const open = stream.open;
    if (this.live && open) this.batcher.push(encodeOpen(stream.id, open.kind, open.tunnel, open.meta));
  }

  /** @inheritdoc */
  sendData(stream: number, payload: Uint8Array): void {
    if (this.live) this.batcher.push(encodeData(stream, payload, this.scratch));
  }

  /** @inheritdoc */
  sendWindow(stream: number, increment: number): void {
    if (this.live) this.batcher.push(encodeWindow(stream, increment, this.small));
  }

  /** @inheritdoc */
  sendEnd(stream: number): void {
    if (this.live) this.batcher.push(encodeEnd(stream, this.small));
  }

  /** @inheritdoc */
  sendReset(stream: number, code: number, reason: string): void {
    if (this.live) this.batcher.push(encodeReset(stream, code, reason));
  }

  /** @inheritdoc */
  release(stream: Stream, clean: boolean): void {
    this.streams.delete(stream.id);
    if (!clean) return;
    if (this.finished.length < FINISHED_MEMORY) this.finished.push(stream.id);
    else {
      this.finished[this.finishedNext] = stream.id;
      this.finishedNext = (this.finishedNext + 1) % FINISHED_MEMORY;
    }
  }
}
