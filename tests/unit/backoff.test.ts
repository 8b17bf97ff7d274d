/** Reconnect delays: exponential in the attempt, capped, and jittered into [0.5, 1) of that. */

import { expect, test } from "bun:test";
import fc from "fast-check";
import { backoffDelay } from "../../shared/client/backoff.ts";

test("doubles per attempt from the base: the least jitter halves it, the most nearly keeps it", () => {
  const least = () => 0;
  const most = () => 0.999_999;
  expect([1, 2, 3, 4].map((n) => backoffDelay(n, 500, 60_000, least))).toEqual([250, 500, 1000, 2000]);
  expect([1, 2, 3, 4].map((n) => backoffDelay(n, 500, 60_000, most))).toEqual([500, 1000, 2000, 4000]);
});

test("capped: attempts past the cap wait at most the cap, and a huge attempt number neither overflows nor grows", () => {
  expect(backoffDelay(10, 500, 30_000, () => 0.999_999)).toBe(30_000);
  expect(backoffDelay(10, 500, 30_000, () => 0)).toBe(15_000);
  expect(backoffDelay(1_000_000, 500, 30_000, () => 0.5)).toBe(22_500);
  expect(Number.isFinite(backoffDelay(Number.MAX_SAFE_INTEGER, 1, 10, Math.random))).toBe(true);
});

test("property: every delay lies in [half, all] of min(cap, base × 2^(attempt-1))", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 200 }),
      fc.integer({ min: 1, max: 10_000 }),
      fc.integer({ min: 1, max: 600_000 }),
      fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
      (attempt, base, cap, r) => {
        const full = Math.min(cap, base * 2 ** Math.min(attempt - 1, 30));
        const delay = backoffDelay(attempt, base, cap, () => r);
        expect(delay).toBeGreaterThanOrEqual(Math.floor(full / 2));
        expect(delay).toBeLessThanOrEqual(full);
      },
    ),
  );
});
