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
