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
  for (let i = bytes.indexOf(CR, from); i >= 0 && i + 4 <= to; i = bytes.indexOf(CR, i + 1)) {
    if (bytes[i + 1] === LF && bytes[i + 2] === CR && bytes[i + 3] === LF) return i + 4;
  }
  return -1;
}

/** Decodes bytes one character per byte (true ISO-8859-1, unlike TextDecoder's "latin1"). */
export function latin1(bytes: Uint8Array): string {
  // Buffer's latin1 is one char per byte, natively (a JS loop over fromCharCode was 3x slower).
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
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

function keepAliveOf(connection: string[], version: string): boolean {
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
