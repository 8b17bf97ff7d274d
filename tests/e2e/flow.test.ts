/**
 * Flow control across a long path (issue 21), with real processes: the client dials its server
 * through a delay proxy (`../shared/tools/delayproxy.c`, built into a temporary directory; +50 ms
 * round trip), and a stream's window must grow past its start in each direction, judged by the window
 * the server reports in /health (what it grants, what it was granted), never by a wall-clock rate,
 * while every byte arrives intact; a visitor that never reads must not have its window grown
 * (beyond what the kernel's buffers took).
 */

import { expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MiB } from "../support/hashing.ts";
import {
  defer,
  eventually,
  ROOT,
  type ServerProcess,
  setupFile,
  spawnRole,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { connectVisitor, freePort, type Pumped, pumpPattern } from "../support/sockets.ts";

setupFile();

const PROXY_SOURCE = join(ROOT, "..", "shared", "tools", "delayproxy.c");
const canRun = existsSync(PROXY_SOURCE) && Bun.which("gcc") !== null;
if (!canRun) process.stderr.write(`flow.test.ts: skipped: needs gcc and ${PROXY_SOURCE}\n`);

/** Round trip the proxy adds, ms. */
const RTT = 50;
const INITIAL = MiB;

/** Builds the delay proxy into a fresh temporary directory (removed after the file's tests). */
async function buildProxy(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "sockets-flow-"));
  defer(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, "delayproxy");
  const gcc = Bun.spawn(["gcc", "-O2", "-o", out, PROXY_SOURCE], { stderr: "pipe" });
  const code = await withTimeout(gcc.exited, 60_000, "gcc delayproxy.c");
  if (code !== 0) throw new Error(`gcc failed: ${await new Response(gcc.stderr).text()}`);
  return out;
}

/** A delay proxy to 127.0.0.1:`target`; resolves with its port once its start line says it listens. */
async function startDelay(proxy: string, target: number): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    const port = freePort();
    const role = spawnRole([proxy, `127.0.0.1:${port}`, `127.0.0.1:${target}`, String(RTT / 2)]);
    try {
      await role.waitFor(/delayproxy: listening on/, 5000);
      return port;
    } catch (error) {
      role.kill("SIGKILL"); // the port was taken between the probe and the bind: try another
      if (attempt === 3) throw error;
    }
  }
}

interface WindowHealth {
  streams: number;
  buffered: { received: number; sent: number };
  largestWindow: { send: number; receive: number };
}
const health = async (server: ServerProcess) => (await server.health()) as unknown as WindowHealth;

/** A server, a delay proxy in front of its control port, and a client exposing `service` through it. */
async function longPathTunnel(service: number): Promise<{ server: ServerProcess; port: number }> {
  const proxy = await buildProxy();
  const server = await startServerProcess();
  const via = await startDelay(proxy, server.port);
  const client = await startClientProcess(`ws://127.0.0.1:${via}`, [`127.0.0.1:${service}`]);
  return { server, port: client.tunnels[0]?.port as number };
}

/** Deterministic bytes: `size` bytes of a repeating 64 KiB pattern, and their sha256. */
const PATTERN = new Uint8Array(64 * 1024).map((_, i) => (i * 131 + 7) & 0xff);
function patternHash(size: number): string {
  const hash = createHash("sha256");
  for (let left = size; left > 0; left -= PATTERN.length)
    hash.update(PATTERN.subarray(0, Math.min(left, PATTERN.length)));
  return hash.digest("hex");
}

/** Writes the rest of `size` pattern bytes as far as the socket takes them, then half-closes. */
const pump = (socket: import("bun").Socket<Pumped>) => pumpPattern(socket, PATTERN);

/** Reads a Bun socket to its end into a hash; resolves with the byte count and sha256. */
type Hashing = {
  hash: ReturnType<typeof createHash>;
  bytes: number;
  done: (r: { bytes: number; sha256: string }) => void;
};
const hashingHandlers = {
  data(socket: import("bun").Socket<Hashing>, chunk: Uint8Array) {
    socket.data.hash.update(chunk);
    socket.data.bytes += chunk.length;
  },
  end(socket: import("bun").Socket<Hashing>) {
    socket.data.done({ bytes: socket.data.bytes, sha256: socket.data.hash.digest("hex") });
    socket.end();
  },
};

test.skipIf(!canRun)(
  "a stream's window grows past its start across +50 ms, each way, every byte intact",
  async () => {
    const SIZE = 192 * MiB;
    // Down: a service that sends; the server grants the window (largestWindow.receive).
    const source = Bun.listen<Pumped>({
      hostname: "127.0.0.1",
      port: 0,
      allowHalfOpen: true,
      socket: {
        open(socket) {
          socket.data = { sent: 0, size: SIZE };
          pump(socket);
        },
        drain: pump,
        data() {},
      },
    });
    defer(() => source.stop(true));
    const down = await longPathTunnel(source.port);
    let done: (r: { bytes: number; sha256: string }) => void = () => {};
    const received = new Promise<{ bytes: number; sha256: string }>((resolve) => {
      done = resolve;
    });
    const visitor = await Bun.connect<Hashing>({
      hostname: "127.0.0.1",
      port: down.port,
      allowHalfOpen: true,
      data: { hash: createHash("sha256"), bytes: 0, done },
      socket: hashingHandlers,
    });
    defer(() => visitor.terminate());
    // The server's grant doubles while the visitor keeps reading a window within a few round trips:
    // past 4 MiB is two doublings more than a fixed 20 ms rule allows at this distance.
    let grown = 0;
    await eventually(
      async () => {
        grown = Math.max(grown, (await health(down.server)).largestWindow.receive);
        return grown >= 8 * INITIAL;
      },
      30_000,
      "the receive window growing to 8 MiB",
    );
    const got = await withTimeout(received, 120_000, "the download");
    expect(got).toEqual({ bytes: SIZE, sha256: patternHash(SIZE) });

    // Up: a service that reads; the client grants the window the server sends in (largestWindow.send).
    let upDone: (r: { bytes: number; sha256: string }) => void = () => {};
    const uploaded = new Promise<{ bytes: number; sha256: string }>((resolve) => {
      upDone = resolve;
    });
    const sink = Bun.listen<Hashing>({
      hostname: "127.0.0.1",
      port: 0,
      allowHalfOpen: true,
      socket: {
        open(socket) {
          socket.data = { hash: createHash("sha256"), bytes: 0, done: upDone };
        },
        ...hashingHandlers,
      },
    });
    defer(() => sink.stop(true));
    const up = await longPathTunnel(sink.port);
    const sender = await Bun.connect<Pumped>({
      hostname: "127.0.0.1",
      port: up.port,
      allowHalfOpen: true,
      data: { sent: 0, size: SIZE },
      socket: { open: pump, drain: pump, data() {} },
    });
    defer(() => sender.terminate());
    grown = 0;
    await eventually(
      async () => {
        grown = Math.max(grown, (await health(up.server)).largestWindow.send);
        return grown >= 8 * INITIAL;
      },
      30_000,
      "the send window growing to 8 MiB",
    );
    expect(await withTimeout(uploaded, 120_000, "the upload")).toEqual({
      bytes: SIZE,
      sha256: patternHash(SIZE),
    });
  },
);

test.skipIf(!canRun)(
  "a visitor that never reads across +50 ms: its window does not grow past what the kernel took",
  async () => {
    const source = Bun.listen<Pumped>({
      hostname: "127.0.0.1",
      port: 0,
      allowHalfOpen: true,
      socket: {
        open(socket) {
          socket.data = { sent: 0, size: 256 * MiB };
          pump(socket);
        },
        drain: pump,
        data() {},
      },
    });
    defer(() => source.stop(true));
    const { server, port } = await longPathTunnel(source.port);
    const visitor = await connectVisitor(port);
    visitor.pause();
    // Everything the kernel's buffers take is consumption; then the stream holds its grant, unwritten.
    await eventually(
      async () => (await health(server)).buffered.received > 0,
      20_000,
      "bytes held for the visitor",
    );
    let most = 0;
    for (let i = 0; i < 20; i++) {
      const h = await health(server);
      most = Math.max(most, h.largestWindow.receive);
      expect(h.buffered.received).toBeLessThanOrEqual(h.largestWindow.receive);
      await Bun.sleep(100);
    }
    // A window doubles only after half of it was consumed (W ≤ initial + 2 × consumed), and a visitor
    // that never reads consumes only the kernel's buffers: the server's send buffer (autotuned up to
    // tcp_wmem's maximum) and the visitor's receive buffer (tcp_rmem's default, never read to grow).
    const field = (file: string, i: number) => Number(readFileSync(file, "utf8").trim().split(/\s+/)[i]);
    const kernel = field("/proc/sys/net/ipv4/tcp_wmem", 2) + field("/proc/sys/net/ipv4/tcp_rmem", 1);
    expect(most).toBeLessThanOrEqual(INITIAL + 2 * kernel);
    expect(most).toBeLessThan(16 * MiB); // the session's window, which a reading visitor reaches
    visitor.destroy();
  },
);
