/**
 * Failover at the default timings (issue 29, item 2): a client given two nodes holds its name on the
 * first; its node is then killed (SIGKILL), frozen (SIGSTOP), or cut off from Redis (a TCP proxy the
 * test controls, between that node and Redis, stops passing bytes). A visitor asks for the name through
 * the other node every 100 ms; the longest gap between two answers from the client's app through the
 * other node, from the fault until the client moved and was answered again, is measured, and asserted loosely (under 10 s: lease 5 s + 1 s is the aim).
 * No `--cluster-lease`, no `--heartbeat`: what an operator gets without tuning.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  type ClusterNodeProcess,
  startClusterClient,
  startClusterNode,
  startNamedApp,
  startTcpProxy,
  visitName,
} from "../support/cluster.ts";
import { sha256 } from "../support/hashing.ts";
import { deferContinue, eventually, setupFile } from "../support/processes.ts";
import { type RedisProcess, startRedis } from "../support/redis.ts";

setupFile();

let redis: RedisProcess;
let steady: ClusterNodeProcess;
const gaps: Record<string, string> = {};

beforeAll(async () => {
  redis = await startRedis();
  steady = await startClusterNode("127.0.0.2", redis.url);
  deferContinue(steady);
}, 30_000);

afterAll(() => {
  if (process.env.CLUSTER_DEBUG) console.log(gaps);
});

/**
 * Starts a node on 127.0.0.1 (Redis at `redisUrl`), a client on it and `steady`, and a prober through
 * `steady`; applies `fault` to the node; resolves with the gap in ms and what the prober saw meanwhile.
 */
async function measure(
  name: string,
  fault: (node: ClusterNodeProcess) => void,
  redisUrl = redis.url,
): Promise<{ gapMs: number; seen: Record<string, number> }> {
  const node = await startClusterNode("127.0.0.1", redisUrl);
  deferContinue(node);
  const app = startNamedApp(name);
  const client = await startClusterClient(
    [node, steady],
    ["--http", `127.0.0.1:${app}`, "--subdomain", name],
    1,
    [],
  );
  const body = new Uint8Array(16);
  const expected = `${name} ${sha256(body)}`;
  await eventually(
    async () => (await visitName(steady, name, body).catch(() => ({ text: "" }))).text === expected,
    10_000,
    `${name} served through the other node`,
  );
  fault(node);
  const faultAt = performance.now();
  const seen: Record<string, number> = {};
  // The gap: the longest time between two answers from the app (the fault counting as one), over the
  // probes until the client moved and was answered through its new node. Bounded: 20 s of probes.
  let gapMs = 0;
  let lastOk = faultAt;
  let movedAndServed = false;
  while (!movedAndServed && performance.now() - faultAt < 20_000) {
    const moved = /moved to server/.test(client.stdout() + client.stderr());
    const answer = await visitName(steady, name, body, 2000).catch((error: Error) => ({
      status: 0,
      text: error.message,
    }));
    const now = performance.now();
    if (answer.status === 200 && answer.text === expected) {
      gapMs = Math.max(gapMs, now - lastOk);
      lastOk = now;
      movedAndServed = moved;
    } else {
      const label = answer.status === 0 ? "no answer" : String(answer.status);
      seen[label] = (seen[label] ?? 0) + 1;
    }
    await Bun.sleep(100);
  }
  if (!movedAndServed) gapMs = Math.max(gapMs, performance.now() - lastOk);
  gaps[name] = `${(gapMs / 1000).toFixed(2)} s ${JSON.stringify(seen)}`;
  if (process.env.CLUSTER_DEBUG) console.log(`${name}: ${gaps[name]}\n${client.stdout()}${client.stderr()}`);
  client.kill("SIGKILL");
  return { gapMs, seen };
}

describe("failover at the default timings", () => {
  test("the client's node SIGKILLed: served through the other node within seconds", async () => {
    const { gapMs } = await measure("killed", (node) => node.kill("SIGKILL"));
    expect(gapMs).toBeGreaterThan(0);
    expect(gapMs).toBeLessThan(10_000);
  }, 60_000);

  test("the client's node frozen (SIGSTOP): its client moves, served through the other node within the lease and a second or so", async () => {
    let frozen: ClusterNodeProcess | undefined;
    const { gapMs } = await measure("frozen", (node) => {
      frozen = node;
      node.kill("SIGSTOP");
    });
    frozen?.kill("SIGCONT");
    expect(gapMs).toBeGreaterThan(0);
    expect(gapMs).toBeLessThan(10_000);
  }, 60_000);

  test("the client's node cut off from Redis: its client moves, served through the other node", async () => {
    const proxy = startTcpProxy(redis.port);
    const { gapMs } = await measure("partitioned", () => proxy.cut(), `redis://127.0.0.1:${proxy.port}`);
    proxy.heal();
    expect(gapMs).toBeGreaterThan(0);
    expect(gapMs).toBeLessThan(10_000);
  }, 60_000);
});

describe("visitors while a route is not ready", () => {
  test("a node that just joined: its first visitors wait for its link to the holder instead of a 502", async () => {
    const app = startNamedApp("early");
    const client = await startClusterClient(
      [steady],
      ["--http", `127.0.0.1:${app}`, "--subdomain", "early"],
      1,
    );
    const body = new Uint8Array(8);
    const fresh = await startClusterNode("127.0.0.3", redis.url);
    deferContinue(fresh);
    // At once after it joined: its link to the holder is still being dialled.
    const answers = await Promise.all(
      Array.from({ length: 5 }, () => visitName(fresh, "early", body, 8000).catch((e: Error) => e.message)),
    );
    for (const answer of answers) expect(answer).toEqual({ status: 200, text: `early ${sha256(body)}` });
    client.kill("SIGKILL");
    fresh.kill("SIGKILL");
  }, 60_000);

  test("a name whose node died with its client: 503 with Retry-After while a move is possible, never a hang", async () => {
    const node = await startClusterNode("127.0.0.1", redis.url);
    deferContinue(node);
    const app = startNamedApp("orphan");
    const client = await startClusterClient(
      [node],
      ["--http", `127.0.0.1:${app}`, "--subdomain", "orphan"],
      1,
    );
    const body = new Uint8Array(8);
    await eventually(
      async () => (await visitName(steady, "orphan", body).catch(() => ({ status: 0 }))).status === 200,
      10_000,
      "orphan served through the steady node",
    );
    client.kill("SIGKILL");
    node.kill("SIGKILL");
    // Once its lease is gone (5 s), the name is moving for a while: visitors wait, then 503 + Retry-After.
    const deadline = performance.now() + 20_000;
    let answer: Awaited<ReturnType<typeof visitName>> | undefined;
    while (performance.now() < deadline) {
      // A visitor already carried over the link when the node died is lost with it (a reset).
      answer = await visitName(steady, "orphan", body, 8000).catch(() => ({ status: 0, text: "reset" }));
      if (answer.status === 503) break;
      expect([0, 502]).toContain(answer.status);
      await Bun.sleep(200);
    }
    expect(answer?.status).toBe(503);
    expect(answer?.retryAfter).toBe("2");
  }, 60_000);
});
