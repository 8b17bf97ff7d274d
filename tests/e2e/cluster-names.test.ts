/**
 * Names and addresses in a cluster that cannot clash silently (issue 29, item 1), and Redis outages
 * said plainly (item 7): three nodes on 127.0.0.1, .2 and .3 with one control port and no
 * `--node-name` get three names and serve every visitor through every node; a node started under a
 * live node's name is refused with one line naming both; a node bound to all addresses announces an
 * address the others reach; a node with other users logs the difference on joining and on a reload;
 * a new expose while Redis is down gets the Redis reason (not the handshake timeout) and goes live once
 * Redis is back.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import {
  type ClusterNodeProcess,
  nodeHealth,
  startClusterClient,
  startClusterNode,
  startNamedApp,
  visitName,
} from "../support/cluster.ts";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  type ClientProcess,
  deferContinue,
  eventually,
  runToExit,
  setupFile,
  spawnRole,
} from "../support/processes.ts";
import { type RedisProcess, startRedis } from "../support/redis.ts";
import { configFolder, testUser, usersToml, writeConfig } from "../support/server-config.ts";
import { startEchoService } from "../support/services.ts";
import { connectVisitor, freePort, readAll } from "../support/sockets.ts";

setupFile();

/** A port free on 127.0.0.1, .2 and .3 alike (checked by binding each). */
function sharedFreePort(): number {
  for (let attempt = 0; attempt < 10; attempt++) {
    const port = freePort();
    try {
      for (const ip of ["127.0.0.2", "127.0.0.3"])
        Bun.listen({ hostname: ip, port, socket: { data() {} } }).stop(true);
      return port;
    } catch {}
  }
  throw new Error("no port free on all three addresses");
}

describe("three nodes on one port with default names", () => {
  let redis: RedisProcess;
  let nodes: ClusterNodeProcess[];
  let port: number;
  let clients: ClientProcess[];
  const echo = startEchoService();

  beforeAll(async () => {
    redis = await startRedis();
    port = sharedFreePort();
    nodes = [];
    for (const ip of ["127.0.0.1", "127.0.0.2", "127.0.0.3"]) {
      const node = await startClusterNode(ip, redis.url, [], port);
      deferContinue(node);
      nodes.push(node);
    }
    // One client per node, each exposing an HTTP name and a TCP port.
    clients = [];
    for (const [i, node] of nodes.entries()) {
      const app = startNamedApp(`app-${i}`);
      clients.push(
        await startClusterClient(
          [node],
          ["--http", `127.0.0.1:${app}`, "--subdomain", `name${i}`, "--expose", `127.0.0.1:${echo.port}`],
          2,
        ),
      );
    }
  }, 90_000);

  afterAll(() => {
    if (process.env.CLUSTER_DEBUG)
      for (const node of nodes ?? []) console.log(`--- ${node.name}\n${node.stdout()}${node.stderr()}`);
  });

  test("each node names itself after its address and port; they see each other", async () => {
    expect(nodes.map((node) => node.name)).toEqual([
      `127.0.0.1:${port}`,
      `127.0.0.2:${port}`,
      `127.0.0.3:${port}`,
    ]);
    await eventually(
      async () => {
        for (const node of nodes) {
          const cluster = (await nodeHealth(node)).cluster;
          if ((cluster.nodes as string[]).length !== 3) return false;
          if ((cluster.held as number) + (cluster.elsewhere as number) !== 6) return false;
        }
        return true;
      },
      10_000,
      "three nodes and six leases seen everywhere",
    );
  });

  test("TCP ports are picked below the ephemeral range, where no node's own connections take theirs", () => {
    const ephemeralMin = Number.parseInt(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8"), 10);
    for (const [i, client] of clients.entries()) {
      const tcp = client.tunnels.find((t) => t.port !== nodes[i]?.httpPort) as { port: number };
      expect(tcp.port).toBeGreaterThanOrEqual(10_000);
      expect(tcp.port).toBeLessThan(ephemeralMin);
    }
  });

  test("visitors through every node reach every client, HTTP and TCP", async () => {
    const body = randomData(64 * 1024);
    for (const node of nodes)
      for (const [i, client] of clients.entries()) {
        expect((await visitName(node, `name${i}`, body)).text).toBe(`app-${i} ${sha256(body)}`);
        // The TCP tunnel's port, through this node's address (a mirror when another node holds it).
        const tcp = client.tunnels.find((t) => t.port !== nodes[i]?.httpPort) as { port: number };
        const socket = await connectVisitor(tcp.port, node.ip);
        const received = readAll(socket);
        socket.end(body);
        expect((await received).sha256).toBe(sha256(body));
        socket.destroy();
      }
  });

  test("a node started under a live node's name is refused with one line naming both", async () => {
    const taken = (nodes[0] as ClusterNodeProcess).name;
    const result = await runToExit(
      [
        "bun",
        "server.ts",
        ...["--host", "127.0.0.4", "--port", "0", "--cluster", redis.url, "--node-name", taken],
      ],
      {},
      20_000,
    );
    expect(result.code).toBe(1);
    const line = result.stderr.trim();
    expect(line.split("\n")).toHaveLength(1);
    expect(line).toMatch(
      new RegExp(
        `node name ${taken.replace(/\./g, "\\.")} is already used by a live node at ws://127\\.0\\.0\\.1:${port} \\(this node: ws://127\\.0\\.0\\.4:\\d+\\)`,
      ),
    );
  });

  test("a node bound to all addresses announces the address it reaches Redis from", async () => {
    const node = await startClusterNode("0.0.0.0", redis.url);
    deferContinue(node);
    // Redis is on 127.0.0.1: so is this node's end of the connection.
    expect(node.name).toBe(`127.0.0.1:${node.port}`);
    await eventually(
      async () =>
        ((await nodeHealth(nodes[1] as ClusterNodeProcess)).cluster.nodes as string[]).includes(node.name),
      5000,
      "the others see it",
    );
    node.kill("SIGTERM");
    await node.exited(10_000);
  });
});

describe("settings and outages", () => {
  test("a node whose users differ logs it on joining and again on a reload", async () => {
    const redis = await startRedis();
    const ann = testUser("ann");
    const bob = testUser("bob");
    const same = writeConfig(configFolder(), "server.toml", usersToml([ann]));
    const folder = configFolder();
    const other = writeConfig(folder, "server.toml", usersToml([ann, bob]));
    const a = await startClusterNode("127.0.0.1", redis.url, ["--config", same]);
    deferContinue(a);
    const b = await startClusterNode("127.0.0.2", redis.url, ["--config", other]);
    deferContinue(b);
    await b.waitFor(/cluster: this node's users or API key differ from node 127\.0\.0\.1:\d+/, 5000);
    // The same users as the others after a reload: nothing more is said; the old file back: said again.
    writeConfig(folder, "server.toml", usersToml([ann]));
    b.kill("SIGHUP");
    await b.waitFor(/configuration reloaded: users: removed bob/, 5000);
    const before = (b.stdout() + b.stderr()).match(/differ from node/g)?.length ?? 0;
    writeConfig(folder, "server.toml", usersToml([ann, bob]));
    b.kill("SIGHUP");
    await eventually(
      () => ((b.stdout() + b.stderr()).match(/differ from node/g)?.length ?? 0) > before,
      5000,
      "b says it again after the reload",
    );
    expect(a.stdout() + a.stderr()).not.toMatch(/differ from node/);
  }, 60_000);

  test("a new expose while Redis is down gets Redis' reason, not the handshake timeout, and goes live once it is back", async () => {
    const redis = await startRedis();
    const node = await startClusterNode("127.0.0.1", redis.url, ["--handshake-timeout", "2"]);
    deferContinue(node);
    await redis.kill();
    await node.waitFor(/redis link lost/, 10_000);
    const app = startNamedApp("late");
    const client = spawnRole([
      "bun",
      "client.ts",
      "--server",
      node.url,
      "--http",
      `127.0.0.1:${app}`,
      "--subdomain",
      "late",
    ]);
    // The node waits 15 s for Redis, then tells the client why; the client asks again.
    await client.waitFor(/the cluster's Redis is unreachable.*asking again in/, 25_000);
    expect(client.stdout() + client.stderr()).not.toMatch(/no expose or sync/);
    expect(client.proc.exitCode).toBeNull();
    await redis.restart();
    await client.waitFor(/exposed with tunnel id/, 30_000);
    const body = randomData(1024);
    expect((await visitName(node, "late", body)).text).toBe(`late ${sha256(body)}`);
  }, 90_000);
});
