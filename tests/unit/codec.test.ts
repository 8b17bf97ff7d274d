/**
 * The wire codec (binary frames) and the control messages (JSON text frames): every type round-trips,
 * and anything malformed — truncated, oversized, unknown, stream 0, bad UTF-8, bad JSON, random bytes —
 * is a ProtocolError and never another exception.
 */

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  DATA_SCRATCH_EXTRA,
  dataFrameStream,
  decodeFrame,
  encodeData,
  encodeDatagram,
  encodeEnd,
  encodeFlowClose,
  encodeFlowOpen,
  encodeGrow,
  encodeOpen,
  encodePing,
  encodeReset,
  encodeWindow,
  type Frame,
  MAX_META_BYTES,
  MAX_REASON_BYTES,
} from "../../shared/wire/codec.ts";
import {
  type ControlMessage,
  DEFAULTS,
  FrameType,
  HEADER_LENGTH,
  MAX_DATAGRAM,
  ProtocolError,
  parseControl,
  StreamKind,
} from "../../shared/wire/protocol.ts";

const MAX = DEFAULTS.maxFramePayload;
const RUNS = { numRuns: 300 };
const utf8 = new TextEncoder();

/** Builds a raw frame: type, stream id, body. */
function raw(type: number, stream: number, body: ArrayLike<number> = []): Uint8Array {
  const b = new Uint8Array(HEADER_LENGTH + body.length);
  b[0] = type;
  new DataView(b.buffer).setUint32(1, stream);
  b.set(body, HEADER_LENGTH);
  return b;
}

/** Decodes and returns the error thrown, or null if the frame decoded. */
function decodeError(b: Uint8Array, max = MAX): unknown {
  try {
    decodeFrame(b, max);
    return null;
  } catch (error) {
    return error;
  }
}

function expectProtocolError(b: Uint8Array, pattern?: RegExp, max = MAX): void {
  const error = decodeError(b, max);
  expect(error).toBeInstanceOf(ProtocolError);
  if (pattern) expect((error as Error).message).toMatch(pattern);
}

const streamId = fc.integer({ min: 1, max: 0xffffffff });

describe("frames round-trip", () => {
  test("OPEN", () => {
    const frame = decodeFrame(encodeOpen(7, StreamKind.Tcp, 3, { remote: "[::1]:5000" }), MAX);
    expect(frame).toEqual({
      type: FrameType.Open,
      stream: 7,
      kind: StreamKind.Tcp,
      tunnel: 3,
      meta: { remote: "[::1]:5000" },
    });
  });

  test("OPEN with the public address the visitor connected to (local)", () => {
    const meta = { remote: "127.0.0.1:40000", local: "[::1]:7070" };
    expect(decodeFrame(encodeOpen(9, StreamKind.Http, 1, meta), MAX)).toMatchObject({ meta });
  });

  test("DATA, with and without a scratch buffer", () => {
    const payload = new Uint8Array([1, 2, 3, 255]);
    expect(decodeFrame(encodeData(0xffffffff, payload), MAX)).toEqual({
      type: FrameType.Data,
      stream: 0xffffffff,
      payload,
    });
    const scratch = new Uint8Array(MAX + DATA_SCRATCH_EXTRA);
    const frame = decodeFrame(encodeData(1, payload, scratch), MAX);
    expect(frame).toEqual({ type: FrameType.Data, stream: 1, payload });
    const full = new Uint8Array(MAX).fill(9);
    expect((decodeFrame(encodeData(2, full, scratch), MAX) as { payload: Uint8Array }).payload).toEqual(full);
  });

  test("WINDOW", () => {
    expect(decodeFrame(encodeWindow(5, 0xffffffff), MAX)).toEqual({
      type: FrameType.Window,
      stream: 5,
      increment: 0xffffffff,
    });
  });

  test("END", () => {
    expect(decodeFrame(encodeEnd(9), MAX)).toEqual({ type: FrameType.End, stream: 9 });
  });

  test("GROW", () => {
    expect(decodeFrame(encodeGrow(5, 1 << 20), MAX)).toEqual({
      type: FrameType.Grow,
      stream: 5,
      increment: 1 << 20,
    });
  });

  test("PING and PONG on stream 0, and nowhere else", () => {
    expect(decodeFrame(encodePing(0xfffffffe), MAX)).toEqual({
      type: FrameType.Ping,
      stream: 0,
      token: 0xfffffffe,
    });
    expect(decodeFrame(encodePing(7, true), MAX)).toEqual({ type: FrameType.Pong, stream: 0, token: 7 });
    expectProtocolError(raw(FrameType.Ping, 1, [0, 0, 0, 1]), /PING/);
    expectProtocolError(raw(FrameType.Pong, 0, [0, 0, 1]), /PING/);
    expectProtocolError(raw(FrameType.Grow, 3, [0, 0, 0, 0]), /GROW increment of 0/);
    expectProtocolError(raw(FrameType.Grow, 3, [0, 0, 1]), /GROW frame must/);
  });

  test("RESET, and a long reason is truncated to fit", () => {
    expect(decodeFrame(encodeReset(4, 0xbeef, "local service refused"), MAX)).toEqual({
      type: FrameType.Reset,
      stream: 4,
      code: 0xbeef,
      reason: "local service refused",
    });
    const long = decodeFrame(encodeReset(4, 1, "é".repeat(1000)), MAX) as { reason: string };
    expect(long.reason.length).toBeGreaterThan(0);
    expect(utf8.encode(long.reason).length).toBeLessThanOrEqual(MAX_REASON_BYTES);
  });

  test("property: random valid frames round-trip", () => {
    const kindAndMeta = fc.record({
      remote: fc.string({ unit: "binary", maxLength: 60 }),
      extra: fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string(), fc.integer(), fc.boolean()), {
        maxKeys: 4,
      }),
    });
    const frame: fc.Arbitrary<Frame> = fc.oneof(
      fc
        .record({ stream: streamId, tunnel: fc.integer({ min: 0, max: 0xffffffff }), m: kindAndMeta })
        .map(({ stream, tunnel, m }) => ({
          type: FrameType.Open,
          stream,
          kind: StreamKind.Tcp,
          tunnel,
          meta: { ...m.extra, remote: m.remote },
        })),
      fc
        .record({ stream: streamId, payload: fc.uint8Array({ minLength: 1, maxLength: 4096 }) })
        .map(({ stream, payload }) => ({ type: FrameType.Data, stream, payload })),
      fc
        .record({ stream: streamId, increment: fc.integer({ min: 1, max: 0xffffffff }) })
        .map(({ stream, increment }) => ({ type: FrameType.Window, stream, increment })),
      fc
        .record({ stream: streamId, increment: fc.integer({ min: 1, max: 0xffffffff }) })
        .map(({ stream, increment }) => ({ type: FrameType.Grow, stream, increment })),
      fc
        .record({ token: fc.integer({ min: 0, max: 0xffffffff }), pong: fc.boolean() })
        .map(({ token, pong }) => ({
          type: pong ? FrameType.Pong : FrameType.Ping,
          stream: 0 as const,
          token,
        })),
      streamId.map((stream) => ({ type: FrameType.End, stream })),
      fc
        .record({
          stream: streamId,
          code: fc.integer({ min: 0, max: 0xffff }),
          reason: fc.string({ unit: "binary", maxLength: 60 }),
        })
        .filter(({ reason }) => utf8.encode(reason).length <= MAX_REASON_BYTES)
        .map(({ stream, code, reason }) => ({ type: FrameType.Reset, stream, code, reason })),
      fc
        .record({ stream: streamId, tunnel: fc.integer({ min: 0, max: 0xffffffff }), m: kindAndMeta })
        .map(({ stream, tunnel, m }) => ({
          type: FrameType.FlowOpen,
          stream,
          tunnel,
          meta: { ...m.extra, remote: m.remote },
        })),
      fc
        .record({ stream: streamId, payload: fc.uint8Array({ maxLength: 3000 }) })
        .map(({ stream, payload }) => ({ type: FrameType.Datagram, stream, payload })),
      fc
        .record({ stream: streamId, code: fc.integer({ min: 0, max: 0xffff }) })
        .map(({ stream, code }) => ({ type: FrameType.FlowClose, stream, code })),
    );
    fc.assert(
      fc.property(frame, (f) => {
        let bytes: Uint8Array;
        switch (f.type) {
          case FrameType.Open:
            bytes = encodeOpen(f.stream, f.kind, f.tunnel, f.meta);
            break;
          case FrameType.Data:
            bytes = encodeData(f.stream, f.payload);
            break;
          case FrameType.Window:
            bytes = encodeWindow(f.stream, f.increment);
            break;
          case FrameType.End:
            bytes = encodeEnd(f.stream);
            break;
          case FrameType.Reset:
            bytes = encodeReset(f.stream, f.code, f.reason);
            break;
          case FrameType.Grow:
            bytes = encodeGrow(f.stream, f.increment);
            break;
          case FrameType.Ping:
          case FrameType.Pong:
            bytes = encodePing(f.token, f.type === FrameType.Pong);
            break;
          case FrameType.FlowOpen:
            bytes = encodeFlowOpen(f.stream, f.tunnel, f.meta);
            break;
          case FrameType.Datagram:
            bytes = encodeDatagram(f.stream, f.payload);
            break;
          case FrameType.FlowClose:
            bytes = encodeFlowClose(f.stream, f.code);
            break;
        }
        expect(decodeFrame(bytes, MAX)).toEqual(f);
      }),
      RUNS,
    );
  }, 30_000); // a property run: seconds on a loaded machine, not the 5 s default

  test("property: DATA through a reused, offset scratch buffer keeps the payload intact", () => {
    const scratch = new Uint8Array(4096 + DATA_SCRATCH_EXTRA + 64);
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 1, maxLength: 4096 }),
        fc.nat(31),
        fc.nat(63),
        streamId,
        (payload, sourceOffset, scratchOffset, stream) => {
          // The payload is a view at an arbitrary offset, as socket reads hand it over.
          const source = new Uint8Array(payload.length + sourceOffset);
          source.set(payload, sourceOffset);
          const view = source.subarray(sourceOffset);
          const into = scratch.subarray(scratchOffset);
          into.fill(0xee);
          const decoded = decodeFrame(encodeData(stream, view, into), MAX);
          expect(decoded).toEqual({ type: FrameType.Data, stream, payload });
        },
      ),
      RUNS,
    );
  });
});

describe("malformed frames are ProtocolErrors", () => {
  test("truncated: shorter than the header, and each type's body too short", () => {
    for (let n = 0; n < HEADER_LENGTH; n++) expectProtocolError(new Uint8Array(n).fill(2), /shorter/);
    expectProtocolError(raw(FrameType.Data, 1), /empty DATA/);
    expectProtocolError(raw(FrameType.Window, 1, [0, 0, 1]), /WINDOW/);
    expectProtocolError(raw(FrameType.Reset, 1, [0]), /RESET/);
    expectProtocolError(raw(FrameType.Open, 1, [1, 0, 0, 0]), /OPEN/);
    // Every strict prefix of a valid frame fails (except where a shorter frame of that type is valid).
    const open = encodeOpen(1, StreamKind.Tcp, 1, { remote: "127.0.0.1:1" });
    for (let n = 0; n < open.length; n++) expectProtocolError(open.subarray(0, n));
    const window = encodeWindow(1, 10);
    for (let n = 0; n < window.length; n++) expectProtocolError(window.subarray(0, n));
  });

  test("too long: DATA over the limit, WINDOW/END with extra bytes, RESET reason and OPEN meta over theirs", () => {
    expectProtocolError(raw(FrameType.Data, 1, new Uint8Array(MAX + 1)), /exceeds/);
    expectProtocolError(raw(FrameType.Data, 1, new Uint8Array(11)), /exceeds 10/, 10);
    expect(decodeError(raw(FrameType.Data, 1, new Uint8Array(10)), 10)).toBeNull();
    expectProtocolError(raw(FrameType.Window, 1, [0, 0, 0, 1, 0]), /WINDOW/);
    expectProtocolError(raw(FrameType.End, 1, [0]), /END/);
    expectProtocolError(raw(FrameType.Reset, 1, new Uint8Array(2 + MAX_REASON_BYTES + 1).fill(65)), /RESET/);
    const meta = utf8.encode(JSON.stringify({ remote: "x".repeat(MAX_META_BYTES) }));
    expectProtocolError(raw(FrameType.Open, 1, [1, 0, 0, 0, 1, ...meta]), /OPEN/);
    expect(() => encodeOpen(1, StreamKind.Tcp, 1, { remote: "x".repeat(MAX_META_BYTES) })).toThrow(
      RangeError,
    );
  });

  test("unknown frame types", () => {
    for (const type of [0, 6, 13, 42, 128, 255])
      expectProtocolError(raw(type, 1, [1, 2, 3]), /unknown frame type/);
  });

  test("stream id 0 is reserved for every type", () => {
    expectProtocolError(encodeOpen(0, StreamKind.Tcp, 1, { remote: "a" }), /stream id 0/);
    expectProtocolError(encodeData(0, new Uint8Array([1])), /stream id 0/);
    expectProtocolError(encodeWindow(0, 1), /stream id 0/);
    expectProtocolError(encodeEnd(0), /stream id 0/);
    expectProtocolError(encodeReset(0, 1, "x"), /stream id 0/);
    expectProtocolError(encodeGrow(0, 1), /stream id 0/);
  });

  test("UDP frames: DATAGRAM of 0 and 65,507 bytes whole, 65,508 refused both ways; FLOW_OPEN and FLOW_CLOSE bounds", () => {
    for (const size of [0, 1, 1400, 9000, MAX_DATAGRAM]) {
      const payload = new Uint8Array(size).map((_, i) => i * 7);
      const frame = decodeFrame(encodeDatagram(9, payload), MAX) as { payload: Uint8Array };
      expect(frame).toMatchObject({ type: FrameType.Datagram, stream: 9 });
      expect(Buffer.from(frame.payload).equals(Buffer.from(payload))).toBe(true);
    }
    expect(() => encodeDatagram(9, new Uint8Array(MAX_DATAGRAM + 1))).toThrow(RangeError);
    expectProtocolError(raw(FrameType.Datagram, 9, new Uint8Array(MAX_DATAGRAM + 1)), /exceeds 65507/);
    expectProtocolError(raw(FrameType.Datagram, 0, [1]), /stream id 0/);
    expectProtocolError(raw(FrameType.FlowClose, 9, [1]), /FLOW_CLOSE/);
    expectProtocolError(raw(FrameType.FlowClose, 9, [0, 1, 2]), /FLOW_CLOSE/);
    expectProtocolError(raw(FrameType.FlowOpen, 9, [0, 0, 1]), /FLOW_OPEN/);
    expectProtocolError(raw(FrameType.FlowOpen, 9, [0, 0, 0, 1, ...utf8.encode("{}")]), /remote/);
    expect(decodeFrame(encodeFlowOpen(9, 3, { remote: "1.2.3.4:5" }), MAX)).toEqual({
      type: FrameType.FlowOpen,
      stream: 9,
      tunnel: 3,
      meta: { remote: "1.2.3.4:5" },
    });
  });

  test("WINDOW increment 0", () => {
    expectProtocolError(encodeWindow(1, 0), /increment of 0/);
  });

  test("bad UTF-8 in a RESET reason or OPEN metadata", () => {
    for (const bad of [[0xff], [0xc3], [0xed, 0xa0, 0x80], [0xe2, 0x82]]) {
      expectProtocolError(raw(FrameType.Reset, 1, [0, 1, ...bad]), /not UTF-8/);
      expectProtocolError(raw(FrameType.Open, 1, [1, 0, 0, 0, 1, ...bad]), /not UTF-8/);
    }
  });

  test("OPEN metadata that is not JSON, or lacks the remote address", () => {
    const open = (text: string) => raw(FrameType.Open, 1, [1, 0, 0, 0, 1, ...utf8.encode(text)]);
    for (const text of ["", "{", "remote", "{'remote':'x'}", '{"remote":"x"} trailing'])
      expectProtocolError(open(text), /not JSON/);
    for (const text of ["null", "1", '"x"', "[]", "{}", '{"remote":1}', '{"remote":null}', "true"])
      expectProtocolError(open(text), /remote/);
    expect(decodeError(open('{"remote":"1.2.3.4:5","other":[1]}'))).toBeNull();
    for (const text of ['{"remote":"x","local":1}', `{"remote":"x","local":"${"1".repeat(81)}"}`])
      expectProtocolError(open(text), /bad local address/);
  });

  test("property: random bytes either decode or throw ProtocolError, never anything else", () => {
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      // Biased towards known types so that bodies get exercised, not just the type check.
      fc
        .tuple(fc.integer({ min: 0, max: 13 }), fc.uint8Array({ minLength: 4, maxLength: 80 }))
        .map(([type, rest]) => new Uint8Array([type, ...rest])),
      fc
        .tuple(streamId, fc.json({ maxDepth: 2 }))
        .map(([stream, json]) => raw(FrameType.Open, stream, [1, 0, 0, 0, 1, ...utf8.encode(json)])),
    );
    fc.assert(
      fc.property(bytes, (b) => {
        const error = decodeError(b, 64);
        if (error !== null && !(error instanceof ProtocolError)) throw error;
      }),
      { numRuns: 2000 },
    );
  });
});

describe("control messages", () => {
  const valid: ControlMessage[] = [
    {
      type: "hello",
      protocol: 3,
      window: DEFAULTS.window,
      initialWindow: DEFAULTS.initialWindow,
      maxFramePayload: MAX,
      maxStreamsPerTunnel: 4096,
      maxTunnelsPerClient: 32,
      session: "s1",
      secret: "k",
      resumed: false,
    },
    {
      type: "sync",
      streams: [
        [1, 10, 8, 0, 1 << 20],
        [0xffffffff, 0, 0, 1, 1],
      ],
      finished: [3, 4],
      accepted: 7,
    },
    { type: "going-away", drain: 10 },
    { type: "expose", id: 1, kind: "tcp" },
    { type: "expose", id: 4, kind: "tcp", port: 5000, tunnel: "V1StGXR8_Z5j" },
    { type: "expose", id: 2, kind: "tcp", port: 65535 },
    { type: "expose", id: 5, kind: "http", pool: true, allow: ["10.0.0.0/8", "::1"], deny: [] },
    { type: "expose", id: 6, kind: "tcp", deny: Array.from({ length: 64 }, () => "x".repeat(64)) },
    { type: "exposed", id: 5, tunnel: "abc", ref: 2, host: "h", port: 1, url: "u", access: true },
    { type: "exposed", id: 1, tunnel: "abc", ref: 1, host: "localhost", port: 4000, url: "localhost:4000" },
    { type: "error", id: 3, code: "port_taken", message: "port 4000 is already in use on the server" },
    { type: "error", code: "limit", message: "session-wide problem" },
  ];

  test("every message type round-trips", () => {
    for (const message of valid) expect(parseControl(JSON.stringify(message))).toEqual(message);
  });

  test("malformed or unknown messages are ProtocolErrors", () => {
    const bad = [
      "",
      '{"type":"sync","streams":[[0,1,1,0]],"finished":[],"accepted":0}',
      '{"type":"sync","streams":[[1,1,2]],"finished":[],"accepted":0}',
      '{"type":"sync","streams":[[1,1,1,0]],"finished":[],"accepted":0}',
      '{"type":"sync","streams":[[1,1,1,0,0]],"finished":[],"accepted":0}',
      '{"type":"hello","protocol":3,"window":1,"initialWindow":2,"maxFramePayload":1,"maxStreamsPerTunnel":1,"maxTunnelsPerClient":1,"session":"s","secret":"k","resumed":false}',
      '{"type":"expose","id":1,"kind":"tcp","tunnel":"../x"}',
      "{",
      "not json",
      "null",
      "1",
      '"hello"',
      "[]",
      "{}",
      '{"type":"bogus"}',
      '{"type":1}',
      '{"type":null}',
      '{"type":["hello"]}',
      '{"type":{"toString":1}}',
      '{"type":"hello","protocol":1}',
      '{"type":"hello","protocol":0,"window":1,"maxFramePayload":1,"maxStreamsPerTunnel":1,"maxTunnelsPerClient":1}',
      '{"type":"expose","id":1,"kind":"sctp"}',
      '{"type":"expose","id":0,"kind":"tcp"}',
      '{"type":"expose","id":1.5,"kind":"tcp"}',
      '{"type":"expose","id":1,"kind":"tcp","port":0}',
      '{"type":"expose","id":1,"kind":"tcp","port":70000}',
      '{"type":"expose","id":1,"kind":"tcp","port":"80"}',
      '{"type":"expose","id":1,"kind":"tcp","pool":"yes"}',
      '{"type":"expose","id":1,"kind":"tcp","allow":"10.0.0.0/8"}',
      '{"type":"expose","id":1,"kind":"tcp","allow":[1]}',
      `{"type":"expose","id":1,"kind":"tcp","deny":["${"1".repeat(65)}"]}`,
      `{"type":"expose","id":1,"kind":"tcp","deny":${JSON.stringify(Array(65).fill("::1"))}}`,
      '{"type":"exposed","id":1,"tunnel":"a","ref":1,"host":"h","port":1,"url":"u","access":1}',
      '{"type":"exposed","id":1,"tunnel":"a","ref":1,"host":"h","port":0,"url":"u"}',
      '{"type":"exposed","id":1,"tunnel":1,"ref":1,"host":"h","port":1,"url":"u"}',
      '{"type":"error","code":"x"}',
      '{"type":"error","id":-1,"code":"x","message":"m"}',
    ];
    for (const text of bad) {
      let error: unknown;
      try {
        parseControl(text);
      } catch (e) {
        error = e;
      }
      expect({ text, error: error instanceof ProtocolError }).toEqual({ text, error: true });
    }
  });

  test("property: random text and random JSON either parse or throw ProtocolError", () => {
    const text = fc.oneof(
      fc.string({ unit: "binary", maxLength: 80 }),
      fc.json({ maxDepth: 3 }),
      fc
        .record({
          type: fc.constantFrom("hello", "expose", "exposed", "error", "x"),
          rest: fc.dictionary(
            fc.constantFrom(
              "id",
              "kind",
              "port",
              "tunnel",
              "ref",
              "host",
              "url",
              "code",
              "message",
              "protocol",
              "window",
            ),
            fc.jsonValue({ maxDepth: 1 }),
          ),
        })
        .map(({ type, rest }) => JSON.stringify({ ...rest, type })),
    );
    fc.assert(
      fc.property(text, (t) => {
        try {
          parseControl(t);
        } catch (error) {
          if (!(error instanceof ProtocolError)) throw error;
        }
      }),
      { numRuns: 2000 },
    );
  });
});

test("dataFrameStream: a DATA frame's stream id as decodeFrame reads it, 0 for every other frame, the same errors", () => {
  const max = 1024;
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 0xffffffff }), fc.integer({ min: 1, max: max }), (stream, size) => {
      const frame = encodeData(stream, new Uint8Array(size)).slice();
      expect(dataFrameStream(frame, max)).toBe(stream);
      expect(decodeFrame(frame, max)).toMatchObject({ type: FrameType.Data, stream });
    }),
  );
  for (const other of [
    encodeWindow(3, 5),
    encodeEnd(3),
    encodePing(7),
    encodeReset(3, 1, "x"),
    new Uint8Array(2),
  ])
    expect(dataFrameStream(other.slice(), max)).toBe(0);
  // Stream 0 is left to decodeFrame, which names the error.
  const zero = encodeData(1, new Uint8Array(4)).slice();
  zero.fill(0, 1, 5);
  expect(dataFrameStream(zero, max)).toBe(0);
  expect(() => decodeFrame(zero, max)).toThrow(ProtocolError);
  const empty = new Uint8Array(HEADER_LENGTH);
  empty[0] = FrameType.Data;
  empty[4] = 1;
  expect(() => dataFrameStream(empty, max)).toThrow(ProtocolError);
  expect(() => dataFrameStream(encodeData(1, new Uint8Array(max + 1)).slice(), max)).toThrow(ProtocolError);
});
