/**
 * Clustering through Redis (issue 20), as real processes: a real `redis-server`, three server nodes on
 * three loopback addresses (so that each can open every tunnel's public TCP port, as three machines
 * would) and clients given several servers. Visitors through every node reach the right client with
 * their bytes intact; a node killed (SIGKILL) or frozen past its lease (SIGSTOP) loses its clients to
 * another node with the same URLs and ports, and a frozen node woken again serves none of the names it
 * lost; Redis killed and restarted stops no live tunnel; two clients racing for one name: one wins.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createConnection, type Socket } from "node:net";
import { nodeHealth, startClusterClient, startNamedApp, visitName } from "../support/cluster.ts";
import { rawStatus, upgradeHeaders } from "../support/faults.ts";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  type ClientProcess,
  defer,
  deferContinue,
  eventually,
  openDescriptors,
  type RoleProcess,
  rssKiB,
  setupFile,
  spawnRole,
  withTimeout,
} from "../support/processes.ts";
import { type RedisProcess, startRedis } from "../support/redis.ts";
import { configFolder, testUser, usersToml, writeConfig } from "../support/server-config.ts";
import { startEchoService } from "../support/services.ts";
import { connectVisitor, readAll } from "../support/sockets.ts";

setupFile();

/** A node of the test cluster. */
interface Node extends RoleProcess {
  name: string;
  /** Its loopback address: public ports are opened there. */
  ip: string;
  port: number;
  httpPort: number;
  url: string;
}

let redis: RedisProcess;

/** With CLUSTER_DEBUG set: prints how long each step of a fault took (for the closing note, not a pass/fail). */
let markedAt = 0;
function mark(what: string, start = false): void {
  if (start) markedAt = performance.now();
  if (process.env.CLUSTER_DEBUG)
    console.log(`${(performance.now() - markedAt).toFixed(0).padStart(6)} ms  ${what}`);
}

async function startNode(
  name: string,
  ip: string,
  extra: string[] = [],
  port = 0,
  redisUrl = redis.url,
): Promise<Node> {
  const role = spawnRole([
    "bun",
    "server.ts",
    "--host",
    ip,
    "--port",
    String(port),
    "--http-port",
    "0",
    "--domain",
    "localhost",
    "--cluster",
    redisUrl,
    "--node-name",
    name,
    "--cluster-lease",
    "2",
    "--heartbeat",
    "1",
    "--grace",
    "30",
    // The refused-link test fails on purpose from 127.0.0.1, where every client of this file comes from.
    "--auth-fail-limit",
    "1000",
    ...extra,
  ]);
  const listening = await Promise.race([
    role.waitFor(/listening on ws:\/\/\S+:(\d+) /, 15_000),
    role.proc.exited.then((code) => {
      throw new Error(`node ${name} exited (${code}): ${role.stderr()}`);
    }),
  ]);
  const httpPort = Number((await role.waitFor(/http tunnels on http:\/\/\*\.localhost:(\d+)\n/))[1]);
  await role.waitFor(/cluster: node \S+ joined/);
  const controlPort = Number(listening[1]);
  return { ...role, name, ip, port: controlPort, httpPort, url: `ws://${ip}:${controlPort}` };
}

/** A TCP echo service that respects backpressure. */
function startEcho(): number {
  const service = startEchoService();
  defer(() => service.stop());
  return service.port;
}

/** Sends `data` through a node's public TCP port to an echo service; resolves with the echo's sha256. */
async function echoVia(ip: string, port: number, data: Uint8Array): Promise<string> {
  const socket: Socket = await connectVisitor(port, ip);
  const received = readAll(socket);
  socket.end(data);
  const result = await withTimeout(received, 20_000, `echo through ${ip}:${port}`);
  socket.destroy();
  return result.sha256;
}

describe("a cluster of three nodes", () => {
  let nodes: Node[];
  let first: ClientProcess;
  let second: ClientProcess;
  let firstTcp: number;
  let secondTcp: number;
  const firstApp = startNamedApp("app-one");
  const secondApp = startNamedApp("app-two");
  const echo = startEcho();

  beforeAll(async () => {
    redis = await startRedis();
    nodes = [
      await startNode("n1", "127.0.0.1"),
      await startNode("n2", "127.0.0.2"),
      await startNode("n3", "127.0.0.3"),
    ];
    for (const node of nodes) deferContinue(node);
    const [n1, n2, n3] = nodes as [Node, Node, Node];
    // Each client knows its own node first, then another one to move to.
    first = await startClusterClient(
      [n1, n2],
      ["--expose", `127.0.0.1:${echo}`, "--http", `127.0.0.1:${firstApp}`, "--subdomain", "one"],
      2,
    );
    second = await startClusterClient(
      [n2, n3],
      ["--expose", `127.0.0.1:${echo}`, "--http", `127.0.0.1:${secondApp}`, "--subdomain", "two"],
      2,
    );
    firstTcp = (first.tunnels[0] as { port: number }).port;
    secondTcp = (second.tunnels[0] as { port: number }).port;
    // Every node sees both tunnels (pub/sub, or the resync within a second).
    await eventually(
      async () => {
        for (const node of nodes) {
          const h = await nodeHealth(node);
          if ((h.cluster.nodes as string[]).length !== 3) return false;
          if ((h.cluster.held as number) + (h.cluster.elsewhere as number) < 4) return false;
          const links = Object.values(h.cluster.links as Record<string, { up: boolean }>);
          if (links.length !== 2 || !links.every((link) => link.up)) return false;
        }
        return true;
      },
      10_000,
      "every node sees three nodes, four leases and its links to the other two up",
    );
  }, 90_000);

  afterAll(() => {
    if (process.env.CLUSTER_DEBUG)
      for (const node of nodes ?? []) console.log(`--- ${node.name}\n${node.stdout()}${node.stderr()}`);
  });

  test("HTTP and TCP visitors through every node reach the right client, bytes intact", async () => {
    const body = randomData(256 * 1024);
    const data = randomData(2 * MiB);
    for (const node of nodes) {
      expect(await visitName(node, "one", body)).toEqual({ status: 200, text: `app-one ${sha256(body)}` });
      expect(await visitName(node, "two", body)).toEqual({ status: 200, text: `app-two ${sha256(body)}` });
      expect(await echoVia(node.ip, firstTcp, data)).toBe(sha256(data));
      expect(await echoVia(node.ip, secondTcp, data)).toBe(sha256(data));
      expect((await visitName(node, "nobody", body)).status).toBe(404);
    }
    const h = await nodeHealth(nodes[0] as Node);
    expect(h.cluster.node).toBe("n1");
    expect(h.cluster.redis).toBe("up");
    // One link per pair of nodes, used both ways: each node has exactly one to each other node.
    for (const node of nodes) {
      const links = (await nodeHealth(node)).cluster.links as Record<string, { up: boolean }>;
      const others = nodes.filter((other) => other !== node).map((other) => other.name);
      expect(Object.keys(links).sort()).toEqual(others);
      for (const name of others) expect(links[name]?.up).toBe(true);
    }
  });

  test("a node link needs the cluster's secret; a node's descriptors come back after refused links", async () => {
    const n1 = nodes[0] as Node;
    const before = openDescriptors(n1.proc.pid);
    for (let i = 0; i < 20; i++)
      expect(
        await rawStatus(n1.port, "/_sockets/node", upgradeHeaders({ Authorization: `Bearer wrong-${i}` })),
      ).toBeOneOf([401, 429]);
    expect(await rawStatus(n1.port, "/_sockets/node", upgradeHeaders())).toBeOneOf([401, 429]);
    await eventually(() => openDescriptors(n1.proc.pid) <= before + 2, 5000, "n1's descriptors back");
    // The node's output reaches this process through a pipe: wait for the line rather than race it.
    await eventually(
      () => /refused a node link from \S+: wrong cluster secret/.test(n1.stdout() + n1.stderr()),
      5000,
      "n1 logs the refused link",
    );
  });

  test("300 visitors through a node's mirror of another node's port (closing at once, stalling, never reading): both nodes' descriptors and RSS return", async () => {
    const [, n2, n3] = nodes as [Node, Node, Node];
    const pids = [n2.proc.pid, n3.proc.pid];
    const fdsBefore = pids.map((pid) => openDescriptors(pid));
    const rssBefore = await Promise.all(pids.map((pid) => rssKiB(pid)));
    const visits: ((socket: Socket) => void)[] = [
      (socket) => socket.destroy(), // gone at once
      (socket) => socket.write(randomData(1024)), // sends a little, then stalls
      (socket) => {
        socket.pause(); // never reads its echo: windows fill, nothing grows past them
        socket.write(randomData(256 * 1024));
      },
    ];
    for (let batch = 0; batch < 300; batch += 50)
      await Promise.all(
        Array.from(
          { length: 50 },
          (_, i) =>
            new Promise<void>((resolve) => {
              const socket = createConnection({ host: n3.ip, port: secondTcp }, () =>
                (visits[i % visits.length] as (s: Socket) => void)(socket),
              );
              socket.on("data", () => {});
              socket.on("close", () => resolve());
              socket.on("error", () => resolve());
              setTimeout(() => {
                socket.destroy();
                resolve();
              }, 1500);
            }),
        ),
      );
    for (const [i, pid] of pids.entries())
      await eventually(
        async () => openDescriptors(pid) <= (fdsBefore[i] as number) + 2,
        10_000,
        `node ${pid}'s descriptors back to ${fdsBefore[i]}`,
      );
    for (const [i, pid] of pids.entries()) {
      const rss = await rssKiB(pid);
      if (process.env.CLUSTER_DEBUG)
        console.log(
          `node ${pid}: fds ${fdsBefore[i]} → ${openDescriptors(pid)}, RSS ${((rssBefore[i] as number) / 1024).toFixed(0)} → ${(rss / 1024).toFixed(0)} MiB`,
        );
      expect(rss - (rssBefore[i] as number)).toBeLessThan(96 * 1024);
    }
    await eventually(
      async () =>
        ((await nodeHealth(n3)).cluster.links as Record<string, { streams: number }>).n2?.streams === 0,
      10_000,
      "no stream left on n3's link to n2",
    );
    // Still carrying.
    const data = randomData(MiB);
    expect(await echoVia(n3.ip, secondTcp, data)).toBe(sha256(data));
  }, 60_000);

  test("two clients racing for one name through two nodes: exactly one wins", async () => {
    const [n1, , n3] = nodes as [Node, Node, Node];
    const app = startNamedApp("racer");
    const racers = [n1, n3].map((node) =>
      spawnRole([
        "bun",
        "client.ts",
        "--server",
        node.url,
        "--http",
        `127.0.0.1:${app}`,
        "--subdomain",
        "race",
      ]),
    );
    const outcomes = await Promise.all(
      racers.map((racer) =>
        Promise.race([
          racer.waitFor(/exposed with tunnel id/, 20_000).then(() => "won"),
          racer.proc.exited.then(() => "lost"),
        ]),
      ),
    );
    expect([...outcomes].sort()).toEqual(["lost", "won"]);
    const loser = racers[outcomes.indexOf("lost")] as RoleProcess;
    expect(loser.stderr()).toMatch(/subdomain 'race' is taken/);
    for (const racer of racers) racer.kill("SIGKILL");
  });

  test("Redis killed and restarted: live tunnels carry on; a new tunnel waits and then succeeds", async () => {
    const [n1, n2, n3] = nodes as [Node, Node, Node];
    const data = randomData(MiB);
    redis.kill();
    mark("redis: killed", true);
    await eventually(
      async () => (await nodeHealth(n1)).cluster.redis === "down",
      10_000,
      "n1 sees Redis down",
    );
    // Visitors through the holding node and through the others (the last known routes).
    expect(await echoVia(n1.ip, firstTcp, data)).toBe(sha256(data));
    expect(await echoVia(n3.ip, firstTcp, data)).toBe(sha256(data));
    expect((await visitName(n2, "one", data)).text).toBe(`app-one ${sha256(data)}`);
    // A new tunnel now waits for Redis.
    const app = startNamedApp("late");
    const late = spawnRole([
      "bun",
      "client.ts",
      "--server",
      n3.url,
      "--http",
      `127.0.0.1:${app}`,
      "--subdomain",
      "late",
    ]);
    await n3.waitFor(/cluster: Redis is unreachable; http:late waits/, 10_000);
    expect(late.stdout()).not.toMatch(/exposed with tunnel id/);
    await redis.restart();
    mark("redis: restarted");
    await late.waitFor(/exposed with tunnel id/, 20_000);
    mark("redis: the waiting tunnel is live");
    await eventually(
      async () => (await visitName(n1, "late", data)).text === `late ${sha256(data)}`,
      10_000,
      "the new tunnel reachable through another node",
    );
    // The old names were taken up again by their holders: still served everywhere.
    expect((await visitName(n3, "one", data)).text).toBe(`app-one ${sha256(data)}`);
    expect(n1.stderr() + n1.stdout()).toMatch(/redis link lost/i);
    late.kill("SIGKILL");
  }, 60_000);

  test("a node killed mid-transfer: its client is back through another node, same URL and port; other visitors never notice", async () => {
    const [n1, n2, n3] = nodes as [Node, Node, Node];
    // A visitor carried by n2 for the second client (on n2) streams while n1 dies.
    const big = randomData(24 * MiB);
    const socket = await connectVisitor(secondTcp, n2.ip);
    const received = readAll(socket);
    socket.write(big.subarray(0, 8 * MiB));
    n1.kill("SIGKILL");
    mark("killed: n1 SIGKILLed", true);
    socket.end(big.subarray(8 * MiB));
    expect((await withTimeout(received, 30_000, "the n2 visitor's echo")).sha256).toBe(sha256(big));
    // The first client moves to n2 and takes back its name and port.
    await first.waitFor(/moved to server/, 15_000);
    mark("killed: first client moved");
    const data = randomData(MiB);
    await eventually(
      async () => {
        try {
          return (await visitName(n3, "one", data)).text === `app-one ${sha256(data)}`;
        } catch {
          return false;
        }
      },
      15_000,
      "name one served again through n3",
    );
    mark("killed: name one served through n3");
    expect(await echoVia(n2.ip, firstTcp, data)).toBe(sha256(data));
    expect(await echoVia(n3.ip, firstTcp, data)).toBe(sha256(data));
  }, 60_000);

  test("a node frozen past its lease and woken does not serve the names it lost", async () => {
    const [, n2, n3] = nodes as [Node, Node, Node];
    // n2 holds the second client's tunnels (and the first client's, after the previous test).
    n2.kill("SIGSTOP");
    mark("frozen: n2 stopped", true);
    await second.waitFor(/moved to server/, 15_000);
    mark("frozen: second client moved");
    const data = randomData(64 * 1024);
    await eventually(
      async () => {
        try {
          return (await visitName(n3, "two", data)).text === `app-two ${sha256(data)}`;
        } catch {
          return false;
        }
      },
      15_000,
      "name two served through n3 while n2 is frozen",
    );
    mark("frozen: name two served through n3");
    n2.kill("SIGCONT");
    // Straight after waking, through n2: never its stale session (which has no client), only the new
    // holder over the link, or a refusal while it catches up.
    const deadline = Date.now() + 10_000;
    let served = false;
    while (Date.now() < deadline && !served) {
      const answer = await visitName(n2, "two", data).catch(() => ({ status: 0, text: "" }));
      if (answer.status === 200) {
        expect(answer.text).toBe(`app-two ${sha256(data)}`);
        served = true;
      } else expect([0, 404, 502]).toContain(answer.status);
    }
    expect(served).toBe(true);
    mark("frozen: n2 serves two again (over the link) after waking");
    expect(await echoVia(n2.ip, secondTcp, data)).toBe(sha256(data));
    await n2.waitFor(/lease lost/, 10_000);
  }, 60_000);
});

describe("users across a cluster", () => {
  test("one user's max_tunnels counts over every node", async () => {
    const own = await startRedis();
    const ann = testUser("ann", ["max_tunnels = 2"]);
    const config = writeConfig(configFolder(), "server.toml", usersToml([ann]));
    const a = await startNode("u1", "127.0.0.4", ["--config", config], 0, own.url);
    const b = await startNode("u2", "127.0.0.5", ["--config", config], 0, own.url);
    const echo = startEcho();
    const env = { SOCKETS_API_KEY: ann.token };
    const first = spawnRole(
      [
        "bun",
        "client.ts",
        "--server",
        a.url,
        "--expose",
        `127.0.0.1:${echo}`,
        "--expose",
        `127.0.0.1:${echo}`,
      ],
      env,
    );
    await first.waitFor(/(?:exposed with tunnel id[\s\S]*){2}/, 20_000);
    // Her third tunnel, through the other node, is one too many.
    const third = spawnRole(["bun", "client.ts", "--server", b.url, "--expose", `127.0.0.1:${echo}`], env);
    expect(await third.exited(20_000)).not.toBe(0);
    expect(third.stderr()).toMatch(/ann may hold at most 2 tunnels across the cluster/);
    // Once she closes one, the other node lets her have it.
    first.kill("SIGINT");
    await first.exited(10_000);
    const again = spawnRole(["bun", "client.ts", "--server", b.url, "--expose", `127.0.0.1:${echo}`], env);
    await again.waitFor(/exposed with tunnel id/, 20_000);
  }, 60_000);
});

describe("visitors across a cluster", () => {
  /** Connects to `ip:port` and echoes 16 bytes: true when they came back, false when the node closed it. */
  async function echoes(ip: string, port: number): Promise<{ ok: boolean; socket: Socket }> {
    const socket = createConnection({ host: ip, port });
    const data = randomData(16);
    const ok = await withTimeout(
      new Promise<boolean>((resolve) => {
        let got = 0;
        socket.on("connect", () => socket.write(data));
        socket.on("data", (chunk: Buffer) => {
          got += chunk.length;
          if (got >= data.length) resolve(true);
        });
        socket.on("close", () => resolve(false));
        socket.on("error", () => resolve(false));
      }),
      5000,
      `echo through ${ip}:${port}`,
    );
    return { ok, socket };
  }

  test("one user's max_visitors counts the visitors of every node", async () => {
    const own = await startRedis();
    const ann = testUser("ann", ["max_visitors = 2"]);
    const config = writeConfig(configFolder(), "server.toml", usersToml([ann]));
    const a = await startNode("v1", "127.0.0.6", ["--config", config], 0, own.url);
    const b = await startNode("v2", "127.0.0.7", ["--config", config], 0, own.url);
    deferContinue(a);
    deferContinue(b);
    const echo = startEcho();
    const env = { SOCKETS_API_KEY: ann.token };
    const onA = spawnRole(["bun", "client.ts", "--server", a.url, "--expose", `127.0.0.1:${echo}`], env);
    const onB = spawnRole(["bun", "client.ts", "--server", b.url, "--expose", `127.0.0.1:${echo}`], env);
    const portOf = async (client: RoleProcess) =>
      Number((await client.waitFor(/exposed with tunnel id \S+, url: \S+:(\d+)/, 20_000))[1]);
    const [portA, portB] = [await portOf(onA), await portOf(onB)];
    // One visitor held at each node: two in all, her limit.
    const first = await echoes(a.ip, portA);
    const second = await echoes(b.ip, portB);
    expect([first.ok, second.ok]).toEqual([true, true]);
    // Once the nodes have told each other (every lease/3), a third one is refused at either node.
    await eventually(
      async () => {
        const third = await echoes(a.ip, portA);
        third.socket.destroy();
        return !third.ok;
      },
      10_000,
      "a third visitor refused at v1 though v1 holds only one of hers",
    );
    // One leaves at v2: v1 lets a new one in.
    second.socket.destroy();
    await eventually(
      async () => {
        const again = await echoes(a.ip, portA);
        again.socket.destroy();
        return again.ok;
      },
      10_000,
      "a new visitor let in at v1 once one left at v2",
    );
    first.socket.destroy();
    expect(a.stdout() + a.stderr()).toMatch(/max_visitors/);
  }, 60_000);
});
