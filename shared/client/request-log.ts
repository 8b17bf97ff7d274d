/**
 * The client's request log for HTTP tunnels: one line per request — method, path, status, duration,
 * response bytes — read off the bytes a stream relays, without changing or holding them. Parsing
 * trouble switches the log off for that connection; it never touches the relay. With the inspector
 * on, its capture prints these lines instead ({@link requestLine}), and this tap is not used.
 * @module
 */

import { type RequestEvent, RequestFramer, ResponseFramer } from "../http1/framer.ts";
import type { StreamTap } from "../relay/stream.ts";

interface Pending {
  method: string;
  target: string;
  started: number;
  status: number;
  bytes: number;
}

/** Watches one HTTP connection and prints a line as each response ends. */
export class RequestLogTap implements StreamTap {
  /** The framers copy what they keep (a partial head); the log keeps strings: the relay may free early. */
  readonly keepsViews = false;
  private readonly requests = new RequestFramer();
  /** Only the status and the body's length are read: no field list. */
  private readonly responses = new ResponseFramer(false);
  private readonly pending: Pending[] = [];
  private off = false;

  /** @param print writes one finished line. */
  constructor(private readonly print: (line: string) => void) {}

  /** Request bytes on their way to the local service. */
  toSocket(bytes: Uint8Array): void {
    if (this.off) return;
    try {
      this.countRequests(this.requests.feed(bytes));
    } catch {
      this.off = true;
    }
  }

  private countRequests(events: RequestEvent[]): void {
    for (const event of events) {
      if (event.type !== "head") continue;
      const { method, target } = event.head;
      this.responses.expectResponse(method);
      this.pending.push({ method, target, started: performance.now(), status: 0, bytes: 0 });
    }
  }

  /** Response bytes on their way back to the visitor. */
  fromSocket(bytes: Uint8Array): void {
    if (this.off) return;
    try {
      for (const event of this.responses.feed(bytes)) {
        const current = this.pending[0];
        if (current === undefined) break;
        if (event.type === "head") {
          const { status } = event.head;
          if (status >= 200 || status === 101) current.status = status;
          // An upgrade refused: the requests held behind it are HTTP after all.
          if (status >= 200 && this.requests.awaitingUpgrade)
            this.countRequests(this.requests.declineUpgrade());
          if (event.head.status === 101) {
            this.finish();
            this.off = true; // the connection is no longer HTTP
          }
        } else if (event.type === "body") current.bytes += event.bytes.length;
        else if (event.type === "end-of-message" && current.status !== 0) this.finish();
      }
    } catch {
      this.off = true;
    }
  }

  private finish(): void {
    const done = this.pending.shift();
    if (done === undefined) return;
    this.print(
      requestLine(done.method, done.target, done.status, performance.now() - done.started, done.bytes),
    );
  }
}

/**
 * One line of the request log: the local time, method, target, status, duration and the response
 * body's bytes as relayed (chunk framing included). The inspector's capture prints the same line when
 * it is on (one reading of the bytes rather than two).
 */
export function requestLine(
  method: string,
  target: string,
  status: number,
  ms: number,
  bytes: number,
): string {
  return `${clock()} ${method} ${target} ${status} ${Math.round(ms)} ms ${bytes} B`;
}

/** The local time as HH:MM:SS, formatted once a second (formatting a Date cost more than the rest of a line). */
let shownSecond = -1;
let shown = "";
function clock(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== shownSecond) {
    shownSecond = second;
    shown = new Date(now).toTimeString().slice(0, 8);
  }
  return shown;
}

/** Lines held for one write at most (a busier turn writes early). */
const MAX_BATCHED_LINES = 256;

/**
 * A printer of request lines that writes each event-loop turn's lines at once (`write` gets them
 * joined, each ending in a newline): under load, one write per line to a terminal cost more than
 * the request. Lines still held when the process exits are written then.
 */
export function batchedLines(write: (text: string) => void): (line: string) => void {
  let held: string[] = [];
  const flush = () => {
    if (held.length === 0) return;
    const text = `${held.join("\n")}\n`;
    held = [];
    write(text);
  };
  process.on("exit", flush);
  return (line) => {
    held.push(line);
    if (held.length >= MAX_BATCHED_LINES) flush();
    else if (held.length === 1) setImmediate(flush);
  };
}
