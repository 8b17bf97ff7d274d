/**
 * Test support, hashing: test data and the sha256 every end-to-end test compares (what arrived against
 * what was sent).
 * @module
 */

import { createHash, randomBytes } from "node:crypto";

/** One mebibyte, for test sizes. */
export const MiB = 1024 * 1024;

/** sha256 hex of bytes. */
export function sha256(data: Uint8Array | Uint8Array[]): string {
  const hash = createHash("sha256");
  for (const chunk of Array.isArray(data) ? data : [data]) hash.update(chunk);
  return hash.digest("hex");
}

/** Random bytes. */
export function randomData(size: number): Uint8Array {
  return new Uint8Array(randomBytes(size));
}
