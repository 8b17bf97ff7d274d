/**
 * Property tests of the stream state machine: two multiplexers joined by in-memory frame queues, with
 * sockets whose reads, partial writes, drains, FINs, resets, transport blips (frames lost, then a
 * resume) and the passing of time come in random order. Whatever the order: no exception but
 * ProtocolError escapes, bytes arrive in order with nothing lost or repeated, every stream is freed in
 * the end, no sender has more in flight than its receiver granted, and a receiver's window grows only
 * by what its socket consumed.
 */

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { DISPOSE_MIN_BYTES } from "../../shared/relay/disposable.ts";
import { Mux } from "../../shared/relay/mux.ts";
import {
  GROW_FLOOR_MS,
  GROW_RTTS,
  type RelaySocket,
  Stream,
  type StreamHost,
} from "../../shared/relay/stream.ts";
import { FrameType, StreamKind } from "../../shared/wire/protocol.ts";
import { FakeSocket } from "../support/fake-socket.ts";

/** A stream host that frames nothing: every send is a no-op unless `overrides` says otherwise. */
function quietHost(
  overrides: Partial<StreamHost> & Pick<StreamHost, "window" | "maxFramePayload">,
): StreamHost {
  const none = () => {};
  return {
    sendData: none,
    sendWindow: none,
    sendGrow: none,
    sendEnd: none,
    sendReset: none,
    release: none,
    ...overrides,
  };
}

/** One side: its mux, its socket, what its socket "read" so far, and the frames in flight to the peer. */
interface Side {
  mux: Mux;
  socket: FakeSocket;
  stream: Stream | null;
  sent: number[];
  finSent: boolean;
  outbox: Uint8Array[];
}

const WINDOW = 64;
const INITIAL = WINDOW / 8;
/** The muxes' clock (ms), stepped by "tick" actions: windows grow when time passes slowly. */
let clockNow = 1000;
// Streams start at an eighth of the window and grow when their socket consumes half a window within
// GROW_FLOOR_MS (no PONG is ever answered in time to matter), so resumes and resets meet streams at
// every window size. Every read and message is freed once relayed, however small (the relay's
// threshold is 16 KiB).
const settings = {
  window: WINDOW,
  initialWindow: INITIAL,
  maxFramePayload: 16,
  disposeMinBytes: 1,
  clock: () => clockNow,
};

function pair() {
  const server: Side = {
    mux: null as unknown as Mux,
    socket: new FakeSocket(),
    stream: null,
    sent: [],
    finSent: false,
    outbox: [],
  };
  const client: Side = { ...server, socket: new FakeSocket(), sent: [], outbox: [] };
  // Each frame arrives as its own buffer, as a WebSocket message does.
  const sender = (side: Side) => (frame: Uint8Array) => side.outbox.push(frame.slice());
  server.mux = new Mux(sender(server), settings);
  client.mux = new Mux(sender(client), settings, (open) => {
    client.stream = client.mux.acceptStream(open.stream);
    client.stream.attach(client.socket as unknown as RelaySocket);
  });
  server.stream = server.mux.createStream();
  server.mux.sendOpen(server.stream, StreamKind.Tcp, 1, { remote: "127.0.0.1:1" });
  server.stream.attach(server.socket as unknown as RelaySocket);
  return { server, client, sender };
}

type Action =
  | { kind: "read"; server: boolean; size: number }
  | { kind: "deliver"; toClient: boolean; count: number }
  | { kind: "room"; server: boolean; room: number }
  | { kind: "fin"; server: boolean }
  | { kind: "tick"; ms: number }
  | { kind: "blip" };

const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("read" as const),
      server: fc.boolean(),
      size: fc.integer({ min: 1, max: 40 }),
    }),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant("deliver" as const),
      toClient: fc.boolean(),
      count: fc.integer({ min: 1, max: 4 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("room" as const),
      server: fc.boolean(),
      room: fc.integer({ min: 0, max: 50 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("fin" as const), server: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("blip" as const) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant("tick" as const),
      ms: fc.integer({ min: 0, max: 3 * GROW_FLOOR_MS }),
    }),
  },
);

let counter = 0;
/** The socket of `side` reads `size` new bytes (only while not paused and before its FIN). */
function read(side: Side, size: number): void {
  if (side.socket.paused || side.finSent || !side.stream) return;
  const chunk = new Uint8Array(size);
  for (let i = 0; i < size; i++) {
    chunk[i] = counter++ & 0xff;
    side.sent.push(chunk[i] as number);
  }
  side.stream.onSocketData(chunk, true); // a fresh read, as Bun's: the relay may free it
}

function deliver(from: Side, to: Side, count: number): void {
  from.mux.flush(); // small frames wait for the end of the event-loop round otherwise
  for (let i = 0; i < count && from.outbox.length > 0; i++)
    to.mux.receive(from.outbox.shift() as Uint8Array, true);
}

/** Whether frames are on their way either way (batched ones are sent first). */
function inFlight(server: Side, client: Side): boolean {
  server.mux.flush();
  client.mux.flush();
  return server.outbox.length > 0 || client.outbox.length > 0;
}

function blip(server: Side, client: Side, sender: (side: Side) => (frame: Uint8Array) => void): void {
  server.outbox.length = 0; // frames in flight are lost
  client.outbox.length = 0;
  server.mux.detach();
  client.mux.detach();
  const serverSync = server.mux.syncState();
  const clientSync = client.mux.syncState();
  client.mux.resume(sender(client), serverSync);
  server.mux.resume(sender(server), clientSync);
}

/**
 * Flow-control invariants, each direction: the sender's window is at most what its receiver granted
 * (GROWs in flight make it smaller, never larger), the receiver's at most the session's window, and a
 * receiver's window grew only by consumption: doubling from W needs W/2 bytes taken by its socket, so
 * a window of W took at least (W - initial) / 2.
 */
function checkWindows(server: Side, client: Side): void {
  for (const [from, to] of [
    [server, client],
    [client, server],
  ] as const) {
    const sending = from.stream;
    const receiving = to.stream;
    if (!sending || !receiving || sending.closed || receiving.closed) continue;
    expect(sending.sendWindowBytes).toBeLessThanOrEqual(receiving.recvWindowBytes);
    expect(receiving.recvWindowBytes).toBeLessThanOrEqual(WINDOW);
    expect(to.socket.received.length).toBeGreaterThanOrEqual((receiving.recvWindowBytes - INITIAL) / 2);
  }
}

function run(actions: Action[]): { server: Side; client: Side } {
  const { server, client, sender } = pair();
  const side = (isServer: boolean) => (isServer ? server : client);
  for (const a of actions) {
    checkWindows(server, client);
    if (a.kind === "tick") clockNow += a.ms;
    else if (a.kind === "read") read(side(a.server), a.size);
    else if (a.kind === "deliver") deliver(side(!a.toClient), side(a.toClient), a.count);
    else if (a.kind === "room") {
      const s = side(a.server);
      s.socket.room = a.room;
      s.stream?.onSocketDrain();
    } else if (a.kind === "fin") {
      const s = side(a.server);
      if (!s.finSent && s.stream && !s.socket.paused) {
        s.finSent = true;
        s.stream.onSocketEnd();
      }
    } else blip(server, client, sender);
  }
  // Settle: both sockets take everything, both send FIN, frames flow until nothing moves.
  for (const s of [server, client]) {
    s.socket.room = Number.POSITIVE_INFINITY;
    s.stream?.onSocketDrain();
  }
  for (let round = 0; round < 10_000; round++) {
    for (const s of [server, client])
      if (!s.finSent && s.stream && !s.socket.paused) {
        s.finSent = true;
        s.stream.onSocketEnd();
      }
    if (!inFlight(server, client)) break;
    deliver(server, client, 1);
    deliver(client, server, 1);
    checkWindows(server, client);
  }
  return { server, client };
}

describe("stream state machine", () => {
  test("random reads, partial writes, FINs and blips: bytes in order, nothing lost, streams freed", () => {
    fc.assert(
      fc.property(fc.array(action, { maxLength: 120 }), (actions) => {
        const { server, client } = run(actions);
        expect(client.socket.received).toEqual(server.sent);
        expect(server.socket.received).toEqual(client.sent);
        expect(server.socket.shut && client.socket.shut).toBe(true);
        expect(server.mux.streams.size).toBe(0);
        expect(client.mux.streams.size).toBe(0);
        expect(server.socket.aborted || client.socket.aborted).toBe(false);
      }),
      { numRuns: 500 },
    );
  });

  test("a reset at any point closes both sides and leaves no stream behind", () => {
    fc.assert(
      fc.property(fc.array(action, { maxLength: 60 }), fc.boolean(), (actions, fromServer) => {
        const { server, client, sender } = pair();
        const side = (isServer: boolean) => (isServer ? server : client);
        for (const a of actions) {
          if (a.kind === "read") read(side(a.server), a.size);
          else if (a.kind === "deliver") deliver(side(!a.toClient), side(a.toClient), a.count);
          else if (a.kind === "blip") blip(server, client, sender);
        }
        deliver(server, client, 1_000); // the OPEN reaches the client at the latest now
        const resetter = side(fromServer);
        resetter.stream?.reset(5, "test reset");
        for (let i = 0; i < 1_000 && inFlight(server, client); i++) {
          deliver(server, client, 1);
          deliver(client, server, 1);
        }
        expect(resetter.stream?.closed).toBe(true);
        expect(server.mux.streams.size + client.mux.streams.size).toBe(0);
        expect(server.socket.aborted && client.socket.aborted).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});

describe("window auto-tuning (receiver-driven)", () => {
  /** The unit of these tests: a small "MiB", so that the byte-recording socket stays cheap. */
  const MiB = 64 * 1024;
  /**
   * A receiving stream whose socket takes `room` bytes per write, on a host with a stepped clock and a
   * fixed round trip, that records the GROW and WINDOW frames it sends.
   */
  function receiver({ window = 16 * MiB, rtt = 50, room = Number.POSITIVE_INFINITY, mayGrow = true } = {}) {
    const clock = { now: 1000 };
    const grows: number[] = [];
    let credited = 0;
    const host = quietHost({
      window,
      initialWindow: MiB,
      rtt,
      clock: () => clock.now,
      maxFramePayload: MiB,
      mayGrow: () => mayGrow,
      sendGrow: (_id, n) => grows.push(n),
      sendWindow: (_id, n) => {
        credited += n;
      },
    });
    const stream = new Stream(1, host);
    const socket = new FakeSocket();
    socket.room = room;
    stream.attach(socket as unknown as RelaySocket);
    /** The peer sends `n` bytes `afterMs` after the last delivery. */
    const deliver = (n: number, afterMs = 0) => {
      clock.now += afterMs;
      stream.onData(new Uint8Array(n));
    };
    return { stream, socket, grows, clock, deliver, credited: () => credited };
  }

  test("a window used up within a few round trips doubles, up to the session's window", () => {
    const r = receiver({ window: 8 * MiB, rtt: 50 });
    // Window-limited on a 50 ms path: a window's worth arrives per round trip.
    for (let round = 0; round < 6; round++) r.deliver(r.stream.recvWindowBytes, 50);
    expect(r.grows).toEqual([MiB, 2 * MiB, 4 * MiB]);
    expect(r.stream.recvWindowBytes).toBe(8 * MiB);
  });

  test("half a window consumed slower than GROW_RTTS × fraction × rtt does not grow it", () => {
    const rtt = 50;
    const r = receiver({ rtt });
    r.deliver(1); // the epoch starts with the first byte
    // Half the window took exactly the limit (fraction 1/2 → 2 × rtt): too slow.
    r.deliver(MiB / 2 - 1, (GROW_RTTS / 2) * rtt);
    expect(r.grows).toEqual([]);
    // The next half within it: grows.
    r.deliver(MiB / 2, (GROW_RTTS / 2) * rtt - 1);
    expect(r.grows).toEqual([MiB]);
  });

  test("on a path shorter than the event loop's turns, GROW_FLOOR_MS stands in for the round trip", () => {
    const r = receiver({ rtt: 0.05 });
    r.deliver(1);
    r.deliver(MiB / 2 - 1, GROW_FLOOR_MS / 2 - 1);
    expect(r.grows).toEqual([MiB]);
  });

  test("a stalled reader's window never grows, and DATA past the granted window is a protocol error", () => {
    const r = receiver({ room: 0 });
    for (let i = 0; i < 8; i++) r.deliver(MiB / 8, 1);
    expect(r.grows).toEqual([]);
    expect(r.credited()).toBe(0);
    // The session's window is 16 MiB, but this stream granted 1 MiB: one byte more is refused.
    expect(() => r.deliver(1)).toThrow(/past its window/);
  });

  test("no growth where the memory budget says no", () => {
    const r = receiver({ mayGrow: false });
    for (let round = 0; round < 4; round++) r.deliver(MiB, 1);
    expect(r.grows).toEqual([]);
    expect(r.stream.recvWindowBytes).toBe(MiB);
  });

  test("a sender uses exactly what GROW granted, never past the session's window", () => {
    let sent = 0;
    const stream = new Stream(
      1,
      quietHost({
        window: 4 * MiB,
        initialWindow: MiB,
        maxFramePayload: 256 * 1024,
        sendData: (_id, payload) => {
          sent += payload.length;
        },
      }),
    );
    stream.onSocketData(new Uint8Array(64 * MiB));
    expect(sent).toBe(MiB);
    stream.onGrow(MiB);
    expect(sent).toBe(2 * MiB);
    stream.onGrow(64 * MiB); // a peer granting more than the session allows: capped
    expect(sent).toBe(4 * MiB);
    expect(stream.sendWindowBytes).toBe(4 * MiB);
    stream.onWindow(MiB);
    expect(sent).toBe(5 * MiB);
  });

  test("a session window below the initial one is used as it is, and never exceeded", () => {
    let sent = 0;
    const stream = new Stream(
      1,
      quietHost({
        window: 16 * 1024,
        maxFramePayload: 4 * 1024,
        sendData: (_id, payload) => {
          sent += payload.length;
        },
      }),
    );
    stream.onSocketData(new Uint8Array(1 << 20));
    expect(sent).toBe(16 * 1024);
    stream.onWindow(16 * 1024);
    expect(sent).toBe(32 * 1024);
  });
});

describe("freeing relayed buffers early", () => {
  /** A stream whose host keeps nothing and whose socket takes `room` bytes per write. */
  function streamWithSocket(window: number) {
    const host = quietHost({ window, initialWindow: window, maxFramePayload: 1024, disposeMinBytes: 1 });
    const stream = new Stream(1, host);
    const socket = new FakeSocket();
    stream.attach(socket as unknown as RelaySocket);
    return { stream, socket };
  }

  test("a socket read is freed once all of it was acknowledged, and not before", () => {
    const { stream } = streamWithSocket(4096);
    const read = new Uint8Array(3000);
    stream.onSocketData(read, true);
    stream.onWindow(2048);
    expect(read.length).toBe(3000); // the last 952 bytes may still have to be resent after a blip
    stream.onWindow(952);
    expect(read.length).toBe(0);
    expect(read.buffer.byteLength).toBe(0);
  });

  test("a read split by a full window is freed only after its held tail was sent and acknowledged", () => {
    const { stream } = streamWithSocket(1024);
    const read = new Uint8Array(2500);
    stream.onSocketData(read, true);
    stream.onWindow(1024); // sends the next 1024 from what is held
    stream.onWindow(1024);
    expect(read.length).toBe(2500);
    stream.onWindow(452);
    expect(read.length).toBe(0);
  });

  test("nothing is freed that the stream was not told it owns, or that a tap saw", () => {
    const { stream } = streamWithSocket(4096);
    const borrowed = new Uint8Array(100);
    stream.onSocketData(borrowed);
    stream.onWindow(100);
    expect(borrowed.length).toBe(100);

    const tapped = streamWithSocket(4096).stream;
    tapped.tap = { toSocket: () => {}, fromSocket: () => {} };
    const seen = new Uint8Array(100);
    tapped.onSocketData(seen, true);
    tapped.onWindow(100);
    expect(seen.length).toBe(100);
  });

  /**
   * A sender mux with one opened stream (its OPEN not flushed yet), and a receiver that frees every
   * message once relayed, whose stream writes into a socket taking `room` bytes per write.
   */
  function muxes(room: number) {
    const frames: Uint8Array[] = [];
    const sender = new Mux((frame) => frames.push(frame.slice()), {
      window: 1 << 16,
      maxFramePayload: 1 << 14,
    });
    const socket = new FakeSocket();
    socket.room = room;
    const receiver = new Mux(
      () => {},
      { window: 1 << 16, maxFramePayload: 1 << 14, disposeMinBytes: 1 },
      (open) => receiver.acceptStream(open.stream).attach(socket as unknown as RelaySocket),
    );
    const stream = sender.createStream();
    sender.sendOpen(stream, StreamKind.Tcp, 1, { remote: "127.0.0.1:1" });
    return { sender, receiver, stream, socket, frames };
  }

  test("a received DATA message is freed once written, after a partial write only once drained", () => {
    const whole = muxes(Number.POSITIVE_INFINITY);
    whole.stream.onSocketData(new Uint8Array(5000).fill(7));
    whole.sender.flush();
    const [open, data] = whole.frames as [Uint8Array, Uint8Array];
    whole.receiver.receive(open, true);
    whole.receiver.receive(data, true);
    expect(data.length).toBe(0);
    expect(whole.socket.received.length).toBe(5000);

    const partial = muxes(3000);
    partial.stream.onSocketData(new Uint8Array(5000).fill(7));
    partial.sender.flush();
    const [open2, data2] = partial.frames as [Uint8Array, Uint8Array];
    partial.receiver.receive(open2, true);
    partial.receiver.receive(data2, true);
    expect(data2.length).toBeGreaterThan(0); // 2,000 bytes still wait for the socket
    partial.socket.room = Number.POSITIVE_INFINITY;
    partial.receiver.streams.get(partial.stream.id)?.onSocketDrain();
    expect(data2.length).toBe(0);
    expect(partial.socket.received).toEqual(new Array(5000).fill(7));
  });

  test("a BATCH message is never freed: its frames share one buffer", () => {
    // The OPEN and two small DATA frames: one BATCH.
    const { sender, receiver, stream, frames } = muxes(Number.POSITIVE_INFINITY);
    stream.onSocketData(new Uint8Array(10));
    stream.onSocketData(new Uint8Array(10));
    sender.flush();
    expect(frames.map((f) => f[0])).toEqual([FrameType.Batch]);
    const batch = frames[0] as Uint8Array;
    expect(receiver.streams.get(stream.id)).toBeUndefined();
    receiver.receive(batch, true);
    expect(receiver.streams.get(stream.id)).toBeDefined(); // the OPEN in it was dispatched
    expect(batch.length).toBeGreaterThan(0);
  });
});

test("reads and messages below DISPOSE_MIN_BYTES are left to the collector", () => {
  const small = new Uint8Array(DISPOSE_MIN_BYTES - 1);
  const large = new Uint8Array(DISPOSE_MIN_BYTES);
  const stream = new Stream(1, quietHost({ window: 1 << 20, maxFramePayload: 1 << 16 }));
  stream.onSocketData(small, true);
  stream.onSocketData(large, true);
  stream.onWindow(small.length + large.length);
  expect([small.length, large.length]).toEqual([DISPOSE_MIN_BYTES - 1, 0]);
});
