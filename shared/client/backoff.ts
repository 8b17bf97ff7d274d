/**
 * Reconnect delays: exponential backoff with jitter, capped.
 * @module
 */

/**
 * The wait before reconnect attempt `attempt` (1-based): `baseMs × 2^(attempt-1)`, capped at `capMs`,
 * then scaled by a random factor in [0.5, 1) so that many clients cut off at once do not return at once.
 */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random = Math.random): number {
  const exponential = Math.min(capMs, baseMs * 2 ** Math.min(attempt - 1, 30));
  return Math.round(exponential * (0.5 + random() / 2));
}
