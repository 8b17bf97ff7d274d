/**
 * UDP tunnels across a cluster (issue 27): two nodes (127.0.0.1 and 127.0.0.2) and a Redis started
 * here; a client exposes a UDP echo service at the first node. The second node opens the same port
 * (a mirror) and carries datagrams over the node link: several flows from distinct source ports each
 * get their own content back, from the port they sent to. Then the client's node is killed: the
 * client moves to the second node, which keeps the same public UDP port and serves it itself.
 */

import { afterAll, beforeAll, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import type { udp } from "bun";
import {
  type ClusterNodeProcess,
  nodeHealth,
  startClusterClient,
  startClusterNode,
} from "../support/cluster.ts";
import { type ClientProcess, defer, setupFile } from "../support/processes.ts";
import { type RedisProcess, startRedis } from "../support/redis.ts";
import { startUdpEcho, type UdpEcho } from "../support/udp.ts";

setupFile();

const sha = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

let redis: RedisProcess;
let n1: ClusterNodeProcess;
let n2: ClusterNodeProcess;
let echo: UdpEcho;
let client: ClientProcess;
let port: number;

/** A visitor's socket on 127.0.0.1 that remembers every datagram and where it came from. */
async function visitor(): Promise<{
  socket: udp.Socket<"buffer">;
  got: { data: Uint8Array; from: string }[];
}> {
  const got: { data: Uint8Array; from: string }[] = [];
  const socket = await Bun.udpSocket({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(_s, data, fromPort, fromAddress) {
        got.push({ data: new Uint8Array(data), from: `${fromAddress}:${fromPort}` });
      },
      error() {},
    },
  });
  defer(() => socket.close());
  return { socket, got };
}

/**
 * Sends `payload` to `host:port` until it comes back (every 200 ms, at most `ms`); true when the echo
 * came back whole from `host:port`.
 */
async function echoes(
  v: Awaited<ReturnType<typeof visitor>>,
  host: string,
  payload: Uint8Array,
  ms = 5000,
): Promise<boolean> {
  const want = sha(payload);
  const deadline = performance.now() + ms;
  for (let round = 0; round < ms / 200 && performance.now() < deadline; round++) {
    v.socket.send(payload, port, host);
    for (let wait = 0; wait < 20; wait++) {
      const hit = v.got.find((g) => sha(g.data) === want);
      if (hit !== undefined) return hit.from === `${host}:${port}`;
      await Bun.sleep(10);
    }
  }
  return false;
}

beforeAll(async () => {
  redis = await startRedis();
  n1 = await startClusterNode("127.0.0.1", redis.url);
  n2 = await startClusterNode("127.0.0.2", redis.url);
  echo = await startUdpEcho();
  defer(() => echo.close());
  client = await startClusterClient([n1, n2], ["--expose-udp", `127.0.0.1:${echo.port}`], 1);
  port = client.tunnels[0]?.port as number;
  expect(client.stdout()).toMatch(/url: udp:\/\/\S+:\d+/);
}, 60_000);

afterAll(() => {
  client?.kill("SIGKILL");
});

test("a UDP tunnel held at node 1 is served through node 2's mirror of its port: several flows, each its own bytes back", async () => {
  // The first node serves it itself.
  const direct = await visitor();
  expect(await echoes(direct, n1.ip, randomBytes(100))).toBe(true);
  // The second node opens the port once it has read the lease; then every flow crosses the link.
  const first = await visitor();
  expect(await echoes(first, n2.ip, randomBytes(64), 10_000)).toBe(true);
  const flows = await Promise.all(Array.from({ length: 8 }, () => visitor()));
  const sizes = [0, 1, 512, 1400, 9000, 30_000, 65_507, 3];
  await Promise.all(
    flows.map(async (flow, i) => {
      for (let round = 0; round < 5; round++) {
        const payload = randomBytes(sizes[i] as number);
        // A 0-byte datagram is whole when it comes back empty; the others by their sha256.
        expect(await echoes(flow, n2.ip, payload)).toBe(true);
        if (payload.length === 0) break;
      }
    }),
  );
  // Each flow got only its own datagrams back.
  for (const [i, flow] of flows.entries())
    for (const got of flow.got) expect(got.data.length).toBe(sizes[i] as number);
  const health = await nodeHealth(n2);
  const udp = health.udp as { open: number; datagramsIn: number; datagramsOut: number };
  expect(udp.open).toBeGreaterThanOrEqual(9);
  expect(udp.datagramsOut).toBeGreaterThanOrEqual(9);
  expect((health.cluster as { mirrors: number }).mirrors).toBeGreaterThanOrEqual(1);
  // The service saw one peer per flow (the first node's own visitor too).
  expect(echo.peers.size).toBeGreaterThanOrEqual(10);
}, 60_000);

test("the client's node is killed: it moves to node 2, which keeps the same public UDP port", async () => {
  const v = await visitor();
  expect(await echoes(v, n2.ip, randomBytes(32))).toBe(true);
  n1.kill("SIGKILL");
  await client.waitFor(/moved to server/, 20_000);
  const again = randomBytes(1000);
  expect(await echoes(v, n2.ip, again, 15_000)).toBe(true);
  expect(client.stdout()).toMatch(new RegExp(`url: udp://\\S+:${port}\\n[^]*url: udp://\\S+:${port}`));
  // Node 2 holds it now: its own socket on the port, no mirror left.
  const health = await nodeHealth(n2);
  expect((health.cluster as { mirrors: number }).mirrors).toBe(0);
  const burst = await visitor();
  for (let i = 0; i < 20; i++) expect(await echoes(burst, n2.ip, randomBytes(200 + i))).toBe(true);
}, 60_000);
