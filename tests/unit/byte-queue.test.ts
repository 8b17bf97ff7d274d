/** The relay's FIFO of byte chunks: references kept, partial drops, reads from an offset, compaction. */

import { expect, test } from "bun:test";
import fc from "fast-check";
import { ByteQueue } from "../../shared/relay/byte-queue.ts";

const bytes = (...values: number[]) => new Uint8Array(values);

/** Everything `forEachFrom(offset)` visits, joined. */
function from(queue: ByteQueue, offset: number): number[] {
  const out: number[] = [];
  queue.forEachFrom(offset, (chunk) => out.push(...chunk));
  return out;
}

test("push keeps chunks by reference and in order; empty chunks are ignored", () => {
  const dropped: Uint8Array[] = [];
  const queue = new ByteQueue((chunk) => dropped.push(chunk));
  const a = bytes(1, 2, 3);
  queue.push(a);
  queue.push(new Uint8Array(0));
  queue.push(bytes(4, 5));
  expect(queue.length).toBe(5);
  expect(queue.peek()).toBe(a);
  expect(from(queue, 0)).toEqual([1, 2, 3, 4, 5]);
  expect(dropped).toEqual([]);
});

test("drop: a partial drop leaves a view of the same memory; onDropped sees each chunk once, when its last byte goes", () => {
  const dropped: Uint8Array[] = [];
  const queue = new ByteQueue((chunk) => dropped.push(chunk));
  const a = bytes(1, 2, 3);
  const b = bytes(4, 5, 6, 7);
  queue.push(a);
  queue.push(b);
  queue.drop(2);
  expect(queue.length).toBe(5);
  expect(Array.from(queue.peek() as Uint8Array)).toEqual([3]);
  expect((queue.peek() as Uint8Array).buffer).toBe(a.buffer);
  expect(dropped).toEqual([]);
  queue.drop(2); // the rest of a, and one byte of b
  expect(dropped).toHaveLength(1);
  expect(dropped[0]?.buffer).toBe(a.buffer); // what was left of it
  expect(from(queue, 0)).toEqual([5, 6, 7]);
  queue.drop(100); // more than queued: all of it
  expect(queue.length).toBe(0);
  expect(queue.peek()).toBeUndefined();
  expect(dropped).toHaveLength(2);
  expect(dropped[1]?.buffer).toBe(b.buffer);
});

test("forEachFrom starts mid-chunk and at chunk boundaries, and visits nothing past the end", () => {
  const queue = new ByteQueue();
  queue.push(bytes(1, 2, 3));
  queue.push(bytes(4, 5));
  queue.push(bytes(6));
  expect(from(queue, 1)).toEqual([2, 3, 4, 5, 6]);
  expect(from(queue, 3)).toEqual([4, 5, 6]);
  expect(from(queue, 4)).toEqual([5, 6]);
  expect(from(queue, 6)).toEqual([]);
  expect(from(queue, 60)).toEqual([]);
});

test("clear empties the queue without reporting drops", () => {
  const dropped: Uint8Array[] = [];
  const queue = new ByteQueue((chunk) => dropped.push(chunk));
  queue.push(bytes(1));
  queue.push(bytes(2));
  queue.clear();
  expect(queue.length).toBe(0);
  expect(queue.peek()).toBeUndefined();
  expect(dropped).toEqual([]);
  queue.push(bytes(3));
  expect(from(queue, 0)).toEqual([3]);
});

test("property: any pushes and drops (past the compaction threshold too) read back like one array", () => {
  const op = fc.oneof(
    fc.record({ push: fc.uint8Array({ minLength: 0, maxLength: 8 }) }),
    fc.record({ drop: fc.integer({ min: 0, max: 20 }) }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 400 }), fc.nat(40), (ops, offset) => {
      let dropped = 0;
      const queue = new ByteQueue((chunk) => {
        dropped += chunk.length;
      });
      let model: number[] = [];
      let pushed = 0;
      for (const o of ops) {
        if ("push" in o) {
          queue.push(o.push);
          model.push(...o.push);
          pushed += o.push.length;
        } else {
          queue.drop(o.drop);
          model = model.slice(Math.min(o.drop, model.length));
        }
        expect(queue.length).toBe(model.length);
      }
      expect(from(queue, 0)).toEqual(model);
      expect(from(queue, offset)).toEqual(model.slice(offset));
      // Only whole chunks are reported: at most what left the queue, and nothing still in it.
      expect(dropped).toBeLessThanOrEqual(pushed - model.length);
    }),
    { numRuns: 200 },
  );
});

test("a long queue drained from the front (compaction) keeps its order", () => {
  const queue = new ByteQueue();
  for (let i = 0; i < 300; i++) queue.push(bytes(i & 255));
  queue.drop(200);
  expect(queue.length).toBe(100);
  expect(from(queue, 0)).toEqual(Array.from({ length: 100 }, (_, i) => (200 + i) & 255));
  for (let i = 0; i < 50; i++) queue.push(bytes(7));
  queue.drop(99);
  expect(from(queue, 0)).toEqual([299 & 255, ...new Array(50).fill(7)]);
});

test("retained: the bytes queued plus what was dropped from the first chunk, which keeps that memory", () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 20 }),
      fc.array(fc.integer({ min: 0, max: 80 }), { maxLength: 20 }),
      (sizes, drops) => {
        const queue = new ByteQueue();
        for (const size of sizes) queue.push(new Uint8Array(size));
        // A model: the chunks' sizes and how much of the first is gone.
        const left = [...sizes];
        let headGone = 0;
        for (const n of drops) {
          queue.drop(n);
          let rest = Math.min(n, left.reduce((a, b) => a + b, 0) - headGone);
          while (rest > 0) {
            const first = (left[0] as number) - headGone;
            if (rest >= first) {
              rest -= first;
              left.shift();
              headGone = 0;
            } else {
              headGone += rest;
              rest = 0;
            }
          }
          expect(queue.retained).toBe(left.reduce((a, b) => a + b, 0));
          expect(queue.length).toBe(queue.retained - headGone);
        }
        queue.dropAll();
        expect(queue.retained).toBe(0);
      },
    ),
  );
});
