/**
 * The control port: one listener that frames HTTP itself. A request whose Host is `NAME.DOMAIN` is a
 * visitor of an HTTP tunnel and takes exactly the path it takes on `--http-port` (one framing, one
 * head rewrite, straight onto the tunnel's stream: pipelining, lengths, any body size, upgrades).
 * Every other request is the server's own and goes to a Hono app (`/health`, the clients' upgrade
 * with its refusal ladder); an upgrade the app accepts continues on the same socket as a WebSocket
 * ({@link RawWebSocket}).
 *
 * The app's `env` mimics the two `Bun.serve` server methods it calls: `requestIP(req)` and
 * `upgrade(req, { data, headers })`.
 * @module
 */

import { unmappedAddress } from "../args.ts";
import type { RequestHead } from "../http1/framer.ts";
import { STATUS_CODES } from "../http1/status.ts";
import {
  type HttpConnection,
  type HttpIngress,
  type HttpIngressOptions,
  listenHttp,
} from "./http-ingress.ts";
import {
  RawWebSocket,
  switchingProtocols,
  upgradeProblem,
  type WebSocketHandlers,
  type WebSocketLimits,
} from "./ws-server.ts";

/** What the control port's Hono app gets as `env`: the part of Bun's `Server` it uses. */
export interface ControlEnv<T> {
  /** The visitor's address. */
  requestIP(req: Request): { address: string; port: number; family: string } | null;
  /** Accepts the request's WebSocket upgrade once the app returns; false when it is no valid upgrade. */
  upgrade(req: Request, options: { data: T; headers?: Record<string, string> }): boolean;
}

/** Where and what the control port serves. */
export interface ControlPortOptions<T> extends Omit<HttpIngressOptions, "local"> {
  /** Answers the server's own requests (a Hono app's `fetch`). */
  app: { fetch(request: Request, env: ControlEnv<T>): Response | Promise<Response> };
  /** Events of accepted WebSockets. */
  websocket: WebSocketHandlers<T>;
  /** Limits of accepted WebSockets. */
  limits: WebSocketLimits;
}

/** Opens the control port (see the module comment). */
export function listenControl<T>(options: ControlPortOptions<T>): HttpIngress {
  const scheme = options.tls ? "https" : "http";

  async function handle(conn: HttpConnection, head: RequestHead): Promise<void> {
    const socket = conn.socket;
    const host = head.headers.find(([name]) => name.toLowerCase() === "host")?.[1] ?? "localhost";
    const target = head.target.startsWith("/") ? head.target : "/";
    let request: Request;
    try {
      // HEAD is answered as GET without the body: its Content-Length is then the one GET would have.
      request = new Request(`${scheme}://${host}${target}`, {
        method: head.method === "HEAD" && !head.upgrade ? "GET" : head.method,
        headers: head.headers,
      });
    } catch {
      writeAndClose(conn, 400, "bad request\n");
      return;
    }
    let wanted: { data: T; headers?: Record<string, string> } | undefined;
    const env: ControlEnv<T> = {
      requestIP: () => ({
        address: unmappedAddress(socket.remoteAddress),
        port: socket.remotePort,
        family: socket.remoteAddress.includes(":") ? "IPv6" : "IPv4",
      }),
      upgrade: (req, upgrade) => {
        if (!head.upgrade || upgradeProblem(req.headers, req.method) !== undefined) return false;
        wanted = upgrade;
        return true;
      },
    };
    const response = await options.app.fetch(request, env);
    if (wanted !== undefined) {
      const key = request.headers.get("sec-websocket-key") as string;
      if (socket.write(switchingProtocols(key, wanted.headers)) < 0) return;
      const ws = new RawWebSocket<T>(socket, wanted.data, options.websocket, options.limits);
      const held = conn.takeOver({
        onData: (chunk) => ws.onData(chunk, true),
        onDrain: () => ws.onDrain(),
        onEnd: () => socket.end(),
        onClose: () => ws.onClose(),
        get paused() {
          return ws.isPaused;
        },
      });
      options.websocket.open(ws);
      for (const bytes of held) ws.onData(bytes);
      return;
    }
    const answer = new Uint8Array(await response.arrayBuffer());
    const body = head.method === "HEAD" ? new Uint8Array(0) : answer;
    // A refused upgrade ends the connection: what the client sent after it is not HTTP to answer.
    const keepAlive = head.keepAlive && !head.upgrade;
    let text = `HTTP/1.1 ${response.status} ${response.statusText || STATUS_CODES[response.status] || "Status"}\r\n`;
    for (const [name, value] of response.headers)
      if (name !== "content-length" && name !== "transfer-encoding" && name !== "connection")
        text += `${name}: ${value}\r\n`;
    text += `content-length: ${answer.length}\r\n`;
    if (!keepAlive) text += "connection: close\r\n";
    const bytes = Buffer.concat([Buffer.from(`${text}\r\n`, "latin1"), body]);
    // These answers are small: a peer that leaves them unread (pipelining without reading) is dropped.
    if (socket.write(bytes) !== bytes.length) {
      socket.terminate();
      return;
    }
    if (!keepAlive) conn.close();
  }

  function writeAndClose(conn: HttpConnection, status: number, body: string): void {
    conn.socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
    );
    conn.close();
  }

  return listenHttp({ ...options, local: { handle } });
}
