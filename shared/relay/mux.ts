/**
 * The stream multiplexer over one WebSocket: frames outgoing stream events, decodes incoming binary
 * messages and dispatches them to their streams, spreads connection-level backpressure to every
 * stream, measures the session's round trip (PING/PONG) for the streams' window growth, and counts
 * what the streams buffer against the memory budgets. Both roles own one per WebSocket; the role
 * supplies how to send and what to do on OPEN.
 * @module
 */

import { BATCHABLE_BYTES, Batcher } from "../wire/batcher.ts";
import {
  DATA_SCRATCH_EXTRA,
  type DatagramFrame,
  dataFrameStream,
  decodeFrame,
  encodeData,
  encodeDatagram,
  encodeEnd,
  encodeFlowClose,
  encodeFlowOpen,
  encodeGrow,
  encodeOpen,
  encodePing,
  encodeReset,
  encodeWindow,
  type FlowCloseFrame,
  type FlowOpenFrame,
  forEachInBatch,
  type OpenFrame,
} from "../wire/codec.ts";
import { FrameType, HEADER_LENGTH, type OpenMeta, ProtocolError, type StreamKind } from "../wire/protocol.ts";
import { Budget } from "./budget.ts";
import { markDisposable } from "./disposable.ts";
import { Stream, type StreamHost, type StreamPosition } from "./stream.ts";

/** Per-session settings, as announced in the server's hello. */
export interface MuxSettings {
  /** Most a stream's window may grow to. */
  window: number;
  maxFramePayload: number;
  /** Where each stream's window starts, both directions; both sides must agree (hello says it). */
  initialWindow?: number;
  /** Received and read buffers from this size on are freed once relayed (tests lower it). */
  disposeMinBytes?: number;
  /** Milliseconds for round trips and window growth (default `performance.now`; tests step it). */
  clock?: () => number;
  /**
   * The ids this side gives the streams it opens (default 1 to 2^32-1). Where both ends open streams
   * (a cluster's node link), each takes its own half so that their ids never meet.
   */
  streamIds?: { first: number; last: number };
}

/**
 * Memory budgets of one session (the server's per client), each within a server-wide one. `received`:
 * bytes from the peer not yet written into sockets; over it, the role stops reading the WebSocket
 * (`onReceivePressure`). `sent`: bytes read from sockets and not yet acknowledged; over it, every
 * stream of the session stops reading its socket.
 */
export interface MuxBudgets {
  /** Most bytes per direction for this session. */
  limit: number;
  /** Server-wide budgets every session counts into, one per direction. */
  shared?: { received: Budget; sent: Budget };
  /** Told true when the WebSocket must stop being read, false when it may be read again. */
  onReceivePressure?: (over: boolean) => void;
}

/**
 * Where a mux hands the frames of UDP tunnels (FLOW_OPEN, DATAGRAM, FLOW_CLOSE): the server's and
 * the client's flow tables. Without one, those frames are a protocol error (a peer that was never
 * offered UDP sent them).
 */
export interface DatagramHandler {
  onFlowOpen(frame: FlowOpenFrame): void;
  /** `frame.payload` is a view into the message: use it before returning. */
  onDatagram(frame: DatagramFrame): void;
  onFlowClose(frame: FlowCloseFrame): void;
}

/** Sends one binary frame on the WebSocket. The role reports backpressure with {@link Mux.setBlocked}. */
export type FrameSender = (frame: Uint8Array) => void;

/** Every stream's position, exchanged as a `sync` control message when a session resumes. */
export interface SyncState {
  /** `[id, received, acked, endReceived ? 1 : 0, window granted]` per open stream. */
  streams: [number, number, number, number, number][];
  /** Streams this side freed cleanly recently (the peer may have missed their last frames). */
  finished: number[];
  /** Highest stream id this side accepted from the peer (0 on the opening side). */
  accepted: number;
}

/**
 * The sync of a peer that knows no stream of ours: what a new session starts from. {@link Mux.start}
 * goes live with it; nothing else should spell it out.
 */
export const EMPTY_SYNC: Readonly<SyncState> = Object.freeze({ streams: [], finished: [], accepted: 0 });

/** How many cleanly freed stream ids a mux remembers for the next resume. */
const FINISHED_MEMORY = 4096;
/** A round-trip sample older than this (ms) is refreshed by a PING the next time a stream asks. */
const RTT_REFRESH_MS = 2000;
/** A PING unanswered this long (ms) is taken as lost (a blip dropped it) and sent again when asked. */
const PING_LOST_MS = 5000;

/**
 * The buffer outgoing DATA frames are built in: one copy per chunk, no allocation. One for the whole
 * process (as large as the largest `maxFramePayload` of any mux): a frame is sent, and so copied or
 * written, before the next is built, and a buffer per session cost every idle client its pages.
 */
let dataScratch = new Uint8Array(0);
/** DATA payloads up to this size are written into the round's batch directly. */
const SMALL_DATA = BATCHABLE_BYTES - HEADER_LENGTH;
/** The same for WINDOW, GROW and END frames (the batcher copies them). */
const smallScratch = new Uint8Array(16);
/** The default clock, one function for every mux. */
const now = () => performance.now();

/** Why a mux's streams stop reading their sockets (bits). */
const BLOCKED_BY_TRANSPORT = 1;
const BLOCKED_BY_BUDGET = 2;

/** Multiplexes streams over one WebSocket. */
export class Mux implements StreamHost {
  /** Open streams by id. */
  readonly streams = new Map<number, Stream>();
  readonly window: number;
  readonly initialWindow?: number;
  readonly disposeMinBytes?: number;
  readonly maxFramePayload: number;
  /** {@link BLOCKED_BY_TRANSPORT} and {@link BLOCKED_BY_BUDGET}: streams read while none is set. */
  private blocked = 0;
  /** @inheritdoc */
  readonly clock: () => number;
  /** Smoothed round trip (ms, RFC 6298 weights), 0 until the first PONG. */
  private srtt = 0;
  /** Lowest round trip seen (ms), for /health and tests. */
  private minRtt = 0;
  private pingToken = 0;
  /** When the outstanding PING left, or 0 when none is outstanding. */
  private pingSentAt = 0;
  private rttSampledAt = 0;
  /** Received-and-unwritten bytes of every stream, against the session's budget. */
  readonly received?: Budget;
  /** Sent-or-held and unacknowledged bytes of every stream, against the session's budget. */
  readonly sent?: Budget;
  /** Whether frames reach the peer; while detached (WebSocket down or resuming) they are dropped. */
  private live = true;
  private nextId: number;
  private readonly firstId: number;
  private readonly lastId: number;
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
  /** The flow table that takes UDP tunnels' frames (see {@link DatagramHandler}); none: refused. */
  datagrams?: DatagramHandler;

  /**
   * @param send writes one binary frame to the WebSocket; `null` builds the mux detached (frames are
   * dropped and streams do not read) until {@link Mux.start} names the sender. A role builds its mux
   * before its first WebSocket is greeted, so both roles pass `null`; tests pass a sender and are live
   * at once.
   * @param settings window and frame size for every stream.
   * @param onOpen called for each OPEN frame; absent on the side that never accepts streams.
   */
  constructor(
    send: FrameSender | null,
    settings: MuxSettings,
    private readonly onOpen?: (frame: OpenFrame) => void,
    budgets?: MuxBudgets,
  ) {
    this.batcher = new Batcher(send ?? (() => {}));
    this.window = settings.window;
    this.initialWindow = settings.initialWindow;
    this.clock = settings.clock ?? now;
    if (budgets !== undefined) {
      this.received = new Budget(budgets.limit, budgets.shared?.received, budgets.onReceivePressure);
      this.sent = new Budget(budgets.limit, budgets.shared?.sent, (over) =>
        this.setBlockedBy(BLOCKED_BY_BUDGET, over),
      );
    }
    this.disposeMinBytes = settings.disposeMinBytes;
    this.maxFramePayload = settings.maxFramePayload;
    this.firstId = settings.streamIds?.first ?? 1;
    this.lastId = settings.streamIds?.last ?? 0xffffffff;
    this.nextId = this.firstId;
    if (dataScratch.length < DATA_SCRATCH_EXTRA + settings.maxFramePayload)
      dataScratch = new Uint8Array(DATA_SCRATCH_EXTRA + settings.maxFramePayload);
    if (send === null) this.detach();
  }

  /** Creates a stream with a fresh id (the opening side). */
  createStream(onClosed?: (stream: Stream) => void): Stream {
    const id = this.nextId;
    this.nextId = id >= this.lastId ? this.firstId : id + 1;
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
    if (this.blocked !== 0) stream.setTransportBlocked(true);
    return stream;
  }

  /** @inheritdoc */
  get rtt(): number {
    const now = this.clock();
    const sentAt = this.pingSentAt;
    if (sentAt === 0 ? now - this.rttSampledAt > RTT_REFRESH_MS : now - sentAt > PING_LOST_MS) this.ping();
    return this.srtt;
  }

  /** The lowest round trip measured so far, in ms (0 until measured). */
  get minRttMs(): number {
    return this.minRtt;
  }

  /** Sends a PING: its PONG gives a round-trip sample. Each side measures its own. */
  ping(): void {
    if (!this.live) return;
    this.pingToken = (this.pingToken + 1) >>> 0 || 1;
    this.pingSentAt = this.clock();
    this.batcher.push(encodePing(this.pingToken));
  }

  private onPong(token: number): void {
    if (token !== this.pingToken || this.pingSentAt === 0) return; // a late answer to a ping taken as lost
    const now = this.clock();
    // The sample includes the queues on the way (as QUIC's does): a loaded path is a longer path.
    const sample = Math.max(now - this.pingSentAt, 0.001);
    this.srtt = this.srtt === 0 ? sample : this.srtt * 0.875 + sample * 0.125;
    this.minRtt = this.minRtt === 0 ? sample : Math.min(this.minRtt, sample);
    this.pingSentAt = 0;
    this.rttSampledAt = now;
  }

  /** @inheritdoc */
  mayGrow(n: number): boolean {
    const received = this.received;
    return received === undefined || received.fits(n);
  }

  /** @inheritdoc */
  accountReceived(n: number): void {
    this.received?.add(n);
  }

  /** @inheritdoc */
  accountSent(n: number): void {
    this.sent?.add(n);
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
    // DATA, the common case, without a frame object.
    const id = dataFrameStream(message, this.maxFramePayload);
    if (id !== 0) {
      this.streams.get(id)?.onData(message.subarray(HEADER_LENGTH));
      return;
    }
    const frame = decodeFrame(message, this.maxFramePayload);
    if (frame.type === FrameType.Open) {
      if (!this.onOpen) throw new ProtocolError("OPEN frames are not accepted in this direction");
      this.onOpen(frame);
      return;
    }
    if (frame.type === FrameType.Ping) {
      if (this.live) this.batcher.push(encodePing(frame.token, true));
      return;
    }
    if (frame.type === FrameType.Pong) {
      this.onPong(frame.token);
      return;
    }
    if (
      frame.type === FrameType.Datagram ||
      frame.type === FrameType.FlowOpen ||
      frame.type === FrameType.FlowClose
    ) {
      const datagrams = this.datagrams;
      if (datagrams === undefined) throw new ProtocolError("UDP frames were not agreed on this connection");
      if (frame.type === FrameType.Datagram) datagrams.onDatagram(frame);
      else if (frame.type === FrameType.FlowOpen) datagrams.onFlowOpen(frame);
      else datagrams.onFlowClose(frame);
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
      case FrameType.Grow:
        stream.onGrow(frame.increment);
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
    this.setBlockedBy(BLOCKED_BY_TRANSPORT, blocked);
  }

  private setBlockedBy(reason: number, blocked: boolean): void {
    const before = this.blocked;
    this.blocked = blocked ? before | reason : before & ~reason;
    if ((before === 0) === (this.blocked === 0)) return;
    for (const stream of this.streams.values()) stream.setTransportBlocked(this.blocked !== 0);
  }

  /** True while the WebSocket reported backpressure (no drain yet) or the send budget is spent. */
  get isBlocked(): boolean {
    return this.blocked !== 0;
  }

  /** Drops every stream without frames (the session is over; a new one may follow on the client). */
  destroyAll(): void {
    for (const stream of [...this.streams.values()]) stream.destroy();
    this.received?.dispose();
    this.sent?.dispose();
    // A new session numbers its streams from 1 again.
    this.finished = [];
    this.finishedNext = 0;
    this.highestAccepted = 0;
    this.nextId = this.firstId;
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

  /**
   * Goes live on a WebSocket whose peer knows none of our streams: a new session (a mux built with a
   * `null` sender), or one the server lost (after {@link Mux.destroyAll}). Same as {@link Mux.resume}
   * with {@link EMPTY_SYNC}, which is what it does; a stream still open here would be reconciled
   * against a peer that never saw it, so that is a bug in the caller.
   * @throws {Error} when streams are still open.
   */
  start(send: FrameSender): void {
    if (this.streams.size !== 0)
      throw new Error(`Mux.start with ${this.streams.size} streams open: resume() reconciles them`);
    this.resume(send, EMPTY_SYNC);
  }

  /** This side's stream positions for the peer; call while detached, on the new WebSocket. */
  syncState(): SyncState {
    const streams: SyncState["streams"] = [];
    for (const stream of this.streams.values()) {
      const p = stream.position();
      streams.push([stream.id, p.received, p.acked, p.endReceived ? 1 : 0, p.window]);
    }
    return { streams, finished: [...this.finished], accepted: this.highestAccepted };
  }

  /**
   * Goes live on a new WebSocket and reconciles with the peer's positions: resends what it missed,
   * OPENs it never saw (opening side), and drops streams the peer no longer has.
   * @throws {ProtocolError} when the peer's state is inconsistent with ours.
   */
  resume(send: FrameSender, peer: Readonly<SyncState>): void {
    this.batcher.send = send;
    this.live = true;
    const positions = new Map<number, StreamPosition>();
    for (const [id, received, acked, ended, window] of peer.streams)
      positions.set(id, { received, acked, endReceived: ended === 1, window });
    const finished = new Set(peer.finished);
    for (const stream of [...this.streams.values()]) {
      const position = positions.get(stream.id);
      if (position) stream.resume(position);
      else if (finished.has(stream.id)) stream.finishedByPeer();
      else if (stream.open && stream.id > peer.accepted) {
        this.sendOpenFrame(stream);
        stream.resume({ received: 0, acked: 0, endReceived: false, window: 1 });
      } else stream.destroy();
    }
    this.setBlocked(false);
    this.ping(); // a fresh round trip for the new connection (the path may have changed)
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

  /** True while frames reach the peer (not detached). */
  get isLive(): boolean {
    return this.live;
  }

  /** Announces a UDP flow (FLOW_OPEN); false while detached (nothing sent). */
  sendFlowOpen(flow: number, tunnel: number, meta: OpenMeta): boolean {
    if (this.live) this.batcher.push(encodeFlowOpen(flow, tunnel, meta));
    return this.live;
  }

  /**
   * Sends one datagram of a flow, whole: small ones with this round's batch (one copy), larger ones at
   * once. False while detached (dropped: UDP resends nothing). The caller checks the size and the
   * WebSocket's queue first.
   */
  sendDatagram(flow: number, payload: Uint8Array): boolean {
    if (!this.live) return false;
    if (payload.length + HEADER_LENGTH <= BATCHABLE_BYTES)
      this.batcher.pushFrame(FrameType.Datagram, flow, payload);
    else this.batcher.push(encodeDatagram(flow, payload, dataScratch));
    return true;
  }

  /** Tells the peer a flow is gone (FLOW_CLOSE); dropped while detached. */
  sendFlowClose(flow: number, code: number): void {
    if (this.live) this.batcher.push(encodeFlowClose(flow, code, smallScratch));
  }

  /** @inheritdoc */
  sendData(stream: number, payload: Uint8Array): void {
    if (!this.live) return;
    if (payload.length <= SMALL_DATA) this.batcher.pushFrame(FrameType.Data, stream, payload);
    else this.batcher.push(encodeData(stream, payload, dataScratch));
  }

  /** @inheritdoc */
  sendWindow(stream: number, increment: number): void {
    if (this.live) this.batcher.push(encodeWindow(stream, increment, smallScratch));
  }

  /** @inheritdoc */
  sendGrow(stream: number, increment: number): void {
    if (this.live) this.batcher.push(encodeGrow(stream, increment, smallScratch));
  }

  /** @inheritdoc */
  sendEnd(stream: number): void {
    if (this.live) this.batcher.push(encodeEnd(stream, smallScratch));
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
