/**
 * The namespace alone (shared/server/namespace): placement rules, grace reservations, pools and
 * cluster leases, with holders that stand in for sessions and a cluster that stands in for Redis.
 * HTTP places need no socket, so every case here but the TCP refusals and the UDP places opens none.
 */

import { describe, expect, test } from "bun:test";
import type { udp } from "bun";
import { Mux } from "../../shared/relay/mux.ts";
import type { ClusterNode, LeaseRequest } from "../../shared/server/cluster/node.ts";
import {
  Namespace,
  type NamespaceSettings,
  type Refusal,
  type Tunnel,
  type TunnelHolder,
} from "../../shared/server/namespace/namespace.ts";
import { newUdpCounters, type UdpPort, UdpSessionFlows } from "../../shared/server/udp-port.ts";
import { Account } from "../../shared/server/users.ts";
import { decodeFrame, type Frame, forEachInBatch } from "../../shared/wire/codec.ts";
import { DEFAULTS, type ExposeRequest, FrameType } from "../../shared/wire/protocol.ts";

const log = { info() {}, warn() {}, error() {} };

/** A session as the namespace sees it: live or reserved, opening a fake stream per visitor. */
class FakeHolder implements TunnelHolder {
  live = true;
  reserved = false;
  graceEnds = 0;
  opened: Tunnel[] = [];
  lost: Tunnel[] = [];
  constructor(
    readonly owner: string,
    readonly account?: Account,
  ) {}
  openVisitor(tunnel: Tunnel) {
    this.opened.push(tunnel);
    const stream = { id: this.opened.length } as never;
    tunnel.visitors.add(stream);
    return stream;
  }
  lose(tunnel: Tunnel) {
    this.lost.push(tunnel);
  }
}

function namespace(settings: Partial<NamespaceSettings> = {}) {
  const ns = new Namespace(
    { host: "127.0.0.1", domain: "example.test", maxTunnelsPerClient: 4, ...settings },
    log,
  );
  ns.bind({ httpPort: 8080, https: false, ownPorts: [7070, 8080] });
  return ns;
}

const http = (subdomain?: string, more: Partial<ExposeRequest> = {}): ExposeRequest => ({
  type: "expose",
  id: 1,
  kind: "http",
  ...(subdomain === undefined ? {} : { subdomain }),
  ...more,
});

function claimed(result: Tunnel | Refusal | Promise<Tunnel | Refusal>): Tunnel {
  if (result instanceof Promise || "code" in result)
    throw new Error(`expected a tunnel: ${JSON.stringify(result)}`);
  return result;
}
function refused(result: Tunnel | Refusal | Promise<Tunnel | Refusal>): Refusal {
  if (result instanceof Promise || !("code" in result)) throw new Error("expected a refusal");
  return result;
}
const socket = (ip = "127.0.0.1") => ({ remoteAddress: ip, remotePort: 40000 }) as never;

describe("placement rules", () => {
  test("an HTTP name: held, with its URL; the same name for another session is taken", () => {
    const ns = namespace();
    const tunnel = claimed(ns.claim(new FakeHolder("a"), http("app"), 1, 0));
    expect(tunnel.url).toBe("http://app.example.test:8080");
    expect(ns.holding("http:app")).toMatchObject({ state: "held", tunnel });
    expect(refused(ns.claim(new FakeHolder("b"), http("app"), 1, 0))).toEqual({
      code: "subdomain_taken",
      message: "subdomain 'app' is taken",
    });
  });

  test("no HTTP port, a name that is no DNS label, the client's and the user's tunnel limits", () => {
    const bare = new Namespace({ host: "127.0.0.1", domain: "d", maxTunnelsPerClient: 1 }, log);
    expect(refused(bare.claim(new FakeHolder("a"), http("x"), 1, 0)).code).toBe("no_http");
    const ns = namespace({ maxTunnelsPerClient: 1 });
    expect(refused(ns.claim(new FakeHolder("a"), http("Not_A_Label"), 1, 0)).code).toBe("bad_subdomain");
    expect(refused(ns.claim(new FakeHolder("a"), http("x"), 1, 1)).message).toMatch(/at most 1 tunnels/);
    const alice = new Account("alice", "0".repeat(64), { maxTunnels: 1, subdomains: ["alice-*"] });
    claimed(namespace().claim(new FakeHolder("a", alice), http("alice-1"), 1, 0));
    expect(alice.tunnels).toBe(1);
    expect(refused(namespace().claim(new FakeHolder("a", alice), http("alice-2"), 2, 0)).message).toMatch(
      /user alice may hold at most 1 tunnels/,
    );
    alice.tunnels = 0;
    expect(refused(namespace().claim(new FakeHolder("a", alice), http("bob-1"), 2, 0)).message).toMatch(
      /not allowed for user alice \(allowed: alice-\*\)/,
    );
  });

  test("TCP: a privileged port without --tcp-ports, a port outside the range, a user's own ranges", () => {
    const ns = namespace({ tcpPorts: { min: 40000, max: 40010 } });
    const tcp = (port: number, account?: Account) =>
      refused(ns.claim(new FakeHolder("a", account), { type: "expose", id: 1, kind: "tcp", port }, 1, 0));
    expect(tcp(50000).message).toMatch(/outside the server's range 40000-40010/);
    const bob = new Account("bob", "0".repeat(64), { tcpPorts: [{ min: 40005, max: 40006 }] });
    expect(tcp(40001, bob).message).toMatch(/outside user bob's ports 40005-40006/);
    const open = namespace();
    expect(
      refused(open.claim(new FakeHolder("a"), { type: "expose", id: 1, kind: "tcp", port: 80 }, 1, 0))
        .message,
    ).toMatch(/privileged/);
  });

  test("a tunnel id asked for is kept unless another holds it; released ids are free again", () => {
    const ns = namespace();
    const first = claimed(ns.claim(new FakeHolder("a"), http("one", { tunnel: "kept-id" }), 1, 0));
    expect(first.id).toBe("kept-id");
    const second = claimed(ns.claim(new FakeHolder("b"), http("two", { tunnel: "kept-id" }), 1, 0));
    expect(second.id).not.toBe("kept-id");
    ns.release(first, true);
    expect(ns.tunnelIds.has("kept-id")).toBe(false);
    expect(ns.holding("http:one")).toEqual({ state: "free" });
  });
});

describe("grace", () => {
  test("a reserved holder's name is refused with the time left, and its visitors get 502 at once", () => {
    const ns = namespace();
    const holder = new FakeHolder("a");
    claimed(ns.claim(holder, http("kept"), 1, 0));
    holder.live = false;
    holder.reserved = true;
    holder.graceEnds = Date.now() + 30_000;
    expect(ns.holding("http:kept")).toMatchObject({ state: "reserved", until: holder.graceEnds });
    const refusal = refused(ns.claim(new FakeHolder("b"), http("kept"), 1, 0));
    expect(refusal.code).toBe("subdomain_taken");
    expect(refusal.message).toMatch(/reserved for a dropped client's session for up to 30 s more/);
    expect(ns.routeHttp("kept")?.open(socket())).toEqual({
      status: 502,
      message: "the tunnel's client is offline; try again shortly",
    });
    // Resumed: visitors reach it again.
    holder.live = true;
    holder.reserved = false;
    expect(ns.routeHttp("kept")?.open(socket())).toEqual({ id: 1 } as never);
  });
});

describe("pools", () => {
  test("members of one user with --pool share the name: least open visitors first, ties in turn", () => {
    const ns = namespace();
    const holders = [new FakeHolder("a"), new FakeHolder("b"), new FakeHolder("c")];
    const tunnels = holders.map((h, i) => claimed(ns.claim(h, http("api", { pool: true }), i + 1, 0)));
    expect(ns.holding("http:api")).toMatchObject({ state: "pooled", tunnels });
    const route = ns.routeHttp("api");
    for (let i = 0; i < 300; i++) route?.open(socket());
    expect(holders.map((h) => h.opened.length)).toEqual([100, 100, 100]);
    // One member's visitors leave: it gets the next ones until it is level again.
    tunnels[1]?.visitors.clear();
    for (let i = 0; i < 5; i++) route?.open(socket());
    expect(holders[1]?.opened.length).toBe(105);
    expect(ns.pools()).toEqual([{ key: "http:api", members: tunnels }]);
  });

  test("a member that leaves takes only itself; the name stays while one is left; away members are skipped", () => {
    const ns = namespace();
    const [a, b] = [new FakeHolder("a"), new FakeHolder("b")];
    const ta = claimed(ns.claim(a, http("api", { pool: true }), 1, 0));
    claimed(ns.claim(b, http("api", { pool: true }), 1, 0));
    a.live = false;
    for (let i = 0; i < 4; i++) ns.routeHttp("api")?.open(socket());
    expect([a.opened.length, b.opened.length]).toEqual([0, 4]);
    ns.release(ta, true);
    expect(ns.holding("http:api")).toMatchObject({ state: "pooled" });
    expect(ns.routeHttp("api")).toBeDefined();
  });

  test("joining is refused with the rule named: no --pool, another user's pool, a held name without --pool", () => {
    const alice = new Account("alice", "0".repeat(64), {});
    const bob = new Account("bob", "1".repeat(64), {});
    const ns = namespace();
    claimed(ns.claim(new FakeHolder("a", alice), http("api", { pool: true }), 1, 0));
    expect(refused(ns.claim(new FakeHolder("b", alice), http("api"), 1, 0)).message).toMatch(
      /served by a pool: ask with --pool/,
    );
    expect(refused(ns.claim(new FakeHolder("c", bob), http("api", { pool: true }), 1, 0)).message).toMatch(
      /held by another user; pools are per user/,
    );
    claimed(ns.claim(new FakeHolder("d", alice), http("solo"), 1, 0));
    expect(refused(ns.claim(new FakeHolder("e", alice), http("solo", { pool: true }), 1, 0)).message).toMatch(
      /taken by a tunnel without --pool/,
    );
  });
});

describe("allow and deny lists", () => {
  const only = (allowed: string) => ({ permits: (ip: string) => ip === allowed });

  test("a tunnel's own list, and the operator's list for the user, refuse with 403 before any stream", () => {
    const refusals: string[] = [];
    const alice = new Account("alice", "0".repeat(64), {});
    const ns = namespace({
      tunnelFilter: (request) => (request.allow ? only(request.allow[0] as string) : undefined),
      operatorRefuses: (account, ip) => account === alice && ip === "127.0.0.3",
    });
    ns.onRefused = (reason) => refusals.push(reason);
    const holder = new FakeHolder("a", alice);
    claimed(ns.claim(holder, http("guarded", { allow: ["127.0.0.3"] }), 1, 0));
    // The tunnel allows .3 only; the operator denies .3 for alice: nobody gets through.
    for (const ip of ["127.0.0.1", "127.0.0.3"])
      expect(ns.routeHttp("guarded")?.open(socket(ip))).toMatchObject({ status: 403 });
    expect(holder.opened).toEqual([]);
    expect(refusals).toEqual(["denied", "denied"]);
  });
});

describe("cluster leases", () => {
  /** Redis as one map: a key is leased by the first owner to ask, until released. */
  function fakeCluster() {
    const leases = new Map<string, string>();
    let held = true;
    const cluster = {
      name: "n1",
      directory: { holder: (key: string) => (leases.has(key) && !held ? { node: "n2" } : undefined) },
      async acquire(key: string, request: LeaseRequest) {
        const owner = leases.get(key);
        if (owner !== undefined && owner !== request.owner)
          return {
            code: "subdomain_taken",
            message: `subdomain '${key.slice(5)}' is taken (held by node n2)`,
          };
        leases.set(key, request.owner);
        return null;
      },
      release: (key: string) => leases.delete(key),
      holds: (key: string) => held && leases.has(key),
      remoteRoute: () => undefined,
      poolOf: () => undefined,
      memberKey: (key: string) => `${key}~n1`,
      unmirror() {},
      forwardTcp: () => false,
    };
    return { cluster: cluster as unknown as ClusterNode, leases, lapse: () => (held = false) };
  }

  test("a name is leased before it goes live; a name leased elsewhere is refused; release gives it back", async () => {
    const ns = namespace();
    const { cluster, leases } = fakeCluster();
    ns.join(cluster);
    leases.set("http:theirs", "someone-else");
    const pending = ns.claim(new FakeHolder("a"), http("mine"), 1, 0);
    expect(pending).toBeInstanceOf(Promise);
    const tunnel = (await pending) as Tunnel;
    expect(leases.get("http:mine")).toBe("a");
    const refusal = (await ns.claim(new FakeHolder("b"), http("theirs"), 1, 0)) as Refusal;
    expect(refusal.message).toMatch(/held by node n2/);
    ns.release(tunnel, true);
    expect(leases.has("http:mine")).toBe(false);
  });

  test("a lapsed lease is not served here (held by node X); a lost lease drops every member", async () => {
    const ns = namespace();
    const { cluster, lapse } = fakeCluster();
    ns.join(cluster);
    const holder = new FakeHolder("a");
    const tunnel = (await ns.claim(holder, http("moving"), 1, 0)) as Tunnel;
    lapse();
    expect(ns.holding("http:moving")).toEqual({ state: "remote", node: "n2" });
    expect(ns.routeHttp("moving")).toBeUndefined();
    ns.leaseLost("http:moving");
    expect(holder.lost).toEqual([tunnel]);
  });
});

describe("UDP places", () => {
  /** A holder whose session carries UDP flows over a real mux; the frames it sends are decoded here. */
  class UdpHolder extends FakeHolder {
    readonly frames: Frame[] = [];
    private flows?: UdpSessionFlows;
    udpFlows(): UdpSessionFlows {
      const keep = (message: Uint8Array) => {
        const take = (bytes: Uint8Array) => {
          const frame = decodeFrame(bytes.slice(), DEFAULTS.maxFramePayload);
          this.frames.push(frame);
        };
        if (message[0] === FrameType.Batch) forEachInBatch(message, take);
        else take(message);
      };
      this.flows ??= new UdpSessionFlows(
        new Mux(keep, { window: DEFAULTS.window, maxFramePayload: DEFAULTS.maxFramePayload }),
        () => 0,
        newUdpCounters(),
      );
      return this.flows;
    }
    opens(): number {
      return this.frames.filter((f) => f.type === FrameType.FlowOpen).length;
    }
  }
  const udp = (port?: number, more: Partial<ExposeRequest> = {}): ExposeRequest => ({
    type: "expose",
    id: 1,
    kind: "udp",
    ...(port === undefined ? {} : { port }),
    ...more,
  });
  async function placed(result: Tunnel | Refusal | Promise<Tunnel | Refusal>): Promise<Tunnel> {
    const tunnel = await result;
    if ("code" in tunnel) throw new Error(`expected a tunnel: ${JSON.stringify(tunnel)}`);
    return tunnel;
  }
  async function refusedUdp(result: Tunnel | Refusal | Promise<Tunnel | Refusal>): Promise<Refusal> {
    const refusal = await result;
    if (!("code" in refusal)) throw new Error("expected a refusal");
    return refusal;
  }
  /** Sends one datagram from each of `senders` to `port` and waits until `until` holds (2 s at most). */
  async function send(senders: udp.Socket<"buffer">[], port: number, until: () => boolean): Promise<void> {
    for (const s of senders) s.send(new Uint8Array([1, 2, 3]), port, "127.0.0.1");
    const deadline = Date.now() + 2000;
    while (!until() && Date.now() < deadline) await Bun.sleep(5);
  }
  const sockets = (n: number) =>
    Promise.all(Array.from({ length: n }, () => Bun.udpSocket({ hostname: "127.0.0.1", port: 0 })));

  test("the TCP ports' rules: privileged without --tcp-ports, outside the range, taken, reserved for a dropped session", async () => {
    const ns = namespace({ tcpPorts: { min: 40000, max: 40010 } });
    expect((await refusedUdp(ns.claim(new UdpHolder("a"), udp(50000), 1, 0))).message).toMatch(
      /outside the server's range 40000-40010/,
    );
    expect((await refusedUdp(namespace().claim(new UdpHolder("a"), udp(53), 1, 0))).message).toMatch(
      /privileged/,
    );
    const open = namespace();
    const holder = new UdpHolder("a");
    const tunnel = await placed(open.claim(holder, udp(), 1, 0));
    expect(tunnel.url).toBe(`udp://example.test:${tunnel.port}`);
    expect(open.holding(`udp:${tunnel.port}`)).toMatchObject({ state: "held", tunnel });
    expect(await refusedUdp(open.claim(new UdpHolder("b"), udp(tunnel.port), 1, 0))).toEqual({
      code: "port_taken",
      message: `port ${tunnel.port}/udp is already in use on the server`,
    });
    holder.live = false;
    holder.reserved = true;
    holder.graceEnds = Date.now() + 20_000;
    expect((await refusedUdp(open.claim(new UdpHolder("b"), udp(tunnel.port), 1, 0))).message).toMatch(
      /is reserved for a dropped client's session for up to 20 s more/,
    );
    open.release(tunnel, true);
    expect(open.holding(`udp:${tunnel.port}`)).toEqual({ state: "free" });
  });

  test("a pool shares the socket: new flows go to its members in turn; a member that leaves takes its flows only", async () => {
    const ns = namespace();
    const [a, b] = [new UdpHolder("a"), new UdpHolder("b")];
    const ta = await placed(ns.claim(a, udp(undefined, { pool: true }), 1, 0));
    const tb = await placed(ns.claim(b, udp(ta.port, { pool: true }), 1, 0));
    expect(tb.udp).toBe(ta.udp as UdpPort);
    const senders = await sockets(4);
    await send(senders, ta.port, () => a.opens() + b.opens() === 4);
    expect([a.opens(), b.opens()]).toEqual([2, 2]);
    ns.release(ta, true);
    expect(ta.udp?.flowCount).toBe(2);
    for (const s of senders) s.close();
    ns.release(tb, true);
  });

  test("a reload's --udp-max-flows applies to a UDP port already open", async () => {
    const base = { host: "127.0.0.1", domain: "example.test", maxTunnelsPerClient: 4 };
    const ns = namespace();
    const holder = new UdpHolder("a");
    const tunnel = await placed(ns.claim(holder, udp(), 1, 0));
    const port = tunnel.udp as UdpPort;
    ns.reconfigure({ ...base, udp: { idleMs: 60_000, maxFlows: 1 } });
    const senders = await sockets(2);
    await send(senders, tunnel.port, () => holder.opens() === 2);
    expect(port.flowCount).toBe(1);
    expect(port.counters.evicted).toBe(1);
    for (const s of senders) s.close();
    ns.release(tunnel, true);
  });

  test("allow and deny lists and an away client: datagrams dropped and counted, no flow opened", async () => {
    const ns = namespace({ tunnelFilter: () => ({ permits: (ip) => ip !== "127.0.0.1" }) });
    const holder = new UdpHolder("a");
    const tunnel = await placed(ns.claim(holder, udp(), 1, 0));
    const [s] = await sockets(1);
    const port = tunnel.udp as UdpPort;
    await send([s as udp.Socket<"buffer">], tunnel.port, () => port.counters.drops.denied === 1);
    expect(port.counters.drops.denied).toBe(1);
    const open = namespace();
    const away = new UdpHolder("b");
    const other = await placed(open.claim(away, udp(), 1, 0));
    away.live = false;
    const otherPort = other.udp as UdpPort;
    await send([s as udp.Socket<"buffer">], other.port, () => otherPort.counters.drops.offline === 1);
    expect(otherPort.counters.drops.offline).toBe(1);
    expect(holder.opens() + away.opens()).toBe(0);
    s?.close();
    ns.release(tunnel, true);
    open.release(other, true);
  });
});
