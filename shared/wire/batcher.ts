/**
 * Coalesces small frames into BATCH messages: the small frames of one event-loop round (one round of
 * socket events) leave together, in one WebSocket message (one syscall, one wake-up of the peer), when
 * the round ends. Large frames go out at once, after whatever is batched, so order is kept.
 * Sending a round's first small frame at once instead (for a lone request's latency) cost the tunnel
 * 4–6% more CPU per visitor connection, one more send per round, and bought no latency we could
 * measure: the round ends microseconds later.
 * @module
 */

import { BufferPool } from "./buffer-pool.ts";
import { FrameType, HEADER_LENGTH } from "./protocol.ts";

/** Frames up to this size are batched; bigger ones (bulk DATA) go out at once. */
export const BATCHABLE_BYTES = 2048;
const CAPACITY = 32 * 1024;

/**
 * The buffers batches are built in, shared by every batcher of the process: one is held only from a
 * round's first small frame until the round's message is sent (a buffer per session cost an idle
 * client 32 KiB of the server's memory).
 */
export const BATCH_BUFFERS = new BufferPool(CAPACITY, 16, (buffer) => {
  buffer[0] = FrameType.Batch; // stream id 0: bytes 1-4 stay zero
});

/** Batchers with frames for this round, flushed together when it ends (one setImmediate for all). */
let due: Batcher[] = [];

/** Flushes every batcher of the round that ends. setImmediate runs once the loop dispatched its events. */
function flushDue(): void {
  const round = due;
  due = [];
  for (const batcher of round) {
    batcher.scheduled = false;
    batcher.flush();
  }
}

/** Batches small frames for one WebSocket; {@link Batcher.drop} forgets them when it is gone. */
export class Batcher {
  /** The round's batch, taken from the pool at its first frame; null between rounds. */
  private buffer: Uint8Array | null = null;
  private length = HEADER_LENGTH;
  private count = 0;
  /** True while this batcher waits in {@link due} for the round's end. */
  scheduled = false;

  /**
   * @param send writes one WebSocket message (which copies it: the buffer goes back to the pool).
   * @param pool where batch buffers come from (tests watch their own).
   */
  constructor(
    public send: (message: Uint8Array) => void,
    private readonly pool: BufferPool = BATCH_BUFFERS,
  ) {}

  /**
   * Sends `frame`: a small one when this event-loop round ends, with the round's other small frames; a
   * large one at once, behind what is batched.
   */
  push(frame: Uint8Array): void {
    if (frame.length > BATCHABLE_BYTES) {
      this.flush();
      this.send(frame);
      return;
    }
    const b = this.room(frame.length);
    b[this.length] = frame.length >>> 8;
    b[this.length + 1] = frame.length;
    b.set(frame, this.length + 2);
    this.length += 2 + frame.length;
    this.count++;
  }

  /**
   * The round's batch with room for one more frame of `length` bytes (and its 2-byte length): what is
   * batched goes first when it would not fit; the first frame of a round takes a buffer from the pool
   * and schedules the round's flush.
   */
  private room(length: number): Uint8Array {
    if (this.length + 2 + length > CAPACITY) this.flush();
    if (!this.scheduled) {
      this.scheduled = true;
      due.push(this);
      if (due.length === 1) setImmediate(flushDue);
    }
    this.buffer ??= this.pool.take();
    return this.buffer;
  }

  /**
   * Batches the frame `type | id u32 | payload` without encoding it first: one copy, straight into the
   * batch (a datagram's path). The caller sends frames over {@link BATCHABLE_BYTES} itself.
   */
  pushFrame(type: number, id: number, payload: Uint8Array): void {
    const length = HEADER_LENGTH + payload.length;
    const b = this.room(length);
    let at = this.length;
    b[at] = length >>> 8;
    b[at + 1] = length;
    b[at + 2] = type;
    b[at + 3] = id >>> 24;
    b[at + 4] = id >>> 16;
    b[at + 5] = id >>> 8;
    b[at + 6] = id;
    at += 7;
    b.set(payload, at);
    this.length = at + payload.length;
    this.count++;
  }

  /** Sends what is batched now: a lone frame as itself, several as one BATCH message. */
  flush(): void {
    const buffer = this.buffer;
    if (buffer === null || this.count === 0) return;
    const message =
      this.count === 1 ? buffer.subarray(HEADER_LENGTH + 2, this.length) : buffer.subarray(0, this.length);
    // Reset first: a frame pushed while this one is being sent goes into a buffer of its own.
    this.buffer = null;
    this.length = HEADER_LENGTH;
    this.count = 0;
    this.send(message);
    this.pool.release(buffer);
  }

  /** Forgets what is batched (the WebSocket is gone; a resume resends what mattered). */
  drop(): void {
    const buffer = this.buffer;
    this.buffer = null;
    this.length = HEADER_LENGTH;
    this.count = 0;
    if (buffer !== null) this.pool.release(buffer);
  }
}
