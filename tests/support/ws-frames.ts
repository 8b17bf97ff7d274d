/**
 * Test support, WebSocket frames (RFC 6455) written and read by hand: what a client sends (masked),
 * and a reader for what a server sends (unmasked), for tests that speak to a server-side WebSocket
 * over a raw socket.
 * @module
 */

/** A client frame: masked with a random key, FIN set unless `fin` is false. */
export function clientFrame(
  opcode: number,
  payload: Uint8Array | string,
  fin = true,
  masked = true,
): Uint8Array {
  const body = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  const n = body.length;
  const lengthBytes = n < 126 ? 0 : n < 65536 ? 2 : 8;
  const out = new Uint8Array(2 + lengthBytes + (masked ? 4 : 0) + n);
  out[0] = (fin ? 0x80 : 0) | opcode;
  out[1] = (masked ? 0x80 : 0) | (n < 126 ? n : n < 65536 ? 126 : 127);
  const view = new DataView(out.buffer);
  if (lengthBytes === 2) view.setUint16(2, n);
  else if (lengthBytes === 8) view.setBigUint64(2, BigInt(n));
  let at = 2 + lengthBytes;
  const mask = masked ? crypto.getRandomValues(new Uint8Array(4)) : new Uint8Array(4);
  if (masked) {
    out.set(mask, at);
    at += 4;
  }
  for (let i = 0; i < n; i++) out[at + i] = (body[i] as number) ^ (mask[i & 3] as number);
  return out;
}

/** A frame as a server sent it. */
export interface ServerFrame {
  fin: boolean;
  opcode: number;
  payload: Uint8Array;
}

/** Reads the server's frames out of a byte stream, however it was split. */
export class FrameReader {
  private buffer = new Uint8Array(0);
  readonly frames: ServerFrame[] = [];

  /** Adds bytes; returns the frames completed by them. */
  push(chunk: Uint8Array): ServerFrame[] {
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer);
    joined.set(chunk, this.buffer.length);
    this.buffer = joined;
    const done: ServerFrame[] = [];
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) break;
      let n = (b[1] as number) & 127;
      let at = 2;
      if (n === 126) {
        if (b.length < 4) break;
        n = new DataView(b.buffer, b.byteOffset).getUint16(2);
        at = 4;
      } else if (n === 127) {
        if (b.length < 10) break;
        n = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(2));
        at = 10;
      }
      if (b.length < at + n) break;
      done.push({
        fin: ((b[0] as number) & 0x80) !== 0,
        opcode: (b[0] as number) & 15,
        payload: b.slice(at, at + n),
      });
      this.buffer = b.subarray(at + n);
    }
    this.frames.push(...done);
    return done;
  }
}

/** The close code and reason of a close frame's payload. */
export function closeOf(frame: ServerFrame): { code: number; reason: string } {
  const p = frame.payload;
  return {
    code: p.length >= 2 ? ((p[0] as number) << 8) | (p[1] as number) : 1005,
    reason: new TextDecoder().decode(p.subarray(2)),
  };
}
