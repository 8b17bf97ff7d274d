/**
 * HTTP/1.1 message heads (RFC 9112): parsing a request line or status line and its field lines,
 * deciding how the body is framed (RFC 9112 §6.3), and serializing a head back to bytes.
 *
 * Heads are decoded as Latin-1, one character per byte, so any byte a field value may carry
 * (obs-text included) survives a parse → serialize round trip unchanged. Lines must end in CRLF;
 * a bare CR or LF is an error, as is obs-fold.
 * @module
 */

/** Longest head accepted, start line through the blank line, in bytes. */
export const MAX_HEAD_BYTES = 64 * 1024;
/** Most field lines accepted in one head (or one trailer section). */
export const MAX_HEADERS = 200;

/** A malformed or unsupported message; `status` is what a server would answer (400, 431, 501, 505, 502). */
export class HttpParseError extends Error {
  override name = "HttpParseError";
  /** The suggested response status. */
  readonly status: number;
  constructor(message: string, status = 400) {
    super(message);
    this.status = status;
  }
}

/** Field lines in wire order, duplicates kept, names in their original case. */
export type HeaderList = [name: string, value: string][];

/** How a message body is delimited: absent, Content-Length, chunked, by connection close, or not HTTP after the head. */
export type BodyKind = "none" | "length" | "chunked" | "close" | "passthrough";

/** What {@link serializeHead} needs for a request. */
export interface RequestHeadLine {
  method: string;
  target: string;
  version: string;
  headers: HeaderList;
}

/** What {@link serializeHead} needs for a response. */
export interface ResponseHeadLine {
  version: string;
  status: number;
  reason: string;
  headers: HeaderList;
}

/** Facts common to parsed heads. */
export interface HeadFraming {
  /** Bytes from the start line through the blank line (empty lines skipped before it not counted). */
  headLength: number;
  /** How the body is delimited. */
  body: BodyKind;
  /** The body length when `body` is "length", else 0. */
  contentLength: number;
  /** Whether the sender expects the connection to stay open after this message. */
  keepAlive: boolean;
}

/** A parsed request head. */
export interface RequestHead extends RequestHeadLine, HeadFraming {
  body: "none" | "length" | "chunked";
  /** `Expect: 100-continue` on an HTTP/1.1 request. */
  expectContinue: boolean;
  /** HTTP/1.1 with `Upgrade` and `Connection: upgrade`: a 101 answer turns the connection into raw bytes. */
  upgrade: boolean;
}

/** A parsed response head. */
export interface ResponseHead extends ResponseHeadLine, HeadFraming {}

const CR = 13;
const LF = 10;
const TOKEN = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  TOKEN[c.charCodeAt(0)] = 1;

/** Whether `s` is a non-empty RFC 9110 token (methods, field names, codings). */
export function isToken(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) if (TOKEN[s.charCodeAt(i)] !== 1) return false;
  return true;
}

/** Whether `s` may be a field value: no control characters but HTAB, nothing above 0xFF. */
export function isFieldValue(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if ((c < 0x20 && c !== 9) || c === 0x7f || c > 0xff) return false;
  }
  return true;
}

/**
 * Index just past the first CRLFCRLF in `bytes[from, to)`, or -1.
 */
export function findHeadEnd(bytes: Uint8Array, from = 0, to = bytes.length): number {
  // A usual head ends within its first few hundred bytes: a loop finds it there for less than a
  // native indexOf per line; past that (a large head, or bytes that are none) indexOf's scan is faster.
  const near = Math.min(to - 3, from + FIND_NEAR);
  let i = from;
  for (; i < near; i++)
    if (bytes[i] === CR && bytes[i + 1] === LF && bytes[i + 2] === CR && bytes[i + 3] === LF) return i + 4;
  for (i = bytes.indexOf(CR, i); i >= 0 && i + 4 <= to; i = bytes.indexOf(CR, i + 1)) {
    if (bytes[i + 1] === LF && bytes[i + 2] === CR && bytes[i + 3] === LF) return i + 4;
  }
  return -1;
}

/** How far {@link findHeadEnd} looks byte by byte before it hands over to indexOf. */
const FIND_NEAR = 512;

/** Decodes bytes one character per byte (true ISO-8859-1, unlike TextDecoder's "latin1"). */
export function latin1(bytes: Uint8Array): string {
  // Buffer's latin1 is one char per byte, natively (a JS loop over fromCharCode was 3x slower). Socket
  // reads are Buffers already: wrapping one again cost more than decoding it (~100 → ~55 ns for 60 bytes).
  if (bytes instanceof Buffer) return bytes.toString("latin1");
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}

/** `latin1(bytes.subarray(from, to))`; short ranges in a loop (a view and a Buffer around it cost ~200 ns, the loop ~25 for 2 bytes). */
function latin1Range(bytes: Uint8Array, from: number, to: number): string {
  if (to - from > 16) return latin1(bytes.subarray(from, to));
  let text = "";
  for (let i = from; i < to; i++) text += String.fromCharCode(bytes[i] as number);
  return text;
}

/** Splits a block of CRLF-terminated lines; the block must end in CRLF. */
function splitLines(text: string): string[] {
  if (BARE_CR_OR_LF.test(text)) throw new HttpParseError("bare CR or LF in the head");
  const lines = text.split("\r\n");
  lines.pop();
  return lines;
}

/** A CR not followed by LF, or an LF not preceded by CR: one native scan of the whole head. */
const BARE_CR_OR_LF = /\r(?!\n)|(?<!\r)\n/;

/**
 * Parses field lines (`name: value`, value trimmed of spaces and tabs).
 * @throws {HttpParseError} on obs-fold, a bad name or value, or more than {@link MAX_HEADERS} lines.
 */
export function parseFieldLines(lines: readonly string[]): HeaderList {
  if (lines.length > MAX_HEADERS) throw new HttpParseError(`more than ${MAX_HEADERS} header fields`, 431);
  const headers: HeaderList = [];
  for (const line of lines) {
    const first = line.charCodeAt(0);
    if (first === 32 || first === 9) throw new HttpParseError("obs-fold (a line starting with whitespace)");
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    if (colon < 0 || !isToken(name)) throw new HttpParseError("bad header field name");
    const value = trimSpaces(line, colon + 1);
    if (!isFieldValue(value)) throw new HttpParseError(`bad value in header ${name}`);
    headers.push([name, value]);
  }
  return headers;
}

/** `line` from `start`, without leading and trailing spaces and tabs (only those: OWS, RFC 9110 §5.6.3). */
function trimSpaces(line: string, start: number): string {
  let end = line.length;
  while (start < end && (line.charCodeAt(start) === 32 || line.charCodeAt(start) === 9)) start++;
  while (end > start && (line.charCodeAt(end - 1) === 32 || line.charCodeAt(end - 1) === 9)) end--;
  return line.slice(start, end);
}

/** Whether field name `n` is `lower` (already lower-case), ignoring case; the length check spares most lowercasing. */
export function isField(n: string, lower: string): boolean {
  return n.length === lower.length && (n === lower || n.toLowerCase() === lower);
}

/** Every value of the named field (case-insensitive), in order. */
export function headerValues(headers: HeaderList, name: string): string[] {
  const lower = name.toLowerCase();
  const values: string[] = [];
  for (const [n, v] of headers) if (isField(n, lower)) values.push(v);
  return values;
}

/** The comma-separated list elements of every value of the named field, lowercased, empties dropped. */
export function headerTokens(headers: HeaderList, name: string): string[] {
  const tokens: string[] = [];
  for (const value of headerValues(headers, name))
    for (const part of value.split(",")) {
      const token = part.trim().toLowerCase();
      if (token) tokens.push(token);
    }
  return tokens;
}

function parseVersion(version: string, status: number): string {
  if (version === "HTTP/1.1" || version === "HTTP/1.0") return version;
  if (/^HTTP\/\d\.\d$/.test(version)) throw new HttpParseError(`unsupported version ${version}`, 505);
  throw new HttpParseError("bad HTTP version", status);
}

function parseContentLength(values: string[]): number {
  let length = -1;
  for (const value of values)
    for (const part of value.split(",")) {
      const digits = part.trim();
      if (!/^\d{1,15}$/.test(digits)) throw new HttpParseError("bad Content-Length");
      const n = Number(digits);
      if (length >= 0 && n !== length) throw new HttpParseError("conflicting Content-Length values");
      length = n;
    }
  return length;
}

/** Whether a Transfer-Encoding list ends in chunked; throws for requests whose codings cannot be relayed. */
function chunkedLast(codings: string[], request: boolean): boolean {
  const last = codings[codings.length - 1];
  if (!request) return last === "chunked";
  if (last !== "chunked") throw new HttpParseError("chunked is not the final transfer coding");
  if (codings.indexOf("chunked") !== codings.length - 1) throw new HttpParseError("chunked applied twice");
  if (codings.length > 1) throw new HttpParseError(`unsupported transfer coding ${codings[0]}`, 501);
  return true;
}

interface Framing {
  body: BodyKind;
  contentLength: number;
}

/** The fields framing and routing depend on, gathered in one pass over a head's fields. */
interface FieldScan {
  hosts: string[];
  /** Connection tokens, lower case. */
  connection: string[];
  /** Transfer-Encoding tokens, lower case; null when the field is absent. */
  transferEncoding: string[] | null;
  contentLength: string[];
  /** Some Upgrade field has a value. */
  upgrade: boolean;
  /** Expect tokens, lower case. */
  expect: string[];
}

/** Appends the comma-separated list elements of `value`, lowercased, empties dropped. */
function pushTokens(into: string[], value: string): void {
  for (const part of value.split(",")) {
    const token = part.trim().toLowerCase();
    if (token) into.push(token);
  }
}

/** One pass over the fields (this runs for every message): names lowercased only when their length fits. */
function scanFields(headers: HeaderList): FieldScan {
  const scan: FieldScan = {
    hosts: [],
    connection: [],
    transferEncoding: null,
    contentLength: [],
    upgrade: false,
    expect: [],
  };
  for (const [name, value] of headers)
    switch (name.length) {
      case 4:
        if (isField(name, "host")) scan.hosts.push(value);
        break;
      case 6:
        if (isField(name, "expect")) pushTokens(scan.expect, value);
        break;
      case 7:
        if (isField(name, "upgrade") && value !== "") scan.upgrade = true;
        break;
      case 10:
        if (isField(name, "connection")) pushTokens(scan.connection, value);
        break;
      case 14:
        if (isField(name, "content-length")) scan.contentLength.push(value);
        break;
      case 17:
        if (isField(name, "transfer-encoding")) {
          scan.transferEncoding ??= [];
          pushTokens(scan.transferEncoding, value);
        }
        break;
    }
  return scan;
}

/** RFC 9112 §6.3 for a message that may have a body. */
function bodyFraming(scan: FieldScan, version: string, request: boolean): Framing {
  const te = scan.transferEncoding;
  const cl = scan.contentLength;
  if (te !== null) {
    if (cl.length > 0) throw new HttpParseError("both Transfer-Encoding and Content-Length");
    if (version === "HTTP/1.0") throw new HttpParseError("Transfer-Encoding in an HTTP/1.0 message");
    return { body: chunkedLast(te, request) ? "chunked" : "close", contentLength: 0 };
  }
  if (cl.length > 0) return { body: "length", contentLength: parseContentLength(cl) };
  return { body: request ? "none" : "close", contentLength: 0 };
}

function keepAliveOf(connection: readonly string[], version: string): boolean {
  if (connection.includes("close")) return false;
  return version === "HTTP/1.1" || connection.includes("keep-alive");
}

/** Splits a start line into exactly three parts at single spaces (the last may hold spaces if `rest`). */
function startLineParts(line: string, rest: boolean): [string, string, string] {
  const a = line.indexOf(" ");
  const b = a < 0 ? -1 : line.indexOf(" ", a + 1);
  if (a < 0) throw new HttpParseError("malformed start line");
  if (b < 0) return rest ? [line.slice(0, a), line.slice(a + 1), ""] : ["", "", ""];
  return [line.slice(0, a), line.slice(a + 1, b), line.slice(b + 1)];
}

function checkTarget(method: string, target: string): void {
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f) throw new HttpParseError("bad character in the request target");
  }
  if (target.startsWith("/") || /^https?:\/\/[^/?#]/i.test(target)) return;
  if (target === "*" && method === "OPTIONS") return;
  if (method === "CONNECT" && /^[^/?#@]+:\d+$/.test(target)) return;
  throw new HttpParseError("bad request target");
}

/** Parses the exact bytes of a request head (through CRLFCRLF). */
export function parseRequestHeadBytes(bytes: Uint8Array): RequestHead {
  const lines = splitLines(latin1(bytes));
  const [method, target, version] = startLineParts(lines[0] ?? "", false);
  if (!isToken(method)) throw new HttpParseError("bad method");
  checkTarget(method, target);
  parseVersion(version, 400);
  const headers = parseFieldLines(lines.slice(1, -1));
  const scan = scanFields(headers);
  const hosts = scan.hosts;
  if (hosts.length > 1) throw new HttpParseError("more than one Host header");
  if (hosts.length === 0 && version === "HTTP/1.1") throw new HttpParseError("missing Host header");
  // RFC 9112 §3.2.2 has an origin server ignore Host for an absolute-form target; a gateway that routes
  // by name must not let the two disagree (the backend would see another tunnel's Host): refuse.
  const authority = /^https?:\/\/(?:[^/?#@]*@)?([^/?#]*)/i.exec(target)?.[1];
  if (authority !== undefined && hosts.length === 1 && authority.toLowerCase() !== hosts[0]?.toLowerCase())
    throw new HttpParseError("the request target names another host than the Host header");
  const http11 = version === "HTTP/1.1";
  const framing = bodyFraming(scan, version, true);
  return {
    method,
    target,
    version,
    headers,
    headLength: bytes.length,
    body: framing.body as RequestHead["body"],
    contentLength: framing.contentLength,
    keepAlive: keepAliveOf(scan.connection, version),
    expectContinue: http11 && scan.expect.includes("100-continue"),
    upgrade: http11 && scan.upgrade && scan.connection.includes("upgrade"),
  };
}

/**
 * The fields a response's framing depends on (Connection, Content-Length, Transfer-Encoding), with
 * the same line checks as {@link parseFieldLines} where framing could be misread (no obs-fold, a colon
 * on every line), but without building the whole list or validating fields nobody reads: a proxy that
 * passes the response on untouched only needs to know where it ends.
 */
function framingFieldLines(lines: readonly string[]): HeaderList {
  if (lines.length > MAX_HEADERS) throw new HttpParseError(`more than ${MAX_HEADERS} header fields`, 431);
  const fields: HeaderList = [];
  for (const line of lines) {
    const first = line.charCodeAt(0);
    if (first === 32 || first === 9) throw new HttpParseError("obs-fold (a line starting with whitespace)");
    const colon = line.indexOf(":");
    if (colon <= 0) throw new HttpParseError("bad header field name");
    if (colon !== 10 && colon !== 14 && colon !== 17) continue;
    const name = line.slice(0, colon);
    if (!isToken(name)) throw new HttpParseError("bad header field name");
    fields.push([name, trimSpaces(line, colon + 1)]);
  }
  return fields;
}

/**
 * Parses the exact bytes of a response head (through CRLFCRLF) to a request made with `method`.
 * With `keepFields` false the head's `headers` is empty: only its framing is read (see
 * {@link framingFieldLines}).
 */
export function parseResponseHeadBytes(bytes: Uint8Array, method: string, keepFields = true): ResponseHead {
  const lines = splitLines(latin1(bytes));
  const [version, code, reason] = startLineParts(lines[0] ?? "", true);
  parseVersion(version, 502);
  if (!/^[1-9]\d\d$/.test(code)) throw new HttpParseError("bad status code", 502);
  if (!isFieldValue(reason)) throw new HttpParseError("bad reason phrase", 502);
  const status = Number(code);
  const fieldLines = lines.slice(1, -1);
  const headers = keepFields ? parseFieldLines(fieldLines) : [];
  const scan = scanFields(keepFields ? headers : framingFieldLines(fieldLines));
  let framing: Framing = { body: "none", contentLength: 0 };
  if (status === 101 || (method === "CONNECT" && status >= 200 && status < 300))
    framing = { body: "passthrough", contentLength: 0 };
  else if (status >= 200 && status !== 204 && status !== 304 && method !== "HEAD")
    framing = bodyFraming(scan, version, false);
  const keepAlive =
    framing.body !== "close" && framing.body !== "passthrough" && keepAliveOf(scan.connection, version);
  const { body, contentLength } = framing;
  return { version, status, reason, headers, headLength: bytes.length, body, contentLength, keepAlive };
}

function headOf<H>(bytes: Uint8Array, parse: (head: Uint8Array) => H): H | null {
  const end = findHeadEnd(bytes, 0, Math.min(bytes.length, MAX_HEAD_BYTES));
  if (end >= 0) return parse(bytes.subarray(0, end));
  if (bytes.length >= MAX_HEAD_BYTES) throw new HttpParseError("head larger than 64 KiB", 431);
  return null;
}

/**
 * Parses the request head at the start of `bytes`; null while it is incomplete.
 * @throws {HttpParseError} when it is malformed or longer than {@link MAX_HEAD_BYTES}.
 */
export function parseRequestHead(bytes: Uint8Array): RequestHead | null {
  return headOf(bytes, parseRequestHeadBytes);
}

/**
 * Parses the response head at the start of `bytes`, answering a `method` request; null while incomplete.
 * @throws {HttpParseError} when it is malformed or longer than {@link MAX_HEAD_BYTES}.
 */
export function parseResponseHead(bytes: Uint8Array, method = "GET"): ResponseHead | null {
  return headOf(bytes, (head) => parseResponseHeadBytes(head, method));
}

function checkSerializable(head: RequestHeadLine | ResponseHeadLine): void {
  if (!/^HTTP\/\d\.\d$/.test(head.version)) throw new RangeError("bad HTTP version");
  if ("method" in head) {
    if (!isToken(head.method) || !/^[\x21-\x7e]+$/.test(head.target))
      throw new RangeError("bad request line");
  } else if (
    !Number.isInteger(head.status) ||
    head.status < 100 ||
    head.status > 999 ||
    !isFieldValue(head.reason)
  )
    throw new RangeError("bad status line");
  for (const [name, value] of head.headers)
    if (!isToken(name) || !isFieldValue(value)) throw new RangeError(`bad header ${name}`);
}

/**
 * Serializes a head to bytes: start line, field lines in order, blank line, all CRLF.
 * @throws {RangeError} for anything that would not parse back the same (CR/LF in a value, bad name…).
 */
export function serializeHead(head: RequestHeadLine | ResponseHeadLine, validated = false): Uint8Array {
  // `validated`: every field came from our parser or was checked by its maker (forwardRequestHead).
  if (!validated) checkSerializable(head);
  let text =
    "method" in head
      ? `${head.method} ${head.target} ${head.version}\r\n`
      : `${head.version} ${head.status} ${head.reason}\r\n`;
  for (const [name, value] of head.headers) text += `${name}: ${value}\r\n`;
  text += "\r\n";
  return Buffer.from(text, "latin1");
}

// ---------------------------------------------------------------------------------------------------
// Byte-level fast paths. The server's ingress parses every request head and frames every response
// head; the string parsers above decode the head, split it into lines and build a field list first
// (request 2.0 µs, response 1.9 µs per head in a microbenchmark). These read the common shape of a
// head straight from its bytes and hand everything else — every error included — to the parsers above,
// so there is one implementation of the rules: a fast path only accepts what they accept, with the same
// result (property-tested in tests/unit/http1.test.ts).

const SP = 32;
const HTAB = 9;
const COLON = 58;
/** TOKEN over every byte value (no out-of-range reads in the hot loops). */
const TOKEN_BYTE = new Uint8Array(256);
TOKEN_BYTE.set(TOKEN);

/** What the ingress's forwarding needs to know about a request field, found from its name's bytes. */
export const FieldKind = {
  Other: 0,
  Host: 1,
  ContentLength: 2,
  TransferEncoding: 3,
  Connection: 4,
  Upgrade: 5,
  Expect: 6,
  Authorization: 7,
  /** Keep-Alive, Proxy-Connection, TE, Trailer: always dropped. */
  HopByHop: 8,
  /** X-Forwarded-For/-Proto/-Host, Forwarded, X-Real-IP (`_` for `-` too): always dropped. */
  Forwarding: 9,
} as const;

/** Whether `bytes[at, at + lower.length)` spells `lower` ignoring case (`_` for `-` if `underscore`); the bytes are token characters. */
function spells(bytes: Uint8Array, at: number, lower: string, underscore = false): boolean {
  for (let i = 0; i < lower.length; i++) {
    const c = bytes[at + i] as number;
    const e = lower.charCodeAt(i);
    // Token characters: `c | 0x20` is a lower-case letter only for that letter in either case.
    if (e === 45 ? c !== 45 && !(underscore && c === 95) : (c | 0x20) !== e) return false;
  }
  return true;
}

/** The {@link FieldKind} of the field name at `bytes[at, at + length)`. */
function requestFieldKind(bytes: Uint8Array, at: number, length: number): number {
  switch (length) {
    case 2:
      return spells(bytes, at, "te") ? FieldKind.HopByHop : FieldKind.Other;
    case 4:
      return spells(bytes, at, "host") ? FieldKind.Host : FieldKind.Other;
    case 6:
      return spells(bytes, at, "expect") ? FieldKind.Expect : FieldKind.Other;
    case 7:
      if (spells(bytes, at, "upgrade")) return FieldKind.Upgrade;
      return spells(bytes, at, "trailer") ? FieldKind.HopByHop : FieldKind.Other;
    case 9:
      return spells(bytes, at, "forwarded") || spells(bytes, at, "x-real-ip", true)
        ? FieldKind.Forwarding
        : FieldKind.Other;
    case 10:
      if (spells(bytes, at, "connection")) return FieldKind.Connection;
      return spells(bytes, at, "keep-alive") ? FieldKind.HopByHop : FieldKind.Other;
    case 13:
      return spells(bytes, at, "authorization") ? FieldKind.Authorization : FieldKind.Other;
    case 14:
      return spells(bytes, at, "content-length") ? FieldKind.ContentLength : FieldKind.Other;
    case 15:
      return spells(bytes, at, "x-forwarded-for", true) ? FieldKind.Forwarding : FieldKind.Other;
    case 16:
      if (spells(bytes, at, "proxy-connection")) return FieldKind.HopByHop;
      return spells(bytes, at, "x-forwarded-host", true) ? FieldKind.Forwarding : FieldKind.Other;
    case 17:
      if (spells(bytes, at, "transfer-encoding")) return FieldKind.TransferEncoding;
      return spells(bytes, at, "x-forwarded-proto", true) ? FieldKind.Forwarding : FieldKind.Other;
    default:
      return FieldKind.Other;
  }
}

/** The usual methods as constants (no string made per request): the method of `length` bytes at `bytes[0…]`. */
function knownMethod(bytes: Uint8Array, length: number): string | undefined {
  const c = bytes[0];
  if (length === 3) {
    if (c === 71 && bytes[1] === 69 && bytes[2] === 84) return "GET";
    if (c === 80 && bytes[1] === 85 && bytes[2] === 84) return "PUT";
  } else if (length === 4) {
    if (c === 80 && bytes[1] === 79 && bytes[2] === 83 && bytes[3] === 84) return "POST";
    if (c === 72 && bytes[1] === 69 && bytes[2] === 65 && bytes[3] === 68) return "HEAD";
  }
  return undefined;
}

/** Numbers per field in {@link ScannedRequestHead.at}. */
export const FIELD_SLOTS = 6;
const NO_TOKENS: readonly string[] = [];

/**
 * A request head read by {@link scanRequestHead}: the same facts as {@link parseRequestHeadBytes}
 * gives, plus where each field lies in the head's bytes (for {@link forwardRequestBytes}, which copies
 * them through); the field list is built only if someone reads `headers`.
 */
export class ScannedRequestHead implements RequestHead {
  method = "";
  version = "";
  headLength = 0;
  body: RequestHead["body"] = "none";
  contentLength = 0;
  keepAlive = false;
  expectContinue = false;
  upgrade = false;
  /** The Host value (at most one), or undefined. */
  host: string | undefined = undefined;
  /** The first Authorization value, or undefined. */
  authorization: string | undefined = undefined;
  /** Connection's list elements, lower case (shared and empty without a Connection field). */
  connection: readonly string[] = NO_TOKENS;
  /** Where the start line's CRLF is. */
  startLineEnd = 0;
  /**
   * Per field, {@link FIELD_SLOTS} numbers: five offsets into `bytes` (line start, colon, value start,
   * value end (trimmed), CR), then its {@link FieldKind}.
   */
  readonly at: number[] = [];
  /** Where the target lies in `bytes` (decoded when first read). */
  targetAt = 0;
  targetEnd = 0;
  private list: HeaderList | null = null;
  private decoded: string | null = null;
  private targetText: string | null = null;

  /** @param bytes the head, start line through the blank line (kept: a view of the fed chunk, or a copy). */
  constructor(readonly bytes: Uint8Array) {}

  /**
   * The head's bytes as Latin-1 text, decoded when first read: a proxy that only routes and copies
   * the head through never needs it (decoding every head was one string per request to collect).
   */
  get text(): string {
    this.decoded ??= latin1(this.bytes);
    return this.decoded;
  }

  /** The request target, decoded when first read. */
  get target(): string {
    this.targetText ??= latin1Range(this.bytes, this.targetAt, this.targetEnd);
    return this.targetText;
  }

  set target(target: string) {
    this.targetText = target;
  }

  get headers(): HeaderList {
    if (this.list === null) {
      const list: HeaderList = [];
      const { at, text } = this;
      for (let i = 0; i < at.length; i += FIELD_SLOTS)
        list.push([text.slice(at[i], at[i + 1]), text.slice(at[i + 2], at[i + 3])]);
      this.list = list;
    }
    return this.list;
  }

  set headers(list: HeaderList) {
    this.list = list;
  }
}

/**
 * {@link parseRequestHeadBytes} for the common shape of a request head, straight from bytes: a token
 * method, an origin-form target, HTTP/1.1 or 1.0, CRLF lines with token names and valid values, at
 * most {@link MAX_HEADERS} of them. Anything else (an absolute-form target, obs-fold, a bare CR or LF,
 * any error) goes to {@link parseRequestHeadBytes}, whose answer (or error) it then is.
 */
export function scanRequestHead(bytes: Uint8Array, lastHost?: string): RequestHead {
  return scanRequest(bytes, lastHost) ?? parseRequestHeadBytes(bytes);
}

/** Whether `bytes[from, to)` spells `text` (Latin-1), compared in place. */
function spellsText(bytes: Uint8Array, from: number, to: number, text: string): boolean {
  if (to - from !== text.length) return false;
  for (let i = 0; i < text.length; i++) if (bytes[from + i] !== text.charCodeAt(i)) return false;
  return true;
}

/**
 * @param lastHost the Host of the connection's previous request: a Host that spells it again is that
 * string, not a new one (keep-alive requests name the same host).
 */
function scanRequest(bytes: Uint8Array, lastHost: string | undefined): ScannedRequestHead | null {
  const n = bytes.length;
  if (n < 4 || bytes[n - 4] !== CR || bytes[n - 3] !== LF || bytes[n - 2] !== CR || bytes[n - 1] !== LF)
    return null;
  // METHOD SP /target SP HTTP/1.x CRLF. The head ends in CRLF, so every loop stops inside it.
  let i = 0;
  while (TOKEN_BYTE[bytes[i] as number] === 1) i++;
  if (i === 0 || bytes[i] !== SP || bytes[i + 1] !== 47) return null;
  const targetAt = i + 1;
  for (let c = bytes[++i] as number; c > 0x20 && c < 0x7f; c = bytes[++i] as number);
  if (bytes[i] !== SP) return null;
  const versionAt = i + 1;
  i = versionAt + 8;
  if (
    bytes[versionAt] !== 72 || // H
    bytes[versionAt + 1] !== 84 || // T
    bytes[versionAt + 2] !== 84 || // T
    bytes[versionAt + 3] !== 80 || // P
    bytes[versionAt + 4] !== 47 || // /
    bytes[versionAt + 5] !== 49 || // 1
    bytes[versionAt + 6] !== 46 || // .
    (bytes[versionAt + 7] !== 49 && bytes[versionAt + 7] !== 48) ||
    bytes[i] !== CR ||
    bytes[i + 1] !== LF
  )
    return null;
  const head = new ScannedRequestHead(bytes);
  head.startLineEnd = i;
  const at = head.at;
  // What framing and routing read, without a FieldScan's lists (allocations cost more under load than
  // in a microbenchmark): anything unusual (two Hosts or lengths, a length not plain digits, a
  // Transfer-Encoding other than chunked) is left to parseRequestHeadBytes.
  let hosts = 0;
  let lengths = 0;
  let length = 0;
  let chunked = false;
  let connection: string[] | null = null;
  let upgrade = false;
  let expectContinue = false;
  const last = n - 2; // the blank line
  for (i += 2; i < last; i += 2) {
    const start = i;
    while (TOKEN_BYTE[bytes[i] as number] === 1) i++;
    if (i === start || bytes[i] !== COLON) return null; // obs-fold, a bad name, no colon
    const colon = i;
    let c = bytes[++i] as number;
    while ((c >= 0x20 && c !== 0x7f) || c === HTAB) c = bytes[++i] as number;
    if (c !== CR || bytes[i + 1] !== LF) return null; // a control character, a bare CR or LF
    let from = colon + 1;
    let to = i;
    while (from < to && (bytes[from] === SP || bytes[from] === HTAB)) from++;
    while (to > from && (bytes[to - 1] === SP || bytes[to - 1] === HTAB)) to--;
    if (at.length === MAX_HEADERS * FIELD_SLOTS) return null;
    const kind = requestFieldKind(bytes, start, colon - start);
    at.push(start, colon, from, to, i, kind);
    switch (kind) {
      case FieldKind.Host:
        if (++hosts > 1) return null;
        head.host =
          lastHost !== undefined && spellsText(bytes, from, to, lastHost)
            ? lastHost
            : latin1Range(bytes, from, to);
        break;
      case FieldKind.ContentLength:
        length = digitsValue(bytes, from, to);
        if (++lengths > 1 || length < 0) return null;
        break;
      case FieldKind.TransferEncoding: {
        const codings: string[] = [];
        pushTokens(codings, latin1Range(bytes, from, to));
        if (chunked || codings.length !== 1 || codings[0] !== "chunked") return null;
        chunked = true;
        break;
      }
      case FieldKind.Connection:
        connection ??= [];
        pushTokens(connection, latin1Range(bytes, from, to));
        break;
      case FieldKind.Upgrade:
        if (to > from) upgrade = true;
        break;
      case FieldKind.Expect: {
        const expect: string[] = [];
        pushTokens(expect, latin1Range(bytes, from, to));
        if (expect.includes("100-continue")) expectContinue = true;
        break;
      }
      case FieldKind.Authorization:
        head.authorization ??= latin1Range(bytes, from, to);
        break;
    }
  }
  const http11 = bytes[versionAt + 7] === 49;
  const version = http11 ? "HTTP/1.1" : "HTTP/1.0";
  if (hosts === 0 && http11) return null;
  // The rules of parseRequestHeadBytes (bodyFraming, keepAliveOf) for what is left: an origin-form
  // target names no authority; chunked alone, on HTTP/1.1, without a length.
  if (chunked && (lengths > 0 || !http11)) return null;
  const tokens = connection ?? NO_TOKENS;
  head.method = knownMethod(bytes, targetAt - 1) ?? latin1Range(bytes, 0, targetAt - 1);
  head.targetAt = targetAt;
  head.targetEnd = versionAt - 1;
  head.version = version;
  head.headLength = n;
  head.body = chunked ? "chunked" : lengths > 0 ? "length" : "none";
  head.contentLength = chunked ? 0 : length;
  head.connection = tokens;
  head.keepAlive = !tokens.includes("close") && (http11 || tokens.includes("keep-alive"));
  head.expectContinue = http11 && expectContinue;
  head.upgrade = http11 && upgrade && tokens.includes("upgrade");
  return head;
}

/**
 * {@link parseResponseHeadBytes} with `keepFields` false for the common shape of a response head,
 * straight from bytes: `HTTP/1.x NNN reason`, CRLF lines, at most {@link MAX_HEADERS}; only the
 * Connection, Content-Length and Transfer-Encoding values are decoded. Anything else (any error
 * included) goes to {@link parseResponseHeadBytes}.
 */
export function scanResponseHead(bytes: Uint8Array, method: string): ResponseHead {
  return scanResponse(bytes, 0, bytes.length, method) ?? parseResponseHeadBytes(bytes, method, false);
}

/**
 * {@link scanResponseHead} for the head at `bytes[start, end)`, read in place: a view of a socket
 * read cost more than the scan under load (most likely the engine materializing the buffer for it).
 */
export function scanResponseHeadIn(
  bytes: Uint8Array,
  start: number,
  end: number,
  method: string,
): ResponseHead {
  return (
    scanResponse(bytes, start, end, method) ??
    parseResponseHeadBytes(bytes.subarray(start, end), method, false)
  );
}

/** The value of 1 to 15 ASCII digits at `bytes[from, to)` (what a Content-Length of one value may be), or -1. */
function digitsValue(bytes: Uint8Array, from: number, to: number): number {
  if (to <= from || to - from > 15) return -1;
  let value = 0;
  for (let i = from; i < to; i++) {
    const d = (bytes[i] as number) - 48;
    if (d < 0 || d > 9) return -1;
    value = value * 10 + d;
  }
  return value;
}

function scanResponse(bytes: Uint8Array, o: number, n: number, method: string): ResponseHead | null {
  if (n - o < 16 || bytes[n - 4] !== CR || bytes[n - 3] !== LF || bytes[n - 2] !== CR || bytes[n - 1] !== LF)
    return null;
  const minor = bytes[o + 7];
  const d0 = (bytes[o + 9] as number) - 48;
  const d1 = (bytes[o + 10] as number) - 48;
  const d2 = (bytes[o + 11] as number) - 48;
  if (
    bytes[o] !== 72 ||
    bytes[o + 1] !== 84 ||
    bytes[o + 2] !== 84 ||
    bytes[o + 3] !== 80 ||
    bytes[o + 4] !== 47 ||
    bytes[o + 5] !== 49 ||
    bytes[o + 6] !== 46 ||
    (minor !== 49 && minor !== 48) ||
    bytes[o + 8] !== SP ||
    d0 < 1 ||
    d0 > 9 ||
    d1 < 0 ||
    d1 > 9 ||
    d2 < 0 ||
    d2 > 9
  )
    return null;
  // The reason phrase: empty, or SP and field-value characters.
  let i = o + 12;
  if (bytes[i] === SP) {
    let c = bytes[++i] as number;
    while ((c >= 0x20 && c !== 0x7f) || c === HTAB) c = bytes[++i] as number;
  }
  if (bytes[i] !== CR || bytes[i + 1] !== LF) return null;
  const reasonEnd = i;
  // The lists a FieldScan would hold, made only when their field is there.
  let connection: string[] | null = null;
  let codings: string[] | null = null;
  let count = 0;
  let lengths = 0;
  let lengthValue = -1;
  const last = n - 2;
  for (i += 2; i < last; i = i + 2) {
    const start = i;
    const first = bytes[i];
    if (first === SP || first === HTAB) return null; // obs-fold
    // Lines are not validated beyond what framing needs (as framingFieldLines): CRLF and a colon.
    // One loop finds both (three indexOf calls per line cost more for lines this short).
    let colon = -1;
    let c = first as number;
    while (c !== CR && c !== LF) {
      if (c === COLON && colon < 0) colon = i;
      c = bytes[++i] as number;
    }
    const cr = i;
    if (c !== CR || bytes[cr + 1] !== LF || colon <= start) return null;
    if (++count > MAX_HEADERS) return null;
    i = cr;
    const length = colon - start;
    if (length !== 10 && length !== 14 && length !== 17) continue;
    for (let j = start; j < colon; j++) if (TOKEN_BYTE[bytes[j] as number] !== 1) return null;
    let from = colon + 1;
    let to = cr;
    while (from < to && (bytes[from] === SP || bytes[from] === HTAB)) from++;
    while (to > from && (bytes[to - 1] === SP || bytes[to - 1] === HTAB)) to--;
    if (length === 10) {
      if (spells(bytes, start, "connection")) {
        connection ??= [];
        pushTokens(connection, latin1Range(bytes, from, to));
      }
    } else if (length === 14) {
      // Plain digits, once, without Transfer-Encoding: the length itself (no decoding, no list parsing).
      if (spells(bytes, start, "content-length")) {
        lengthValue = digitsValue(bytes, from, to);
        if (++lengths > 1 || lengthValue < 0) return null;
      }
    } else if (spells(bytes, start, "transfer-encoding")) {
      codings ??= [];
      pushTokens(codings, latin1Range(bytes, from, to));
    }
  }
  if (lengths > 0 && codings !== null) return null;
  const version = minor === 49 ? "HTTP/1.1" : "HTTP/1.0";
  const status = d0 * 100 + d1 * 10 + d2;
  // The same rules as parseResponseHeadBytes from here on (no framing object made for the usual cases).
  let body: Framing["body"] = "none";
  let contentLength = 0;
  if (status === 101 || (method === "CONNECT" && status >= 200 && status < 300)) body = "passthrough";
  else if (status >= 200 && status !== 204 && status !== 304 && method !== "HEAD") {
    if (lengths > 0) {
      body = "length";
      contentLength = lengthValue;
    } else if (codings === null) body = "close";
    else {
      const framing = bodyFraming(
        {
          hosts: [],
          connection: [],
          transferEncoding: codings,
          contentLength: [],
          upgrade: false,
          expect: [],
        },
        version,
        false,
      );
      body = framing.body;
      contentLength = framing.contentLength;
    }
  }
  const keepAlive =
    body !== "close" && body !== "passthrough" && keepAliveOf(connection ?? NO_TOKENS, version);
  const reason =
    reasonEnd === o + 15 && bytes[o + 13] === 79 && bytes[o + 14] === 75
      ? "OK"
      : latin1Range(bytes, o + 13, reasonEnd);
  // No field list: the scan's reader passes responses on untouched (one shared, frozen empty list).
  return { version, status, reason, headers: NO_FIELDS, headLength: n - o, body, contentLength, keepAlive };
}

/** The field list of every scanned response head. */
const NO_FIELDS = Object.freeze([]) as unknown as HeaderList;
