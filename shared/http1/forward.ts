/**
 * The head rewriting a reverse proxy does (RFC 9110 §7.6): hop-by-hop fields removed, the visitor's own
 * forwarding fields replaced by the proxy's, Host optionally rewritten.
 * @module
 */

import {
  type HeaderList,
  headerTokens,
  headerValues,
  isFieldValue,
  type RequestHead,
  type RequestHeadLine,
  type ResponseHead,
  type ResponseHeadLine,
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
