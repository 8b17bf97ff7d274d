/**
 * HTTP tunnels on the control port: a request that reaches `Bun.serve` with a `NAME.DOMAIN` Host is
 * passed, streamed, to an internal HTTP ingress on a loopback port (the same code that serves
 * `--http-port`), with the visitor's address and scheme in a header only the server can sign. So one
 * port serves clients, `/health` and every HTTP tunnel, as ngrok users expect; `--http-port` remains
 * the faster path (one hop fewer); WebSocket upgrades are bridged here (shared/ws-bridge.ts).
 * @module
 */

/** Header that carries `<token> <visitor ip> <scheme>` from the front to the internal ingress. */
export const VIA_HEADER = "x-sockets-via";

/** Hop-by-hop fields that must not be copied onto the internal request (RFC 9110 §7.6.1). */
const HOP_BY_HOP = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/** Passes control-port requests for tunnel names to the internal ingress. */
export class HttpFront {
  /**
   * @param ingressPort the internal ingress's loopback port.
   * @param scheme how visitors reached the control port.
   * @param token random per server start: the internal ingress trusts {@link VIA_HEADER} only with it.
   */
  constructor(
    private readonly ingressPort: number,
    private readonly scheme: "http" | "https",
    private readonly token: string,
  ) {}

  /** Forwards one request; the ingress answers it (404, 401, 502 included) and the body streams back. */
  async forward(req: Request, visitorIp: string): Promise<Response> {
    if ((req.headers.get("upgrade") ?? "") !== "")
      return new Response("only WebSocket upgrades pass the control port; others need --http-port\n", {
        status: 501,
      });
    const url = new URL(req.url);
    const headers = this.headers(req, visitorIp);
    for (const name of HOP_BY_HOP) headers.delete(name);
    try {
      return await fetch(`http://127.0.0.1:${this.ingressPort}${url.pathname}${url.search}`, {
        method: req.method,
        headers,
        body: req.body,
        redirect: "manual",
        decompress: false,
        // The ingress binds a connection to the tunnel of its first request: no reuse across hosts.
        keepalive: false,
        duplex: "half",
      } as RequestInit);
    } catch (error) {
      return new Response(`the tunnel did not answer: ${(error as Error).message}\n`, { status: 502 });
    }
  }

  /**
   * Opens the ingress side of a visitor's WebSocket upgrade (same path, Host, cookies and offered
   * subprotocols); resolves once it is open, or with the 502 to answer when the tunnel refused it.
   */
  async connectWebSocket(req: Request, visitorIp: string): Promise<WebSocket | Response> {
    const url = new URL(req.url);
    const headers = this.headers(req, visitorIp);
    for (const name of [...HOP_BY_HOP, ...WEBSOCKET_HANDSHAKE]) headers.delete(name);
    const protocols = (req.headers.get("sec-websocket-protocol") ?? "")
      .split(",")
      .map((p) => p.trim())
      .filter(Boolean);
    const upstream = new WebSocket(`ws://127.0.0.1:${this.ingressPort}${url.pathname}${url.search}`, {
      headers: Object.fromEntries(headers),
      protocols,
    } as unknown as string[]);
    upstream.binaryType = "arraybuffer";
    const opened = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 10_000);
      upstream.addEventListener("open", () => resolve(true), { once: true });
      upstream.addEventListener("error", () => resolve(false), { once: true });
      upstream.addEventListener("close", () => clearTimeout(timer), { once: true });
    });
    if (opened) return upstream;
    upstream.close();
    return new Response("the tunnel's local service refused the WebSocket upgrade\n", { status: 502 });
  }

  /** The visitor's headers, plus who the visitor is for the ingress. */
  private headers(req: Request, visitorIp: string): Headers {
    const headers = new Headers(req.headers);
    headers.set(VIA_HEADER, `${this.token} ${visitorIp} ${this.scheme}`);
    return headers;
  }
}

/** Handshake fields the upstream WebSocket makes itself. */
const WEBSOCKET_HANDSHAKE = [
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-extensions",
  "sec-websocket-protocol",
];
