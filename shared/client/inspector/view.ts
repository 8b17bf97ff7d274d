/**
 * Inspector JSON: captured exchanges and connections as the API and the page see them, shaped after
 * ngrok's agent API (`id`, `tunnel_name`, `remote_addr`, `start`, `duration` in nanoseconds,
 * `request`/`response` with `method`, `uri`, `proto`, `headers` as name → values, `raw` in base64),
 * plus bodies ready to show: text as text, JSON and form data pretty-printed, compressed bodies
 * inflated, binary as size and a hex preview.
 * @module
 */

import { type HeaderList, headerValues } from "../../http1/framer.ts";
import { type CapturedBody, decodedBody, type HttpExchange, type TcpConnection } from "./capture.ts";

/** A body as shown: size, whether it was cut, and its content in the most readable form. */
export interface BodyView {
  /** Bytes on the wire. */
  size: number;
  /** Bytes kept (at most the cap). */
  kept: number;
  truncated: boolean;
  content_type: string;
  /** `text` (with `pretty` for JSON and forms), `binary` (with `hex`), or `empty`. */
  kind: "text" | "binary" | "empty";
  text?: string;
  /** JSON indented by two spaces, or a form's fields one per line. */
  pretty?: string;
  /** `json` or `form` when `pretty` is set. */
  format?: "json" | "form";
  /** A hex dump of the first bytes (binary bodies). */
  hex?: string;
  /** The encoding undone to show it (gzip, br, deflate). */
  decoded_from?: string;
}

/** How many bytes a binary body's hex preview shows. */
const HEX_PREVIEW = 1024;

/** Header list → ngrok's `headers` object: each name as first spelled, with all its values. */
export function headerObject(headers: HeaderList): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  const spelled = new Map<string, string>();
  for (const [name, value] of headers) {
    const lower = name.toLowerCase();
    const key = spelled.get(lower) ?? name;
    spelled.set(lower, key);
    const list = out[key];
    if (list === undefined) out[key] = [value];
    else list.push(value);
  }
  return out;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** The bytes as text when they are UTF-8 without control characters other than whitespace, else null. */
function asText(bytes: Uint8Array): string | null {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    return null;
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what marks binary
  return /[\x00-\x08\x0e-\x1f\x7f]/.test(text) ? null : text;
}

/** A hex dump: 16 bytes a line, offset, hex and printable ASCII. */
export function hexDump(bytes: Uint8Array, limit = HEX_PREVIEW): string {
  const lines: string[] = [];
  const end = Math.min(bytes.length, limit);
  for (let at = 0; at < end; at += 16) {
    const row = bytes.subarray(at, Math.min(at + 16, end));
    const hex = [...row].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${at.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  if (bytes.length > end) lines.push(`… ${bytes.length - end} more bytes`);
  return lines.join("\n");
}

/**
 * Undoes a Content-Encoding for display; null when unknown or broken. node:zlib is loaded by the first
 * compressed body shown: imported at start it cost every client about 5 MiB of resident memory.
 */
function inflate(bytes: Uint8Array, encoding: string): Uint8Array | null {
  const { brotliDecompressSync, gunzipSync, inflateSync } = process.getBuiltinModule("node:zlib");
  try {
    if (encoding === "gzip" || encoding === "x-gzip") return gunzipSync(bytes);
    if (encoding === "br") return brotliDecompressSync(bytes);
    if (encoding === "deflate") return inflateSync(bytes);
  } catch {}
  return null;
}

/** JSON pretty-printed, or a form's fields one per line; undefined when the text is neither. */
function prettyOf(text: string, contentType: string): Pick<BodyView, "pretty" | "format"> {
  const type = contentType.toLowerCase();
  if (type.includes("json") || /^\s*[[{]/.test(text)) {
    try {
      return { pretty: JSON.stringify(JSON.parse(text), null, 2), format: "json" };
    } catch {}
  }
  if (type.startsWith("application/x-www-form-urlencoded")) {
    const lines = [...new URLSearchParams(text)].map(([key, value]) => `${key} = ${value}`);
    return { pretty: lines.join("\n"), format: "form" };
  }
  return {};
}

/** A body as the page shows it (see {@link BodyView}). */
export function bodyView(body: CapturedBody, headers: HeaderList): BodyView {
  const contentType = headerValues(headers, "content-type")[0] ?? "";
  const view: BodyView = {
    size: body.size,
    kept: body.bytes.length,
    truncated: body.truncated,
    content_type: contentType,
    kind: "empty",
  };
  if (body.size === 0) return view;
  let bytes = decodedBody(body) ?? body.bytes;
  const encoding = (headerValues(headers, "content-encoding")[0] ?? "").trim().toLowerCase();
  if (encoding !== "" && encoding !== "identity" && !body.truncated) {
    const inflated = inflate(bytes, encoding);
    if (inflated !== null) {
      bytes = inflated;
      view.decoded_from = encoding;
    }
  }
  const text = asText(bytes);
  if (text === null) return { ...view, kind: "binary", hex: hexDump(bytes) };
  return { ...view, kind: "text", text, ...prettyOf(text, contentType) };
}

/** The raw bytes of one message as they crossed the tunnel: its head and the body kept, base64. */
function raw(head: Uint8Array, body: CapturedBody): string {
  return Buffer.concat([head, body.bytes]).toString("base64");
}

/** Milliseconds to the microsecond. */
const millis = (ms: number | undefined) => (ms === undefined ? undefined : Math.round(ms * 1000) / 1000);

/** Milliseconds as ngrok's nanoseconds. */
const nanoseconds = (ms: number | undefined) => Math.round((ms ?? 0) * 1e6);

/** The list's (and the live stream's) view of an exchange: no bodies, no raw bytes. */
export function exchangeSummary(exchange: HttpExchange) {
  const { request, response } = exchange;
  return {
    uri: `/api/requests/http/${exchange.id}`,
    id: exchange.id,
    tunnel_name: exchange.tunnelName,
    remote_addr: exchange.remote,
    start: new Date(exchange.start).toISOString(),
    duration: nanoseconds(exchange.durationMs),
    duration_ms: millis(exchange.durationMs),
    state: exchange.state,
    error: exchange.error,
    replay_of: exchange.replayOf,
    upgraded: exchange.upgraded,
    request: { method: request.method, uri: request.target, proto: request.version, size: request.body.size },
    response:
      response === undefined
        ? undefined
        : {
            status: `${response.status} ${response.reason}`.trim(),
            status_code: response.status,
            proto: response.version,
            size: response.body.size,
          },
  };
}

/** The whole view of one exchange: heads, headers, bodies ready to show, raw bytes. */
export function exchangeDetail(exchange: HttpExchange) {
  const { request, response } = exchange;
  const summary = exchangeSummary(exchange);
  return {
    ...summary,
    headers_ms: millis(exchange.headersMs),
    request: {
      ...summary.request,
      headers: headerObject(request.headers),
      header_list: request.headers,
      body: bodyView(request.body, request.headers),
      raw: raw(request.head, request.body),
    },
    response:
      response === undefined || summary.response === undefined
        ? undefined
        : {
            ...summary.response,
            headers: headerObject(response.headers),
            header_list: response.headers,
            body: bodyView(response.body, response.headers),
            raw: raw(response.head, response.body),
          },
  };
}

/** A TCP connection as the API shows it. */
export function connectionView(connection: TcpConnection) {
  const open = connection.end === undefined;
  return {
    id: connection.id,
    tunnel_name: connection.tunnelName,
    remote_addr: connection.remote,
    start: new Date(connection.start).toISOString(),
    state: open ? "open" : "closed",
    duration_ms: millis(open ? performance.now() - connection.startedAt : connection.durationMs),
    bytes_in: connection.bytesIn,
    bytes_out: connection.bytesOut,
    end: connection.end,
    reason: connection.reason,
  };
}
