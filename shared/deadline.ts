/**
 * A promise with a deadline: one helper for every wait on the network that must not hang (Redis,
 * sentinels, probes, ACME orders).
 * @module
 */

/**
 * `promise`, or a rejection once `ms` have passed: with an `Error` whose message is `reason`, or with
 * what `reason()` makes. The timer is cleared either way; `promise` itself goes on (its caller frees
 * what it yields late, if anything).
 */
export function withDeadline<T>(promise: Promise<T>, ms: number, reason: string | (() => Error)): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(typeof reason === "string" ? new Error(reason) : reason()), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
