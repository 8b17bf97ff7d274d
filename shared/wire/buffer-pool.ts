/**
 * A pool of equal-sized buffers, each held for a short while. A holder takes one for an event-loop
 * round and gives it back, so that many idle sessions cost no buffer each. The batcher takes one when
 * a round's first small frame comes and gives it back once the round's message is sent (sending
 * copies it).
 * @module
 */

/** Buffers of one size: {@link BufferPool.take} one, {@link BufferPool.release} it when done. */
export class BufferPool {
  private readonly free: Uint8Array[] = [];

  /**
   * @param size bytes of every buffer.
   * @param keep most free buffers kept for reuse; more are left to the collector.
   * @param init prepares a new buffer once (a constant header).
   */
  constructor(
    readonly size: number,
    private readonly keep = 16,
    private readonly init?: (buffer: Uint8Array) => void,
  ) {}

  /** A buffer nobody else holds: a free one, or a new one. */
  take(): Uint8Array {
    const reused = this.free.pop();
    if (reused !== undefined) return reused;
    const buffer = new Uint8Array(this.size);
    this.init?.(buffer);
    return buffer;
  }

  /** Gives `buffer` back; the caller must not touch it again. */
  release(buffer: Uint8Array): void {
    if (this.free.length < this.keep) this.free.push(buffer);
  }

  /** Free buffers held for reuse (tests). */
  get freeCount(): number {
    return this.free.length;
  }
}
