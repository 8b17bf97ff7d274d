/**
 * Inspector slabs: where captured messages' bytes live. Small message records (up to 8 KiB) are carved
 * from shared 128 KiB slabs, and a slab is used again once every exchange with bytes in it has left the
 * store, rather than a new one allocated: a fresh slab per ~80 small exchanges cost the client more
 * than the rest of the capture together (the collector ran a third more often for the memory outside
 * the JS heap, and each slab's pages were faulted in anew).
 *
 * Reuse is safe because records are read only while their exchange is kept, except by readers that
 * say they hold exchanges for later ({@link SlabPool.hold}: the page's live stream between batches).
 * The same terms let the store hand exchanges back for reuse (store.ts); a record left behind in a
 * slab that was reused (a body joined into a new place) reads as no bytes, never as another's.
 * @module
 */

/** Messages up to this size are carved from a shared slab rather than given their own buffer. */
export const SLAB_MESSAGE_MAX = 8 * 1024;
/** A slab's size. */
const SLAB_SIZE = 128 * 1024;
/** Slabs kept for reuse at most (the rest are left to the collector): 8 MiB. */
const MAX_RETIRED = 64;

/** A buffer records are carved from, and which use of it they belong to. */
export class Slab {
  /** Counts reuses: a record made in an earlier one reads as empty. */
  gen = 0;
  /** The newest exchange (store number) with bytes here. */
  newest = 0;

  constructor(readonly bytes: Uint8Array) {}
}

/** The slabs of one store (see the module header). */
export class SlabPool {
  private current: Slab | null = null;
  private used = 0;
  /** Full slabs, oldest first. */
  private readonly retired: Slab[] = [];
  private holders = 0;
  /** Where the last {@link reserve} placed its bytes in the slab it returned. */
  at = 0;

  /**
   * Room for `size` bytes of exchange `seq`'s record; the place is {@link at} in the returned slab.
   * `firstKept` is the oldest exchange the store still keeps: a full slab with none newer is reused.
   */
  reserve(size: number, seq: number, firstKept: number): Slab {
    if (size > SLAB_MESSAGE_MAX) return this.own(size);
    let slab = this.current;
    if (slab === null || this.used + size > SLAB_SIZE) {
      if (slab !== null) this.retire(slab);
      slab = this.next(firstKept);
      this.current = slab;
      this.used = 0;
    }
    if (seq > slab.newest) slab.newest = seq;
    this.at = this.used;
    this.used += size;
    return slab;
  }

  /** A buffer of `size` bytes of its own, never reused (large messages, replays). */
  own(size: number): Slab {
    this.at = 0;
    return new Slab(new Uint8Array(size));
  }

  /** A reader holds exchanges to read later: no slab is reused until {@link release}. */
  hold(): void {
    this.holders++;
  }

  /** No reader holds exchanges to read later (see {@link hold}). */
  get idle(): boolean {
    return this.holders === 0;
  }

  /** The reader of {@link hold} is done. */
  release(): void {
    this.holders--;
  }

  private retire(slab: Slab): void {
    this.retired.push(slab);
    if (this.retired.length > MAX_RETIRED) this.retired.shift();
  }

  private next(firstKept: number): Slab {
    const oldest = this.retired[0];
    if (oldest !== undefined && oldest.newest < firstKept && this.holders === 0) {
      this.retired.shift();
      oldest.gen++;
      oldest.newest = 0;
      return oldest;
    }
    return new Slab(new Uint8Array(SLAB_SIZE));
  }
}
