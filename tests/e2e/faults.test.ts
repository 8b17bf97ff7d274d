/**
 * Faults: a local service that is down, a client killed outright, garbage and malformed frames on the
 * control port, and the per-tunnel / per-client limits. The server must stay up and other tunnels
 * must keep working.
 */

import { expect, test } from "bun:test";
import { connect } from "node:net";
import { CONNECT_PATH, SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  eventually,
  setupFile,
  spawnRole,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { closedWithin, connectVisitor, echoThrough, freePort, visitUntilClosed } from "../support/sockets.ts";

setupFile();

test("local service not listening: the visitor is closed promptly and both processes stay up", async () => {
  const server = await startServerProcess();
  const client = await startClientProcess(server.url, [`127.0.0.1:${freePort()}`]);
  const port = (client.tunnels[0] as { port: number }).port;
  for (let i = 0; i < 3; i++) await visitUntilClosed(port, 3000);
  await client.waitFor(/refused/);
  expect(client.proc.exitCode).toBeNull();
  expect(server.proc.exitCode).toBeNull();
  await eventually(async () => (await server.health()).streams === 0, 3000, "server streams freed");
});

test("client killed with SIGKILL: the public port closes within seconds of the grace period", async () => {
  const service = startEchoService();
  // The tunnel stays reserved for --grace seconds in case the client comes back; then it is released.
  const server = await startServerProcess(["--grace", "1"]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
  const port = (client.tunnels[0] as { port: number }).port;
  const visitor = await connectVisitor(port);
  visitor.on("error", () => {});
  client.kill("SIGKILL");
  await closedWithin(visitor, 5000);
  await eventually(
    () =>
      new Promise<boolean>((resolve) => {
        const probe = connect({ port, host: "127.0.0.1" });
        probe.once("connect", () => {
          probe.destroy();
          resolve(false);
        });
        probe.once("error", () => resolve(true));
      }),
    5000,
    "public port closed",
  );
  expect(await server.health()).toMatchObject({ clients: 0, tunnels: 0, streams: 0 });
});

/** Opens a raw protocol WebSocket and waits for the server's hello. */
async function rawSession(url: string): Promise<WebSocket> {
  const ws = new WebSocket(`${url}${CONNECT_PATH}`, [SUBPROTOCOL]);
  await withTimeout(
    new Promise((resolve) => ws.addEventListener("message", resolve, { once: true })),
    5000,
    "no hello from the server",
  );
  return ws;
}

function closeCode(ws: WebSocket): Promise<number> {
  return withTimeout(
    new Promise<number>((resolve) => ws.addEventListener("close", (e) => resolve(e.code), { once: true })),
    5000,
    "server did not close the WebSocket",
  );
}

test("garbage and malformed frames close only the offending client; other tunnels keep working", async () => {
  const service = startEchoService();
  const server = await startServerProcess();
  const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
  const port = (client.tunnels[0] as { port: number }).port;

  // Raw garbage on the control port, before any HTTP.
  for (let i = 0; i < 5; i++) {
    const socket = await connectVisitor(server.port);
    socket.on("error", () => {});
    socket.write(randomData(4096));
    socket.end("\r\n\r\n");
    await closedWithin(socket, 5000);
  }

  const cases: [string, string | Uint8Array][] = [
    ["unknown frame type", new Uint8Array([0x7f, 0, 0, 0, 1])],
    ["truncated header", new Uint8Array([2, 0])],
    ["random bytes", randomData(300)],
    ["text that is not JSON", "{not json"],
    ["unknown control message", JSON.stringify({ type: "launch-missiles" })],
    ["OPEN from a client", new Uint8Array([1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0x7b, 0x7d])],
  ];
  for (const [what, message] of cases) {
    const ws = await rawSession(server.url);
    const code = closeCode(ws);
    ws.send(message);
    expect({ what, code: await code }).toEqual({ what, code: 1002 });
  }
  await server.waitFor(/protocol error/);

  const data = randomData(1024 * 1024);
  expect(await echoThrough(port, data)).toBe(sha256(data));
  expect(server.proc.exitCode).toBeNull();
  expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1 });
});

test("DATA past the window is a protocol error", async () => {
  const service = startEchoService();
  const server = await startServerProcess(["--window", "65536"]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
  const port = (client.tunnels[0] as { port: number }).port;
  const ws = await rawSession(server.url);
  ws.send(JSON.stringify({ type: "expose", id: 1, kind: "tcp" }));
  const opened = new Promise<MessageEvent>((resolve) => {
    // Protocol v3 also sends PING frames (type 8): the OPEN (type 1) is the one wanted.
    ws.addEventListener("message", (e) => {
      if (typeof e.data !== "string" && new Uint8Array(e.data as ArrayBuffer)[0] === 1) resolve(e);
    });
  });
  ws.binaryType = "arraybuffer";
  const exposed = await withTimeout(
    new Promise<{ port: number }>((resolve) =>
      ws.addEventListener("message", (e) => {
        if (typeof e.data === "string" && e.data.includes('"exposed"')) resolve(JSON.parse(e.data));
      }),
    ),
    5000,
    "no exposed answer",
  );
  const visitor = await connectVisitor(exposed.port);
  visitor.on("error", () => {});
  const open = new Uint8Array((await opened).data as ArrayBuffer);
  const code = closeCode(ws);
  // One DATA frame on the visitor's stream, one byte larger than the whole window.
  const frame = new Uint8Array(5 + 65537);
  frame.set(open.subarray(0, 5));
  frame[0] = 2;
  ws.send(frame);
  expect(await code).toBe(1002);
  await closedWithin(visitor, 5000);
  // The well-behaved client is unaffected.
  expect(await echoThrough(port, randomData(200_000))).toHaveLength(64);
});

test("limits: streams per tunnel and tunnels per client", async () => {
  const service = startEchoService();
  const server = await startServerProcess(["--max-streams", "2", "--max-tunnels", "1"]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
  const port = (client.tunnels[0] as { port: number }).port;
  const first = await connectVisitor(port);
  const second = await connectVisitor(port);
  first.write("x");
  second.write("y");
  await eventually(async () => (await server.health()).streams === 2, 3000, "two streams open");
  await visitUntilClosed(port, 3000); // the third visitor
  await server.waitFor(/limit/);

  const greedy = spawnRole([
    "bun",
    "client.ts",
    "--server",
    server.url,
    "--expose",
    `127.0.0.1:${service.port}`,
    "--expose",
    `127.0.0.1:${service.port}`,
  ]);
  expect(await greedy.exited()).not.toBe(0);
  expect(greedy.stderr()).toMatch(/at most 1 tunnels/);
});
