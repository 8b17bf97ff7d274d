/**
 * Test support, faults: a TCP proxy between client and server that can cut and refuse connections, and
 * probes of what a port does with a visitor (refused or closed without an answer, the status of a raw
 * HTTP request, a WebSocket upgrade's headers). Everything registers its cleanup with {@link defer}, so
 * each test file's `setupFile()` cleanup stops it.
 * @module
 */

import { randomBytes } from "node:crypto";
import { connect } from "node:net";
import type { Socket as BunSocket, TCPSocketListener } from "bun";
import { SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import { defer, withTimeout } from "./processes.ts";
import { writeQueued } from "./sockets.ts";

// ---------------------------------------------------------------------------------------------------
// A controllable TCP proxy

interface ProxySide {
  other: BunSocket<ProxySide> | null;
  /** Bytes for this socket that the kernel did not take yet. */
  queue: Uint8Array[];
  /** Bytes read from this socket before its peer connected. */
  early: Uint8Array[];
  /** The peer sent FIN: shut this socket's write side once `queue` is empty. */
  finPending: boolean;
  closed: boolean;
}

/** A TCP proxy between a client and a server, to simulate network faults. */
export interface Proxy {
  port: number;
  /** Connections accepted (and forwarded) so far. */
  readonly accepted: number;
  /** Connection pairs open now. */
  readonly active: number;
  /** Aborts every open connection, both sides, at once. */
  cut(): void;
  /** While true, new connections are closed as soon as they are accepted. */
  refuse(on: boolean): void;
  stop(): void;
}

const newSide = (): ProxySide => ({ other: null, queue: [], early: [], finPending: false, closed: false });

/** Writes what it can; keeps the rest queued and pauses the source until `drain`. */
function relayWrite(to: BunSocket<ProxySide>, chunk: Uint8Array): void {
  if (to.data.closed) return;
  if (to.data.queue.length > 0) {
    to.data.queue.push(chunk);
    return;
  }
  const n = to.write(chunk);
  if (n < chunk.length) {
    to.data.queue.push(chunk.subarray(Math.max(n, 0)));
    to.data.other?.pause();
  }
}

function relayDrain(socket: BunSocket<ProxySide>): void {
  if (!writeQueued(socket, socket.data.queue)) return;
  socket.data.other?.resume();
  if (socket.data.finPending) socket.end();
}

/** Starts a proxy on 127.0.0.1 (a free port) that forwards to `targetPort` on 127.0.0.1. */
export function startProxy(targetPort: number): Proxy {
  const sockets = new Set<BunSocket<ProxySide>>();
  let refusing = false;
  let accepted = 0;
  const close = (socket: BunSocket<ProxySide>) => {
    socket.data.closed = true;
    sockets.delete(socket);
    const other = socket.data.other;
    if (other && !other.data.closed) {
      other.data.closed = true;
      sockets.delete(other);
      other.terminate();
    }
  };
  const handlers = {
    data(socket: BunSocket<ProxySide>, chunk: Uint8Array) {
      const other = socket.data.other;
      if (other) relayWrite(other, chunk);
      else socket.data.early.push(chunk);
    },
    drain: relayDrain,
    end(socket: BunSocket<ProxySide>) {
      const other = socket.data.other;
      if (!other) return;
      other.data.finPending = true;
      if (other.data.queue.length === 0) other.end();
    },
    close,
    error(socket: BunSocket<ProxySide>) {
      close(socket);
    },
  };
  const listener: TCPSocketListener<ProxySide> = Bun.listen<ProxySide>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      ...handlers,
      open(inbound) {
        inbound.data = newSide();
        if (refusing) {
          inbound.data.closed = true;
          inbound.terminate();
          return;
        }
        accepted++;
        sockets.add(inbound);
        inbound.pause();
        Bun.connect<ProxySide>({
          hostname: "127.0.0.1",
          port: targetPort,
          allowHalfOpen: true,
          data: newSide(),
          socket: handlers,
        }).then(
          (outbound) => {
            if (inbound.data.closed) {
              outbound.terminate();
              return;
            }
            sockets.add(outbound);
            outbound.data.other = inbound;
            inbound.data.other = outbound;
            for (const chunk of inbound.data.early.splice(0)) relayWrite(outbound, chunk);
            inbound.resume();
          },
          () => {
            inbound.data.closed = true;
            sockets.delete(inbound);
            inbound.terminate();
          },
        );
      },
    },
  });
  const proxy: Proxy = {
    port: listener.port,
    get accepted() {
      return accepted;
    },
    get active() {
      let n = 0;
      for (const s of sockets) if (s.data.other) n++;
      return n / 2;
    },
    cut() {
      for (const socket of [...sockets]) {
        socket.data.closed = true;
        socket.terminate();
      }
      sockets.clear();
    },
    refuse(on) {
      refusing = on;
    },
    stop() {
      proxy.cut();
      listener.stop(true);
    },
  };
  defer(proxy.stop);
  return proxy;
}

// ---------------------------------------------------------------------------------------------------
// Probes

/** How a connection attempt to a port ended. */
export type Visit = "refused" | "closed";

/**
 * Connects to `port` (sending `probe`), and resolves once the connection is refused or closed by the peer
 * without answering; rejects if any byte comes back or after `timeoutMs`.
 */
export function refusedOrClosed(port: number, timeoutMs: number, probe = "ping\n"): Promise<Visit> {
  const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  defer(() => socket.destroy());
  return withTimeout(
    new Promise<Visit>((resolve, reject) => {
      let connected = false;
      socket.once("connect", () => {
        connected = true;
        socket.write(probe);
      });
      socket.on("data", () => reject(new Error("a visitor got an answer where it should have been refused")));
      socket.on("error", (error: NodeJS.ErrnoException) =>
        resolve(error.code === "ECONNREFUSED" && !connected ? "refused" : "closed"),
      );
      socket.once("end", () => resolve("closed"));
      socket.once("close", () => resolve(connected ? "closed" : "refused"));
    }),
    timeoutMs,
    "visitor was neither refused nor closed",
  ).finally(() => socket.destroy());
}

/** Sends one raw HTTP/1.1 request to 127.0.0.1:`port` and resolves with the response's status code. */
export function rawStatus(port: number, path: string, headers: Record<string, string>): Promise<number> {
  const socket = connect({ port, host: "127.0.0.1" });
  defer(() => socket.destroy());
  const lines = [
    `GET ${path} HTTP/1.1`,
    "Host: 127.0.0.1",
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  socket.write(`${lines.join("\r\n")}\r\n\r\n`);
  return withTimeout(
    new Promise<number>((resolve, reject) => {
      let text = "";
      socket.on("data", (chunk: Buffer) => {
        text += chunk.toString("latin1");
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
        if (m) resolve(Number(m[1]));
      });
      socket.once("error", reject);
      socket.once("close", () =>
        reject(new Error(`connection closed without a status line: ${JSON.stringify(text)}`)),
      );
    }),
    5000,
    "no HTTP status line",
  ).finally(() => socket.destroy());
}

/** The headers of a WebSocket upgrade to the sockets control path. */
export function upgradeHeaders(extra: Record<string, string> = {}): Record<string, string> {
  return {
    Upgrade: "websocket",
    Connection: "Upgrade",
    "Sec-WebSocket-Key": randomBytes(16).toString("base64"),
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Protocol": SUBPROTOCOL,
    ...extra,
  };
}
