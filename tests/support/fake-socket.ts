/**
 * Test support: a socket double for the relay's unit tests (stream state machine, splices). It takes a
 * chosen share of each write, records what it took, and obeys pause, as a Bun socket would.
 * @module
 */

import type { Stream } from "../../shared/relay/stream.ts";

/** A socket double: takes at most {@link FakeSocket.room} bytes per write, records them, obeys pause. */
export class FakeSocket {
  data: { stream: Stream | null } = { stream: null };
  paused = false;
  shut = false;
  ended = false;
  aborted = false;
  received: number[] = [];
  /** Bytes the "kernel" takes on the next write; 0 means full until a drain. */
  room = Number.POSITIVE_INFINITY;
  /** The peer's address, for a stream that announces it. */
  remoteAddress = "192.0.2.1";
  remotePort = 4242;

  write(chunk: Uint8Array): number {
    if (this.shut || this.aborted) return -1;
    // The relay never writes nothing; an empty chunk here is one it freed too early.
    if (chunk.length === 0) throw new Error("write of an empty chunk: freed before it was written?");
    const n = Math.min(chunk.length, this.room);
    for (let i = 0; i < n; i++) this.received.push(chunk[i] as number);
    return n;
  }
  pause() {
    this.paused = true;
  }
  resume() {
    this.paused = false;
  }
  shutdown() {
    this.shut = true;
  }
  end() {
    this.ended = true;
  }
  terminate() {
    this.aborted = true;
  }
  /** The "kernel" took what was queued: the stream may write again. */
  drain() {
    this.data.stream?.onSocketDrain();
  }
}
