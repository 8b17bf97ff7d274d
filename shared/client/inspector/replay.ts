/**
 * Inspector replay: sends a captured request again, straight from the client to the tunnel's local
 * service (never through the server), optionally edited (method, path, headers, body), and captures
 * the answer as a new exchange marked as a replay of the first.
 * @module
 */

import type { HostPort } from "../../args.ts";
import { type HeaderList, isField, serializeHead } from "../../http1/framer.ts";
import { ResetCode } from "../../wire/protocol.ts";
import { encodeProxyHeader, type ProxyVersion } from "../../wire/proxy-protocol.ts";
import { decodedBody, type HttpExchange, InspectorTap } from "./capture.ts";
import type { InspectorStore } from "./store.ts";

/** What a replay may change; absent fields keep the captured request's. */
export interface ReplayEdits {
  method?: string;
  /** The request target: path and query. */
  path?: string;
  /** Replaces every header (framing headers are set by the replay: Content-Length, Connection). */
  headers?: HeaderList;
  body?: Uint8Array;
}

/** A replay that cannot be sent as asked: `status` is the HTTP answer the API gives. */
export class ReplayError extends Error {
  override name = "ReplayError";
  constructor(
    message: string,
    readonly status: 400 | 409 | 502 | 504,
  ) {
    super(message);
  }
}

/** Headers a replay never copies: the message's framing is its own (one body, one request, then close). */
const FRAMING = [
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "upgrade",
  "te",
  "trailer",
];

/** Methods whose requests carry a Content-Length even when empty. */
const WITH_BODY = new Set(["POST", "PUT", "PATCH"]);

/**
 * The bytes of the replayed request: the captured (or edited) head with its own framing and the body.
 * @throws {ReplayError} (400) for an edit that is not valid HTTP/1.1, (409) when the captured body was
 * cut at the cap and no body was given.
 */
export function replayRequest(original: HttpExchange, edits: ReplayEdits = {}): Uint8Array {
  const { request } = original;
  const body = edits.body ?? decodedBody(request.body);
  if (body === null || (edits.body === undefined && request.body.truncated))
    throw new ReplayError(
      `the captured body of ${original.id} was cut at ${request.body.bytes.length} bytes; send a body to replay it`,
      409,
    );
  const method = edits.method ?? request.method;
  const headers: HeaderList = (edits.headers ?? request.headers).filter(
    ([name]) => !FRAMING.some((framing) => isField(name, framing)),
  );
  if (body.length > 0 || WITH_BODY.has(method.toUpperCase()))
    headers.push(["Content-Length", `${body.length}`]);
  headers.push(["Connection", "close"]);
  let head: Uint8Array;
  try {
    head = serializeHead({ method, target: edits.path ?? request.target, version: "HTTP/1.1", headers });
  } catch (error) {
    throw new ReplayError(`cannot replay: ${(error as Error).message}`, 400);
  }
  const bytes = new Uint8Array(head.length + body.length);
  bytes.set(head);
  bytes.set(body, head.length);
  return bytes;
}

/**
 * Replays `original` (with `edits`) against `target` and resolves with the new exchange once the
 * local service answered and closed, or the connection failed (the exchange then says why).
 * @throws {ReplayError} for an edit that cannot be sent (400, 409) or no answer in `timeoutMs` (504).
 */
export async function replay(
  store: InspectorStore,
  original: HttpExchange,
  target: HostPort & { proxyProtocol?: ProxyVersion },
  edits: ReplayEdits = {},
  timeoutMs = 30_000,
): Promise<HttpExchange> {
  const request = replayRequest(original, edits);
  // A service behind --proxy-protocol wants its header first. A replay comes from this machine, not
  // from a visitor: the header says so (v1 UNKNOWN, v2 LOCAL: "use the connection's own addresses").
  const header =
    target.proxyProtocol === undefined ? undefined : encodeProxyHeader(target.proxyProtocol, undefined);
  const bytes = header === undefined ? request : concatBytes(header, request);
  const tap = new InspectorTap({
    store,
    tunnelName: original.tunnelName,
    remote: "replay",
    kind: "http",
    replayOf: original.id,
  });
  tap.toSocket(request);
  const exchange = tap.lastExchange as HttpExchange;
  let sent = 0;
  const { promise, resolve } = Promise.withResolvers<void>();
  const write = (socket: { write(data: Uint8Array): number }) => {
    if (sent < bytes.length) sent += Math.max(0, socket.write(bytes.subarray(sent)));
  };
  const done = (reset?: { reason: string; code: number }) => {
    tap.closed(reset && { by: "local", ...reset });
    resolve();
  };
  let socket: Awaited<ReturnType<typeof Bun.connect>> | undefined;
  try {
    socket = await Bun.connect({
      hostname: target.host,
      port: target.port,
      socket: {
        open: write,
        drain: write,
        data: (_socket, chunk) => tap.fromSocket(chunk),
        close: () => done(),
        error: (_socket, error) => done({ code: ResetCode.Aborted, reason: error.message }),
      },
    });
  } catch (error) {
    done({ code: ResetCode.ConnectFailed, reason: `local service refused: ${(error as Error).message}` });
    return exchange;
  }
  const timer = setTimeout(() => {
    socket?.terminate();
    done({ code: ResetCode.Aborted, reason: `no answer within ${timeoutMs / 1000} s` });
  }, timeoutMs);
  await promise;
  clearTimeout(timer);
  return exchange;
}

/** `a` then `b`, in one new buffer. */
function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a);
  joined.set(b, a.length);
  return joined;
}
