/**
 * Standby connections: a client of node A that knows other servers keeps one idle WebSocket to another
 * node B (at {@link STANDBY_PATH}, naming A). B watches the cluster's live nodes in Redis; the moment A
 * leaves them (it stopped renewing: killed, frozen, cut off from Redis, or shut down), B closes the
 * standby with {@link CloseCode.MoveHere} and the client connects to B at once with its old session,
 * which takes its names and ports over. A client whose node froze would otherwise notice only after
 * three silent heartbeats, and one whose node lost Redis (its leases lapsing while it still answers)
 * would not notice at all.
 *
 * The connection carries no frames: the client pings it (any message from it is a protocol error), and
 * it is dropped after three silent heartbeats of this server.
 * @module
 */

import { Liveness } from "../../liveness.ts";
import { CloseCode } from "../../wire/protocol.ts";
import type { LinkSocket } from "./link.ts";

/**
 * A standby silent this long is dropped (its client pings it at its heartbeat, at most every 10 s, so
 * that a heartbeat of this server's own does not have to match the client's).
 */
export const STANDBY_SILENCE_MS = 35_000;

/** A standby connection on this node, watching the client's node. */
export class StandbyWatch {
  private ws: LinkSocket | null = null;
  private readonly liveness = new Liveness();
  private watch: ReturnType<typeof setInterval> | undefined;
  private ended = false;
  /** Told to move before its WebSocket opened: said as soon as it does. */
  private moveWanted = false;
  private readonly silenceMs = STANDBY_SILENCE_MS;

  /**
   * @param watched the client's node (from the upgrade's node header).
   * @param remote the client's address, for logs.
   * @param onGone told once when the connection is gone.
   */
  constructor(
    readonly watched: string,
    readonly remote: string,
    private readonly onGone: (standby: StandbyWatch) => void,
  ) {}

  /** The WebSocket is open: watch its liveness. */
  attach(ws: LinkSocket): void {
    if (this.moveWanted) {
      ws.close(CloseCode.MoveHere, `node ${this.watched} left the cluster`);
      return;
    }
    if (this.ended) {
      ws.close(CloseCode.GoingAway, "server leaving");
      return;
    }
    this.ws = ws;
    this.liveness.restart();
    this.watch = setInterval(
      () => {
        if (this.liveness.silence(Date.now()) <= this.silenceMs) return;
        ws.terminate();
        this.onClose();
      },
      Math.max(250, Math.floor(this.silenceMs / 3)),
    );
  }

  /** The watched node left the cluster: tell the client to come here now. */
  moveHere(): void {
    if (this.ws === null && !this.ended) this.moveWanted = true;
    this.ws?.close(CloseCode.MoveHere, `node ${this.watched} left the cluster`);
    this.onClose();
  }

  /** A ping or pong from the client. */
  heard(): void {
    this.liveness.heard();
  }

  /** Nothing travels on a standby connection. */
  onMessage(): void {
    this.ws?.close(CloseCode.ProtocolError, "a standby connection carries no messages");
  }

  onDrain(): void {}

  /** Closes it (the server shuts down). */
  close(): void {
    this.ws?.close(CloseCode.GoingAway, "server leaving");
    this.onClose();
  }

  /** The connection is gone. */
  onClose(): void {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.watch);
    this.ws = null;
    this.onGone(this);
  }
}
