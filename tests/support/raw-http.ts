/**
 * Test support, raw HTTP: a visitor connection (node:net) that writes bytes as given and reads
 * HTTP/1.1 responses one by one off the wire, for what fetch hides (interim 1xx answers, pipelining,
 * header fields in order, one connection for many requests, a visitor that stops reading).
 * @module
 */

import { connect, type Socket } from "node:net";
import { defer, withTimeout } from "./processes.ts";

/** One response read off a raw connection. */
export interface RawResponse {
  statusLine: string;
  status: number;
  /** Header fields in order, as sent. */
  headers: [string, string][];
  body: Buffer;
}

/** The value of the first field called `name` (any case). */
export function field(response: RawResponse, name: string): string | undefined {
  return response.headers.find(([n]) => n.toLowerCase() === name.toLowerCase())?.[1];
}

/** A raw HTTP/1.1 connection that writes with backpressure and reads responses one by one. */
export class RawHttp {
  private buffer: Buffer = Buffer.alloc(0);
  private closed = false;
  private wake: (() => void) | null = null;

  private constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
      this.notify();
    });
    const close = () => {
      this.closed = true;
      this.notify();
    };
    socket.on("end", close);
    socket.on("close", close);
    socket.on("error", close);
  }

  /** Connects to 127.0.0.1:`port`. */
  static open(port: number): Promise<RawHttp> {
    return withTimeout(
      new Promise<RawHttp>((resolve, reject) => {
        const socket = connect({ port, host: "127.0.0.1" });
        defer(() => socket.destroy());
        socket.once("connect", () => resolve(new RawHttp(socket)));
        socket.once("error", reject);
      }),
      5000,
      `no connection to port ${port}`,
    );
  }

  /** Writes; resolves at once, or on 'drain' when the socket's buffer is full. */
  async write(data: string | Uint8Array): Promise<void> {
    if (!this.socket.write(data)) await new Promise((resolve) => this.socket.once("drain", resolve));
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Waits for more bytes; throws once closed or past `deadline`, with what arrived unread. */
  private async more(deadline: number): Promise<void> {
    const unread = () => JSON.stringify(this.buffer.toString("latin1").slice(0, 500));
    if (this.closed) throw new Error(`the connection closed; unread: ${unread()}`);
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no complete response in time; unread: ${unread()}`);
    await withTimeout(
      new Promise<void>((resolve) => {
        this.wake = resolve;
      }),
      left,
      `no complete response; unread: ${unread()}`,
    );
  }

  private take(n: number): Buffer {
    const out = this.buffer.subarray(0, n);
    this.buffer = this.buffer.subarray(n);
    return out;
  }

  /**
   * Reads one response: a 1xx alone, 204 and 304 without a body, else the body by Content-Length,
   * chunked (trailers skipped), or (neither) to the close.
   */
  /** Reads one response head and nothing after it (the answer to a HEAD request): its text, without the blank line. */
  async readHeadOnly(timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    let end = this.buffer.indexOf("\r\n\r\n");
    while (end < 0) {
      await this.more(deadline);
      end = this.buffer.indexOf("\r\n\r\n");
    }
    return this.take(end + 4)
      .toString("latin1")
      .slice(0, -4);
  }

  async readResponse(timeoutMs = 5000): Promise<RawResponse> {
    const deadline = Date.now() + timeoutMs;
    let end = this.buffer.indexOf("\r\n\r\n");
    while (end < 0) {
      await this.more(deadline);
      end = this.buffer.indexOf("\r\n\r\n");
    }
    const [statusLine = "", ...lines] = this.take(end + 4)
      .toString("latin1")
      .slice(0, -4)
      .split("\r\n");
    const headers = lines.map((line): [string, string] => {
      const colon = line.indexOf(":");
      return [line.slice(0, colon), line.slice(colon + 1).trim()];
    });
    const response = { statusLine, status: Number(statusLine.split(" ")[1]), headers, body: Buffer.alloc(0) };
    if (response.status < 200 || response.status === 204 || response.status === 304) return response;
    if (field(response, "transfer-encoding")?.toLowerCase() === "chunked") {
      const parts: Buffer[] = [];
      for (;;) {
        let lineEnd = this.buffer.indexOf("\r\n");
        while (lineEnd < 0) {
          await this.more(deadline);
          lineEnd = this.buffer.indexOf("\r\n");
        }
        const size = Number.parseInt(this.take(lineEnd + 2).toString("latin1"), 16);
        if (size === 0) {
          // Trailer fields (if any), then the empty line.
          while (
            !this.buffer.subarray(0, 2).equals(Buffer.from("\r\n")) &&
            this.buffer.indexOf("\r\n\r\n") < 0
          )
            await this.more(deadline);
          this.take(
            this.buffer.subarray(0, 2).equals(Buffer.from("\r\n")) ? 2 : this.buffer.indexOf("\r\n\r\n") + 4,
          );
          return { ...response, body: Buffer.concat(parts) };
        }
        while (this.buffer.length < size + 2) await this.more(deadline);
        parts.push(Buffer.from(this.take(size + 2).subarray(0, size)));
      }
    }
    const length = field(response, "content-length");
    if (length === undefined) {
      while (!this.closed) await this.more(deadline);
      return { ...response, body: Buffer.from(this.take(this.buffer.length)) };
    }
    while (this.buffer.length < Number(length)) await this.more(deadline);
    return { ...response, body: Buffer.from(this.take(Number(length))) };
  }

  destroy(): void {
    this.socket.destroy();
  }
}
