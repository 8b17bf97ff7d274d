/**
 * WebSocket upgrades of HTTP tunnels on the control port: the visitor's WebSocket (accepted by
 * `Bun.serve`) is joined to a WebSocket the server opens to its internal HTTP ingress, which carries
 * it through the tunnel like any other upgrade. Messages, pings and close codes pass both ways;
 * backpressure pauses the side that reads.
 * @module
 */

import type { ServerWebSocket } from "bun";

/** Bytes queued toward the ingress past which the visitor's socket stops being read. */
const HIGH_WATER = 8 * 1024 * 1024;
const LOW_WATER = 2 * 1024 * 1024;
/** Close codes that may not be sent in a close frame (RFC 6455 §7.4.1). */
const RESERVED_CLOSE = new Set([1005, 1006, 1015]);

/** Closes `target` with `code` when it may be sent, else normally. */
function closeWith(
  target: { close(code?: number, reason?: string): void },
  code: number,
  reason: string,
): void {
  if (RESERVED_CLOSE.has(code)) target.close();
  else target.close(code, reason);
}

/** The `data` a bridged visitor WebSocket carries: the upstream side. */
export interface BridgeData {
  bridge?: WebSocket | null;
}

/** Event handlers for a bridged visitor WebSocket on `Bun.serve`. */
export const bridgeHandlers = {
  /** The visitor is connected: pass upstream messages and its close to the visitor. */
  open(ws: ServerWebSocket<BridgeData>): void {
    const upstream = ws.data.bridge as WebSocket;
    upstream.addEventListener("message", (event) => {
      // -1: queued with backpressure; stop reading upstream until the visitor drains.
      if (ws.send(event.data as string | ArrayBuffer) === -1) upstream.pause();
    });
    upstream.addEventListener("close", (event) => closeWith(ws, event.code, event.reason));
    upstream.addEventListener("error", () => ws.close(1011, "tunnel error"));
  },

  /** A message from the visitor: on upstream, pausing the visitor while upstream is full. */
  message(ws: ServerWebSocket<BridgeData>, message: string | Uint8Array): void {
    const upstream = ws.data.bridge as WebSocket;
    upstream.send(message);
    if (upstream.bufferedAmount <= HIGH_WATER || ws.isPaused) return;
    // The client WebSocket has no drain event: look again until it fell below the low mark.
    ws.pause();
    const poll = () => {
      if (upstream.readyState !== WebSocket.OPEN || upstream.bufferedAmount < LOW_WATER) ws.resume();
      else setTimeout(poll, 1);
    };
    setTimeout(poll, 1);
  },

  /** The visitor can take more: read upstream again. */
  drain(ws: ServerWebSocket<BridgeData>): void {
    ws.data.bridge?.resume();
  },

  /** The visitor closed: close upstream with the same code. */
  close(ws: ServerWebSocket<BridgeData>, code: number, reason: string): void {
    const upstream = ws.data.bridge;
    if (upstream && upstream.readyState <= WebSocket.OPEN) closeWith(upstream, code, reason);
  },
};
