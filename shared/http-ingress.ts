/**
 * The server's public HTTP port: each visitor connection is framed request by request
 * (`RequestFramer`), routed by the Host of its first request (`NAME.DOMAIN`) to an HTTP tunnel, and
 * carried as one stream of kind Http: request heads are re-written with X-Forwarded-* (and the Host
 * the tunnel asked for), bodies pass through as they come (never buffered), responses come back as
 * raw bytes. An upgrade request (WebSocket) turns the connection into raw bytes both ways.
 *
 * With the server's certificate (a wildcard for `*.DOMAIN`) the port serves https.
 *
 * Unknown names get 404, a tunnel whose client is away or whose local service refuses gets 502, a
 * malformed request its 4xx/5xx: each a small text page, then the connection closes.
 * @module
 */

import type { TCPSocketListener } from "bun";
import { formatHost } from "./args.ts";
import { keyMatches } from "./auth.ts";
import { VIA_HEADER } from "./http-front.ts";
import {
  forwardRequestHead,
  HttpParseError,
  headerValues,
  type RequestEvent,
  RequestFramer,
  type RequestHead,
  requestHost,
  serializeHead,
} from "./http1.ts";
import type { Logger } from "./log.ts";
import { type RelaySocket, type RelaySocketData, relaySocketHandlers, type Stream } from "./stream.ts";

/** Where a name leads: an HTTP tunnel that opens a stream per visitor connection. */
export interface HttpRoute {
  /** Host header for the local service, or undefined to keep the visitor's. */
  hostHeader?: string;
  /** `user:password` every request must present (HTTP basic auth), checked here, never forwarded. */
  basicAuth?: string;
  /** Opens a stream for this visitor, or says why not. */
  open(socket: HttpSocket): Stream | { status: number; message: string };
}

/** The `data` slot of a visitor socket on the HTTP port. */
export interface HttpSocketData extends RelaySocketData {
  framer: RequestFramer;
  route: HttpRoute | null;
  /** An error page was sent: whatever else the visitor sends is ignored. */
  answered: boolean;
  /** The tunnel name the connection was routed to. */
  name: string | undefined;
}

/** A visitor socket on the HTTP port. */
export type HttpSocket = RelaySocket & { data: HttpSocketData };

/** Where to listen and how to find routes. */
export interface HttpIngressOptions {
  host: string;
  port: number;
  /** Public names are `NAME.<domain>`. */
  domain: string;
  /** The tunnel behind a name, if any. */
  route(name: string): HttpRoute | undefined;
  /** PEM certificate (a wildcard for `*.DOMAIN`) and key: serve https. */
  tls?: { cert: string; key: string };
  /**
   * The internal ingress behind the control port: requests carrying this token in `x-sockets-via`
   * name the real visitor address and scheme. Without it (the public port) the header is dropped.
   */
  viaToken?: string;
  log: Logger;
}

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  404: "Not Found",
  413: "Content Too Large",
  431: "Request Header Fields Too Large",
  501: "Not Implemented",
  502: "Bad Gateway",
};

const UNAUTHORIZED = 'www-authenticate: Basic realm="sockets tunnel", charset="UTF-8"\r\n';

/** Whether a request carries the tunnel's basic-auth credentials (constant-time compare). */
function authorized(head: RequestHead, route: HttpRoute): boolean {
  if (route.basicAuth === undefined) return true;
  const value = headerValues(head.headers, "authorization")[0] ?? "";
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(value);
  const presented = match ? Buffer.from(match[1] as string, "base64").toString("utf8") : undefined;
  return keyMatches(presented, route.basicAuth);
}

/** Writes a small text response and closes the connection. */
function respond(socket: HttpSocket, status: number, message: string, extraHeaders = ""): void {
  socket.data.answered = true;
  const body = `${message}\n`;
  const head = `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extraHeaders}connection: close\r\n\r\n`;
  socket.write(head + body);
  socket.end();
}

/** The tunnel name in a Host value (`NAME.DOMAIN[:port]`), or undefined. */
export function nameOf(host: string, domain: string): string | undefined {
  const bare = host.toLowerCase().replace(/:\d+$/, "");
  const suffix = `.${domain.toLowerCase()}`;
  return bare.endsWith(suffix) && bare.length > suffix.length ? bare.slice(0, -suffix.length) : undefined;
}

/** Opens the HTTP port; visitors are routed as described in the module comment. */
export function listenHttp(options: HttpIngressOptions): TCPSocketListener<HttpSocketData> {
  const { domain, log } = options;
  const proto = options.tls ? "https" : "http";

  /** Route: the first request's Host picks the tunnel for the whole connection. */
  function route(socket: HttpSocket, head: RequestHead): Stream | null {
    const host = requestHost(head);
    const name = nameOf(host, domain);
    const target = name === undefined ? undefined : options.route(name);
    if (target === undefined) {
      respond(socket, 404, `no tunnel at ${host || "(no Host header)"}`);
      return null;
    }
    if (!authorized(head, target)) {
      respond(socket, 401, "this tunnel needs a user name and password", UNAUTHORIZED);
      return null;
    }
    const opened = target.open(socket);
    if (!(opened as Stream).id) {
      const refusal = opened as { status: number; message: string };
      respond(socket, refusal.status, refusal.message);
      return null;
    }
    const stream = opened as Stream;
    socket.data.route = target;
    socket.data.name = name;
    // Nothing came back yet: answer the visitor with a page rather than a reset.
    stream.onPeerReset = (_code, reason, received) => {
      if (received > 0) return false;
      respond(socket, 502, `the tunnel's local service did not answer: ${reason}`);
      return true;
    };
    return stream;
  }

  /** Who sent a request: the socket's peer, or (behind the control port) the visitor the front names. */
  function visitorOrigin(socket: HttpSocket, head: RequestHead): { remoteIp: string; proto: string } {
    const via = options.viaToken === undefined ? undefined : headerValues(head.headers, VIA_HEADER)[0];
    const [token, ip, scheme] = (via ?? "").split(" ");
    if (token !== undefined && ip && scheme && keyMatches(token, options.viaToken as string))
      return { remoteIp: ip, proto: scheme };
    return { remoteIp: socket.remoteAddress, proto };
  }

  function relay(socket: HttpSocket, events: RequestEvent[]): void {
    const data = socket.data;
    for (const event of events) {
      if (event.type === "head") {
        const stream = data.stream ?? route(socket, event.head);
        if (stream === null || data.route === null) return;
        if (nameOf(requestHost(event.head), domain) !== data.name) {
          // A connection belongs to the tunnel of its first request: never carry a request elsewhere.
          stream.reset(1, "request for another host on the same connection");
          return;
        }
        const origin = visitorOrigin(socket, event.head);
        if (!authorized(event.head, data.route)) {
          // Responses to earlier requests may still be on their way: no page, just close.
          stream.reset(1, "basic auth failed on a later request");
          return;
        }
        const head = forwardRequestHead(event.head, { ...origin, rewriteHost: data.route.hostHeader });
        const dropAuthorization = data.route.basicAuth !== undefined;
        head.headers = head.headers.filter(([field]) => {
          const name = field.toLowerCase();
          return name !== VIA_HEADER && !(dropAuthorization && name === "authorization");
        });
        stream.onSocketData(serializeHead(head));
      } else if (event.type === "body" || event.type === "passthrough")
        data.stream?.onSocketData(event.bytes);
      else if (data.framer.awaitingUpgrade) relay(socket, data.framer.switchToPassthrough());
    }
  }

  return Bun.listen<HttpSocketData>({
    hostname: options.host,
    port: options.port,
    tls: options.tls,
    allowHalfOpen: true,
    socket: {
      ...(relaySocketHandlers as unknown as Bun.SocketHandler<HttpSocketData>),
      open(socket) {
        socket.data = {
          stream: null,
          framer: new RequestFramer(),
          route: null,
          answered: false,
          name: undefined,
        };
      },
      data(socket, chunk) {
        if (socket.data.answered) return;
        let events: RequestEvent[];
        try {
          events = socket.data.framer.feed(chunk);
        } catch (error) {
          const status = error instanceof HttpParseError ? error.status : 400;
          log.info(`http visitor ${formatHost(socket.remoteAddress)}: ${(error as Error).message}`);
          if (socket.data.stream) socket.data.stream.reset(1, `bad request: ${(error as Error).message}`);
          else respond(socket, status, (error as Error).message);
          return;
        }
        relay(socket as HttpSocket, events);
      },
    },
  });
}
