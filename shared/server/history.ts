/**
 * Traffic history for the dashboard's charts: once a second, bytes per second in and out and visitors
 * open, for all tunnels together and for each tunnel, over the last five minutes (`GET /api/history`
 * on the admin listener). Sampled from the metrics' counters (nothing is counted per byte); each
 * series is a fixed ring, and per-tunnel series are kept for at most {@link MAX_TUNNEL_SERIES}
 * tunnels (the totals always count every tunnel).
 * @module
 */

/** One tunnel's counters now. */
export interface TunnelCounts {
  id: string;
  /** Bytes from visitors since the tunnel opened. */
  in: number;
  /** Bytes to visitors since the tunnel opened. */
  out: number;
  /** Visitor connections open now. */
  open: number;
}

/** What a sample reads: every tunnel's counters, and the server's totals (closed tunnels included). */
export interface CountsSource {
  tunnels: TunnelCounts[];
  total: { in: number; out: number; open: number };
}

/** Series of one tunnel or of the total, aligned with the samples' times; null before a tunnel existed. */
export interface Series {
  in: (number | null)[];
  out: (number | null)[];
  visitors: (number | null)[];
}

/** `GET /api/history`'s answer. */
export interface HistoryView {
  intervalSeconds: number;
  windowSeconds: number;
  /** Each sample's time (ms since the epoch), oldest first. */
  times: number[];
  total: Series;
  tunnels: Record<string, Series>;
}

/** Most tunnels with series of their own. */
export const MAX_TUNNEL_SERIES = 200;

/** One series' rings: a value per sample, at `sample % window`. */
interface Rings {
  in: Float64Array;
  out: Float64Array;
  visitors: Float64Array;
}

/** A tunnel's last counters and, when it has them, its series from the sample it first appeared in. */
interface Tracked {
  lastIn: number;
  lastOut: number;
  rings?: Rings & { first: number };
}

/** The history (see the module comment). */
export class TrafficHistory {
  private readonly times: Float64Array;
  private readonly total: Rings;
  private readonly tracked = new Map<string, Tracked>();
  private withSeries = 0;
  /** Samples taken so far; the next goes to `taken % window`. */
  private taken = 0;
  private lastAt: number;
  private lastTotal = { in: 0, out: 0 };
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(
    private readonly read: () => CountsSource,
    readonly intervalMs = 1000,
    readonly window = 300,
    now = Date.now(),
  ) {
    this.times = new Float64Array(window);
    this.total = this.rings();
    this.lastAt = now;
    const start = read().total;
    this.lastTotal = { in: start.in, out: start.out };
  }

  private rings(): Rings {
    const ring = () => new Float64Array(this.window);
    return { in: ring(), out: ring(), visitors: ring() };
  }

  /** Samples every interval until {@link stop} (the timer keeps no process alive). */
  start(): void {
    this.timer ??= setInterval(() => this.sample(), this.intervalMs);
    this.timer.unref?.();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Takes one sample: rates since the previous one (bytes per second, rounded), visitors open now. */
  sample(now = Date.now()): void {
    const seconds = Math.max(0.001, (now - this.lastAt) / 1000);
    this.lastAt = now;
    const at = this.taken % this.window;
    this.times[at] = now;
    const counts = this.read();
    const rate = (bytes: number, last: number) => Math.round(Math.max(0, bytes - last) / seconds);
    this.total.in[at] = rate(counts.total.in, this.lastTotal.in);
    this.total.out[at] = rate(counts.total.out, this.lastTotal.out);
    this.total.visitors[at] = counts.total.open;
    this.lastTotal = { in: counts.total.in, out: counts.total.out };
    const seen = new Set<string>();
    for (const tunnel of counts.tunnels) {
      seen.add(tunnel.id);
      let tracked = this.tracked.get(tunnel.id);
      if (tracked === undefined) {
        // New since the last sample: everything it carried came within this interval.
        tracked = { lastIn: 0, lastOut: 0 };
        if (this.withSeries < MAX_TUNNEL_SERIES) {
          tracked.rings = { ...this.rings(), first: this.taken };
          this.withSeries++;
        }
        this.tracked.set(tunnel.id, tracked);
      }
      if (tracked.rings !== undefined) {
        tracked.rings.in[at] = rate(tunnel.in, tracked.lastIn);
        tracked.rings.out[at] = rate(tunnel.out, tracked.lastOut);
        tracked.rings.visitors[at] = tunnel.open;
      }
      tracked.lastIn = tunnel.in;
      tracked.lastOut = tunnel.out;
    }
    for (const [id, tracked] of this.tracked)
      if (!seen.has(id)) {
        if (tracked.rings !== undefined) this.withSeries--;
        this.tracked.delete(id);
      }
    this.taken++;
  }

  /** The samples taken after `since` (ms; all kept when absent), oldest first. */
  view(since = 0): HistoryView {
    const from = Math.max(0, this.taken - this.window);
    const picked: number[] = [];
    for (let n = from; n < this.taken; n++)
      if ((this.times[n % this.window] as number) > since) picked.push(n);
    const series = (rings: Rings, first = 0): Series => {
      const pick = (ring: Float64Array) =>
        picked.map((n) => (n < first ? null : (ring[n % this.window] as number)));
      return { in: pick(rings.in), out: pick(rings.out), visitors: pick(rings.visitors) };
    };
    const tunnels: Record<string, Series> = {};
    for (const [id, tracked] of this.tracked)
      if (tracked.rings !== undefined) tunnels[id] = series(tracked.rings, tracked.rings.first);
    return {
      intervalSeconds: this.intervalMs / 1000,
      windowSeconds: (this.window * this.intervalMs) / 1000,
      times: picked.map((n) => this.times[n % this.window] as number),
      total: series(this.total),
      tunnels,
    };
  }
}
