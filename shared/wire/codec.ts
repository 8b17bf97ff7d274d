/**
 * Binary frame codec. Every binary WebSocket message is one frame:
 *
 * ```text
 * type u8 | stream id u32 BE | body
 * OPEN    body: kind u8 | tunnel ref u32 BE | metadata (UTF-8 JSON)
 * DATA    body: payload bytes (1 .. maxFramePayload)
 * WINDOW  body: increment u32 BE (> 0)
 * END     body: empty
 * RESET   body: code u16 BE | reason (UTF-8, ≤ 256 bytes)
 * BATCH   stream id 0; body: repeated length u16 BE | frame (any type but BATCH)
 * GROW    body: increment u32 BE (> 0)
 * PING    stream id 0; body: token u32 BE
 * PONG    stream id 0; body: token u32 BE (the PING's)
 * FLOW_OPEN  id = flow id; body: tunnel ref u32 BE | metadata (UTF-8 JSON)
 * DATAGRAM   id = flow id; body: the datagram, whole (0 .. 65,507 bytes)
 * FLOW_CLOSE id = flow id; body: code u16 BE
 * ```
 * @module
 */

import {
  FrameType,
  HEADER_LENGTH,
  MAX_DATAGRAM,
  type OpenMeta,
  ProtocolError,
  type StreamKind,
} from "./protocol.ts";

/** A decoded OPEN frame. */
export interface OpenFrame {
  type: typeof FrameType.Open;
  stream: number;
  kind: StreamKind;
  tunnel: number;
  meta: OpenMeta;
}
/** A decoded DATA frame; `payload` is a view into the message, not a copy. */
export interface DataFrame {
  type: typeof FrameType.Data;
  stream: number;
  payload: Uint8Array;
}
/** A decoded WINDOW frame. */
export interface WindowFrame {
  type: typeof FrameType.Window;
  stream: number;
  increment: number;
}
/** A decoded END frame. */
export interface EndFrame {
  type: typeof FrameType.End;
  stream: number;
}
/** A decoded RESET frame. */
export interface ResetFrame {
  type: typeof FrameType.Reset;
  stream: number;
  code: number;
  reason: string;
}
/** A decoded GROW frame. */
export interface GrowFrame {
  type: typeof FrameType.Grow;
  stream: number;
  increment: number;
}
/** A decoded PING or PONG frame (stream id 0). */
export interface PingFrame {
  type: typeof FrameType.Ping | typeof FrameType.Pong;
  stream: 0;
  token: number;
}
/** A decoded FLOW_OPEN frame (UDP tunnels): a new flow of tunnel `tunnel`. */
export interface FlowOpenFrame {
  type: typeof FrameType.FlowOpen;
  /** The flow id (the header's id field). */
  stream: number;
  tunnel: number;
  meta: OpenMeta;
}
/** A decoded DATAGRAM frame; `payload` is a view into the message (it may be empty). */
export interface DatagramFrame {
  type: typeof FrameType.Datagram;
  /** The flow id. */
  stream: number;
  payload: Uint8Array;
}
/** A decoded FLOW_CLOSE frame. */
export interface FlowCloseFrame {
  type: typeof FrameType.FlowClose;
  /** The flow id. */
  stream: number;
  code: number;
}
/** Any decoded frame. */
export type Frame =
  | OpenFrame
  | DataFrame
  | WindowFrame
  | EndFrame
  | ResetFrame
  | GrowFrame
  | PingFrame
  | FlowOpenFrame
  | DatagramFrame
  | FlowCloseFrame;

/** Longest RESET reason in bytes; longer reasons are truncated when encoding. */
export const MAX_REASON_BYTES = 256;
/** Longest OPEN metadata in bytes. */
export const MAX_META_BYTES = 4096;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function readU32(b: Uint8Array, at: number): number {
  return (
    ((b[at] as number) * 0x1000000 +
      (((b[at + 1] as number) << 16) | ((b[at + 2] as number) << 8) | (b[at + 3] as number))) >>>
    0
  );
}

function writeU32(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = v >>> 16;
  b[at + 2] = v >>> 8;
  b[at + 3] = v;
}

function header(b: Uint8Array, type: FrameType, stream: number): Uint8Array {
  b[0] = type;
  writeU32(b, 1, stream);
  return b;
}

/**
 * The stream id of a well-formed DATA frame, or 0 when `b` is any other frame (decode it with
 * {@link decodeFrame}): the receive path's common case without a frame object per message.
 * @throws {ProtocolError} for a DATA frame that is empty or larger than `maxPayload`.
 */
export function dataFrameStream(b: Uint8Array, maxPayload: number): number {
  if (b[0] !== FrameType.Data || b.length < HEADER_LENGTH) return 0;
  const stream = readU32(b, 1);
  if (stream === 0) return 0; // decodeFrame names the error
  const bodyLength = b.length - HEADER_LENGTH;
  if (bodyLength === 0) throw new ProtocolError("empty DATA frame");
  if (bodyLength > maxPayload)
    throw new ProtocolError(`DATA frame of ${bodyLength} bytes exceeds ${maxPayload}`);
  return stream;
}

/**
 * Decodes one binary message.
 * @param maxPayload the largest DATA payload accepted.
 * @throws {ProtocolError} for truncated, oversized, unknown or otherwise malformed frames.
 */
export function decodeFrame(b: Uint8Array, maxPayload: number): Frame {
  if (b.length < HEADER_LENGTH)
    throw new ProtocolError(`frame of ${b.length} bytes is shorter than its header`);
  const type = b[0];
  const stream = readU32(b, 1);
  const bodyLength = b.length - HEADER_LENGTH;
  if (type === FrameType.Ping || type === FrameType.Pong) {
    if (stream !== 0 || bodyLength !== 4)
      throw new ProtocolError("PING/PONG frame must be stream 0 with 4 bytes");
    return { type, stream, token: readU32(b, HEADER_LENGTH) };
  }
  if (stream === 0) throw new ProtocolError("stream id 0 is reserved");
  switch (type) {
    case FrameType.Data:
      if (bodyLength === 0) throw new ProtocolError("empty DATA frame");
      if (bodyLength > maxPayload)
        throw new ProtocolError(`DATA frame of ${bodyLength} bytes exceeds ${maxPayload}`);
      return { type, stream, payload: b.subarray(HEADER_LENGTH) };
    case FrameType.Window:
    case FrameType.Grow: {
      const name = type === FrameType.Window ? "WINDOW" : "GROW";
      if (bodyLength !== 4) throw new ProtocolError(`${name} frame must carry exactly 4 bytes`);
      const increment = readU32(b, HEADER_LENGTH);
      if (increment === 0) throw new ProtocolError(`${name} increment of 0`);
      return { type, stream, increment };
    }
    case FrameType.End:
      if (bodyLength !== 0) throw new ProtocolError("END frame with a body");
      return { type, stream };
    case FrameType.Reset: {
      if (bodyLength < 2 || bodyLength > 2 + MAX_REASON_BYTES)
        throw new ProtocolError("RESET frame of bad length");
      const code = ((b[5] as number) << 8) | (b[6] as number);
      return { type, stream, code, reason: decodeText(b.subarray(7), "RESET reason") };
    }
    case FrameType.Open: {
      if (bodyLength < 5 || bodyLength > 5 + MAX_META_BYTES)
        throw new ProtocolError("OPEN frame of bad length");
      const kind = b[5] as StreamKind;
      const tunnel = readU32(b, 6);
      const meta = parseMeta(decodeText(b.subarray(10), "OPEN metadata"));
      return { type, stream, kind, tunnel, meta };
    }
    case FrameType.FlowOpen: {
      if (bodyLength < 4 || bodyLength > 4 + MAX_META_BYTES)
        throw new ProtocolError("FLOW_OPEN frame of bad length");
      const tunnel = readU32(b, 5);
      const meta = parseMeta(decodeText(b.subarray(9), "FLOW_OPEN metadata"));
      return { type, stream, tunnel, meta };
    }
    case FrameType.Datagram:
      if (bodyLength > MAX_DATAGRAM)
        throw new ProtocolError(`DATAGRAM of ${bodyLength} bytes exceeds ${MAX_DATAGRAM}`);
      return { type, stream, payload: b.subarray(HEADER_LENGTH) };
    case FrameType.FlowClose:
      if (bodyLength !== 2) throw new ProtocolError("FLOW_CLOSE frame must carry exactly 2 bytes");
      return { type, stream, code: ((b[5] as number) << 8) | (b[6] as number) };
    default:
      throw new ProtocolError(`unknown frame type ${type}`);
  }
}

/**
 * Calls `visit` with each frame of a BATCH message (views, no copies).
 * @throws {ProtocolError} when a length runs past the message, a frame is empty or nested, or the
 * batch is empty.
 */
export function forEachInBatch(b: Uint8Array, visit: (frame: Uint8Array) => void): void {
  if (b.length < HEADER_LENGTH + 2 || readU32(b, 1) !== 0) throw new ProtocolError("malformed BATCH frame");
  let at = HEADER_LENGTH;
  while (at < b.length) {
    if (at + 2 > b.length) throw new ProtocolError("BATCH frame ends inside a length");
    const length = ((b[at] as number) << 8) | (b[at + 1] as number);
    const end = at + 2 + length;
    if (length === 0 || end > b.length) throw new ProtocolError("BATCH entry of bad length");
    if (b[at + 2] === FrameType.Batch) throw new ProtocolError("BATCH inside BATCH");
    visit(b.subarray(at + 2, end));
    at = end;
  }
}

function decodeText(bytes: Uint8Array, what: string): string {
  try {
    return decoder.decode(bytes);
  } catch {
    throw new ProtocolError(`${what} is not UTF-8`);
  }
}

function parseMeta(text: string): OpenMeta {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ProtocolError("OPEN metadata is not JSON");
  }
  if (typeof value !== "object" || value === null || typeof (value as OpenMeta).remote !== "string")
    throw new ProtocolError("OPEN metadata lacks a remote address");
  const target = (value as OpenMeta).target;
  if (target !== undefined && (typeof target !== "string" || target.length > 80))
    throw new ProtocolError("OPEN metadata has a bad target");
  const local = (value as OpenMeta).local;
  if (local !== undefined && (typeof local !== "string" || local.length > 80))
    throw new ProtocolError("OPEN metadata has a bad local address");
  return value as OpenMeta;
}

/** Encodes an OPEN frame (rare: one per visitor, so it allocates). */
export function encodeOpen(stream: number, kind: StreamKind, tunnel: number, meta: OpenMeta): Uint8Array {
  const json = encoder.encode(JSON.stringify(meta));
  if (json.length > MAX_META_BYTES) throw new RangeError("OPEN metadata too long");
  const b = header(new Uint8Array(10 + json.length), FrameType.Open, stream);
  b[5] = kind;
  writeU32(b, 6, tunnel);
  b.set(json, 10);
  return b;
}

/** Encodes a FLOW_OPEN frame (one per flow, so it allocates). */
export function encodeFlowOpen(flow: number, tunnel: number, meta: OpenMeta): Uint8Array {
  const json = encoder.encode(JSON.stringify(meta));
  if (json.length > MAX_META_BYTES) throw new RangeError("FLOW_OPEN metadata too long");
  const b = header(new Uint8Array(9 + json.length), FrameType.FlowOpen, flow);
  writeU32(b, 5, tunnel);
  b.set(json, 9);
  return b;
}

/** Encodes a FLOW_CLOSE frame into `into` (at least 7 bytes) and returns the frame view. */
export function encodeFlowClose(
  flow: number,
  code: number,
  into: Uint8Array = new Uint8Array(7),
): Uint8Array {
  header(into, FrameType.FlowClose, flow);
  into[5] = code >>> 8;
  into[6] = code;
  return into.subarray(0, 7);
}

/**
 * Encodes a DATAGRAM frame into `into` (at least payload + 5 bytes, else a new buffer is made) and
 * returns the frame view. The batcher writes small ones straight into its batch instead
 * ({@link Batcher.pushFrame}).
 * @throws {RangeError} for a payload over {@link MAX_DATAGRAM}: a caller counts and drops those first.
 */
export function encodeDatagram(flow: number, payload: Uint8Array, into?: Uint8Array): Uint8Array {
  if (payload.length > MAX_DATAGRAM) throw new RangeError(`datagram of ${payload.length} bytes`);
  const needed = payload.length + HEADER_LENGTH;
  const b = into && into.length >= needed ? into : new Uint8Array(needed);
  header(b, FrameType.Datagram, flow);
  b.set(payload, HEADER_LENGTH);
  return b.subarray(0, needed);
}

/** Encodes a RESET frame; the reason is truncated to {@link MAX_REASON_BYTES}. */
export function encodeReset(stream: number, code: number, reason: string): Uint8Array {
  let text = encoder.encode(reason);
  if (text.length > MAX_REASON_BYTES) text = encoder.encode(reason.slice(0, MAX_REASON_BYTES / 4));
  const b = header(new Uint8Array(7 + text.length), FrameType.Reset, stream);
  b[5] = code >>> 8;
  b[6] = code;
  b.set(text, 7);
  return b;
}

/** Encodes a WINDOW frame into `into` (at least 9 bytes) and returns the frame view. */
export function encodeWindow(
  stream: number,
  increment: number,
  into: Uint8Array = new Uint8Array(9),
): Uint8Array {
  header(into, FrameType.Window, stream);
  writeU32(into, HEADER_LENGTH, increment);
  return into.subarray(0, 9);
}

/** Encodes a GROW frame into `into` (at least 9 bytes) and returns the frame view. */
export function encodeGrow(
  stream: number,
  increment: number,
  into: Uint8Array = new Uint8Array(9),
): Uint8Array {
  header(into, FrameType.Grow, stream);
  writeU32(into, HEADER_LENGTH, increment);
  return into.subarray(0, 9);
}

/** Encodes a PING (or, with `pong`, a PONG) frame carrying `token`. */
export function encodePing(token: number, pong = false): Uint8Array {
  const b = header(new Uint8Array(9), pong ? FrameType.Pong : FrameType.Ping, 0);
  writeU32(b, HEADER_LENGTH, token);
  return b;
}

/** Encodes an END frame into `into` (at least 5 bytes) and returns the frame view. */
export function encodeEnd(stream: number, into: Uint8Array = new Uint8Array(HEADER_LENGTH)): Uint8Array {
  return header(into, FrameType.End, stream).subarray(0, HEADER_LENGTH);
}

/** Bytes a scratch buffer for {@link encodeData} needs beyond the largest payload. */
export const DATA_SCRATCH_EXTRA = 32;

/**
 * Encodes a DATA frame into `into` (at least payload + {@link DATA_SCRATCH_EXTRA} bytes, else a new
 * buffer is made) and returns the frame view, which need not start at `into[0]`.
 * The relay passes one reused scratch buffer, so a chunk costs one copy and no allocation;
 * WebSocket `send()` copies what it cannot write at once, so the scratch is free again on return.
 * The payload lands at the same address modulo 16 as its source: JSC's `TypedArray.prototype.set`
 * copies ~10x faster (memcpy instead of a byte loop) when source and target are so aligned.
 */
export function encodeData(stream: number, payload: Uint8Array, into?: Uint8Array): Uint8Array {
  const needed = payload.length + DATA_SCRATCH_EXTRA;
  const b = into && into.length >= needed ? into : new Uint8Array(needed);
  const at = 16 + ((payload.byteOffset - b.byteOffset) & 15);
  const start = at - HEADER_LENGTH;
  b[start] = FrameType.Data;
  writeU32(b, start + 1, stream);
  b.set(payload, at);
  return b.subarray(start, at + payload.length);
}
