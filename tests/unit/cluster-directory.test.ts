/**
 * The cluster directory (shared/server/cluster/directory.ts) against a real redis-server: leases with fencing
 * epochs, takeover by claim, the cluster-wide user limit, release, expiry of a dead node's leases, the
 * local validity of holds(), the view (pub/sub + resync) across two "nodes" (two directories in this
 * process), and a Redis killed and restarted empty. No mocks; every wait is bounded.
 */

import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { RedisClient } from "bun";
import type { Logger } from "../../shared/log.ts";
import {
  ClusterDirectory,
  type DirectoryOptions,
  type LeaseKey,
  type LeaseRecord,
  type NodeInfo,
} from "../../shared/server/cluster/directory.ts";
import { cleanup, eventually } from "../support/processes.ts";
import { type RedisProcess, startRedis } from "../support/redis.ts";

setDefaultTimeout(15_000);
afterAll(cleanup);

/** Short leases keep the expiry tests quick (renewal every 400 ms). */
const LEASE_MS = 1200;

/** What one directory saw through its callbacks and its log. */
interface Node {
  dir: ClusterDirectory;
  lost: { key: LeaseKey; at: number }[];
  changes: { key: LeaseKey; record: LeaseRecord | undefined }[];
  nodeLists: NodeInfo[][];
  logs: string[];
}

let redis: RedisProcess;
/** A raw client to look into Redis. */
let raw: RedisClient;
const open: Node[] = [];

beforeAll(async () => {
  redis = await startRedis();
  raw = new RedisClient(redis.url, { enableOfflineQueue: false });
  await raw.connect();
});

afterAll(async () => {
  raw?.close();
});

afterEach(async () => {
  await Promise.all(open.splice(0).map((node) => node.dir.close()));
});

/** Opens a directory for node `name` on `url`, recording what it reports. */
async function openNode(name: string, url = redis.url, extra: Partial<DirectoryOptions> = {}): Promise<Node> {
  const logs: string[] = [];
  const log: Logger = {
    info: (m) => logs.push(m),
    warn: (m) => logs.push(`WARNING: ${m}`),
    error: (m) => logs.push(`error: ${m}`),
  };
  const node: Partial<Node> = { lost: [], changes: [], nodeLists: [], logs };
  node.dir = await ClusterDirectory.open({
    url,
    node: { name, url: `ws://${name}.test:7070` },
    leaseMs: LEASE_MS,
    log,
    onLost: (key) => node.lost?.push({ key, at: performance.now() }),
    onChange: (key, record) => node.changes?.push({ key, record }),
    onNodes: (nodes) => node.nodeLists?.push(nodes),
    ...extra,
  });
  open.push(node as Node);
  return node as Node;
}

/** A unique key per test, so tests sharing the Redis never meet. */
let counter = 0;
function key(prefix = "app"): LeaseKey {
  return `http:${prefix}-${++counter}`;
}

describe("leases", () => {
  test("a free key is acquired; a second node is refused and told who holds it", async () => {
    const a = await openNode("a");
    const b = await openNode("b");
    const k = key();
    const got = await a.dir.acquire(k, { owner: "owner-1", hostHeader: "app.internal" });
    expect(got).toEqual({ ok: true, epoch: expect.any(Number), tookOver: false });
    expect(a.dir.holds(k)).toBe(true);
    expect(a.dir.holder(k)).toMatchObject({ node: "a", owner: "owner-1", hostHeader: "app.internal" });
    const stored = JSON.parse((await raw.get(`sockets:lease:${k}`)) as string);
    expect(stored).toMatchObject({ node: "a", owner: "owner-1", epoch: (got as { epoch: number }).epoch });
    expect(await raw.send("PTTL", [`sockets:lease:${k}`])).toBeGreaterThan(0);

    const refused = await b.dir.acquire(k, { owner: "owner-2" });
    expect(refused).toMatchObject({ ok: false, code: "taken", holder: { node: "a", owner: "owner-1" } });
    expect(refused.ok ? "" : refused.message).toContain("node a");
    expect(b.dir.holds(k)).toBe(false);
    // The same owner on the same node again: idempotent, same epoch.
    expect(await a.dir.acquire(k, { owner: "owner-1" })).toEqual(got);
  });

  test("takeover with the owner's claim: a higher epoch, and the old holder loses it within a second", async () => {
    const a = await openNode("a");
    const b = await openNode("b");
    const k = key();
    const first = await a.dir.acquire(k, { owner: "old-owner" });
    if (!first.ok) throw new Error(first.message);
    // A wrong claim is refused.
    expect(await b.dir.acquire(k, { owner: "new-owner" }, "not-the-owner")).toMatchObject({
      ok: false,
      code: "taken",
    });
    const started = performance.now();
    const moved = await b.dir.acquire(k, { owner: "new-owner" }, "old-owner");
    expect(moved).toMatchObject({ ok: true, tookOver: true });
    expect(moved.ok && moved.epoch).toBeGreaterThan(first.epoch);
    expect(b.dir.holds(k)).toBe(true);
    await eventually(() => a.lost.length > 0, 2000, "onLost on the old holder");
    expect(a.lost[0]?.key).toBe(k);
    expect((a.lost[0]?.at ?? Infinity) - started).toBeLessThan(1000);
    expect(a.dir.holds(k)).toBe(false);
    expect(a.logs.join("\n")).toContain(`cluster: lost ${k} to node b`);
    expect(a.dir.holder(k)).toMatchObject({ node: "b", owner: "new-owner" });
    // The old holder's renewals leave the new lease alone.
    await Bun.sleep(LEASE_MS / 2);
    expect(JSON.parse((await raw.get(`sockets:lease:${k}`)) as string)).toMatchObject({ node: "b" });
  });

  test("a user's limit counts the leases of every node; a release frees one", async () => {
    const a = await openNode("a");
    const b = await openNode("b");
    const user = `user-${++counter}`;
    const [k1, k2, k3] = [key(), key(), key()];
    expect(await a.dir.acquire(k1, { owner: "o1", user }, undefined, 2)).toMatchObject({ ok: true });
    expect(await b.dir.acquire(k2, { owner: "o2", user }, undefined, 2)).toMatchObject({ ok: true });
    const over = await a.dir.acquire(k3, { owner: "o3", user }, undefined, 2);
    expect(over).toMatchObject({ ok: false, code: "limit" });
    expect(over.ok ? "" : over.message).toContain(user);
    // Another user is not counted against this one.
    expect(await a.dir.acquire(k3, { owner: "o3", user: "someone-else" }, undefined, 2)).toMatchObject({
      ok: true,
    });
    // A lease already counted is not counted twice (the same owner asks again).
    expect(await b.dir.acquire(k2, { owner: "o2", user }, undefined, 2)).toMatchObject({ ok: true });
    await b.dir.release(k2);
    expect(await raw.send("ZRANGE", [`sockets:user:${user}`, "0", "-1"])).toEqual([k1]);
    const k4 = key();
    expect(await a.dir.acquire(k4, { owner: "o4", user }, undefined, 2)).toMatchObject({ ok: true });
  });

  test("release frees the key at once, and every node's view follows", async () => {
    const a = await openNode("a");
    const b = await openNode("b");
    const k = key();
    expect(await a.dir.acquire(k, { owner: "o" })).toMatchObject({ ok: true });
    await eventually(() => b.dir.holder(k)?.node === "a", 2000, "b sees a's lease");
    await a.dir.release(k);
    expect(a.dir.holds(k)).toBe(false);
    expect(await raw.get(`sockets:lease:${k}`)).toBeNull();
    await eventually(() => b.dir.holder(k) === undefined, 2000, "b sees it released");
    expect(b.changes.some((c) => c.key === k && c.record === undefined)).toBe(true);
    expect(await b.dir.acquire(k, { owner: "other" })).toMatchObject({ ok: true });
    // Releasing what we do not hold (any more) is harmless.
    await a.dir.release(k);
    expect(b.dir.holds(k)).toBe(true);
  });

  test("a node that stopped renewing (killed) loses its leases after the lease time; another takes them", async () => {
    const a = await openNode("a");
    const b = await openNode("b");
    const k = key();
    expect(await a.dir.acquire(k, { owner: "o" })).toMatchObject({ ok: true });
    const crashed = performance.now();
    a.dir.crashForTest();
    expect(await b.dir.acquire(k, { owner: "p" })).toMatchObject({ ok: false, code: "taken" });
    let took = 0;
    await eventually(
      async () => {
        const result = await b.dir.acquire(k, { owner: "p" });
        took = performance.now();
        return result.ok;
      },
      LEASE_MS * 3,
      "b takes the expired lease",
    );
    expect(took - crashed).toBeGreaterThan(LEASE_MS * 0.5);
    // Its node registration expired too.
    await eventually(
      () => !b.dir.nodes().some((n) => n.name === "a"),
      LEASE_MS * 3,
      "a leaves b's node list",
    );
  });

  test("holds() turns false once the local validity ran out, even though Redis said nothing", async () => {
    const a = await openNode("a");
    const k = key();
    expect(await a.dir.acquire(k, { owner: "o" })).toMatchObject({ ok: true });
    a.dir.freezeForTest();
    const frozen = performance.now();
    expect(a.dir.holds(k)).toBe(true);
    await eventually(() => !a.dir.holds(k), LEASE_MS * 2, "holds() false");
    expect(performance.now() - frozen).toBeGreaterThan(LEASE_MS * 0.6);
    expect(a.lost).toEqual([]);
  });
});

describe("the view", () => {
  test("ports() and nodes() reflect both nodes; a node that closes leaves the others' lists", async () => {
    const a = await openNode("a");
    const b = await openNode("b");
    const portA = 40_000 + (++counter % 1000);
    const portB = portA + 1000;
    expect(await a.dir.acquire(`tcp:${portA}`, { owner: "oa" })).toMatchObject({ ok: true });
    expect(await b.dir.acquire(`tcp:${portB}`, { owner: "ob" })).toMatchObject({ ok: true });
    for (const node of [a, b]) {
      await eventually(
        () => node.dir.ports().get(portA)?.node === "a" && node.dir.ports().get(portB)?.node === "b",
        2000,
        "both ports in the view",
      );
      await eventually(() => node.dir.nodes().length === 2, 2000, "both nodes in the list");
      expect(node.dir.nodes().map(({ name, url }) => ({ name, url }))).toEqual([
        { name: "a", url: "ws://a.test:7070" },
        { name: "b", url: "ws://b.test:7070" },
      ]);
      // Each registration carries its process's instance id (what tells a restart from a name clash).
      expect(new Set(node.dir.nodes().map((n) => n.instance)).size).toBe(2);
    }
    expect(a.dir.stats()).toEqual({ node: "a", redis: "up", nodes: ["a", "b"], held: 1, elsewhere: 1 });
    expect(a.changes.some((c) => c.key === `tcp:${portB}` && c.record?.node === "b")).toBe(true);
    expect(a.dir.secret).toBe(b.dir.secret);
    expect(a.dir.secret).toBe((await raw.get("sockets:secret")) as string);
    await b.dir.close();
    await eventually(() => a.dir.nodes().length === 1, 2000, "b leaves a's list");
    expect(a.nodeLists.at(-1)?.map(({ name, url }) => ({ name, url }))).toEqual([
      { name: "a", url: "ws://a.test:7070" },
    ]);
    // Closing released b's port.
    await eventually(() => !a.dir.ports().has(portB), 2000, "b's port released");
  });

  test("open() rejects with one line when Redis cannot be reached", async () => {
    const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = listener.port;
    listener.stop(true);
    const started = performance.now();
    const error = await openNode("x", `redis://:hunter2@127.0.0.1:${port}`).catch((e: Error) => e);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toMatch(
      /^cluster: cannot use redis at redis:\/\/:\*\*\*@127\.0\.0\.1:\d+: /,
    );
    expect((error as Error).message).not.toContain("hunter2");
    expect((error as Error).message).not.toContain("\n");
    expect(performance.now() - started).toBeLessThan(5000);
  });
});

describe("Redis killed and restarted empty", () => {
  let own: RedisProcess;
  let ownRaw: RedisClient | undefined;
  beforeAll(async () => {
    own = await startRedis();
  });
  afterAll(() => ownRaw?.close());

  test("holds() stays true, acquire answers redis_down at once; afterwards everything is set again", async () => {
    const a = await openNode("a", own.url);
    const b = await openNode("b", own.url);
    const k: LeaseKey = "http:survivor";
    const first = await a.dir.acquire(k, { owner: "o", user: "u" });
    if (!first.ok) throw new Error(first.message);
    const secret = a.dir.secret;

    await own.kill();
    await eventually(() => !a.dir.redisUp && !b.dir.redisUp, 3000, "both see Redis down");
    expect(a.dir.stats().redis).toBe("down");
    const asked = performance.now();
    const refused = await a.dir.acquire("http:newcomer", { owner: "n" });
    expect(performance.now() - asked).toBeLessThan(1000);
    expect(refused).toMatchObject({ ok: false, code: "redis_down" });
    // Past the lease's validity: still served (availability first).
    await Bun.sleep(LEASE_MS * 1.5);
    expect(a.dir.holds(k)).toBe(true);
    // One line per transition, not one per tick.
    const lostLines = a.logs.filter((l) => l.includes("redis link lost"));
    expect(lostLines).toHaveLength(1);
    expect(lostLines[0]).toContain("live tunnels keep serving, new ones are refused");
    await a.dir.release("http:never-held"); // never throws, either way

    await own.restart();
    await eventually(() => a.dir.redisUp && b.dir.redisUp, 10_000, "both see Redis back");
    expect(a.logs.filter((l) => l.includes("cluster: redis link back"))).toHaveLength(1);
    expect(a.dir.holds(k)).toBe(true);
    ownRaw = new RedisClient(own.url, { enableOfflineQueue: false });
    await ownRaw.connect();
    const check = ownRaw;
    // Its lease set again with its epoch, the epoch counter no lower, its user counted, both nodes registered.
    await eventually(async () => (await check.get(`sockets:lease:${k}`)) !== null, 3000, "lease set again");
    expect(JSON.parse((await check.get(`sockets:lease:${k}`)) as string)).toMatchObject({
      node: "a",
      epoch: first.epoch,
      user: "u",
    });
    expect(Number(await check.get("sockets:epoch"))).toBeGreaterThanOrEqual(first.epoch);
    expect(await check.send("ZRANGE", ["sockets:user:u", "0", "-1"])).toEqual([k]);
    await eventually(
      async () => (await check.send("ZRANGE", ["sockets:nodes", "0", "-1"])).length === 2,
      3000,
      "both nodes registered again",
    );
    expect(await check.get("sockets:secret")).toBe(secret);
    // Both subscribed again.
    await eventually(
      async () => ((await check.send("PUBSUB", ["NUMSUB", "sockets:changes"])) as [string, number])[1] === 2,
      3000,
      "both subscribed again",
    );
    // A change published from now on is seen at once (pub/sub), well before a resync would.
    b.dir.freezeForTest(); // no resync on b: only pub/sub can tell it
    const other: LeaseKey = "http:after-restart";
    expect(await a.dir.acquire(other, { owner: "p" })).toMatchObject({ ok: true });
    await eventually(() => b.dir.holder(other)?.node === "a", 1000, "b sees the new lease");
    // A newer lease than anything before the restart: the fencing epoch kept growing.
    expect((a.dir.holder(other)?.epoch ?? 0) > first.epoch).toBe(true);
  }, 25_000);
});
