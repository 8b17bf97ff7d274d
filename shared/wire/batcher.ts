/**
 * Coalesces small frames into BATCH messages: the small frames of one event-loop round (one round of
 * socket events) leave together, in one WebSocket message (one syscall, one wake-up of the peer), when
 * the round ends. Large frames go out at once, after whatever is batched, so order is kept.
 * Sending a round's first small frame at once instead (for a lone request's latency) cost the tunnel
 * 4–6% more CPU per visitor connection, one more send per round, and bought no latency we could
 * measure: the round ends microseconds later.
 * @module
 */

import { FrameType, HEADER_LENGTH } from "./protocol.ts";

/** Frames up to this size are batched; bigger ones (bulk DATA) go out at once. */
export const BATCHABLE_BYTES = 2048;
const CAPACITY = 32 * 1024;

/** Batches small frames for one WebSocket; {@link Batcher.drop} forgets them when it is gone. */
export class Batcher {
  private readonly buffer = new Uint8Array(CAPACITY);
  private length = HEADER_LENGTH;
  private count = 0;
  private scheduled = false;
  private readonly flushSoon = () => {
    this.scheduled = false;
    this.flush();
  };

  /** @param send writes one WebSocket message (which copies it). */
  constructor(public send: (message: Uint8Array) => void) {
    this.buffer[0] = FrameType.Batch; // stream id 0: bytes 1-4 stay zero
  }

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
    if (this.length + 2 + frame.length > CAPACITY) this.flush();
    if (!this.scheduled) {
      this.scheduled = true;
      // setImmediate runs once the loop has dispatched every socket event of this round.
      setImmediate(this.flushSoon);
    }
    const b = this.buffer;
    b[this.length] = frame.length >>> 8;
    b[this.length + 1] = frame.length;
    b.set(frame, this.length + 2);
    this.length += 2 + frame.length;
    this.count++;
  }

  /**
   * Batches the frame `type | id u32 | payload` without encoding it first: one copy, straight into the
   * batch (a datagram's path). The caller sends frames over {@link BATCHABLE_BYTES} itself.
   */
  pushFrame(type: number, id: number, payload: Uint8Array): void {
    const length = HEADER_LENGTH + payload.length;
    if (this.length + 2 + length > CAPACITY) this.flush();
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flushSoon);
    }
    const b = this.buffer;
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
    if (this.count === 0) return;
    const lone = this.count === 1;
    const message = lone
      ? this.buffer.subarray(HEADER_LENGTH + 2, this.length)
      : this.buffer.subarray(0, this.length);
    this.length = HEADER_LENGTH;
    this.count = 0;
    this.send(message);
  }

  /** Forgets what is batched (the WebSocket is gone; a resume resends what mattered). */
  drop(): void {
    this.length = HEADER_LENGTH;
    this.count = 0;
  }
}
