/** The relay's early freeing of buffers: what is marked, and when a marked buffer is freed. */

import { expect, test } from "bun:test";
import {
  DISPOSE_MIN_BYTES,
  dispose,
  forgetDisposable,
  markDisposable,
} from "../../shared/relay/disposable.ts";

test("a marked buffer is freed by its last part only, once", () => {
  const bytes = new Uint8Array(DISPOSE_MIN_BYTES);
  markDisposable(bytes);
  dispose(bytes.subarray(0, 100)); // not its end: other parts are still in use
  expect(bytes.length).toBe(DISPOSE_MIN_BYTES);
  dispose(bytes.subarray(100));
  expect(bytes.length).toBe(0);
  expect(() => dispose(bytes)).not.toThrow();
});

test("views of part of a buffer, small buffers, and unmarked ones are never freed", () => {
  const whole = new Uint8Array(2 * DISPOSE_MIN_BYTES);
  const part = whole.subarray(DISPOSE_MIN_BYTES);
  markDisposable(part);
  dispose(part);
  expect(whole.length).toBe(2 * DISPOSE_MIN_BYTES);

  const small = new Uint8Array(DISPOSE_MIN_BYTES - 1);
  markDisposable(small);
  dispose(small);
  expect(small.length).toBe(DISPOSE_MIN_BYTES - 1);
  markDisposable(small, 1); // a lower threshold (tests of the relay use 1)
  dispose(small);
  expect(small.length).toBe(0);

  const unmarked = new Uint8Array(DISPOSE_MIN_BYTES);
  dispose(unmarked);
  expect(unmarked.length).toBe(DISPOSE_MIN_BYTES);

  const forgotten = new Uint8Array(DISPOSE_MIN_BYTES);
  markDisposable(forgotten);
  forgetDisposable(forgotten);
  dispose(forgotten);
  expect(forgotten.length).toBe(DISPOSE_MIN_BYTES);
});
