/**
 * The head rewriting a reverse proxy does (RFC 9110 §7.6): hop-by-hop fields removed, the visitor's own
 * forwarding fields replaced by the proxy's, Host optionally rewritten.
 * @module
 */

import {
  FIELD_SLOTS,
  FieldKind,
  type HeaderList,
  headerTokens,
  headerValues,
  isFieldValue,
  MAX_HEADERS,
  type RequestHead,
  type RequestHeadLine,
  type ResponseHead,
  type ResponseHeadLine,
  ScannedRequestHead,
  serializeHead,
} from "./head.ts";

/** Where and how the visitor reached the proxy, for {@link forwardRequestHead}. */
export interface ForwardOptions {
  /** The visitor's IP address: X-Forwarded-For. */
  remoteIp: string;
  /** "http" or "https": X-Forwarded-Proto. */
  proto: string;
  /** X-Forwarded-Host; default {@link requestHost}. */
  host?: string;
  /** Replaces (or supplies) the Host header sent on. */
  rewriteHost?: string;
}

/** Hop-by-hop fields (RFC 9110 §7.6.1), dropped whether or not Connection lists them. */
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]);
/**
 * Fields about the visitor's origin that a visitor may not supply: the proxy writes its own
 * X-Forwarded-*, and drops X-Real-IP (which nginx-style backends trust) rather than vouch for it.
 * Compared after mapping `_` to `-`: CGI and WSGI servers turn both into the same `HTTP_X_…` variable,
 * so `X_Forwarded_For` would otherwise pass as the real thing.
 */
const FORWARDING = new Set([
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "forwarded",
  "x-real-ip",
]);
/** Fields that framing or routing depend on: never dropped even when Connection names them. */
const PROTECTED = new Set(["host", "content-length", "transfer-encoding"]);

/**
 * The authority a request is for: its Host header, or (HTTP/1.0 without Host) an absolute-form
 * target's authority; "" if neither. Routing by Host on every port is one rule that `Bun.serve` (the
 * control port, which builds the URL from Host) and our own framing share; a target that names another
 * authority than Host is refused when the head is parsed (http1/head.ts), so the two never disagree.
 */
export function requestHost(head: RequestHeadLine): string {
  if (head instanceof ScannedRequestHead) return head.host ?? ""; // origin-form: Host or nothing
  const host = headerValues(head.headers, "host")[0];
  if (host !== undefined) return host;
  return /^https?:\/\/(?:[^/?#@]*@)?([^/?#]*)/i.exec(head.target)?.[1] ?? "";
}

/** Copies the end-to-end fields, dropping hop-by-hop ones (and `also`); keeps Upgrade when `upgrade`. */
function endToEnd(headers: HeaderList, upgrade: boolean, also?: ReadonlySet<string>): HeaderList {
  const listed = new Set(headerTokens(headers, "connection"));
  return headers.filter(([name]) => {
    const lower = name.toLowerCase();
    if (lower === "upgrade") return upgrade;
    if (HOP_BY_HOP.has(lower)) return false;
    if (also?.has(lower.includes("_") ? lower.replaceAll("_", "-") : lower)) return false;
    return !listed.has(lower) || PROTECTED.has(lower);
  });
}

/** The Connection field that carries the sender's intent onward, if any. */
function connectionField(version: string, keepAlive: boolean, upgrade: boolean): HeaderList {
  if (upgrade) return [["Connection", "upgrade"]];
  if (version === "HTTP/1.1" && !keepAlive) return [["Connection", "close"]];
  if (version === "HTTP/1.0" && keepAlive) return [["Connection", "keep-alive"]];
  return [];
}

/**
 * The head to send upstream for a visitor's request: hop-by-hop fields removed (Connection, what it
 * lists, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade — Upgrade kept with `Connection: upgrade`
 * on an upgrade request), the visitor's X-Forwarded-* and Forwarded dropped and fresh X-Forwarded-For,
 * -Proto and -Host appended, Host optionally rewritten, an absolute-form target made origin-form.
 * Content-Length, Transfer-Encoding and Host survive even when Connection lists them.
 */
export function forwardRequestHead(head: RequestHead, options: ForwardOptions): RequestHeadLine {
  const originalHost = options.host ?? requestHost(head);
  const rewrite = options.rewriteHost;
  if (rewrite !== undefined && !isFieldValue(rewrite)) throw new RangeError("bad Host to rewrite to");
  // One pass over the fields (this runs for every request): each name lowercased once.
  const listed = connectionListed(head.headers);
  const headers: HeaderList = [];
  let hostAt = -1;
  let lengthKept = false;
  for (const field of head.headers) {
    const name = field[0];
    const lower = name.toLowerCase();
    if (lower === "host") {
      hostAt = headers.length;
      headers.push(rewrite === undefined ? field : [name, rewrite]);
    } else if (lower === "content-length") {
      // `Content-Length: 3, 3` (or the field repeated) is one length by RFC 9110 §8.6, which lets a
      // recipient send it on as a single value: backends that parse lists differently never see one.
      if (!lengthKept) headers.push([name, String(head.contentLength)]);
      lengthKept = true;
    } else if (lower === "transfer-encoding") headers.push(field);
    else if (lower === "upgrade") {
      if (head.upgrade) headers.push(field);
    } else if (
      !HOP_BY_HOP.has(lower) &&
      !FORWARDING.has(lower.includes("_") ? lower.replaceAll("_", "-") : lower) &&
      !listed?.has(lower)
    )
      headers.push(field);
  }
  if (hostAt < 0 && rewrite !== undefined) headers.unshift(["Host", rewrite]);
  headers.push(...connectionField(head.version, head.keepAlive, head.upgrade));
  headers.push(["X-Forwarded-For", options.remoteIp], ["X-Forwarded-Proto", options.proto]);
  if (originalHost) headers.push(["X-Forwarded-Host", originalHost]);
  const target = head.target.startsWith("/") ? head.target : originForm(head.target);
  return { method: head.method, target, version: head.version, headers };
}

/** The fields a Connection header lists (lower case), or null when it lists none. */
function connectionListed(headers: HeaderList): Set<string> | null {
  let listed: Set<string> | null = null;
  for (const [name, value] of headers)
    if (name.length === 10 && name.toLowerCase() === "connection")
      for (const part of value.split(",")) {
        const token = part.trim().toLowerCase();
        if (token === "") continue;
        listed ??= new Set();
        listed.add(token);
      }
  return listed;
}

/** An absolute-form target (`http://host/path?q`) as origin-form (`/path?q`). */
function originForm(target: string): string {
  const origin = /^https?:\/\/[^/?#]*/i.exec(target);
  const rest = origin ? target.slice(origin[0].length) || "/" : target;
  return rest.startsWith("?") ? `/${rest}` : rest;
}

/**
 * The head to send back to the visitor: hop-by-hop fields removed as for requests (Upgrade and
 * `Connection: upgrade` kept on a 101), everything else — duplicate Set-Cookie included — kept in order.
 */
export function forwardResponseHead(head: ResponseHead): ResponseHeadLine {
  const upgrade = head.status === 101;
  const headers = endToEnd(head.headers, upgrade);
  headers.push(...connectionField(head.version, head.keepAlive, upgrade));
  return { version: head.version, status: head.status, reason: head.reason, headers };
}

/** Options of {@link forwardRequestBytes}. */
export interface ForwardBytesOptions extends ForwardOptions {
  /** Drop Authorization too (the proxy checked it: a tunnel's basic auth is never passed on). */
  dropAuthorization?: boolean;
  /** Kept by the caller across one connection's requests: the appended fields, encoded once. */
  cache?: ForwardCache;
}

/**
 * The fields {@link forwardRequestBytes} appends (Connection, X-Forwarded-*), encoded, with what they
 * were made of: the requests of one connection append the same ones (building and encoding them was a
 * third of the forwarding's time for a small GET).
 */
export class ForwardCache {
  remoteIp = "";
  proto = "";
  host = "";
  connection = "";
  bytes: Uint8Array | null = null;
}

/** Whether the token-character name at `bytes[at, at + lower.length)` is `lower` (a lower-case token) ignoring case. */
function nameIs(bytes: Uint8Array, at: number, lower: string): boolean {
  for (let i = 0; i < lower.length; i++) {
    const c = bytes[at + i] as number;
    if ((c >= 65 && c <= 90 ? c | 0x20 : c) !== lower.charCodeAt(i)) return false;
  }
  return true;
}

/** Whether Connection lists the field named by `bytes[start, end)` (`tokens` lower case). */
function listed(tokens: readonly string[], bytes: Uint8Array, start: number, end: number): boolean {
  for (const token of tokens) if (token.length === end - start && nameIs(bytes, start, token)) return true;
  return false;
}

/**
 * Copies `bytes[from, to)` into `out` at `at`. Short runs in a loop, not through a view: `bytes` is
 * often a socket read that has had no view yet, and the first one costs more under load (~0.6 µs)
 * than copying a few lines.
 */
function copy(out: Uint8Array, at: number, bytes: Uint8Array, from: number, to: number): void {
  if (to - from > 128) out.set(bytes.subarray(from, to), at);
  else for (let i = from; i < to; i++) out[at++] = bytes[i] as number;
}

/** Writes Latin-1 `text` into `out` at `at`; returns where it ended. */
function put(out: Uint8Array, at: number, text: string): number {
  for (let i = 0; i < text.length; i++) out[at++] = text.charCodeAt(i);
  return at;
}

/** Per field of the head being forwarded, how it goes on (a scratch array: forwarding is synchronous). */
const plan = new Uint8Array(MAX_HEADERS);
const Drop = 0;
/** The line as it came (already `name: value` with one space, no trailing space). */
const Copy = 1;
/** `name: value` rebuilt from the line's name and trimmed value. */
const Rebuild = 2;
/** `name: <rewriteHost>`. */
const Rewrite = 3;
/** `name: <contentLength>`. */
const Length = 4;

/**
 * `serializeHead(forwardRequestHead(head, options), true)` (Authorization dropped if asked), the bytes
 * the proxy sends on. For a {@link ScannedRequestHead} they are made from the head's own bytes: the
 * request line and every field kept are copied through, runs of consecutive lines in one copy; only
 * what the rewrite adds is encoded (microbenchmark: 1.8 → 0.4 µs for a small GET's head).
 * @param room bytes left free at the end, for the caller (a small body sent on with its head).
 */
export function forwardRequestBytes(head: RequestHead, options: ForwardBytesOptions, room = 0): Uint8Array {
  if (!(head instanceof ScannedRequestHead)) {
    const line = forwardRequestHead(head, options);
    if (options.dropAuthorization)
      line.headers = line.headers.filter(([name]) => name.toLowerCase() !== "authorization");
    const bytes = serializeHead(line, true);
    if (room === 0) return bytes;
    const out = new Uint8Array(bytes.length + room);
    out.set(bytes);
    return out;
  }
  const rewrite = options.rewriteHost;
  if (rewrite !== undefined && !isFieldValue(rewrite)) throw new RangeError("bad Host to rewrite to");
  const { bytes, at, connection } = head;
  const count = at.length / FIELD_SLOTS;
  let length = ""; // made only for a head with a Content-Length: one string per request otherwise
  let hostSeen = false;
  let lengthKept = false;
  let size = head.startLineEnd + 2;
  for (let f = 0, o = 0; f < count; f++, o += FIELD_SLOTS) {
    const start = at[o] as number;
    const colon = at[o + 1] as number;
    const from = at[o + 2] as number;
    const to = at[o + 3] as number;
    const cr = at[o + 4] as number;
    let how: number = Drop;
    switch (at[o + 5]) {
      case FieldKind.Host:
        hostSeen = true;
        how = rewrite === undefined ? Copy : Rewrite;
        break;
      case FieldKind.ContentLength:
        how = lengthKept ? Drop : Length;
        if (!lengthKept) length = String(head.contentLength);
        lengthKept = true;
        break;
      case FieldKind.TransferEncoding:
        how = Copy;
        break;
      case FieldKind.Upgrade:
        how = head.upgrade ? Copy : Drop;
        break;
      case FieldKind.Connection:
      case FieldKind.HopByHop:
      case FieldKind.Forwarding:
        break;
      case FieldKind.Authorization:
        if (!options.dropAuthorization) how = listed(connection, bytes, start, colon) ? Drop : Copy;
        break;
      default:
        how = listed(connection, bytes, start, colon) ? Drop : Copy;
    }
    if (how === Copy && !(from === colon + 2 && bytes[colon + 1] === 32 && to === cr)) how = Rebuild;
    plan[f] = how;
    if (how === Copy) size += cr + 2 - start;
    else if (how === Rebuild) size += colon - start + 4 + to - from;
    else if (how === Rewrite) size += colon - start + 4 + (rewrite as string).length;
    else if (how === Length) size += colon - start + 4 + length.length;
  }
  const prefix = !hostSeen && rewrite !== undefined ? `Host: ${rewrite}\r\n` : "";
  const suffix = appended(head, options);
  const out = new Uint8Array(size + prefix.length + suffix.length + room);
  // Consecutive copied lines are contiguous in the head: one copy for each run, the request line's
  // included (each copy costs a view of the head, ~40 ns).
  let runStart = 0;
  let runEnd = head.startLineEnd + 2;
  let w = 0;
  if (prefix !== "") {
    copy(out, 0, bytes, 0, runEnd);
    w = put(out, runEnd, prefix);
    runStart = runEnd = -1;
  }
  for (let f = 0, o = 0; f < count; f++, o += FIELD_SLOTS) {
    const how = plan[f];
    const start = at[o] as number;
    if (how === Copy) {
      if (runEnd !== start) {
        if (runStart >= 0) {
          copy(out, w, bytes, runStart, runEnd);
          w += runEnd - runStart;
        }
        runStart = start;
      }
      runEnd = (at[o + 4] as number) + 2;
      continue;
    }
    if (how === Drop) continue;
    if (runStart >= 0) {
      copy(out, w, bytes, runStart, runEnd);
      w += runEnd - runStart;
      runStart = runEnd = -1;
    }
    const colon = at[o + 1] as number;
    copy(out, w, bytes, start, colon);
    w += colon - start;
    out[w++] = 58; // :
    out[w++] = 32;
    if (how === Rebuild) {
      const from = at[o + 2] as number;
      const to = at[o + 3] as number;
      copy(out, w, bytes, from, to);
      w += to - from;
    } else w = put(out, w, how === Rewrite ? (rewrite as string) : length);
    out[w++] = 13;
    out[w++] = 10;
  }
  if (runStart >= 0) {
    copy(out, w, bytes, runStart, runEnd);
    w += runEnd - runStart;
  }
  out.set(suffix, w);
  return out;
}

/** The Connection field carrying the sender's intent, then X-Forwarded-For, -Proto, -Host, then the blank line. */
function appended(head: RequestHead, options: ForwardBytesOptions): Uint8Array {
  let connection = "";
  if (head.upgrade) connection = "Connection: upgrade\r\n";
  else if (head.version === "HTTP/1.1" && !head.keepAlive) connection = "Connection: close\r\n";
  else if (head.version === "HTTP/1.0" && head.keepAlive) connection = "Connection: keep-alive\r\n";
  const host = options.host ?? requestHost(head);
  const cache = options.cache;
  if (
    cache?.bytes &&
    cache.connection === connection &&
    cache.host === host &&
    cache.remoteIp === options.remoteIp &&
    cache.proto === options.proto
  )
    return cache.bytes;
  let text = `${connection}X-Forwarded-For: ${options.remoteIp}\r\nX-Forwarded-Proto: ${options.proto}\r\n`;
  if (host) text += `X-Forwarded-Host: ${host}\r\n`;
  text += "\r\n";
  const bytes = new Uint8Array(text.length);
  put(bytes, 0, text);
  if (cache) {
    cache.connection = connection;
    cache.host = host;
    cache.remoteIp = options.remoteIp;
    cache.proto = options.proto;
    cache.bytes = bytes;
  }
  return bytes;
}
