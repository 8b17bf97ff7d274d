/**
 * Fault-injection helpers for the "stays up" tests: a TCP proxy that can cut and refuse connections,
 * a restartable echo service, a server started on a chosen port, long visitor streams hashed
 * incrementally, and raw HTTP probes of the control port. Everything registers its cleanup with
 * {@link defer} from helpers.ts, so each test file's `setupFile()` cleanup stops it.
 * @module
 */

import { createHash, randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import type { Socket as BunSocket, TCPSocketListener } from "bun";
import { SUBPROTOCOL } from "../shared/wire/protocol.ts";
import {
  defer,
  type EchoService,
  type RoleProcess,
  spawnRole,
  startEchoService,
  withTimeout,
  writeQueued,
} from "./helpers.ts";

/** What `GET /health` answers once grace periods exist. */
export interface Health {
  status: string;
  protocol: number;
  clients: number;
  tunnels: number;
  streams: number;
  reserved: number;
}

/** A server process with its control port and a typed /health. */
export interface ServerProc extends RoleProcess {
  port: number;
  url: string;
  health(): Promise<Health>;
}

/**
 * Starts `bun server.ts` on 127.0.0.1 and `port` (0 = any free port) and waits for its listening line.
 * Unlike `startServerProcess`, the port can be chosen (to restart a server where it was).
 */
export async function startServerOn(
  port: number,
  args: string[] = [],
  env: Record<string, string | undefined> = {},
): Promise<ServerProc> {
  const role = spawnRole(["bun", "server.ts", "--host", "127.0.0.1", "--port", String(port), ...args], env);
  const match = await Promise.race([
    role.waitFor(/listening on wss?:\/\/\S+:(\d+)/),
    role.proc.exited.then((code) => {
      throw new Error(`server exited (${code}) before listening: ${role.stderr()}`);
    }),
  ]);
  const bound = Number(match[1]);
  return {
    ...role,
    port: bound,
    url: `ws://127.0.0.1:${bound}`,
    async health() {
      const response = await fetch(`http://127.0.0.1:${bound}/health`, { signal: AbortSignal.timeout(3000) });
      return (await response.json()) as Health;
    },
  };
}

/** Number of matches of `pattern` (which must have the `g` flag) in `text`. */
export function count(text: string, pattern: RegExp): number {
  return [...text.matchAll(pattern)].length;
}

/** The `(id, port)` of every `exposed` line printed so far. */
export function exposedLines(stdout: string): { id: string; port: number }[] {
  return [...stdout.matchAll(/exposed with tunnel id (\S+), url: \S+:(\d+)/g)].map((m) => ({
    id: m[1] as string,
    port: Number(m[2]),
  }));
}

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
// A restartable echo service: the one from helpers.ts

/** An echo service that can be stopped and started again on the same port. */
export type Echo = EchoService;

/** Echoes everything back (respecting backpressure) and half-closes after the peer's FIN. */
export const startEcho: (port?: number) => Echo = startEchoService;

// ---------------------------------------------------------------------------------------------------
// Long visitor streams

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

/** Sends SIGCONT then SIGKILL at cleanup, for a process a test may leave stopped. */
export function deferContinue(role: RoleProcess): void {
  defer(() => {
    if (role.proc.exitCode === null && role.proc.signalCode === null) {
      role.kill("SIGCONT");
    }
  });
}
