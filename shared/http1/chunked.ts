/**
 * The chunked transfer coding (RFC 9112 §7.1), scanned byte by byte to find where a body ends while
 * the bytes themselves pass through untouched: chunk data is skipped over, never copied; only the
 * trailer section (bounded like a head) is kept to be parsed.
 * @module
 */

import { type HeaderList, HttpParseError, latin1, MAX_HEAD_BYTES, parseFieldLines } from "./head.ts";

/** Longest chunk-size line (size and extensions) accepted. */
export const MAX_CHUNK_LINE = 4096;

const CR = 13;
const LF = 10;
const MAX_CHUNK_SIZE = Number.MAX_SAFE_INTEGER;

const Chunk = {
  Size: 0,
  Ext: 1,
  SizeLf: 2,
  Data: 3,
  DataCr: 4,
  DataLf: 5,
  Line: 6,
  LineLf: 7,
  EndLf: 8,
  Line1: 9,
};

function hexValue(b: number): number {
  if (b >= 48 && b <= 57) return b - 48;
  const l = b | 0x20;
  return l >= 97 && l <= 102 ? l - 87 : -1;
}

/** Finds the end of a chunked body (RFC 9112 §7.1) without copying its data. */
export class ChunkedScanner {
  private state = Chunk.Size;
  private size = 0;
  private digits = 0;
  private line = 0;
  private trailer = new Uint8Array(0);
  private trailerLength = 0;

  /** Starts a new body. */
  reset(): void {
    this.state = Chunk.Size;
    this.size = this.digits = this.line = this.trailerLength = 0;
  }

  /** The trailer fields of the body just ended. */
  trailers(): HeaderList {
    if (this.trailerLength === 0) return [];
    const text = latin1(this.trailer.subarray(0, this.trailerLength));
    return parseFieldLines(text.slice(0, -2).split("\r\n"));
  }

  /** Index just past the body's end in `b`, or -1 when all of `b[at..]` belongs to the body. */
  scan(b: Uint8Array, at: number): number {
    while (at < b.length) {
      if (this.state === Chunk.Data) {
        const take = Math.min(this.size, b.length - at);
        at += take;
        this.size -= take;
        if (this.size === 0) this.state = Chunk.DataCr;
        continue;
      }
      if (this.step(b[at] as number)) return at + 1;
      at++;
    }
    return -1;
  }

  /** Consumes one framing byte; true when it ends the body. */
  private step(c: number): boolean {
    switch (this.state) {
      case Chunk.Size:
        return this.sizeByte(c);
      case Chunk.Ext:
        if (c === CR) this.state = Chunk.SizeLf;
        else if ((c < 0x20 && c !== 9) || c === 0x7f) throw new HttpParseError("bad chunk extension");
        else if (++this.line > MAX_CHUNK_LINE) throw new HttpParseError("chunk line too long");
        return false;
      case Chunk.SizeLf:
        this.expect(c, LF);
        this.state = this.size === 0 ? Chunk.Line1 : Chunk.Data;
        this.digits = this.line = 0;
        return false;
      case Chunk.DataCr:
        this.expect(c, CR);
        this.state = Chunk.DataLf;
        return false;
      case Chunk.DataLf:
        this.expect(c, LF);
        this.state = Chunk.Size;
        return false;
      default:
        return this.trailerByte(c);
    }
  }

  private sizeByte(c: number): boolean {
    const d = hexValue(c);
    if (d >= 0) {
      if (this.size > (MAX_CHUNK_SIZE - d) / 16) throw new HttpParseError("chunk size overflows");
      this.size = this.size * 16 + d;
      if (++this.digits + this.line > MAX_CHUNK_LINE) throw new HttpParseError("chunk line too long");
      return false;
    }
    if (this.digits === 0) throw new HttpParseError("bad chunk size");
    if (c === CR) this.state = Chunk.SizeLf;
    else if (c === 59 || c === 32 || c === 9) this.state = Chunk.Ext;
    else throw new HttpParseError("bad chunk size");
    return false;
  }

  /** The trailer section: field lines kept (bounded) for parsing, then the final CRLF. */
  private trailerByte(c: number): boolean {
    if (this.state === Chunk.EndLf) {
      this.expect(c, LF);
      return true;
    }
    if (this.state === Chunk.Line1 && c === CR) {
      this.state = Chunk.EndLf;
      return false;
    }
    if (this.state === Chunk.LineLf) this.expect(c, LF);
    else if (c === LF) throw new HttpParseError("bare LF in the trailer section");
    this.state = this.state === Chunk.LineLf ? Chunk.Line1 : c === CR ? Chunk.LineLf : Chunk.Line;
    this.keep(c);
    return false;
  }

  private keep(c: number): void {
    if (this.trailerLength >= MAX_HEAD_BYTES)
      throw new HttpParseError("trailer section larger than 64 KiB", 431);
    if (this.trailerLength === this.trailer.length) {
      const grown = new Uint8Array(Math.max(256, this.trailer.length * 2));
      grown.set(this.trailer);
      this.trailer = grown;
    }
    this.trailer[this.trailerLength++] = c;
  }

  private expect(c: number, wanted: number): void {
    if (c !== wanted) throw new HttpParseError("malformed chunked encoding");
  }
}
