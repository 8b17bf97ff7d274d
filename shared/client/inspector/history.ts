/**
 * Inspector history: requests per second and latency percentiles (p50, p90, p99) for each of the last
 * five minutes' seconds, for the inspector's charts (`GET /api/history`). Each finished exchange adds
 * one to its second's count and to one bucket of that second's latency histogram (no list of
 * durations, no allocation per request); a percentile is read from the histogram, as the geometric
 * middle of its bucket (four buckets per doubling: within 9% of the true value).
 * @module
 */

/** Latencies below this (ms) share the first bucket. */
const FLOOR_MS = 0.05;
/** Buckets per doubling of the latency. */
const PER_DOUBLING = 4;
/** Buckets in all: from 0.05 ms up to about 52 s, then one for longer. */
const BUCKETS = 82;

/** The bucket of a latency. */
function bucketOf(ms: number): number {
  if (!(ms > FLOOR_MS)) return 0;
  return Math.min(BUCKETS - 1, 1 + Math.floor(PER_DOUBLING * Math.log2(ms / FLOOR_MS)));
}

/** The latency a bucket stands for: the geometric middle of its bounds. */
function bucketValue(bucket: number): number {
  if (bucket === 0) return FLOOR_MS / 2;
  return FLOOR_MS * 2 ** ((bucket - 0.5) / PER_DOUBLING);
}

/** `GET /api/history`'s answer: one entry per second, oldest first, the current second left out. */
export interface RequestHistoryView {
  interval_seconds: number;
  window_seconds: number;
  /** Each second's start (ms since the epoch). */
  times: number[];
  /** Exchanges that finished in that second (complete or failed). */
  requests: number[];
  /** Of those, the ones that failed (no complete response). */
  errors: number[];
  /** Requests per second (the count, as each entry is one second). */
  rps: number[];
  /** Latency percentiles of the complete ones (ms, rounded to 0.01), null in a second without any. */
  p50_ms: (number | null)[];
  p90_ms: (number | null)[];
  p99_ms: (number | null)[];
}

/** The history (see the module comment). */
export class RequestHistory {
  /** Per second slot: the second it holds (`Math.floor(ms / 1000)`), its counts and histogram. */
  private readonly seconds: Float64Array;
  private readonly counts: Uint32Array;
  private readonly errors: Uint32Array;
  private readonly histograms: Uint32Array;

  /** The second the history began: the view starts there while it is younger than the window. */
  private readonly began: number;

  constructor(
    readonly window = 300,
    now = Date.now(),
  ) {
    this.began = Math.floor(now / 1000);
    this.seconds = new Float64Array(window).fill(-1);
    this.counts = new Uint32Array(window);
    this.errors = new Uint32Array(window);
    this.histograms = new Uint32Array(window * BUCKETS);
  }

  /** The slot of `second`, emptied first when it held an older one. */
  private slot(second: number): number {
    const at = second % this.window;
    if (this.seconds[at] !== second) {
      this.seconds[at] = second;
      this.counts[at] = 0;
      this.errors[at] = 0;
      this.histograms.fill(0, at * BUCKETS, (at + 1) * BUCKETS);
    }
    return at;
  }

  /** An exchange finished: complete after `durationMs`, or failed (`durationMs` undefined). */
  record(durationMs: number | undefined, now = Date.now()): void {
    const at = this.slot(Math.floor(now / 1000));
    this.counts[at] = (this.counts[at] as number) + 1;
    if (durationMs === undefined) this.errors[at] = (this.errors[at] as number) + 1;
    else {
      const bucket = at * BUCKETS + bucketOf(durationMs);
      this.histograms[bucket] = (this.histograms[bucket] as number) + 1;
    }
  }

  /** The `q` quantile (0–1) of a slot's complete exchanges, or null when it has none. */
  private quantile(at: number, q: number): number | null {
    const base = at * BUCKETS;
    let total = 0;
    for (let b = 0; b < BUCKETS; b++) total += this.histograms[base + b] as number;
    if (total === 0) return null;
    const rank = Math.max(1, Math.ceil(q * total));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += this.histograms[base + b] as number;
      if (seen >= rank) return Math.round(bucketValue(b) * 100) / 100;
    }
    return null;
  }

  /**
   * Every whole second of the window before `now`'s (from the history's start while it is younger),
   * oldest first; seconds without requests as 0.
   */
  view(now = Date.now()): RequestHistoryView {
    const current = Math.floor(now / 1000);
    const view: RequestHistoryView = {
      interval_seconds: 1,
      window_seconds: this.window,
      times: [],
      requests: [],
      errors: [],
      rps: [],
      p50_ms: [],
      p90_ms: [],
      p99_ms: [],
    };
    for (let second = Math.max(this.began, current - this.window + 1); second < current; second++) {
      const at = second % this.window;
      const held = this.seconds[at] === second;
      const count = held ? (this.counts[at] as number) : 0;
      view.times.push(second * 1000);
      view.requests.push(count);
      view.rps.push(count);
      view.errors.push(held ? (this.errors[at] as number) : 0);
      view.p50_ms.push(held ? this.quantile(at, 0.5) : null);
      view.p90_ms.push(held ? this.quantile(at, 0.9) : null);
      view.p99_ms.push(held ? this.quantile(at, 0.99) : null);
    }
    return view;
  }
}
