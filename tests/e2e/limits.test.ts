/**
 * Stays up under load and abuse: a thousand visitors on one tunnel (and every resource back afterwards),
 * stalled connections on the control port, failed-auth floods, idle visitors, and a graceful shutdown
 * that lets a stream in flight finish.
 */

import { expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { startClient } from "../../client.ts";
import { CONNECT_PATH, SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import { rawStatus, refusedOrClosed, upgradeHeaders } from "../support/faults.ts";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  defer,
  eventually,
  exposedLines,
  rssKiB,
  setupFile,
  spawnRole,
  startClientProcess,
  startHttpClient,
  startHttpServer,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { closedWithin, connectVisitor, echoThrough, streamEcho } from "../support/sockets.ts";

setupFile();

test("1,000 concurrent visitors on one tunnel, each echo-verified; afterwards streams and memory return", async () => {
  const echo = startEchoService();
  const server = await startServerProcess();
  const client = await startClient({
    server: server.url,
    expose: [{ host: "127.0.0.1", port: echo.port }],
    quiet: true,
  });
  defer(() => client.close());
  const port = (client.tunnels[0] as { port: number }).port;

  // Warm up, then take the baseline.
  await Promise.all(Array.from({ length: 20 }, () => echoThrough(port, randomData(4096))));
  await eventually(async () => (await server.health()).streams === 0, 3000, "warm-up streams freed");
  const baseline = await rssKiB(server.proc.pid);

  const N = 1000;
  const SIZE = 4096;
  const visitors: { socket: Socket; data: Uint8Array; echoed: Promise<string> }[] = [];
  for (let batch = 0; batch < N; batch += 100) {
    const opened = await Promise.all(
      Array.from({ length: Math.min(100, N - batch) }, () => connectVisitor(port)),
    );
    for (const socket of opened) {
      const data = randomData(SIZE);
      const echoed = new Promise<string>((resolve, reject) => {
        const chunks: Uint8Array[] = [];
        let got = 0;
        socket.on("data", (chunk: Uint8Array) => {
          chunks.push(chunk);
          got += chunk.length;
          if (got >= SIZE) resolve(sha256(chunks));
        });
        socket.once("error", reject);
        socket.once("close", () => reject(new Error(`visitor closed after ${got} bytes`)));
      });
      echoed.catch(() => {});
      socket.write(data);
      visitors.push({ socket, data, echoed });
    }
  }
  const hashes = await withTimeout(Promise.all(visitors.map((v) => v.echoed)), 30_000, "1,000 echoes");
  expect(hashes).toEqual(visitors.map((v) => sha256(v.data)));
  // All of them are open at once.
  expect((await server.health()).streams).toBe(N);
  expect(client.stats().streams).toBe(N);

  // Close them all (half-close; the echo service answers with its own FIN).
  await withTimeout(
    Promise.all(
      visitors.map(
        ({ socket }) =>
          new Promise<void>((resolve) => {
            socket.removeAllListeners("close");
            socket.removeAllListeners("error");
            socket.on("error", () => resolve());
            socket.once("end", () => resolve());
            socket.once("close", () => resolve());
            socket.end();
          }),
      ),
    ),
    15_000,
    "1,000 visitors closed",
  );
  for (const { socket } of visitors) socket.destroy();
  await eventually(
    async () => (await server.health()).streams === 0 && client.stats().streams === 0,
    10_000,
    "server and client stream tables empty",
  );
  const limit = baseline * 1.2 + 8 * 1024;
  let rss = await rssKiB(server.proc.pid);
  await eventually(
    async () => {
      rss = await rssKiB(server.proc.pid);
      return rss <= limit;
    },
    15_000,
    `server RSS back near its baseline (${baseline} KiB; limit ${Math.round(limit)} KiB)`,
  ).catch((error) => {
    throw new Error(`${(error as Error).message}; last RSS ${rss} KiB`);
  });
  const data = randomData(100_000);
  expect(await echoThrough(port, data)).toBe(sha256(data));
}, 90_000);

/** Opens `n` connections to the control port; half send a partial request head, half nothing; all stall. */
async function openStalled(port: number, n: number): Promise<Socket[]> {
  const stalled: Socket[] = [];
  for (let batch = 0; batch < n; batch += 50) {
    const opened = await Promise.all(
      Array.from({ length: Math.min(50, n - batch) }, (_, i) =>
        withTimeout(
          new Promise<Socket>((resolve, reject) => {
            const socket = connect({ port, host: "127.0.0.1" });
            defer(() => socket.destroy());
            socket.once("connect", () => {
              if ((batch + i) % 2 === 0)
                socket.write("GET /_sockets/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n");
              resolve(socket);
            });
            socket.once("error", reject);
          }),
          5000,
          "stalled connection",
        ),
      ),
    );
    for (const socket of opened) socket.on("error", () => {});
    stalled.push(...opened);
  }
  return stalled;
}

test("slowloris: 200 stalled requests on the control port do not stop a new client from exposing", async () => {
  const echo = startEchoService();
  const server = await startServerProcess(["--handshake-timeout", "2"]);
  const stalled = await openStalled(server.port, 200);
  const client = await startClientProcess(server.url, [`127.0.0.1:${echo.port}`]);
  const port = (client.tunnels[0] as { port: number }).port;
  const data = randomData(256 * 1024);
  expect(await echoThrough(port, data)).toBe(sha256(data));
  expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1 });
  for (const socket of stalled) socket.destroy();
});

test("slowloris: stalled request heads are closed within ~15 s; a silent upgraded connection after --handshake-timeout", async () => {
  const echo = startEchoService();
  const server = await startServerProcess(["--handshake-timeout", "2"]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${echo.port}`]);
  const port = (client.tunnels[0] as { port: number }).port;

  // A WebSocket that upgrades and then says nothing (no expose, no sync): closed with 1008 after ~2 s.
  const silent = new WebSocket(`${server.url}${CONNECT_PATH}`, [SUBPROTOCOL]);
  const silentAt = Date.now();
  const silentClosed = withTimeout(
    new Promise<number>((resolve) =>
      silent.addEventListener("close", (e) => resolve(e.code), { once: true }),
    ),
    5000,
    "silent WebSocket was not closed",
  );

  // Request heads that never complete, some of them trickling a header line every second. Bun itself
  // closes them (after 10-12 s, whatever --handshake-timeout says; see README "Limitations").
  const stalled = await openStalled(server.port, 200);
  const stalledAt = Date.now();
  const trickling = stalled.slice(0, 10);
  const trickle = setInterval(() => {
    for (const socket of trickling) if (!socket.destroyed) socket.write("X-Slow: 1\r\n");
  }, 1000);
  try {
    expect(await silentClosed).toBe(1008);
    expect(Date.now() - silentAt).toBeGreaterThan(1500);
    await Promise.all(stalled.map((s) => closedWithin(s, 15_000)));
    expect(Date.now() - stalledAt).toBeLessThan(15_000);
  } finally {
    clearInterval(trickle);
  }
  // The client, whose upgrade completed and who exposed at once, is not cut by the handshake timeout.
  const data = randomData(256 * 1024);
  expect(await echoThrough(port, data)).toBe(sha256(data));
  expect(client.proc.exitCode).toBeNull();
  expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1 });
}, 30_000);

test("failed-auth rate limit: the 11th bad key from one address within a minute gets 429", async () => {
  const server = await startServerProcess([], { SOCKETS_SINGLE_API_KEY: "the-right-key-0123456789" });
  const attempt = () =>
    rawStatus(server.port, "/_sockets/connect", upgradeHeaders({ Authorization: "Bearer wrong-key" }));
  for (let i = 1; i <= 10; i++)
    expect({ attempt: i, status: await attempt() }).toEqual({ attempt: i, status: 401 });
  expect(await attempt()).toBe(429);
  expect(await attempt()).toBe(429);
  // The client with a bad key still gets one clear line and a non-zero exit, no retry loop.
  const bad = spawnRole(
    ["bun", "client.ts", "--server", `ws://127.0.0.1:${server.port}`, "--expose", "127.0.0.1:9"],
    { SOCKETS_API_KEY: "wrong-key" },
  );
  expect(await bad.exited(10_000)).not.toBe(0);
  expect(bad.stderr()).toMatch(/429|too many|API key/i);
  expect(bad.stdout()).toBe("");
  expect(server.proc.exitCode).toBeNull();
});

test("visitor idle timeout: an idle visitor is closed within ~3 s, an active one is not", async () => {
  const echo = startEchoService();
  const server = await startServerProcess(["--visitor-idle-timeout", "1"]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${echo.port}`]);
  const port = (client.tunnels[0] as { port: number }).port;

  const idle = await connectVisitor(port);
  idle.on("error", () => {});
  const openedAt = Date.now();
  const idleClosed = closedWithin(idle, 3500).then(() => Date.now() - openedAt);

  const active = await connectVisitor(port);
  let activeClosed = false;
  active.on("error", () => {});
  active.once("close", () => {
    activeClosed = true;
  });
  active.once("end", () => {
    activeClosed = true;
  });
  const sent: Uint8Array[] = [];
  const received: Uint8Array[] = [];
  active.on("data", (chunk: Uint8Array) => received.push(chunk));
  while (Date.now() - openedAt < 4000) {
    const bytes = new Uint8Array(randomBytes(64));
    sent.push(bytes);
    active.write(bytes);
    await Bun.sleep(300); // the test is about elapsed time: keep talking more often than the timeout
  }
  const idleAfter = await idleClosed;
  expect(idleAfter).toBeGreaterThan(800);
  expect(idleAfter).toBeLessThan(3500);
  await eventually(() => received.reduce((n, c) => n + c.length, 0) === sent.length * 64, 2000, "echoes");
  expect(sha256(received)).toBe(sha256(sent));
  expect(activeClosed).toBe(false);
  active.destroy();
});

test("SIGTERM drains: a 16 MiB echo in flight completes, new visitors and clients are refused, exit 0", async () => {
  const echo = startEchoService();
  const server = await startServerProcess(["--drain-timeout", "15"]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${echo.port}`], ["--max-backoff", "1"]);
  const port = (client.tunnels[0] as { port: number }).port;

  let release = () => {};
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  const stream = streamEcho(port, 16 * MiB, { chunk: 64 * 1024, gateAfter: 4 * MiB, gate: () => gate });
  stream.done.catch(() => {});
  await eventually(() => stream.echoed() >= 2 * MiB, 10_000, "2 MiB echoed");

  const termAt = Date.now();
  server.kill("SIGTERM");
  await server.waitFor(/SIGTERM/, 3000);
  // During the drain: a new visitor is refused or closed at once, a new client gets no tunnel.
  await refusedOrClosed(port, 2000);
  const late = spawnRole([
    "bun",
    "client.ts",
    "--server",
    `ws://127.0.0.1:${server.port}`,
    "--expose",
    `127.0.0.1:${echo.port}`,
  ]);
  expect(await late.exited(8000)).not.toBe(0);
  expect(late.stdout()).toBe("");
  expect(server.proc.exitCode).toBeNull(); // still draining

  release();
  const result = await withTimeout(stream.done, 10_000, "the echo in flight");
  expect(result.bytes).toBe(16 * MiB);
  expect(result.received).toBe(result.sent);
  expect(await server.exited(15_000)).toBe(0);
  expect(Date.now() - termAt).toBeLessThan(15_000);

  // The client of a server that shut down gracefully keeps trying, and is back once the server is.
  await client.waitFor(/reconnecting/, 5000);
  expect(client.proc.exitCode).toBeNull();
  await startServerProcess([], {}, { port: server.port });
  await eventually(() => exposedLines(client.stdout()).length >= 2, 10_000, "exposed again after restart");
  expect(exposedLines(client.stdout())[1]).toEqual(exposedLines(client.stdout())[0]);
  const data = randomData(64 * 1024);
  expect(await echoThrough(port, data)).toBe(sha256(data));
  // SIGINT ends it cleanly.
  client.kill("SIGINT");
  expect(await client.exited(5000)).toBe(0);
});

test("SIGTERM with keep-alive HTTP visitors: each connection closes at its request boundary (one in flight gets its whole answer first), so the drain does not wait for them", async () => {
  let release = () => {};
  const answered = new Promise<void>((resolve) => {
    release = resolve;
  });
  const app = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: async (req) => {
      if (new URL(req.url).pathname === "/slow") await answered;
      return new Response("x".repeat(100_000));
    },
  });
  defer(() => app.stop(true));
  const server = await startHttpServer(["--http-port", "0", "--drain-timeout", "15"]);
  await startHttpClient(server.url, app.port as number, "kept");
  const ask = (socket: Socket, path: string) =>
    socket.write(`GET ${path} HTTP/1.1\r\nHost: kept.localhost\r\n\r\n`);
  /** Everything a socket receives until it closes. */
  const collect = (socket: Socket) => {
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    return () => Buffer.concat(chunks).toString("latin1");
  };
  const idle = await connectVisitor(server.httpPort);
  const idleSeen = collect(idle);
  ask(idle, "/");
  await eventually(() => idleSeen().endsWith("x".repeat(1000)), 5000, "the first answer");
  const busy = await connectVisitor(server.httpPort);
  const busySeen = collect(busy);
  ask(busy, "/slow");
  await eventually(async () => (await server.health()).streams === 2, 5000, "two streams open");
  const termAt = Date.now();
  server.kill("SIGTERM");
  await server.waitFor(/SIGTERM/, 3000);
  // Between requests: closed at once.
  await closedWithin(idle, 3000);
  expect(idleSeen().match(/HTTP\/1\.1 200/g)?.length).toBe(1);
  // In flight: answered whole, then closed.
  release();
  await closedWithin(busy, 5000);
  expect(busySeen()).toStartWith("HTTP/1.1 200");
  expect(busySeen().endsWith("x".repeat(100_000))).toBe(true);
  expect(await server.exited(15_000)).toBe(0);
  // Well within the drain timeout (15 s): nothing waited for a connection that stayed open.
  expect(Date.now() - termAt).toBeLessThan(10_000);
});

test("SIGTERM with a stalled stream: the server exits 0 once --drain-timeout ran out", async () => {
  const echo = startEchoService();
  const server = await startServerProcess(["--drain-timeout", "1"]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${echo.port}`]);
  const port = (client.tunnels[0] as { port: number }).port;
  const visitor = await connectVisitor(port);
  visitor.on("error", () => {});
  visitor.write("never finished");
  await eventually(async () => (await server.health()).streams === 1, 3000, "stream open");
  const termAt = Date.now();
  server.kill("SIGTERM");
  expect(await server.exited(5000)).toBe(0);
  expect(Date.now() - termAt).toBeLessThan(4000);
  await closedWithin(visitor, 2000);
  expect(client.proc.exitCode).toBeNull();
});
