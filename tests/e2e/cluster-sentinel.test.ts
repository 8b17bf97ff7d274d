/**
 * A cluster whose Redis fails over (issue 29, item 4): Debian's redis-server as a master and a replica,
 * three redis-sentinel processes watching them, two nodes given the sentinels
 * (`--cluster redis+sentinel://…/mymaster`). The master is killed (SIGKILL): visitors of a live tunnel
 * are served throughout, through both nodes; a new tunnel is accepted again once the sentinels promoted
 * the replica (within their failover time plus a few seconds); afterwards every name is held by one
 * node only, in Redis and in what the nodes serve.
 */

import { afterAll, beforeAll, expect, test } from "bun:test";
import { RedisClient } from "bun";
import {
  type ClusterNodeProcess,
  nodeHealth,
  startClusterClient,
  startClusterNode,
  startNamedApp,
  visitName,
} from "../support/cluster.ts";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import { type ClientProcess, deferContinue, eventually, setupFile, spawnRole } from "../support/processes.ts";
import { type SentinelSet, startSentinels } from "../support/redis.ts";
import { startEchoService } from "../support/services.ts";
import { connectVisitor, readAll } from "../support/sockets.ts";

setupFile();

let set: SentinelSet;
let nodes: ClusterNodeProcess[];
let client: ClientProcess;
const app = startNamedApp("steady");

beforeAll(async () => {
  set = await startSentinels(1000);
  // Each sentinel must know the two others (a failover needs a majority of them to elect a leader).
  for (const sentinel of set.sentinels)
    await eventually(
      () => (sentinel.stdout().match(/\+sentinel sentinel /g) ?? []).length >= 2,
      20_000,
      `sentinel ${sentinel.port} sees the other two`,
    );
  nodes = [
    await startClusterNode("127.0.0.1", set.url, ["--node-name", "s1"]),
    await startClusterNode("127.0.0.2", set.url, ["--node-name", "s2"]),
  ];
  for (const node of nodes) deferContinue(node);
  client = await startClusterClient(
    [nodes[0] as ClusterNodeProcess, nodes[1] as ClusterNodeProcess],
    ["--http", `127.0.0.1:${app}`, "--subdomain", "steady"],
    1,
  );
  await eventually(
    async () => (await visitName(nodes[1] as ClusterNodeProcess, "steady", new Uint8Array(0))).status === 200,
    10_000,
    "steady served through s2",
  );
}, 90_000);

afterAll(() => {
  if (process.env.CLUSTER_DEBUG)
    for (const node of nodes ?? []) console.log(`--- ${node.name}\n${node.stdout()}${node.stderr()}`);
});

test("the master killed: live tunnels keep serving, new tunnels are accepted after the failover, no name held twice", async () => {
  const [s1, s2] = nodes as [ClusterNodeProcess, ClusterNodeProcess];
  const echo = startEchoService();
  // A long TCP transfer through s2 (carried to s1 over the link) spans the failover.
  const tcpClient = await startClusterClient([s1, s2], ["--expose", `127.0.0.1:${echo.port}`], 1);
  const tcpPort = (tcpClient.tunnels[0] as { port: number }).port;
  await eventually(
    async () => ((await nodeHealth(s2)).cluster.elsewhere as number) >= 2,
    10_000,
    "s2 sees both tunnels",
  );
  const big = randomData(16 * MiB);
  const carried = await connectVisitor(tcpPort, s2.ip);
  const echoed = readAll(carried);
  carried.write(big.subarray(0, 4 * MiB));

  // Visitors through both nodes, one after another, all through the failover.
  let visits = 0;
  const failures: string[] = [];
  let visiting = true;
  const body = randomData(1024);
  const loop = (async () => {
    for (let i = 0; visiting && i < 10_000; i++) {
      const node = nodes[i % 2] as ClusterNodeProcess;
      const answer = await visitName(node, "steady", body, 5000).catch((error: Error) => ({
        status: 0,
        text: error.message,
      }));
      visits++;
      if (answer.status !== 200 || answer.text !== `steady ${sha256(body)}`)
        failures.push(`${node.name}: ${answer.status} ${answer.text}`);
      await Bun.sleep(50);
    }
  })();

  set.master.kill("SIGKILL");
  const killedAt = performance.now();
  await set.master.proc.exited;
  carried.write(big.subarray(4 * MiB, 8 * MiB));

  // A new tunnel through s2, asked for right after the kill: accepted once the replica is promoted.
  const other = startNamedApp("fresh");
  const fresh = spawnRole([
    "bun",
    "client.ts",
    "--server",
    s2.url,
    "--http",
    `127.0.0.1:${other}`,
    "--subdomain",
    "fresh",
  ]);
  await fresh.waitFor(/exposed with tunnel id/, 40_000);
  const acceptedAfter = performance.now() - killedAt;
  const promotedAt = await set.sentinels[0]?.waitFor(/\+switch-master mymaster/, 5000);
  expect(promotedAt).toBeDefined();
  carried.end(big.subarray(8 * MiB));
  expect((await echoed).sha256).toBe(sha256(big));
  visiting = false;
  await loop;
  if (process.env.CLUSTER_DEBUG)
    console.log(
      `sentinel failover: new tunnel accepted ${acceptedAfter.toFixed(0)} ms after the kill; ${visits} visits, ${failures.length} failed`,
    );
  expect(failures).toEqual([]);
  expect(visits).toBeGreaterThan(2);
  // Failover time (down-after 1 s, election, promotion) plus a few seconds, loosely.
  expect(acceptedAfter).toBeLessThan(20_000);
  for (const node of nodes) expect(node.stdout() + node.stderr()).toMatch(/redis master moved to/);

  // One holder per name: in the promoted master, and in what the nodes serve.
  const promoted = new RedisClient(`redis://127.0.0.1:${set.replica.port}`);
  try {
    await eventually(
      async () => {
        const keys = (await promoted.send("KEYS", ["sockets:lease:*"])) as string[];
        return keys.length === 3;
      },
      10_000,
      "three leases in the promoted master",
    );
    const keys = ((await promoted.send("KEYS", ["sockets:lease:*"])) as string[]).sort();
    const holders = await Promise.all(
      keys.map(async (key) => JSON.parse((await promoted.get(key)) as string)),
    );
    const held = await Promise.all(
      nodes.map(async (node) => (await nodeHealth(node)).cluster.held as number),
    );
    expect(held.reduce((a, b) => a + b, 0)).toBe(keys.length);
    for (const [i, node] of nodes.entries())
      expect(holders.filter((holder) => holder.node === node.name).length).toBe(held[i] as number);
  } finally {
    promoted.close();
  }
  for (const node of nodes) {
    expect((await visitName(node, "steady", body)).text).toBe(`steady ${sha256(body)}`);
    expect((await visitName(node, "fresh", body)).text).toBe(`fresh ${sha256(body)}`);
  }
  fresh.kill("SIGKILL");
  client.kill("SIGKILL");
  tcpClient.kill("SIGKILL");
}, 120_000);
