/**
 * The batch buffers' pool (wire/buffer-pool.ts) under batchers that share it: a buffer is never held
 * by two at once, never written while it is free, and every frame pushed comes out whole and in order,
 * through flushes and the drops of a blip (frames batched before a drop are gone, later ones intact).
 */

import { expect, test } from "bun:test";
import fc from "fast-check";
import { BATCHABLE_BYTES, Batcher } from "../../shared/wire/batcher.ts";
import { BufferPool } from "../../shared/wire/buffer-pool.ts";
import { forEachInBatch } from "../../shared/wire/codec.ts";
import { FrameType } from "../../shared/wire/protocol.ts";

/** A pool that checks its own contract: what it hands out is held by no one, what is free is untouched. */
class CheckedPool extends BufferPool {
  readonly held = new Set<Uint8Array>();
  /** A copy of each free buffer as it was released. */
  readonly freeCopies = new Map<Uint8Array, Uint8Array>();

  override take(): Uint8Array {
    const buffer = super.take();
    expect(this.held.has(buffer)).toBe(false); // never handed out twice
    const copy = this.freeCopies.get(buffer);
    if (copy !== undefined) expect(buffer).toEqual(copy); // never written while free
    this.freeCopies.delete(buffer);
    this.held.add(buffer);
    return buffer;
  }

  override release(buffer: Uint8Array): void {
    expect(this.held.delete(buffer)).toBe(true); // only what was taken, once
    this.freeCopies.set(buffer, buffer.slice());
    super.release(buffer);
  }

  checkFree(): void {
    for (const [buffer, copy] of this.freeCopies) expect(buffer).toEqual(copy);
  }
}

type Op = { op: "push"; to: number; size: number } | { op: "flush"; to: number } | { op: "drop"; to: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant("push" as const),
      to: fc.integer({ min: 0, max: 3 }),
      size: fc.oneof(fc.integer({ min: 5, max: 200 }), fc.integer({ min: 5, max: 2 * BATCHABLE_BYTES })),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ op: fc.constant("flush" as const), to: fc.integer({ min: 0, max: 3 }) }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant("drop" as const), to: fc.integer({ min: 0, max: 3 }) }),
  },
);

test("shared batch buffers: never held twice, never written while free, frames intact through flushes and drops", () => {
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 120 }), (ops) => {
      const pool = new CheckedPool(32 * 1024, 2, (b) => {
        b[0] = FrameType.Batch;
      });
      const received: Uint8Array[][] = [[], [], [], []];
      // Frames each batcher should still deliver, in order; `sent` those it did.
      const expected: Uint8Array[][] = [[], [], [], []];
      const batched: Uint8Array[][] = [[], [], [], []];
      const batchers = received.map(
        (out, i) =>
          new Batcher((message) => {
            // Another batcher's push before this message is read (code the send runs, on the same
            // turn): it must not land in the buffer being sent.
            const other = batchers[(i + 1) % 4];
            if (other && reentry && message.length % 3 === 0) {
              const frame = new Uint8Array(9).fill(FrameType.Window);
              other.push(frame);
              batched[(i + 1) % 4]?.push(frame);
            }
            if (message[0] === FrameType.Batch) forEachInBatch(message, (f) => out.push(f.slice()));
            else out.push(message.slice());
          }, pool),
      );
      let serial = 0;
      let reentry = true;
      for (const step of ops) {
        const i = step.to;
        const batcher = batchers[i] as Batcher;
        if (step.op === "push") {
          // Types 1-5 (never BATCH); bytes that say which push this was.
          const frame = new Uint8Array(step.size).map((_, k) =>
            k === 0 ? (serial % 5) + 1 : (serial + k) & 255,
          );
          serial++;
          if (frame.length > BATCHABLE_BYTES) {
            // Goes out at once, after what was batched.
            expected[i]?.push(...(batched[i] as Uint8Array[]), frame);
            batched[i] = [];
          } else batched[i]?.push(frame);
          batcher.push(frame);
        } else if (step.op === "flush") {
          expected[i]?.push(...(batched[i] as Uint8Array[]));
          batched[i] = [];
          batcher.flush();
        } else {
          batched[i] = [];
          batcher.drop();
        }
        pool.checkFree();
      }
      // Pushes made from inside the last sends are batched: one more round sends them (no more of those).
      for (const [i, batcher] of batchers.entries()) {
        expected[i]?.push(...(batched[i] as Uint8Array[]));
        batched[i] = [];
        batcher.flush();
      }
      reentry = false;
      for (const [i, batcher] of batchers.entries()) {
        expected[i]?.push(...(batched[i] as Uint8Array[]));
        batcher.flush();
      }
      for (let i = 0; i < 4; i++) expect(received[i]).toEqual(expected[i] as Uint8Array[]);
      expect(pool.held.size).toBe(0); // every buffer given back
      expect(pool.freeCount).toBeLessThanOrEqual(2);
      pool.checkFree();
    }),
    { numRuns: 300 },
  );
});
