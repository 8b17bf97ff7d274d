/**
 * The liveness rule both roles apply to their WebSocket: any message, ping or pong from the peer
 * counts as heard; a heartbeat tick every interval pings the peer, and a peer silent for three
 * intervals is dead. Hearing sets a flag (this runs for every frame: no clock read); only the tick
 * reads the clock.
 * @module
 */

/** Heartbeat intervals a peer may stay silent before it is declared dead. */
export const MISSED_BEATS = 3;

/** How long a peer pinged every `intervalMs` may stay silent before it is dead: {@link MISSED_BEATS} intervals. */
export function deadAfter(intervalMs: number): number {
  return MISSED_BEATS * intervalMs;
}

/** Tracks when the peer was last heard from. */
export class Liveness {
  private heardSinceTick = false;
  private lastSeen: number;

  /** @param now when the connection started (ms since the epoch). */
  constructor(now = Date.now()) {
    this.lastSeen = now;
  }

  /** Something arrived from the peer. */
  heard(): void {
    this.heardSinceTick = true;
  }

  /** A new connection: silence counts from `now`. */
  restart(now = Date.now()): void {
    this.heardSinceTick = false;
    this.lastSeen = now;
  }

  /**
   * Heartbeat tick: how long the peer has been silent, in ms (0 when heard since the last tick).
   * `excused` counts as heard (the server does not read a client paused for its budget: the silence
   * is ours).
   */
  silence(now: number, excused = false): number {
    if (this.heardSinceTick || excused) {
      this.heardSinceTick = false;
      this.lastSeen = now;
    }
    return now - this.lastSeen;
  }
}
