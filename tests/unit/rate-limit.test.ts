/**
 * Failed-auth counting per address: a limit per fixed window, and a bound on the addresses tracked;
 * the last refusal per address, told once to the request that explains it.
 */

import { expect, test } from "bun:test";
import { FailureLimiter, RecentRefusals } from "../../shared/server/rate-limit.ts";

test("an address is blocked once it used up its failures, until its window ends; others are not", () => {
  const limiter = new FailureLimiter(3, 60_000);
  const t = 1_000_000;
  for (let i = 0; i < 2; i++) limiter.fail("10.0.0.1", t + i);
  expect(limiter.blocked("10.0.0.1", t + 10)).toBe(false);
  limiter.fail("10.0.0.1", t + 20);
  expect(limiter.blocked("10.0.0.1", t + 30)).toBe(true);
  expect(limiter.blocked("10.0.0.2", t + 30)).toBe(false);
  expect(limiter.blocked("10.0.0.1", t + 59_999)).toBe(true);
  expect(limiter.blocked("10.0.0.1", t + 60_000)).toBe(false);
});

test("the window is fixed from the first failure: a failure after it ends starts a new count at one", () => {
  const limiter = new FailureLimiter(2, 1000);
  limiter.fail("a", 0);
  limiter.fail("a", 999); // same window: 2 of 2
  expect(limiter.blocked("a", 999)).toBe(true);
  limiter.fail("a", 1000); // a new window
  expect(limiter.blocked("a", 1000)).toBe(false);
  limiter.fail("a", 1500);
  expect(limiter.blocked("a", 1500)).toBe(true);
});

test("at most maxKeys addresses: expired entries go first, then the oldest", () => {
  const limiter = new FailureLimiter(1, 1000, 2);
  limiter.fail("old", 0);
  limiter.fail("b", 500);
  limiter.fail("c", 1200); // full: "old" expired at 1000 and goes, "b" stays
  expect(limiter.blocked("b", 1200)).toBe(true);
  expect(limiter.blocked("c", 1200)).toBe(true);

  limiter.fail("d", 1300); // full and nothing expired: the oldest ("b") goes
  expect(limiter.blocked("b", 1300)).toBe(false);
  expect(limiter.blocked("c", 1300)).toBe(true);
  expect(limiter.blocked("d", 1300)).toBe(true);
});

test("a refusal is told once, while recent; the addresses kept are bounded (the oldest go first)", () => {
  const refusals = new RecentRefusals(1000, 2);
  const wrongKey = { status: 401, message: "authentication failed: wrong API key" } as const;
  refusals.remember("a", wrongKey, 0);
  expect(refusals.take("a", 500)).toEqual(wrongKey);
  expect(refusals.take("a", 600)).toBeUndefined();
  refusals.remember("a", wrongKey, 0);
  expect(refusals.take("a", 1000)).toBeUndefined();
  refusals.remember("a", wrongKey, 2000);
  refusals.remember("b", { status: 429, message: "too many" }, 2001);
  refusals.remember("c", { status: 426, message: "version" }, 2002);
  expect(refusals.take("a", 2003)).toBeUndefined();
  expect(refusals.take("b", 2003)?.status).toBe(429);
  expect(refusals.take("c", 2003)?.status).toBe(426);
});
