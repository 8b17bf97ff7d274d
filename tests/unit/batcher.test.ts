/**
 * BATCH frames: the batcher keeps order between small (batched) and large (immediate) frames, and the
 * codec splits what it joined; malformed batches are protocol errors.
 */

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { BATCHABLE_BYTES, Batcher } from "../../shared/wire/batcher.ts";
import { encodeData, forEachInBatch } from "../../shared/wire/codec.ts";
import { FrameType, ProtocolError } from "../../shared/wire/protocol.ts";

/** Runs frames through a batcher and splits every message it sent back into frames. */
function roundTrip(frames: Uint8Array[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  const batcher = new Batcher((message) => {
    if (message[0] === FrameType.Batch) forEachInBatch(message, (frame) => out.push(frame.slice()));
    else out.push(message.slice());
  });
  for (const frame of frames) batcher.push(frame);
  batcher.flush();
  return out;
}

const frame = (size: number, fill: number) => new Uint8Array(size).fill(fill);

describe("batcher", () => {
  test("small and large frames come out whole and in order", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 3 * BATCHABLE_BYTES }), { minLength: 1, maxLength: 60 }),
        (sizes) => {
          const frames = sizes.map((size, i) => frame(size, (i % 5) + 1)); // frame types 1-5
          expect(roundTrip(frames)).toEqual(frames);
        },
      ),
      { numRuns: 200 },
    );
  });

  test("the small frames of a round share one BATCH message; a large one leaves at once, after them", () => {
    const messages: Uint8Array[] = [];
    const batcher = new Batcher((m) => messages.push(m.slice()));
    batcher.push(frame(10, 2));
    batcher.push(frame(20, 3));
    expect(messages).toHaveLength(0);
    batcher.push(frame(BATCHABLE_BYTES + 1, 4));
    expect(messages.map((m) => m[0])).toEqual([FrameType.Batch, 4]);
    expect(messages[0]?.length).toBe(5 + 2 + 10 + 2 + 20);
  });

  test("a lone batched frame is sent as itself", () => {
    const messages: Uint8Array[] = [];
    const batcher = new Batcher((m) => messages.push(m.slice()));
    batcher.push(frame(10, 2));
    batcher.flush();
    expect(messages.map((m) => m[0])).toEqual([2]);
    expect(messages[0]?.length).toBe(10);
  });

  test("dropped frames are never sent", () => {
    const messages: Uint8Array[] = [];
    const batcher = new Batcher((m) => messages.push(m));
    batcher.push(frame(10, 2));
    batcher.push(frame(10, 3));
    batcher.drop();
    batcher.flush();
    expect(messages).toHaveLength(0);
  });

  test("batched frames leave by themselves when the event-loop round ends", async () => {
    const messages: Uint8Array[] = [];
    const batcher = new Batcher((m) => messages.push(m.slice()));
    for (let i = 0; i < 3; i++) batcher.push(frame(10, 2));
    expect(messages).toHaveLength(0);
    await new Promise((resolve) => setImmediate(resolve));
    expect(messages).toHaveLength(1);
    expect(messages[0]?.[0]).toBe(FrameType.Batch);
    batcher.push(frame(10, 3)); // a new round schedules its own flush
    await new Promise((resolve) => setImmediate(resolve));
    expect(messages.map((m) => m[0])).toEqual([FrameType.Batch, 3]);
  });
});

describe("BATCH decoding", () => {
  const bad: [string, number[]][] = [
    ["no entries", [6, 0, 0, 0, 0]],
    ["non-zero stream id", [6, 0, 0, 0, 1, 0, 1, 4]],
    ["length past the end", [6, 0, 0, 0, 0, 0, 9, 4]],
    ["zero length", [6, 0, 0, 0, 0, 0, 0]],
    ["half a length", [6, 0, 0, 0, 0, 0, 1, 4, 0]],
    ["nested batch", [6, 0, 0, 0, 0, 0, 1, 6]],
  ];
  for (const [what, bytes] of bad)
    test(`${what} is a ProtocolError`, () => {
      expect(() => forEachInBatch(new Uint8Array(bytes), () => {})).toThrow(ProtocolError);
    });
});

test("pushFrame batches the same DATA frame that push of an encoded one does, in order with other frames", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          stream: fc.integer({ min: 1, max: 0xffffffff }),
          size: fc.integer({ min: 1, max: BATCHABLE_BYTES - 5 }),
          direct: fc.boolean(),
        }),
        { minLength: 1, maxLength: 40 },
      ),
      (items) => {
        const viaPush: Uint8Array[] = [];
        const viaData: Uint8Array[] = [];
        const collect = (out: Uint8Array[]) => (message: Uint8Array) => {
          if (message[0] === FrameType.Batch) forEachInBatch(message, (f) => out.push(f.slice()));
          else out.push(message.slice());
        };
        const a = new Batcher(collect(viaPush));
        const b = new Batcher(collect(viaData));
        for (const [i, item] of items.entries()) {
          const payload = new Uint8Array(item.size).fill(i & 255);
          a.push(encodeData(item.stream, payload));
          if (item.direct) b.pushFrame(FrameType.Data, item.stream, payload);
          else b.push(encodeData(item.stream, payload));
        }
        a.flush();
        b.flush();
        expect(viaData).toEqual(viaPush);
      },
    ),
    { numRuns: 200 },
  );
});
