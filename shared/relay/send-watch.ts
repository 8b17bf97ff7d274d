/**
 * Backpressure of a client-side WebSocket (the client's control connection, a node's outbound link):
 * Bun's client WebSocket has no drain event, so `bufferedAmount` is the only signal. After a send that
 * leaves the queue above the high-water mark the sender is told "blocked"; the queue is then polled
 * (every millisecond, only while blocked) until it falls below the low-water mark: "unblocked".
 * @module
 */

/** What the watch reads of a WebSocket. */
export interface QueuedSocket {
  readonly bufferedAmount: number;
  readonly readyState: number;
}

/** Default marks: stop reading streams past 8 MiB queued, start again below 2 MiB. */
export const SEND_HIGH_WATER = 8 * 1024 * 1024;
export const SEND_LOW_WATER = 2 * 1024 * 1024;
const POLL_MS = 1;
const OPEN = 1;

/** Watches one WebSocket's send queue (see the module comment). */
export class SendWatch {
  private poll: ReturnType<typeof setInterval> | undefined;

  /**
   * @param ws the WebSocket.
   * @param onBlocked told true when the queue went over the high-water mark, false once it drained.
   */
  constructor(
    private readonly ws: QueuedSocket,
    private readonly onBlocked: (blocked: boolean) => void,
    private readonly high = SEND_HIGH_WATER,
    private readonly low = SEND_LOW_WATER,
  ) {}

  /** True while the sender should hold back. */
  get blocked(): boolean {
    return this.poll !== undefined;
  }

  /** Call after each send: one property read unless the queue is past the high-water mark. */
  sent(): void {
    if (this.poll !== undefined || this.ws.bufferedAmount <= this.high) return;
    this.onBlocked(true);
    this.poll = setInterval(() => {
      if (this.ws.readyState === OPEN && this.ws.bufferedAmount >= this.low) return;
      this.stop();
      this.onBlocked(false);
    }, POLL_MS);
  }

  /** Stops polling (the connection is gone). */
  stop(): void {
    clearInterval(this.poll);
    this.poll = undefined;
  }
}
