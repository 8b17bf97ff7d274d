/**
 * Memory budgets (issue 15, item 4), against real server and client processes: visitors that never
 * read, and a local service that never reads, pin at most the window each stream was granted (not the
 * session's `--window`), one client at most `--client-budget` and all clients together at most
 * `--server-budget`; the server's RSS and descriptors stay bounded, and once the stalled connections
 * go, the paused client's streams flow again with every byte intact.
 */

import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import type { Socket } from "node:net";
import { RESUME_FRACTION } from "../../shared/relay/budget.ts";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  defer,
  eventually,
  openDescriptors,
  rssKiB,
  type ServerProcess,
  setupFile,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { startStalledSink } from "../support/services.ts";
import { connectVisitor, floodVisitor, type Pumped, pumpPattern, readAll } from "../support/sockets.ts";

setupFile();

/** What /health says about buffers and windows. */
interface BufferHealth {
  streams: number;
  buffered: { received: number; sent: number };
  largestWindow: { send: number; receive: number };
}

const health = async (server: ServerProcess) => (await server.health()) as unknown as BufferHealth;

/** Bytes every source connection sends: a random MiB repeated (its sha256 is known). */
const PATTERN = randomData(MiB);

/** Writes the rest of `size` bytes of {@link PATTERN} as far as the socket takes them, then half-closes. */
const pump = (socket: import("bun").Socket<Pumped>) => pumpPattern(socket, PATTERN);

/** A local service that sends `size` bytes of {@link PATTERN} on every connection, then half-closes. */
function startSource(size: number): { port: number } {
  const listener = Bun.listen<Pumped>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open(socket) {
        socket.data = { sent: 0, size };
        pump(socket);
      },
      drain: pump,
      data() {},
    },
  });
  defer(() => listener.stop(true));
  return { port: listener.port };
}

/** A visitor that sends `size` bytes of {@link PATTERN} as fast as the tunnel takes them. */
const flood = (port: number, size: number) => floodVisitor(port, size, PATTERN);

/**
 * The most a stalled reader's window can grow to: a window doubles only after half of it was consumed
 * (W ≤ initial + 2 × consumed), and a socket that is never read consumes only what the kernel takes
 * (the sender's buffer, autotuned up to tcp_wmem's maximum, and the reader's untouched receive buffer).
 */
function stalledWindowBound(): number {
  const field = (file: string, i: number) => Number(readFileSync(file, "utf8").trim().split(/\s+/)[i]);
  return MiB + 2 * (field("/proc/sys/net/ipv4/tcp_wmem", 2) + field("/proc/sys/net/ipv4/tcp_rmem", 1));
}

/** Samples /health `count` times, 100 ms apart; returns the largest figures seen. */
async function peak(server: ServerProcess, count: number): Promise<BufferHealth> {
  const most: BufferHealth = {
    streams: 0,
    buffered: { received: 0, sent: 0 },
    largestWindow: { send: 0, receive: 0 },
  };
  for (let i = 0; i < count; i++) {
    const h = await health(server);
    most.streams = Math.max(most.streams, h.streams);
    most.buffered.received = Math.max(most.buffered.received, h.buffered.received);
    most.buffered.sent = Math.max(most.buffered.sent, h.buffered.sent);
    most.largestWindow.receive = Math.max(most.largestWindow.receive, h.largestWindow.receive);
    most.largestWindow.send = Math.max(most.largestWindow.send, h.largestWindow.send);
    await Bun.sleep(100);
  }
  return most;
}

/** Reads one visitor connection to its end and checks it got `size` bytes of the pattern. */
async function fetchAll(port: number, size: number): Promise<void> {
  const visitor = await connectVisitor(port);
  const got = await withTimeout(readAll(visitor), 60_000, "download through the tunnel");
  visitor.destroy();
  const expected: Uint8Array[] = [];
  for (let left = size; left > 0; left -= MiB) expected.push(PATTERN.subarray(0, Math.min(MiB, left)));
  expect(got.bytes).toBe(size);
  expect(got.sha256).toBe(sha256(expected));
}

const STALLED = 40;
const BUDGET = 16 * MiB;
/** What a budget may be overshot by: messages Bun had already read when the WebSocket was paused. */
const SLACK = 2 * MiB;

test("never-reading visitors pin their granted window, not --window, and one client at most its budget", async () => {
  const source = startSource(24 * MiB);
  const server = await startServerProcess(["--client-budget", String(BUDGET)]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${source.port}`]);
  const port = client.tunnels[0]?.port as number;
  await fetchAll(port, 24 * MiB); // warm-up: JIT, buffers; and the tunnel works
  const pid = server.proc.pid;
  const rssBefore = await rssKiB(pid);
  const fdsBefore = openDescriptors(pid);

  const stalled: Socket[] = [];
  for (let i = 0; i < STALLED; i++) {
    const visitor = await connectVisitor(port);
    visitor.pause(); // never reads: the kernel's buffers fill, then the server's
    stalled.push(visitor);
  }
  // The client keeps sending until the server stops reading it: the budget is reached.
  await eventually(
    async () => (await health(server)).buffered.received >= BUDGET - MiB,
    20_000,
    "budget reached",
  );
  const most = await peak(server, 10);
  expect(most.streams).toBe(STALLED);
  expect(most.buffered.received).toBeLessThanOrEqual(BUDGET + SLACK);
  // Nothing was consumed beyond the kernel's buffers: no window grew past what they took.
  expect(most.largestWindow.receive).toBeLessThanOrEqual(stalledWindowBound());
  const rssGrowth = (await rssKiB(pid)) - rssBefore;
  expect(rssGrowth).toBeLessThan((BUDGET + 24 * MiB) / 1024); // before: ~180 MiB (8 MiB per visitor)
  expect(openDescriptors(pid)).toBeLessThanOrEqual(fdsBefore + STALLED + 4);

  // The stalled visitors go: their bytes are dropped, the client is read again, and flows.
  for (const visitor of stalled) visitor.destroy();
  await eventually(async () => (await health(server)).streams === 0, 20_000, "stalled streams closed");
  expect((await health(server)).buffered).toEqual({ received: 0, sent: 0 });
  await fetchAll(port, 24 * MiB);
  await eventually(() => openDescriptors(pid) <= fdsBefore + 1, 10_000, "descriptors back to the start");
  process.stderr.write(
    `budget: server RSS +${(rssGrowth / 1024).toFixed(1)} MiB with ${STALLED} stalled visitors, peak buffered ${(most.buffered.received / MiB).toFixed(1)} MiB\n`,
  );
});

test("the server-wide budget holds across clients, and each comes back once it has room", async () => {
  const source = startSource(8 * MiB);
  const server = await startServerProcess([
    "--client-budget",
    String(64 * MiB),
    "--server-budget",
    String(BUDGET),
  ]);
  const clients = [
    await startClientProcess(server.url, [`127.0.0.1:${source.port}`]),
    await startClientProcess(server.url, [`127.0.0.1:${source.port}`]),
  ];
  const ports = clients.map((c) => c.tunnels[0]?.port as number);
  const stalled: Socket[] = [];
  for (let i = 0; i < STALLED; i++) {
    const visitor = await connectVisitor(ports[i % 2] as number);
    visitor.pause();
    stalled.push(visitor);
  }
  await eventually(
    async () => (await health(server)).buffered.received >= BUDGET - MiB,
    20_000,
    "budget reached",
  );
  const most = await peak(server, 10);
  expect(most.buffered.received).toBeLessThanOrEqual(BUDGET + 2 * SLACK);
  for (const visitor of stalled) visitor.destroy();
  await eventually(async () => (await health(server)).streams === 0, 20_000, "stalled streams closed");
  await Promise.all(ports.map((p) => fetchAll(p, 8 * MiB)));
});

test("a local service that never reads: the server stops reading visitors at the client's budget", async () => {
  const sink = startStalledSink();
  const server = await startServerProcess(["--client-budget", String(BUDGET)]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${sink.port}`]);
  const port = client.tunnels[0]?.port as number;
  // More than the kernel buffers on the way take (a few MiB per connection on loopback), and more
  // streams than the budget holds at their initial 1 MiB window each, however far windows grew.
  const visitors = await Promise.all(Array.from({ length: 24 }, () => flood(port, 64 * MiB)));
  // Once over, the client stays paused until acknowledgements bring it down to 3/4 of its budget:
  // use sits between the two (24 streams would otherwise pin 24 MiB or more).
  await eventually(
    async () => (await health(server)).buffered.sent >= BUDGET * RESUME_FRACTION,
    20_000,
    "budget reached",
  );
  const most = await peak(server, 10);
  // Each stream holds at most its granted window unacknowledged plus one read; together the budget.
  expect(most.buffered.sent).toBeLessThanOrEqual(BUDGET + SLACK);
  expect(most.largestWindow.send).toBeLessThanOrEqual(stalledWindowBound());
  for (const visitor of visitors) visitor.terminate();
  await eventually(async () => (await health(server)).streams === 0, 20_000, "streams closed");
  expect((await health(server)).buffered).toEqual({ received: 0, sent: 0 });
});
