/**
 * A pool across a cluster: one user's clients with `--pool` on two nodes serve one HTTP name and one
 * TCP port. Visitors through a third node (with no member) are spread over both; each member node
 * serves its own visitors; a member SIGKILLed leaves the place served by the other; a client of
 * another user is refused naming the rule.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
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
  cleanup,
  eventually,
  expectOneLineError,
  runToExit,
  setupFile,
} from "../support/processes.ts";
import { type RedisProcess, startRedis } from "../support/redis.ts";
import { startEchoService } from "../support/services.ts";
import { echoThrough, freePort } from "../support/sockets.ts";

setupFile();
afterAll(cleanup);

describe("a pool with members on two nodes", () => {
  let redis: RedisProcess;
  let nodes: ClusterNodeProcess[];
  let members: ClientProcess[];
  const port = freePort();
  const apps = [startNamedApp("member-one"), startNamedApp("member-two")];
  const echo = startEchoService();

  beforeAll(async () => {
    redis = await startRedis();
    nodes = [
      await startClusterNode("127.0.0.1", redis.url, ["--node-name", "n1", "--grace", "1"]),
      await startClusterNode("127.0.0.2", redis.url, ["--node-name", "n2", "--grace", "1"]),
      await startClusterNode("127.0.0.3", redis.url, ["--node-name", "n3", "--grace", "1"]),
    ];
    members = [];
    for (const [i, app] of apps.entries()) {
      const pool = ["--http", `127.0.0.1:${app}`, "--subdomain", "api", "--expose", `127.0.0.1:${echo.port}`];
      members.push(
        await startClusterClient(
          [nodes[i] as ClusterNodeProcess],
          [...pool, "--port", String(port), "--pool"],
          2,
        ),
      );
    }
    // Every node sees the place, the member lease beside it, and its links up.
    await eventually(
      async () => {
        for (const node of nodes) {
          const h = await nodeHealth(node);
          if ((h.cluster.held as number) + (h.cluster.elsewhere as number) < 4) return false;
          const links = Object.values(h.cluster.links as Record<string, { up: boolean }>);
          if (links.length !== 2 || !links.every((link) => link.up)) return false;
        }
        return true;
      },
      15_000,
      "every node sees both members' leases and its links up",
    );
  }, 90_000);

  test("visitors through the node without a member are spread over both; each member node serves its own", async () => {
    const [n1, n2, n3] = nodes as [ClusterNodeProcess, ClusterNodeProcess, ClusterNodeProcess];
    const body = randomData(256);
    const seen = new Map<string, number>();
    for (let i = 0; i < 20; i++) {
      const visit = await visitName(n3, "api", body);
      expect(visit.status).toBe(200);
      const [who, hash] = visit.text.split(" ");
      expect(hash).toBe(sha256(body));
      seen.set(who as string, (seen.get(who as string) ?? 0) + 1);
    }
    expect(seen.get("member-one")).toBe(10);
    expect(seen.get("member-two")).toBe(10);
    expect((await visitName(n1, "api", body)).text).toStartWith("member-one ");
    expect((await visitName(n2, "api", body)).text).toStartWith("member-two ");
    // The TCP port too, through every node.
    const data = randomData(64 * 1024);
    for (const node of nodes) expect(await echoThrough(port, data, 10_000, node.ip)).toBe(sha256(data));
  });

  test("a member SIGKILLed: the place stays up, served by the other member through every node", async () => {
    members[0]?.kill("SIGKILL");
    const body = randomData(64);
    // After the lost member's grace (1 s) its node gives its lease back: visitors go to the other.
    await eventually(
      async () => {
        for (const node of nodes) {
          const visit = await visitName(node, "api", body).catch(() => undefined);
          if (visit?.status !== 200 || !visit.text.startsWith("member-two ")) return false;
        }
        return true;
      },
      20_000,
      "every node's visitors served by the member left",
    );
    for (let i = 0; i < 6; i++) {
      const visit = await visitName(nodes[i % 3] as ClusterNodeProcess, "api", body);
      expect(visit.text).toBe(`member-two ${sha256(body)}`);
    }
  });

  test("a client that asks without --pool is refused, naming the pool and its nodes", async () => {
    const result = await runToExit([
      "bun",
      "client.ts",
      "--server",
      (nodes[2] as ClusterNodeProcess).url,
      "--http",
      `127.0.0.1:${apps[0]}`,
      "--subdomain",
      "api",
    ]);
    expectOneLineError(
      result,
      /subdomain 'api' is served by a pool \(node n\d(, n\d)*\): ask with --pool to join it/,
      20_000,
    );
  });
});
