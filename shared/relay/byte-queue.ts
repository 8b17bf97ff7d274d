/**
 * A FIFO of byte chunks that keeps references, never copies: the relay's holding area for bytes sent
 * but not yet acknowledged, and for bytes received but not yet written.
 * @module
 */

/** Chunks in arrival order, with O(1) amortised push and drop from the front. */
export class ByteQueue {
  private chunks: Uint8Array[] = [];
  private head = 0;
  /** Total bytes queued. */
  length = 0;
  /** Bytes dropped from the front of the first chunk, whose memory that chunk still keeps alive. */
  private headDropped = 0;

  /** @param onDropped called with each chunk once all of it was dropped (not on {@link ByteQueue.clear}). */
  constructor(private readonly onDropped?: (chunk: Uint8Array) => void) {}

  /** Appends a chunk (kept by reference: the caller must not reuse its memory). */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /**
   * Bytes the queue keeps alive: {@link ByteQueue.length} plus what was dropped from the front of the
   * first chunk, which still holds that memory (a socket read acknowledged in part).
   */
  get retained(): number {
    return this.length + this.headDropped;
  }

  /** The first chunk, or undefined when empty. */
  peek(): Uint8Array | undefined {
    return this.chunks[this.head];
  }

  /** Drops `n` bytes (at most `length`) from the front. */
  drop(n: number): void {
    let left = Math.min(n, this.length);
    this.length -= left;
    while (left > 0) {
      const first = this.chunks[this.head] as Uint8Array;
      if (first.length <= left) {
        left -= first.length;
        this.head++;
        this.headDropped = 0;
        this.onDropped?.(first);
      } else {
        this.chunks[this.head] = first.subarray(left);
        this.headDropped += left;
        left = 0;
      }
    }
    this.compact();
  }

  /** Calls `visit` for every byte range from `offset` to the end, in order. */
  forEachFrom(offset: number, visit: (chunk: Uint8Array) => void): void {
    let skip = offset;
    for (let i = this.head; i < this.chunks.length; i++) {
      const chunk = this.chunks[i] as Uint8Array;
      if (skip >= chunk.length) {
        skip -= chunk.length;
        continue;
      }
      visit(skip === 0 ? chunk : chunk.subarray(skip));
      skip = 0;
    }
  }

  /** Drops every byte, telling `onDropped` of each chunk (the relay frees them at once). */
  dropAll(): void {
    this.drop(this.length);
  }

  /** Empties the queue. */
  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.length = 0;
    this.headDropped = 0;
  }

  private compact(): void {
    if (this.head === this.chunks.length) {
      this.chunks.length = 0;
      this.head = 0;
    } else if (this.head > 64 && this.head * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }
}
