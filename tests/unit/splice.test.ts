/**
 * Two streams spliced end to end (a cluster node carrying a visitor from another node's link to its
 * client's session): four multiplexers in a row joined by in-memory frame queues, the visitor's and
 * the local service's sockets taking random shares of each write. Bytes arrive in order both ways,
 * half-close carries through, no stream has more in flight than its window, every stream is freed at
 * the end; a reset on one side reaches the other.
 */

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { Mux } from "../../shared/relay/mux.ts";
import { type SpliceSocket, splice, spliceOnto } from "../../shared/relay/splice.ts";
import type { RelaySocket, Stream } from "../../shared/relay/stream.ts";
import { FrameType, StreamKind } from "../../shared/wire/protocol.ts";
import { FakeSocket } from "../support/fake-socket.ts";

const WINDOW = 64 * 1024;
// Every DATA message a mux receives is owned (a fresh copy, as the roles pass them) and freeable at
// any size: a buffer freed while some stream still keeps a view of it shows as missing bytes.
const settings = { window: WINDOW, initialWindow: WINDOW, maxFramePayload: 16 * 1024, disposeMinBytes: 1 };

/** visitor ─ mux A ═ mux B ─splice─ mux C ═ mux D ─ service. */
function chain() {
  const queues = {
    ab: [] as Uint8Array[],
    ba: [] as Uint8Array[],
    cd: [] as Uint8Array[],
    dc: [] as Uint8Array[],
  };
  const visitor = new FakeSocket();
  const service = new FakeSocket();
  let spliced: Stream | undefined;
  let serviceStream: Stream | undefined;
  const a = new Mux((f) => queues.ab.push(f.slice()), settings);
  const d = new Mux(
    (f) => queues.dc.push(f.slice()),
    settings,
    (open) => {
      serviceStream = d.acceptStream(open.stream);
      serviceStream.attach(service as unknown as RelaySocket);
    },
  );
  const c = new Mux((f) => queues.cd.push(f.slice()), settings);
  const b = new Mux(
    (f) => queues.ba.push(f.slice()),
    settings,
    (open) => {
      const linkStream = b.acceptStream(open.stream);
      const sessionStream = c.createStream();
      c.sendOpen(sessionStream, StreamKind.Tcp, 1, { remote: open.meta.remote });
      splice(linkStream, sessionStream, open.meta.remote);
      spliced = sessionStream;
    },
  );
  /** The DATA messages node B and C received (each a buffer of its own): freed once relayed. */
  const dataMessages: Uint8Array[] = [];
  const visitorStream = a.createStream();
  a.sendOpen(visitorStream, StreamKind.Tcp, 0, { remote: "192.0.2.1:4242", target: "tcp:1" });
  visitorStream.attach(visitor as unknown as RelaySocket);
  /** Delivers every queued frame (and the microtasks a splice defers), until nothing moves. */
  const settle = async () => {
    for (let round = 0; round < 10_000; round++) {
      let moved = false;
      for (const [queue, to] of [
        [queues.ab, b],
        [queues.ba, a],
        [queues.cd, d],
        [queues.dc, c],
      ] as const) {
        a.flush();
        b.flush();
        c.flush();
        d.flush();
        while (queue.length > 0) {
          moved = true;
          const message = queue.shift() as Uint8Array;
          if ((to === b || to === c) && message[0] === FrameType.Data) dataMessages.push(message);
          to.receive(message, true);
        }
      }
      await Promise.resolve();
      a.flush();
      b.flush();
      c.flush();
      d.flush();
      if (!moved && queues.ab.length + queues.ba.length + queues.cd.length + queues.dc.length === 0) return;
    }
    throw new Error("frames still moving after 10,000 rounds");
  };
  return {
    a,
    b,
    c,
    d,
    visitor,
    service,
    visitorStream,
    settle,
    dataMessages,
    spliced: () => spliced,
    serviceStream: () => serviceStream,
  };
}

describe("splice", () => {
  test("bytes both ways in order, half-close through, windows kept, everything freed", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 40_000 }), { minLength: 1, maxLength: 12 }),
        fc.array(fc.integer({ min: 1, max: 40_000 }), { minLength: 1, maxLength: 12 }),
        fc.array(fc.integer({ min: 0, max: 50_000 }), { minLength: 1, maxLength: 8 }),
        async (up, down, rooms) => {
          const t = chain();
          await t.settle();
          const service = t.serviceStream();
          expect(service).toBeDefined();
          const upBytes: number[] = [];
          const downBytes: number[] = [];
          let r = 0;
          const step = async () => {
            t.service.room = rooms[r++ % rooms.length] as number;
            t.visitor.room = rooms[r++ % rooms.length] as number;
            await t.settle();
            t.service.room = Number.POSITIVE_INFINITY;
            t.visitor.room = Number.POSITIVE_INFINITY;
            t.service.drain();
            t.visitor.drain();
            await t.settle();
          };
          for (let i = 0; i < Math.max(up.length, down.length); i++) {
            const u = up[i];
            if (u !== undefined && !t.visitor.paused) {
              const chunk = new Uint8Array(u).map((_, k) => (upBytes.length + k) & 255);
              upBytes.push(...chunk);
              t.visitorStream.onSocketData(chunk);
            }
            const dn = down[i];
            if (dn !== undefined && !t.service.paused) {
              const chunk = new Uint8Array(dn).map((_, k) => (downBytes.length * 7 + k) & 255);
              downBytes.push(...chunk);
              (service as Stream).onSocketData(chunk);
            }
            // No stream ever has more unacknowledged than its window.
            for (const s of [t.visitorStream, service as Stream, t.spliced() as Stream])
              expect(s.bufferedBytes).toBeLessThanOrEqual(3 * WINDOW + 40_000);
            await step();
          }
          t.visitorStream.onSocketEnd();
          (service as Stream).onSocketEnd();
          await step();
          await step();
          expect(t.service.received.length).toBe(upBytes.length);
          expect(t.service.received).toEqual(upBytes);
          expect(t.visitor.received).toEqual(downBytes);
          expect(t.service.shut && t.visitor.shut).toBe(true);
          // Every stream of the chain is freed.
          expect(t.a.streams.size + t.b.streams.size + t.c.streams.size + t.d.streams.size).toBe(0);
          // And every message that crossed the splice was freed by the stream that kept it (the one on
          // the far side, once its peer acknowledged it), none left to the collector.
          expect(t.dataMessages.length).toBeGreaterThan(0);
          expect(t.dataMessages.filter((m) => m.buffer.byteLength !== 0).length).toBe(0);
        },
      ),
      { numRuns: 40 },
    );
  }, 30_000); // a property run: seconds on a loaded machine, not the 5 s default

  test("a reset on the service's side reaches the visitor through the splice", async () => {
    const t = chain();
    await t.settle();
    t.serviceStream()?.reset(1, "local service went away");
    await t.settle();
    expect(t.visitor.aborted).toBe(true);
    expect(t.a.streams.size + t.b.streams.size + t.c.streams.size + t.d.streams.size).toBe(0);
  });

  test("a reset on the visitor's side reaches the service", async () => {
    const t = chain();
    await t.settle();
    t.visitorStream.reset(1, "visitor aborted");
    await t.settle();
    expect(t.service.aborted).toBe(true);
    expect(t.a.streams.size + t.b.streams.size + t.c.streams.size + t.d.streams.size).toBe(0);
  });
});

describe("the addresses a spliced socket reports", () => {
  test("the visitor's (remote) and the public address it reached (local), brackets off; unknown local is empty", () => {
    const mux = new Mux(() => {}, settings);
    const seen: [string, number, string, number][] = [];
    const look = (socket: SpliceSocket) => {
      seen.push([socket.remoteAddress, socket.remotePort, socket.localAddress, socket.localPort]);
      return "not opened";
    };
    spliceOnto(mux.createStream(), "[::1]:40000", look, "[2001:db8::7]:443");
    spliceOnto(mux.createStream(), "127.0.0.1:5", look, "10.0.0.1:80");
    spliceOnto(mux.createStream(), "127.0.0.1:5", look);
    expect(seen).toEqual([
      ["::1", 40000, "2001:db8::7", 443],
      ["127.0.0.1", 5, "10.0.0.1", 80],
      ["127.0.0.1", 5, "", 0],
    ]);
  });
});
