/**
 * Inspector head scan: the little the capture needs from an HTTP/1.1 head while the bytes go by, read
 * in one pass without building strings: where the head ends, the start line's pieces (offsets into the
 * bytes, the status as a number) and how the body is delimited (Content-Length, Transfer-Encoding, an
 * upgrade). The full header list is built only when the page or the API reads an exchange
 * ({@link fieldsOf}), from the head bytes kept as they were.
 *
 * It checks what framing depends on (the start line's shape, the framing fields' values) and leaves
 * the rest unchecked: the server's framer already refused malformed requests, and a malformed response
 * never reaches the visitor (the server answers 502), so the inspector shows such bytes as they were.
 * @module
 */

import { type HeaderList, latin1, MAX_HEAD_BYTES } from "../../http1/framer.ts";

/** How a message's body is delimited. */
export const Body = { None: 0, Length: 1, Chunked: 2, Close: 3, Passthrough: 4 } as const;
export type Body = (typeof Body)[keyof typeof Body];

/** Bytes that are not the HTTP/1.1 the scan understands (the capture stops for that connection). */
export class ScanError extends Error {
  override name = "ScanError";
}

/** What {@link scanRequestHead} and {@link scanResponseHead} found; one object reused for every head. */
export interface HeadScan {
  /** Request: where the method ends (the first space). Response: unused. */
  methodEnd: number;
  /** Request: where the target ends (the second space). */
  targetEnd: number;
  /** Response: the status code. */
  status: number;
  body: Body;
  /** The body's length when `body` is {@link Body.Length}. */
  contentLength: number;
  /** Request: HTTP/1.1 with an Upgrade field and `Connection: upgrade` (a 101 may switch protocols). */
  upgrade: boolean;
}

const CR = 13;
const LF = 10;
const SP = 32;
const COLON = 58;
const TOKEN = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  TOKEN[c.charCodeAt(0)] = 1;

/** Fields framing depends on, by the length of their name. */
const CONTENT_LENGTH = "content-length";
const TRANSFER_ENCODING = "transfer-encoding";
const UPGRADE = "upgrade";
const CONNECTION = "connection";

/** Whether `b[at…]` spells `lower` in any case (`lower` is lower case). */
function named(b: Uint8Array, at: number, lower: string): boolean {
  for (let i = 0; i < lower.length; i++)
    if (((b[at + i] as number) | 0x20) !== lower.charCodeAt(i)) return false;
  return true;
}

/** Index of the first byte in `b[from, to)` other than space and tab. */
function skipSpace(b: Uint8Array, from: number, to: number): number {
  while (from < to && (b[from] === SP || b[from] === 9)) from++;
  return from;
}

/** A Content-Length value (`n` or a list of equal `n`s) in `b[from, to)`. */
function contentLength(b: Uint8Array, from: number, to: number): number {
  let length = -1;
  let at = from;
  while (at <= to) {
    at = skipSpace(b, at, to);
    let n = 0;
    let digits = 0;
    for (let c = b[at] as number; at < to && c >= 48 && c <= 57; c = b[++at] as number) {
      n = n * 10 + (c - 48);
      if (++digits > 15) throw new ScanError("bad Content-Length");
    }
    at = skipSpace(b, at, to);
    if (digits === 0 || (at < to && b[at] !== 44)) throw new ScanError("bad Content-Length");
    if (length >= 0 && n !== length) throw new ScanError("conflicting Content-Length values");
    length = n;
    at++; // past the comma (or the end)
  }
  return length;
}

/** Whether the last coding listed in `b[from, to)` is chunked. */
function chunkedLast(b: Uint8Array, from: number, to: number): boolean {
  let end = to;
  while (end > from && (b[end - 1] === SP || b[end - 1] === 9)) end--;
  const start = end - 7;
  if (start < from || !named(b, start, "chunked")) return false;
  const before = start - 1;
  return before < from || b[before] === SP || b[before] === 9 || b[before] === 44;
}

/** Whether the comma-separated list in `b[from, to)` holds the token `lower`. */
function hasToken(b: Uint8Array, from: number, to: number, lower: string): boolean {
  let at = from;
  while (at < to) {
    at = skipSpace(b, at, to);
    let end = at;
    while (end < to && b[end] !== 44) end++;
    let last = end;
    while (last > at && (b[last - 1] === SP || b[last - 1] === 9)) last--;
    if (last - at === lower.length && named(b, at, lower)) return true;
    at = end + 1;
  }
  return false;
}

/** Framing facts of the field lines from `from`, gathered into `out`; returns the head's end or -1. */
function scanFields(b: Uint8Array, start: number, from: number, request: boolean, out: HeadScan): number {
  const to = b.length;
  let length = -1;
  let chunked = false;
  let transferEncoding = false;
  let upgrade = false;
  let connectionUpgrade = false;
  let at = from;
  for (;;) {
    if (at - start > MAX_HEAD_BYTES) throw new ScanError("head larger than 64 KiB");
    if (at + 1 >= to) return -1;
    if (b[at] === CR) {
      if (b[at + 1] !== LF) throw new ScanError("bare CR in the head");
      at += 2;
      break;
    }
    // One walk over the line (name, colon, value to its CR): a native indexOf per line cost more
    // for lines this short.
    let colon = at;
    while (colon < to && TOKEN[b[colon] as number] === 1) colon++;
    if (colon === to) return -1;
    if (colon === at || b[colon] !== COLON) throw new ScanError("malformed field line");
    let cr = colon + 1;
    while (cr < to && b[cr] !== CR) cr++;
    if (cr + 1 >= to) return -1;
    if (b[cr + 1] !== LF) throw new ScanError("bare CR in the head");
    const value = colon + 1;
    switch (colon - at) {
      case 14:
        if (named(b, at, CONTENT_LENGTH)) {
          const n = contentLength(b, value, cr);
          if (length >= 0 && n !== length) throw new ScanError("conflicting Content-Length values");
          length = n;
        }
        break;
      case 17:
        if (named(b, at, TRANSFER_ENCODING)) {
          transferEncoding = true;
          chunked = chunkedLast(b, value, cr);
        }
        break;
      case 7:
        if (request && named(b, at, UPGRADE) && skipSpace(b, value, cr) < cr) upgrade = true;
        break;
      case 10:
        if (request && named(b, at, CONNECTION) && hasToken(b, value, cr, UPGRADE)) connectionUpgrade = true;
        break;
    }
    at = cr + 2;
  }
  out.contentLength = 0;
  out.upgrade = upgrade && connectionUpgrade;
  if (transferEncoding) {
    if (length >= 0) throw new ScanError("both Transfer-Encoding and Content-Length");
    if (!chunked && request) throw new ScanError("chunked is not the final transfer coding");
    out.body = chunked ? Body.Chunked : Body.Close;
  } else if (length >= 0) {
    out.body = Body.Length;
    out.contentLength = length;
  } else out.body = request ? Body.None : Body.Close;
  return at;
}

/** Checks `HTTP/d.d` at `at`; returns where it ends, or -1 when the bytes stop first. */
function version(b: Uint8Array, at: number): number {
  if (at + 8 > b.length) {
    // Incomplete: what is there must still be the start of a version.
    for (let i = at; i < b.length; i++)
      if (i - at < 5 && b[i] !== "HTTP/".charCodeAt(i - at)) throw new ScanError("bad HTTP version");
    return -1;
  }
  for (let i = 0; i < 5; i++)
    if (b[at + i] !== "HTTP/".charCodeAt(i)) throw new ScanError("bad HTTP version");
  if (b[at + 6] !== 46) throw new ScanError("bad HTTP version");
  const major = b[at + 5] as number;
  const minor = b[at + 7] as number;
  if (major < 48 || major > 57 || minor < 48 || minor > 57) throw new ScanError("bad HTTP version");
  return at + 8;
}

/**
 * Scans the request head at `b[start…]`: returns the index just past its blank line, or -1 while the
 * bytes end before it; fills `out`.
 * @throws {ScanError} when it is not an HTTP/1.x request head.
 */
export function scanRequestHead(b: Uint8Array, start: number, out: HeadScan): number {
  const to = b.length;
  let at = start;
  while (at < to && TOKEN[b[at] as number] === 1) at++;
  if (at === to) return -1;
  if (at === start || b[at] !== SP) throw new ScanError("bad method");
  out.methodEnd = at;
  const target = ++at;
  for (let c = b[at] as number; at < to && c > SP && c < 0x7f; c = b[++at] as number);
  if (at === to) return -1;
  if (at === target || b[at] !== SP) throw new ScanError("bad request target");
  out.targetEnd = at;
  if (out.methodEnd - start === 7 && named(b, start, "connect") && b[start] === 67)
    throw new ScanError("CONNECT is not supported");
  at = version(b, at + 1);
  if (at < 0 || at + 1 >= to) return -1;
  if (b[at] !== CR || b[at + 1] !== LF) throw new ScanError("malformed request line");
  const http11 = b[at - 3] === 49 && b[at - 1] === 49;
  const end = scanFields(b, start, at + 2, true, out);
  if (!http11) out.upgrade = false;
  return end;
}

/**
 * Scans the response head at `b[start…]` to a request made with `method` (`HEAD` answers carry no
 * body): returns the index just past its blank line, or -1 while the bytes end before it; fills `out`.
 * @throws {ScanError} when it is not an HTTP/1.x response head.
 */
export function scanResponseHead(b: Uint8Array, start: number, head: boolean, out: HeadScan): number {
  const to = b.length;
  let at = version(b, start);
  if (at < 0 || at + 4 >= to) return -1;
  const d1 = (b[at + 1] as number) - 48;
  const d2 = (b[at + 2] as number) - 48;
  const d3 = (b[at + 3] as number) - 48;
  if (b[at] !== SP || d1 < 1 || d1 > 9 || d2 < 0 || d2 > 9 || d3 < 0 || d3 > 9)
    throw new ScanError("bad status code");
  const status = d1 * 100 + d2 * 10 + d3;
  out.status = status;
  at += 4;
  if (b[at] !== SP && b[at] !== CR) throw new ScanError("bad status code");
  const lineEnd = b.indexOf(CR, at);
  if (lineEnd < 0 || lineEnd + 1 >= to) return -1;
  if (b[lineEnd + 1] !== LF) throw new ScanError("bare CR in the head");
  const end = scanFields(b, start, lineEnd + 2, false, out);
  if (end < 0) return end;
  if (status === 101) out.body = Body.Passthrough;
  else if (status < 200 || status === 204 || status === 304 || head) out.body = Body.None;
  return end;
}

/**
 * The field lines of a head as `[name, value]` pairs (values trimmed of spaces and tabs), read
 * leniently: a line without a colon is skipped, never an error (the bytes already went by).
 */
export function fieldsOf(head: Uint8Array): HeaderList {
  const lines = latin1(head).split("\r\n");
  const fields: HeaderList = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] as string;
    if (line === "") continue;
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    fields.push([line.slice(0, colon), line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "")]);
  }
  return fields;
}
