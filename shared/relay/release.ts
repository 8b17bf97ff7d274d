/**
 * Gives memory back after a burst: once the bytes a process buffered (its budgets' high-water mark)
 * reached {@link BURST_BYTES} and fell back under a quarter of that, one full garbage collection
 * frees what the relay could not free itself (small reads, WebSocket messages shared by a BATCH,
 * buffers a tap kept) and lets the allocators return their pages. Without it, the heap waits for the
 * next collection, which an idle process may not run for a long time: a server whose never-reading
 * local service had held its 64 MiB client budget stayed 20-60% above its idle RSS 10 s after every
 * stream closed. A check every {@link CHECK_MS}, nothing on the data path but the high-water mark
 * the budgets keep.
 * @module
 */

import type { Budget } from "./budget.ts";

/** A burst worth a collection: buffered bytes that reached this much. */
export const BURST_BYTES = 8 * 1024 * 1024;
/** How often the budgets are looked at (ms). */
export const CHECK_MS = 1000;

/**
 * Watches `budgets` (the server-wide ones): after a burst, once use fell under a quarter of its peak
 * and stayed there for one check, collects once. Returns the timer's stopper.
 * @param collect the collection (default a full, synchronous `Bun.gc(true)`; tests count calls).
 * @param checkMs how often to look (tests shorten it).
 */
export function releaseAfterBursts(
  budgets: Budget[],
  collect: () => void = () => Bun.gc(true),
  checkMs = CHECK_MS,
): () => void {
  /** The high-water mark of the burst in progress, once it counts as one; 0 when none. */
  let burst = 0;
  let quietChecks = 0;
  const timer = setInterval(() => {
    let used = 0;
    let peak = 0;
    for (const budget of budgets) {
      used += budget.used;
      peak += budget.takePeak();
    }
    if (peak >= BURST_BYTES && peak > burst) burst = peak;
    if (burst === 0) return;
    if (used > burst / 4) {
      quietChecks = 0;
      return;
    }
    if (++quietChecks < 2) return;
    burst = 0;
    quietChecks = 0;
    collect();
  }, checkMs);
  timer.unref();
  return () => clearInterval(timer);
}
