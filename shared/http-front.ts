/**
 * HTTP tunnels on the control port: a request that reaches `Bun.serve` with a `NAME.DOMAIN` Host is
 * passed, streamed, to an internal HTTP ingress on a loopback port (the same code that serves
 * `--http-port`), with the visitor's address and scheme in a header only the server can sign. So one
 * port serves clients, `/health` and every HTTP tunnel, as ngrok users expect; `--http-port` remains
 * the faster path (one hop fewer) and the one that carries WebSocket upgrades.
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
      return new Response("WebSocket and other upgrades need the server's --http-port\n", { status: 501 });
    const url = new URL(req.url);
    const headers = new Headers(req.headers);
    for (const name of HOP_BY_HOP) headers.delete(name);
    headers.set(VIA_HEADER, `${this.token} ${visitorIp} ${this.scheme}`);
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
}
