/**
 * The charts' histories: the server's traffic history (rates from counters, per-tunnel series that
 * start when a tunnel appears and go when it closes, `since`, the ring's bound) and the inspector's
 * request history (counts per second, percentiles from the histogram within its 9%, whole seconds only).
 */

import { describe, expect, test } from "bun:test";
import { RequestHistory } from "../../shared/client/inspector/history.ts";
import { type CountsSource, MAX_TUNNEL_SERIES, TrafficHistory } from "../../shared/server/history.ts";

describe("traffic history", () => {
  test("rates from the counters' growth over the time between samples; visitors as they are", () => {
    let counts: CountsSource = { tunnels: [], total: { in: 0, out: 0, open: 0 } };
    const history = new TrafficHistory(() => counts, 1000, 300, 0);
    history.sample(1000);
    counts = {
      tunnels: [{ id: "a", in: 4000, out: 1000, open: 2 }],
      total: { in: 4000, out: 1000, open: 2 },
    };
    history.sample(2000);
    counts = {
      tunnels: [{ id: "a", in: 10_000, out: 2000, open: 1 }],
      total: { in: 10_000, out: 2000, open: 1 },
    };
    history.sample(4000); // two seconds later: the rate is per second
    const view = history.view();
    expect(view.times).toEqual([1000, 2000, 4000]);
    expect(view.total).toEqual({ in: [0, 4000, 3000], out: [0, 1000, 500], visitors: [0, 2, 1] });
    expect(view.tunnels.a).toEqual({
      in: [null, 4000, 3000],
      out: [null, 1000, 500],
      visitors: [null, 2, 1],
    });
    expect(history.view(2000).times).toEqual([4000]);
    // The tunnel closed: its series go; the totals (closed tunnels' bytes included) go on.
    counts = { tunnels: [], total: { in: 10_500, out: 2000, open: 0 } };
    history.sample(5000);
    expect(Object.keys(history.view().tunnels)).toEqual([]);
    expect(history.view().total.in.at(-1)).toBe(500);
  });

  test("a fixed ring: the window's last samples; series for at most MAX_TUNNEL_SERIES tunnels", () => {
    const tunnels = Array.from({ length: MAX_TUNNEL_SERIES + 5 }, (_, i) => ({
      id: `t${i}`,
      in: 0,
      out: 0,
      open: 0,
    }));
    const history = new TrafficHistory(() => ({ tunnels, total: { in: 0, out: 0, open: 0 } }), 1000, 10, 0);
    for (let i = 1; i <= 25; i++) history.sample(i * 1000);
    const view = history.view();
    expect(view.times).toEqual(Array.from({ length: 10 }, (_, i) => (16 + i) * 1000));
    expect(Object.keys(view.tunnels)).toHaveLength(MAX_TUNNEL_SERIES);
    expect(view.windowSeconds).toBe(10);
  });
});

describe("request history", () => {
  test("counts per whole second, the current one left out; failures counted apart", () => {
    const history = new RequestHistory(300, 10_000);
    for (let i = 0; i < 7; i++) history.record(5, 10_100 + i);
    history.record(undefined, 10_900);
    history.record(5, 12_500);
    const view = history.view(12_600);
    expect(view.times).toEqual([10_000, 11_000]);
    expect(view.requests).toEqual([8, 0]);
    expect(view.rps).toEqual([8, 0]);
    expect(view.errors).toEqual([1, 0]);
    expect(view.p50_ms[1]).toBeNull();
    expect(history.view(13_000).requests).toEqual([8, 0, 1]);
  });

  test("percentiles within 9% of the exact ones, over latencies from 0.1 ms to 20 s", () => {
    const history = new RequestHistory(300, 0);
    const latencies = Array.from({ length: 1000 }, (_, i) => 0.1 * 1.0077 ** i); // 0.1 ms … ~2 s, then more
    latencies.push(...Array.from({ length: 50 }, (_, i) => 5000 + i * 300));
    for (const ms of latencies) history.record(ms, 500);
    const view = history.view(1000);
    const sorted = [...latencies].sort((a, b) => a - b);
    const exact = (q: number) => sorted[Math.ceil(q * sorted.length) - 1] as number;
    for (const [q, got] of [
      [0.5, view.p50_ms[0]],
      [0.9, view.p90_ms[0]],
      [0.99, view.p99_ms[0]],
    ] as const) {
      expect(got).not.toBeNull();
      expect(Math.abs((got as number) / exact(q) - 1)).toBeLessThan(0.09);
    }
  });

  test("a slot reused a window later starts empty", () => {
    const history = new RequestHistory(5, 0);
    history.record(1, 500);
    history.record(1, 5500); // the same slot, five seconds on
    const view = history.view(6000);
    expect(view.times).toEqual([2000, 3000, 4000, 5000]);
    expect(view.requests).toEqual([0, 0, 0, 1]);
  });
});
