/** Memory given back after a burst (relay/release.ts) and the budgets' high-water mark it reads. */

import { expect, test } from "bun:test";
import { Budget } from "../../shared/relay/budget.ts";
import { BURST_BYTES, releaseAfterBursts } from "../../shared/relay/release.ts";

/** Waits until `check` holds, polling every 5 ms for at most 2 s. */
async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !check(); i++) await Bun.sleep(5);
  expect(check()).toBe(true);
}

test("takePeak: the most counted since the last call, a sub-budget's bytes counted in its parent's", () => {
  const server = new Budget(100 * BURST_BYTES);
  const client = new Budget(10 * BURST_BYTES, server);
  client.add(5);
  client.add(7);
  client.add(-10);
  expect(client.takePeak()).toBe(12);
  expect(server.takePeak()).toBe(12);
  // The next period starts where use is now.
  expect(client.takePeak()).toBe(2);
  client.add(-2);
  expect(client.takePeak()).toBe(2);
  expect(client.takePeak()).toBe(0);
});

test("one collection after a burst, once use fell under a quarter of its peak; none for small traffic", async () => {
  const sent = new Budget(100 * BURST_BYTES);
  const client = new Budget(10 * BURST_BYTES, sent);
  let collections = 0;
  const stop = releaseAfterBursts([sent], () => collections++, 10);
  try {
    // Small traffic never counts as a burst.
    client.add(BURST_BYTES / 2);
    client.add(-BURST_BYTES / 2);
    await Bun.sleep(60);
    expect(collections).toBe(0);
    // A burst, still held: no collection while use stays high.
    client.add(2 * BURST_BYTES);
    await Bun.sleep(60);
    expect(collections).toBe(0);
    client.add(-2 * BURST_BYTES + 1024);
    await until(() => collections === 1);
    await Bun.sleep(60);
    expect(collections).toBe(1); // once per burst
    // A burst that rises and falls between two checks still counts.
    client.add(BURST_BYTES);
    client.add(-BURST_BYTES);
    await until(() => collections === 2);
  } finally {
    stop();
  }
});
