/**
 * Two streams joined end to end, each the other's socket: what a cluster node does with a visitor that
 * another node carried to it over their link (the link's stream) and the holding client's session (a
 * stream of its own). Each side sees an ordinary socket, so windows, backpressure and half-close carry
 * through: a stream whose credit ran out pauses its "socket", which makes the other stream's writes
 * return 0, so that one keeps its peer's bytes pending and withholds their credit, and so on back to
 * the visitor's TCP socket.
 * @module
 */

import { forgetDisposable } from "./disposable.ts";
import type { RelaySocket, RelaySocketData, Stream } from "./stream.ts";

/**
 * One end of a splice: the socket a stream is attached to, standing for the other stream. Only what
 * {@link Stream} calls on a socket is implemented.
 */
class SpliceEnd {
  /** The stream this end is the socket of (set by `Stream.attach`, cleared when it lets go). */
  data: RelaySocketData = { stream: null };
  /** The other end (the socket of the other stream). */
  other!: SpliceEnd;
  /**
   * What our stream writes here is kept by the other stream (by reference, until its peer acknowledges
   * it), which frees it then: our stream must not free it once written (stream.ts).
   */
  readonly keepsWrites = true;
  /** Our stream asked its socket to stop producing bytes (its send credit ran out). */
  paused = false;
  /** Our stream is done with this end (ended or terminated): nothing more goes through it. */
  private closed = false;

  constructor(
    /** The visitor's address, for a stream that announces it (OPEN's `remote`). */
    readonly remoteAddress: string,
    readonly remotePort: number,
    /** The public address the visitor connected to (OPEN's `local`); "" and 0 when unknown. */
    readonly localAddress: string,
    readonly localPort: number,
  ) {}

  /** The stream at the other end: it reads what our stream writes. */
  private get reader(): Stream | null {
    return this.other.closed ? null : this.other.data.stream;
  }

  /** Our stream delivers its peer's bytes: they become the other stream's socket data. */
  write(bytes: Uint8Array): number {
    if (this.closed || this.other.closed) return -1;
    const reader = this.other.data.stream;
    // The other stream reads no more until its credit returns (or is not attached yet): keep the bytes
    // pending here (and their credit withheld), as a full socket buffer would.
    if (reader === null || this.other.paused) return 0;
    // The other stream keeps a view until its peer acknowledges it, and frees the buffer then (a whole
    // received message, marked by the mux, goes on marked: left to the collector, 512 KiB link messages
    // made the allocator hand out freshly faulted pages for each). Unless its tap may keep views.
    const tap = reader.tap;
    if (tap !== undefined && tap.keepsViews !== false) forgetDisposable(bytes);
    reader.onSocketData(bytes, false);
    return bytes.length;
  }

  pause(): void {
    this.paused = true;
  }

  /** Our stream may read again: the other stream's pending bytes can be written now. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.other.data.stream?.onSocketDrain();
  }

  /** Our stream got its peer's END and wrote everything: the other stream's reader sees FIN. */
  shutdown(): void {
    const reader = this.reader;
    // Deferred: the other stream may be in the middle of the call that led here.
    if (reader !== null) queueMicrotask(() => reader.onSocketEnd());
  }

  /** Our stream finished cleanly in both directions: the other stream's socket closes (cleanly). */
  end(): void {
    this.release();
  }

  /** Our stream was reset: the other one is aborted too. */
  terminate(): void {
    this.release(new Error("the spliced stream was reset"));
  }

  private release(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    const other = this.other.data.stream;
    if (other !== null) queueMicrotask(() => other.onSocketClose(error));
  }
}

/**
 * Joins `a` and `b`: bytes `a` receives from its peer go out on `b` and back, with each stream's
 * window, END and RESET carried to the other.
 * @param remote the visitor's address (`ip:port`), reported by either end as its socket's address.
 * @param local the public address the visitor connected to (`ip:port`), reported as the local address.
 */
export function splice(a: Stream, b: Stream, remote: string, local?: string): void {
  spliceOnto(
    a,
    remote,
    (socket) => {
      b.attach(socket);
      return b;
    },
    local,
  );
}

/**
 * Joins `a` to the stream `open` makes on the other end's socket (a role that creates that stream
 * only now, attached to the socket it is given), or says why there is none (`a` is then left as it
 * was, for its caller to reset).
 */
export function spliceOnto(
  a: Stream,
  remote: string,
  open: (socket: SpliceSocket) => Stream | string,
  local?: string,
): Stream | string {
  const [forA, forB] = spliceEnds(remote, local);
  const b = open(forB);
  if (typeof b === "string") return b;
  a.attach(forA);
  // Whatever either received before both were attached waits as pending: write it now.
  a.onSocketDrain();
  b.onSocketDrain();
  return b;
}

/** `ip:port` or `[ipv6]:port` as a socket reports it: address without brackets, and port (0 if none). */
function hostAndPort(text: string): [string, number] {
  const colon = text.lastIndexOf(":");
  const address = colon < 0 ? text : text.slice(0, colon).replace(/^\[|\]$/g, "");
  return [address, colon < 0 ? 0 : Number(text.slice(colon + 1)) || 0];
}

/** The socket of a stream that is to be spliced: a {@link RelaySocket} as far as the stream can tell. */
export type SpliceSocket = RelaySocket;

/**
 * Two joined ends, not yet attached: attach the first to one stream and the second to another
 * (`Stream.attach`).
 */
function spliceEnds(remote: string, local = ""): [SpliceSocket, SpliceSocket] {
  const [address, port] = hostAndPort(remote);
  const [localAddress, localPort] = hostAndPort(local);
  const first = new SpliceEnd(address, port, localAddress, localPort);
  const second = new SpliceEnd(address, port, localAddress, localPort);
  first.other = second;
  second.other = first;
  return [first as unknown as SpliceSocket, second as unknown as SpliceSocket];
}
