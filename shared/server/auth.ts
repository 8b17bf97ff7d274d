/**
 * API-key checks for the control port.
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";

const digest = (text: string) => createHash("sha256").update(text).digest();

/**
 * Compares a presented key with the expected one in constant time. Both are hashed first so that the
 * comparison takes the same time whatever the lengths.
 */
export function keyMatches(presented: string | undefined, expected: string): boolean {
  return timingSafeEqual(digest(presented ?? ""), digest(expected)) && presented !== undefined;
}

/** Extracts the key from an `Authorization: Bearer <key>` header value. */
export function bearerKey(header: string | null | undefined): string | undefined {
  const match = header ? /^Bearer\s+(.+)$/i.exec(header.trim()) : null;
  return match?.[1];
}
