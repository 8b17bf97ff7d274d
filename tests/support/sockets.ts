/**
 * Test support, sockets: visitors (node:net) that connect, send, read to the end and hash (long ones
 * hashed as they go), waits for a peer's close, a free port, and the writes with backpressure that the
 * test doubles use.
 * @module
 */

import { createHash, randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import type { Socket as BunSocket } from "bun";
import { sha256 } from "./hashing.ts";
import { defer, withTimeout } from "./processes.ts";

/** A TCP port on 127.0.0.1 that nothing listens on (taken from the kernel, then released). */
export function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

/**
 * Writes the queued chunks to `socket` in order until the kernel takes less than given; keeps the
 * rest queued. Returns true once the queue is empty (the test doubles' drain handlers).
 */
export function writeQueued(socket: { write(chunk: Uint8Array): number }, queue: Uint8Array[]): boolean {
  while (queue.length > 0) {
    const chunk = queue[0] as Uint8Array;
    const n = socket.write(chunk);
    if (n < chunk.length) {
      queue[0] = chunk.subarray(Math.max(n, 0));
      return false;
    }
    queue.shift();
  }
  return true;
}

/** Connects a visitor (node:net) and resolves once connected. */
export function connectVisitor(port: number, host = "127.0.0.1"): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host, allowHalfOpen: true });
    socket.once("connect", () => resolve(socket));
    socket.once("error", reject);
    defer(() => socket.destroy());
  });
}

/** Reads a socket to its end; resolves with what arrived (hash and length), rejects on error. */
export function readAll(socket: Socket): Promise<{ bytes: number; sha256: string; chunks: Uint8Array[] }> {
  return new Promise((resolve, reject) => {
    const chunks: Uint8Array[] = [];
    let bytes = 0;
    socket.on("data", (chunk: Uint8Array) => {
      chunks.push(chunk);
      bytes += chunk.length;
    });
    socket.once("end", () => resolve({ bytes, sha256: sha256(chunks), chunks }));
    socket.once("error", reject);
  });
}

/** A visitor that collects what arrives as text (latin1), and notes when the peer closed. */
export interface RecordingVisitor {
  socket: Socket;
  /** Everything received so far. */
  text(): string;
  /** The peer sent FIN, or the connection closed. */
  ended(): boolean;
}

/** Connects a {@link RecordingVisitor} (see {@link connectVisitor}). */
export async function recordingVisitor(port: number): Promise<RecordingVisitor> {
  const socket = await connectVisitor(port);
  let text = "";
  let ended = false;
  socket.on("data", (chunk: Buffer) => {
    text += chunk.toString("latin1");
  });
  const end = () => {
    ended = true;
  };
  socket.on("end", end);
  socket.on("close", end);
  socket.on("error", () => {});
  return { socket, text: () => text, ended: () => ended };
}

/**
 * Sends `data` through a visitor connection, half-closes, and reads the echo to its end.
 * Resolves with the sha256 of what came back.
 */
export async function echoThrough(
  port: number,
  data: Uint8Array,
  timeoutMs = 30_000,
  host = "127.0.0.1",
): Promise<string> {
  const socket = await connectVisitor(port, host);
  const received = readAll(socket);
  socket.end(data);
  const result = await withTimeout(received, timeoutMs, `echo of ${data.length} bytes did not complete`);
  socket.destroy();
  return result.sha256;
}

/** Resolves once the peer closed `socket` (EOF or reset), or rejects after `timeoutMs`. */
export function closedWithin(socket: Socket, timeoutMs: number): Promise<void> {
  return withTimeout(
    new Promise<void>((resolve) => {
      if (socket.closed || socket.readableEnded) resolve();
      socket.once("close", () => resolve());
      socket.once("end", () => resolve());
      socket.resume();
    }),
    timeoutMs,
    "socket did not close",
  );
}

/**
 * Connects a visitor and resolves once the peer closed it (EOF or reset, even a reset that beats the
 * handshake's completion on loopback); rejects if the port refuses the connection or after `timeoutMs`.
 */
export function visitUntilClosed(port: number, timeoutMs: number, host = "127.0.0.1"): Promise<void> {
  const socket = connect({ port, host, allowHalfOpen: true });
  defer(() => socket.destroy());
  return withTimeout(
    new Promise<void>((resolve, reject) => {
      socket.on("error", (error: NodeJS.ErrnoException) => {
        if (error.code === "ECONNREFUSED") reject(error);
        else resolve();
      });
      socket.once("end", () => resolve());
      socket.once("close", () => resolve());
      socket.resume();
    }),
    timeoutMs,
    "visitor was not closed",
  ).finally(() => socket.destroy());
}

/** A visitor that streams random bytes through a tunnel to an echo service and hashes both ways. */
export interface EchoStream {
  socket: Socket;
  /** Bytes echoed back so far. */
  echoed(): number;
  /** Resolves at the echo's end (FIN) with both hashes; rejects if the connection errs or closes first. */
  done: Promise<{ sent: string; received: string; bytes: number }>;
}

/**
 * Connects to `port` and sends `size` random bytes (generated and hashed chunk by chunk, so memory stays
 * small), then half-closes; reads the echo concurrently. `gate`, when given, is awaited before each chunk
 * past `gateAfter` bytes (to pace a stream around an event).
 */
export function streamEcho(
  port: number,
  size: number,
  options: { chunk?: number; gateAfter?: number; gate?: () => Promise<void> } = {},
): EchoStream {
  const chunkSize = options.chunk ?? 256 * 1024;
  const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  defer(() => socket.destroy());
  const sentHash = createHash("sha256");
  const receivedHash = createHash("sha256");
  let echoed = 0;
  let sent = 0;
  const done = new Promise<{ sent: string; received: string; bytes: number }>((resolve, reject) => {
    let ended = false;
    socket.on("data", (chunk: Uint8Array) => {
      receivedHash.update(chunk);
      echoed += chunk.length;
    });
    socket.once("end", () => {
      ended = true;
      resolve({ sent: sentHash.digest("hex"), received: receivedHash.digest("hex"), bytes: echoed });
    });
    socket.once("error", (error) =>
      reject(new Error(`visitor failed after ${sent} sent / ${echoed} echoed bytes: ${error.message}`)),
    );
    socket.once("close", () => {
      if (!ended) reject(new Error(`visitor closed early after ${sent} sent / ${echoed} echoed bytes`));
    });
    const pump = async () => {
      await new Promise<void>((r, j) => {
        socket.once("connect", () => r());
        socket.once("error", j);
      });
      while (sent < size) {
        if (options.gate && sent >= (options.gateAfter ?? 0)) await options.gate();
        const chunk = randomBytes(Math.min(chunkSize, size - sent));
        sentHash.update(chunk);
        sent += chunk.length;
        if (!socket.write(chunk)) {
          await new Promise<void>((r) => {
            const go = () => {
              socket.off("drain", go);
              socket.off("close", go);
              r();
            };
            socket.on("drain", go);
            socket.on("close", go);
          });
        }
        if (socket.destroyed) return;
      }
      socket.end();
    };
    pump().catch(() => {});
  });
  return { socket, echoed: () => echoed, done };
}

/** A Bun socket's progress through {@link pumpPattern}. */
export type Pumped = { sent: number; size: number };

/**
 * Writes the rest of `socket.data.size` bytes of `pattern`, repeated, as far as the socket takes them
 * (call it again on drain), then half-closes.
 */
export function pumpPattern(socket: BunSocket<Pumped>, pattern: Uint8Array): void {
  const state = socket.data;
  while (state.sent < state.size) {
    const at = state.sent % pattern.length;
    const piece = pattern.subarray(at, Math.min(pattern.length, at + state.size - state.sent));
    const written = socket.write(piece);
    if (written > 0) state.sent += written;
    if (written < piece.length) return; // the rest when the socket drains
  }
  socket.shutdown();
}

/**
 * A visitor at 127.0.0.1:`port` that sends `size` bytes of `pattern`, repeated, as fast as the tunnel
 * takes them, then half-closes; it reads nothing back and is terminated when the test ends.
 */
export async function floodVisitor(
  port: number,
  size: number,
  pattern: Uint8Array,
): Promise<BunSocket<Pumped>> {
  const pump = (socket: BunSocket<Pumped>) => pumpPattern(socket, pattern);
  const socket = await Bun.connect<Pumped>({
    hostname: "127.0.0.1",
    port,
    allowHalfOpen: true,
    data: { sent: 0, size },
    socket: { open: pump, drain: pump, data() {}, error() {} },
  });
  defer(() => socket.terminate());
  return socket;
}
