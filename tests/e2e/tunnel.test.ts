/**
 * End to end through real server and client processes: every visitor its own local connection, bytes
 * intact both ways with half-close, and no head-of-line blocking between visitors of one tunnel.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import type { Socket } from "node:net";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  type ClientProcess,
  eventually,
  rssKiB,
  type ServerProcess,
  setupFile,
  spawnRole,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { connectVisitor, echoThrough, readAll, writeQueued } from "../support/sockets.ts";

setupFile();

describe("echo tunnel", () => {
  let server: ServerProcess;
  let client: ClientProcess;
  let service: ReturnType<typeof startEchoService>;
  let publicPort: number;

  beforeAll(async () => {
    service = startEchoService();
    server = await startServerProcess();
    client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
    publicPort = (client.tunnels[0] as { port: number }).port;
  });

  test("prints the exposed line and /health counts the tunnel", async () => {
    expect(client.stdout()).toMatch(/^exposed with tunnel id [A-Za-z0-9_-]+, url: localhost:\d+\n$/);
    const health = await server.health();
    expect(health).toMatchObject({ clients: 1, tunnels: 1 });
  });

  test("20 concurrent visitors each get their own local connection", async () => {
    const before = service.accepted;
    const payloads = Array.from({ length: 20 }, (_, i) => randomData(1000 + i * 37));
    const hashes = await Promise.all(payloads.map((p) => echoThrough(publicPort, p)));
    expect(hashes).toEqual(payloads.map((p) => sha256(p)));
    expect(service.accepted - before).toBe(20);
  });

  test("16 visitors × 4 MiB with half-close: every sha256 matches", async () => {
    const payloads = Array.from({ length: 16 }, () => randomData(4 * MiB));
    const hashes = await Promise.all(payloads.map((p) => echoThrough(publicPort, p, 60_000)));
    expect(hashes).toEqual(payloads.map((p) => sha256(p)));
  });

  test("streams are freed once both directions ended", async () => {
    await echoThrough(publicPort, randomData(1234));
    await eventually(async () => (await server.health()).streams === 0, 5000, "server stream table empty");
  });
});

/**
 * A local service that speaks first: it sends `size` random bytes and half-closes, then reads what the
 * visitor echoes back until FIN and records whether the hash matches.
 */
function startSourceService(size: number) {
  const results: boolean[] = [];
  const server = Bun.listen<{ sent: string; back: Uint8Array[]; rest: Uint8Array }>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open(socket) {
        const data = randomData(size);
        socket.data = { sent: sha256(data), back: [], rest: data };
        flush(socket);
      },
      drain: (socket) => flush(socket),
      data(socket, chunk) {
        socket.data.back.push(new Uint8Array(chunk));
      },
      // After our own shutdown(), Bun reports the peer's FIN as close rather than end.
      close(socket) {
        results.push(sha256(socket.data.back) === socket.data.sent);
      },
    },
  });
  function flush(socket: Bun.Socket<{ rest: Uint8Array }>) {
    const rest = socket.data.rest;
    if (rest.length === 0) return;
    const n = socket.write(rest);
    socket.data.rest = rest.subarray(Math.max(n, 0));
    if (socket.data.rest.length === 0) socket.shutdown();
  }
  return { port: server.port, results, stop: () => server.stop(true) };
}

test("reverse direction: the service sends 4 MiB to each of 16 visitors, who echo it back", async () => {
  const source = startSourceService(4 * MiB);
  try {
    const server = await startServerProcess();
    const client = await startClientProcess(server.url, [`127.0.0.1:${source.port}`]);
    const port = (client.tunnels[0] as { port: number }).port;
    const visitors = Array.from({ length: 16 }, async () => {
      const socket = await connectVisitor(port);
      // Echo: pipe handles backpressure and forwards the FIN (end) once the service's data ended.
      socket.pipe(socket);
      await withTimeout(new Promise((r) => socket.once("close", r)), 60_000, "visitor did not close");
    });
    await Promise.all(visitors);
    await eventually(() => source.results.length === 16, 10_000, "service saw every echo");
    expect(source.results).toEqual(Array(16).fill(true));
  } finally {
    source.stop();
  }
});

/**
 * A local service whose behaviour the visitor picks with its first byte:
 * 'P' pushes `pushBytes` at the visitor (respecting backpressure), anything else is echoed.
 */
function startModeService(pushBytes: number) {
  const chunk = randomData(256 * 1024);
  const server = Bun.listen<{ mode: string; pushed: number; pending: Uint8Array[] }>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open(socket) {
        socket.data = { mode: "", pushed: 0, pending: [] };
      },
      data(socket, data) {
        if (socket.data.mode === "") socket.data.mode = String.fromCharCode(data[0] as number);
        if (socket.data.mode === "P") push(socket);
        else echo(socket, data);
      },
      drain(socket) {
        if (socket.data.mode === "P") push(socket);
        else echo(socket);
      },
      end(socket) {
        if (socket.data.mode !== "P" && socket.data.pending.length === 0) socket.shutdown();
        else socket.data.mode = socket.data.mode === "P" ? "P" : "X";
      },
    },
  });
  type S = Bun.Socket<{ mode: string; pushed: number; pending: Uint8Array[] }>;
  function push(socket: S) {
    while (socket.data.pushed < pushBytes) {
      const size = Math.min(chunk.length, pushBytes - socket.data.pushed);
      const n = socket.write(chunk.subarray(0, size));
      if (n > 0) socket.data.pushed += n;
      if (n < size) return; // the kernel is full: drain calls us again
    }
    socket.shutdown();
  }
  function echo(socket: S, data?: Uint8Array) {
    if (data) socket.data.pending.push(new Uint8Array(data));
    if (!writeQueued(socket, socket.data.pending)) return;
    if (socket.data.mode === "X") socket.shutdown();
  }
  return { port: server.port, stop: () => server.stop(true) };
}

test("no head-of-line blocking: a visitor that never reads does not stall another; memory stays bounded", async () => {
  const service = startModeService(64 * MiB);
  try {
    const server = await startServerProcess();
    const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
    const port = (client.tunnels[0] as { port: number }).port;
    const baseline = (await rssKiB(server.proc.pid)) + (await rssKiB(client.proc.pid));

    const stalled: Socket = await connectVisitor(port);
    stalled.pause(); // never reads: the service's 64 MiB must stop at the flow-control window
    stalled.write("P");

    const data = randomData(16 * MiB);
    const payload = new Uint8Array(data.length + 1);
    payload[0] = "E".charCodeAt(0);
    payload.set(data, 1);
    const echoed = await echoThrough(port, payload, 60_000);
    expect(echoed).toBe(sha256(payload));

    const growthKiB = (await rssKiB(server.proc.pid)) + (await rssKiB(client.proc.pid)) - baseline;
    expect(growthKiB).toBeLessThan(150 * 1024);

    // The stalled visitor still gets everything once it reads.
    const received = readAll(stalled);
    stalled.resume();
    stalled.end();
    const all = await withTimeout(received, 60_000, "stalled visitor did not receive the push");
    expect(all.bytes).toBe(64 * MiB);
  } finally {
    service.stop();
  }
});

test("two visitors of ncat --broker talk to each other through the tunnel", async () => {
  if (!Bun.which("ncat")) throw new Error("ncat is not installed (apt-get install ncat)");
  // ncat needs a port number up front: take a free one from the kernel and hand it over.
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const brokerPort = probe.port;
  probe.stop(true);
  const broker = spawnRole(["ncat", "--broker", "-l", "127.0.0.1", String(brokerPort), "-v"]);
  await broker.waitFor(/Listening on/);
  const server = await startServerProcess();
  const client = await startClientProcess(server.url, [`127.0.0.1:${brokerPort}`]);
  const port = (client.tunnels[0] as { port: number }).port;

  const alice = await connectVisitor(port);
  const bob = await connectVisitor(port);
  // The broker relays a line to every other peer once both are connected to it.
  await eventually(
    () => (broker.stderr().match(/Connection from \S+:\d+/g) ?? []).length >= 2,
    5000,
    "both visitors at the broker",
  );
  const bobHears = new Promise<string>((resolve) => bob.once("data", (d) => resolve(String(d))));
  alice.write("hello from alice\n");
  expect(await withTimeout(bobHears, 5000, "bob did not hear alice")).toBe("hello from alice\n");
  const aliceHears = new Promise<string>((resolve) => alice.once("data", (d) => resolve(String(d))));
  bob.write("hi alice\n");
  expect(await withTimeout(aliceHears, 5000, "alice did not hear bob")).toBe("hi alice\n");
});
