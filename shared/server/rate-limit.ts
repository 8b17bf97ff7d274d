/**
 * Failed-attempt counting per remote address, for the control port's auth check.
 * @module
 */

/** Counts failures per key in fixed windows; bounded in memory whatever the number of addresses. */
export class FailureLimiter {
  private readonly windows = new Map<string, { count: number; until: number }>();

  /**
   * @param limit failures allowed per key and window; the next ones are refused until it ends.
   * @param windowMs window length.
   * @param maxKeys most addresses tracked; past it, expired entries go, then the oldest.
   */
  constructor(
    private readonly limit: number,
    private readonly windowMs = 60_000,
    private readonly maxKeys = 10_000,
  ) {}

  /** True when `key` used up its failures for the current window. */
  blocked(key: string, now = Date.now()): boolean {
    const entry = this.windows.get(key);
    return entry !== undefined && entry.until > now && entry.count >= this.limit;
  }

  /** Records one failure for `key`. */
  fail(key: string, now = Date.now()): void {
    const entry = this.windows.get(key);
    if (entry && entry.until > now) {
      entry.count++;
      return;
    }
    if (this.windows.size >= this.maxKeys) this.prune(now);
    this.windows.set(key, { count: 1, until: now + this.windowMs });
  }

  private prune(now: number): void {
    for (const [key, entry] of this.windows) if (entry.until <= now) this.windows.delete(key);
    if (this.windows.size >= this.maxKeys) this.windows.delete(this.windows.keys().next().value as string);
  }
}

/** A refusal the server answered an upgrade with: what an explaining request from there is told. */
export interface Refusal {
  status: 401 | 403 | 426 | 429 | 503;
  message: string;
}

/**
 * The last refused upgrade per address, for a short while. A browser-style WebSocket client cannot
 * read why its upgrade was refused and asks again over plain HTTP(S) to learn it: that request is
 * answered from here, never authenticated, so an explanation costs no second failed attempt (and
 * plain requests cannot be used to try keys). Bounded like {@link FailureLimiter}.
 */
export class RecentRefusals {
  private readonly refusals = new Map<string, Refusal & { until: number }>();

  constructor(
    private readonly keepMs = 30_000,
    private readonly maxKeys = 10_000,
  ) {}

  /** Records the refusal `key`'s upgrade got. */
  remember(key: string, refusal: Refusal, now = Date.now()): void {
    this.refusals.delete(key);
    if (this.refusals.size >= this.maxKeys) {
      for (const [old, entry] of this.refusals) if (entry.until <= now) this.refusals.delete(old);
      if (this.refusals.size >= this.maxKeys)
        this.refusals.delete(this.refusals.keys().next().value as string);
    }
    this.refusals.set(key, { ...refusal, until: now + this.keepMs });
  }

  /** The refusal `key`'s last upgrade got, if recent; it is told once. */
  take(key: string, now = Date.now()): Refusal | undefined {
    const entry = this.refusals.get(key);
    if (entry === undefined) return undefined;
    this.refusals.delete(key);
    return entry.until > now ? { status: entry.status, message: entry.message } : undefined;
  }
}
