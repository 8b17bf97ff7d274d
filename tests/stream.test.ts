/**
 * Property tests of the stream state machine: two multiplexers joined by in-memory frame queues, with
 * sockets whose reads, partial writes, drains, FINs, resets and transport blips (frames lost, then a
 * resume) come in random order. Whatever the order: no exception but ProtocolError escapes, bytes
 * arrive in order with nothing lost or repeated, and every stream is freed in the end.
 */

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { DISPOSE_MIN_BYTES } from "../shared/disposable.ts";
import { Mux } from "../shared/mux.ts";
import { FrameType, StreamKind } from "../shared/protocol.ts";
import {
  GROW_WITHIN_MS,
  INITIAL_SEND_WINDOW,
  type RelaySocket,
  Stream,
  type StreamHost,
} from "../shared/stream.ts";

/** A socket double: takes a random share of each write, records what it took, obeys pause. */
class FakeSocket {
  data: { stream: Stream | null } = { stream: null };
  paused = false;
  shut = false;
  ended = false;
  aborted = false;
  received: number[] = [];
  /** Bytes the "kernel" takes on the next write; 0 means full until a drain. */
  room = Number.POSITIVE_INFINITY;

  write(chunk: Uint8Array): number {
    if (this.shut || this.aborted) return -1;
    // The relay never writes nothing; an empty chunk here is one it freed too early.
    if (chunk.length === 0) throw new Error("write of an empty chunk: freed before it was written?");
    const n = Math.min(chunk.length, this.room);
    for (let i = 0; i < n; i++) this.received.push(chunk[i] as number);
    return n;
  }
  pause() {
    this.paused = true;
  }
  resume() {
    this.paused = false;
  }
  shutdown() {
    this.shut = true;
  }
  end() {
    this.ended = true;
  }
  terminate() {
    this.aborted = true;
  }
}

/** A stream host that frames nothing: every send is a no-op unless `overrides` says otherwise. */
function quietHost(
  overrides: Partial<StreamHost> & Pick<StreamHost, "window" | "maxFramePayload">,
): StreamHost {
  const none = () => {};
  return { sendData: none, sendWindow: none, sendEnd: none, sendReset: none, release: none, ...overrides };
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
// Streams start at an eighth of the window and grow (at once: the test runs faster than 20 ms per
// window), so resumes and resets meet streams at every window size.
// Every read and message is freed once relayed, however small (the relay's threshold is 16 KiB).
const settings = { window: WINDOW, initialWindow: WINDOW / 8, maxFramePayload: 16, disposeMinBytes: 1 };

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

function run(actions: Action[]): { server: Side; client: Side } {
  const { server, client, sender } = pair();
  const side = (isServer: boolean) => (isServer ? server : client);
  for (const a of actions) {
    if (a.kind === "read") read(side(a.server), a.size);
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

describe("send window", () => {
  const MiB = 1024 * 1024;
  /** A stream whose host records the DATA bytes it sends; its socket read 64 MiB at once. */
  function starvedStream(window: number) {
    let sent = 0;
    const clock = { now: 1000 };
    const host = quietHost({
      window,
      clock: () => clock.now,
      maxFramePayload: 256 * 1024,
      sendData: (_id, payload) => {
        sent += payload.length;
      },
    });
    const stream = new Stream(1, host);
    stream.onSocketData(new Uint8Array(64 * MiB));
    return { stream, sent: () => sent, clock };
  }

  test("starts at 1 MiB and doubles, up to the session window, while whole windows are acknowledged fast", () => {
    const { stream, sent } = starvedStream(8 * MiB);
    expect(sent()).toBe(INITIAL_SEND_WINDOW);
    const inFlight: number[] = [];
    let acked = 0;
    for (let round = 0; round < 5; round++) {
      const outstanding = sent() - acked;
      stream.onWindow(outstanding); // the whole window, at once: far within GROW_WITHIN_MS
      acked += outstanding;
      inFlight.push(sent() - acked);
    }
    expect(inFlight).toEqual([2 * MiB, 4 * MiB, 8 * MiB, 8 * MiB, 8 * MiB]);
  });

  test("does not grow for a receiver that acknowledges slowly (a visitor that reads slowly)", () => {
    const { stream, sent, clock } = starvedStream(8 * MiB);
    clock.now += GROW_WITHIN_MS; // the whole window took exactly the limit: too slow
    stream.onWindow(INITIAL_SEND_WINDOW);
    expect(sent() - INITIAL_SEND_WINDOW).toBe(INITIAL_SEND_WINDOW);
    clock.now += GROW_WITHIN_MS - 1; // the next one just within it: grows
    stream.onWindow(INITIAL_SEND_WINDOW);
    expect(sent() - 2 * INITIAL_SEND_WINDOW).toBe(2 * INITIAL_SEND_WINDOW);
  });

  test("a session window below 1 MiB is used as it is, and never exceeded", () => {
    const { stream, sent } = starvedStream(64 * 1024);
    expect(sent()).toBe(64 * 1024);
    stream.onWindow(64 * 1024);
    expect(sent()).toBe(128 * 1024);
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
