/** The control port's API-key checks: a constant-time comparison and the Bearer header parser. */

import { describe, expect, test } from "bun:test";
import { bearerKey, keyMatches } from "../../shared/server/auth.ts";

describe("keyMatches", () => {
  test("the same key matches; another key, a prefix or a longer one does not", () => {
    const key = "the-right-key-0123456789";
    expect(keyMatches(key, key)).toBe(true);
    expect(keyMatches("the-wrong-key-0123456789", key)).toBe(false);
    expect(keyMatches(key.slice(0, -1), key)).toBe(false);
    expect(keyMatches(`${key}0`, key)).toBe(false);
    expect(keyMatches(key.toUpperCase(), key)).toBe(false);
  });

  test("no key presented never matches, not even an empty expected key", () => {
    expect(keyMatches(undefined, "")).toBe(false);
    expect(keyMatches(undefined, "secret")).toBe(false);
    expect(keyMatches("", "secret")).toBe(false);
  });
});

describe("bearerKey", () => {
  test("takes the key after Bearer, any case, around whitespace trimmed", () => {
    expect(bearerKey("Bearer abc123")).toBe("abc123");
    expect(bearerKey("bearer abc123")).toBe("abc123");
    expect(bearerKey("  BEARER   abc 123  ")).toBe("abc 123");
  });

  test("another scheme, no key, or no header: undefined", () => {
    expect(bearerKey("Basic YWxpY2U6czNjcmV0")).toBeUndefined();
    expect(bearerKey("Bearer")).toBeUndefined();
    expect(bearerKey("Bearer   ")).toBeUndefined();
    expect(bearerKey("Bearerabc")).toBeUndefined();
    expect(bearerKey("")).toBeUndefined();
    expect(bearerKey(null)).toBeUndefined();
    expect(bearerKey(undefined)).toBeUndefined();
  });
});
