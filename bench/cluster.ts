/**
 * The cluster section of `bun run bench` (`--measures cluster`, issue 20), also runnable alone
 * (`bun bench/cluster.ts [--quick] [--repeat N] [--json FILE]`). In one run, on one cluster:
 *
 * 1. **The extra hop.** One tunnel, its client connected to node B (n2, 127.0.0.2). The same load from
 *    the same visitor reaches it through node A (n1, 127.0.0.1: A's mirror of the port, the A→B node
 *    link, B's session to the client) and straight at node B (127.0.0.2, B's own listener): bulk up
 *    and down on one connection (sizes checked by the service and the generator), 64-byte ping-pong
 *    p50/p99, connections/s (connect + 64-byte echo + close), and a sha256 echo of random bytes through
 *    each path. Each figure alternates the two paths run by run; the report gives via A ÷ direct at B.
 * 2. **Two nodes against one.** Two tunnels streaming at once, each visitor with its own generator:
 *    one client on n1 and one on n2, each visitor at its client's node, against two clients both on n1
 *    (visitors at n1). Aggregate MB/s up and down on this machine's two cores.
 *
 * Processes: a real `redis-server` (`apt-get install redis-server`; without it the section is skipped
 * with a note), two `bun server.ts --cluster` nodes, three `bun client.ts` (one on n2, two on n1), the
 * C service and load generator of the TCP section (bench/native). The load generator dials 127.0.0.1
 * only; a visitor at 127.0.0.2 runs it with a small LD_PRELOAD (built here into bench/.build) that
 * rewrites its connect() from 127.0.0.1 to that address, port unchanged. Before measuring, each path is
 * checked to go where it claims (node A's link to B carries the held connections on the path via A, none
 * on the direct one). All traffic on loopback; ports bound as 0 and read back (Redis: a free port picked
 * and retried); every process in its own group, stopped by PID on success, failure and SIGINT.
 * @module
 */

import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, release, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  bulk,
  connRate,
  FULL,
  integrity,
  latency,
  type Params,
  QUICK,
  type Sample,
  type Target,
} from "./measure.ts";
import { buildNative, ROOT } from "./native.ts";
import { atExit, freePort, killAll, type Proc, run, spawn, waitForPort } from "./procs.ts";
import type { TunnelProcess } from "./providers.ts";
import { boundBy, isQuiet, othersPct } from "./report.ts";

/** Sizes and counts of the section: the TCP section's, plus the streams per visitor of the aggregate. */
export interface ClusterParams extends Params {
  /** Connections per visitor in the two-against-one aggregate. */
  aggregateConns: number;
}

/** Full run: 256 MiB each way, 20,000 pings, 2,000 connections; 5 quiet runs per figure. */
export const CLUSTER_FULL: ClusterParams = { ...FULL, bulkBytes: 256 * 1024 ** 2, aggregateConns: 2 };

/** `--quick`: the same bulk size (a few hundred MiB is the point), fewer pings and connections, 1 run. */
export const CLUSTER_QUICK: ClusterParams = { ...QUICK, bulkBytes: 256 * 1024 ** 2, aggregateConns: 2 };

/** The two paths of the hop comparison. */
export const HOP_PATHS = ["via", "direct"] as const;

/** `via`: visitor at node A, client at node B; `direct`: the same visitor at node B. */
export type HopPath = (typeof HOP_PATHS)[number];

/** The figures of the hop comparison, in the order they run. */
export const HOP_MEASURES = ["up", "down", "latency", "connrate"] as const;

/** A figure of the hop comparison. */
export type HopMeasure = (typeof HOP_MEASURES)[number];

/** The two layouts of the aggregate. */
export const LAYOUTS = ["one", "two"] as const;

/** `one`: both clients on n1, visitors at n1; `two`: a client on each node, each visitor at its own. */
export type Layout = (typeof LAYOUTS)[number];

/** One aggregate run: the two visitors' samples, and the total. */
export interface AggregateSample {
  /** The first visitor's sample, with every tunnel process's CPU and the second generator's added. */
  sample: Sample;
  /** MB/s of each visitor. */
  each: [number, number];
  /** Both visitors' bytes over the longer of their two times, MB/s. */
  total: number;
}

/** Everything the section measured. */
export interface ClusterResult {
  params: ClusterParams;
  code: string;
  machine: string;
  /** measure → path → the median quiet run. */
  hop: Partial<Record<HopMeasure, Partial<Record<HopPath, Sample>>>>;
  /** path → the integrity run. */
  integrity: Partial<Record<HopPath, Sample>>;
  /** direction → layout → the median quiet run. */
  aggregate: Partial<Record<"up" | "down", Partial<Record<Layout, AggregateSample>>>>;
  /** What failed or was skipped, in words. */
  notes: string[];
  elapsedSeconds: number;
}

/** Options of {@link runCluster}. */
export interface ClusterOptions {
  params: ClusterParams;
  log: (line: string) => void;
}

const BUILD = join(import.meta.dir, ".build");
const REDIS_SERVER = Bun.which("redis-server") ?? "/usr/bin/redis-server";

/** The LD_PRELOAD for visitors at another loopback address: the C load generator only dials 127.0.0.1. */
const CONNECT_TO_SOURCE = `/* Built by bench/cluster.ts: connect() to 127.0.0.1 goes to $BENCH_CONNECT_ADDR instead (same port). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  static int (*real)(int, const struct sockaddr *, socklen_t);
  if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
  const char *to = getenv("BENCH_CONNECT_ADDR");
  if (to && addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    struct sockaddr_in a = *(const struct sockaddr_in *)addr;
    if (a.sin_addr.s_addr == htonl(INADDR_LOOPBACK) && inet_pton(AF_INET, to, &a.sin_addr) == 1)
      return real(fd, (const struct sockaddr *)&a, sizeof a);
  }
  return real(fd, addr, len);
}
`;

/** Builds the connect() preload into bench/.build when its source changed. */
export async function buildConnectTo(): Promise<string> {
  mkdirSync(BUILD, { recursive: true });
  const source = join(BUILD, "connectto.c");
  const lib = join(BUILD, "connectto.so");
  const current = existsSync(source) ? readFileSync(source, "utf8") : "";
  if (current !== CONNECT_TO_SOURCE || !existsSync(lib)) {
    writeFileSync(source, CONNECT_TO_SOURCE);
    const r = await run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", lib, source, "-ldl"], 60_000);
    if (r.code !== 0) throw new Error(`gcc connectto.c failed: ${r.stderr.trim()}`);
  }
  return lib;
}

/** A node of the bench's cluster. */
export interface Node {
  name: string;
  ip: string;
  proc: Proc;
  /** Its control port's URL (ws://IP:PORT). */
  url: string;
}

/** A client and the public port of its one TCP tunnel. */
export interface Client {
  name: string;
  node: Node;
  proc: Proc;
  port: number;
}

/** Environment that keeps the operator's own sockets settings out of the bench's processes. */
const CLEAN_ENV = {
  SOCKETS_SINGLE_API_KEY: "",
  SOCKETS_API_KEY: "",
  SOCKETS_SERVER: "",
  SOCKETS_CLUSTER: "",
};

/** Starts redis-server on a free port (retried if another process takes it first), no persistence. */
export async function startRedis(dir: string): Promise<{ proc: Proc; url: string }> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = freePort();
    const proc = spawn([
      REDIS_SERVER,
      ...["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      ...["--dir", dir],
    ]);
    try {
      await proc.waitFor(/Ready to accept connections/, 10_000);
      return { proc, url: `redis://127.0.0.1:${port}` };
    } catch (error) {
      lastError = error;
      await proc.stop();
    }
  }
  throw lastError;
}

/** Starts `bun server.ts` of checkout `root` as cluster node `name` on `ip`; resolves once it joined. */
export async function startNode(name: string, ip: string, redisUrl: string, root = ROOT): Promise<Node> {
  const proc = spawn(
    ["bun", join(root, "server.ts"), "--host", ip, "--port", "0", "--cluster", redisUrl, "--node-name", name],
    { cwd: root, env: CLEAN_ENV },
  );
  const [, url] = await proc.waitFor(/listening on (ws:\/\/\S+)/, 20_000);
  await proc.waitFor(/cluster: node \S+ joined/, 20_000);
  return { name, ip, proc, url: url as string };
}

/** Starts `bun client.ts` of checkout `root` on `node`, exposing the service's port; resolves once exposed. */
export async function startClient(
  name: string,
  node: Node,
  servicePort: number,
  root = ROOT,
): Promise<Client> {
  const proc = spawn(
    ["bun", join(root, "client.ts"), "--server", node.url, "--expose", `127.0.0.1:${servicePort}`],
    { cwd: root, env: CLEAN_ENV },
  );
  const match = await proc.waitFor(/exposed with tunnel id \S+, url: \S+:(\d+)/, 20_000);
  return { name, node, proc, port: Number(match[1]) };
}

/** GET /health of a node. */
async function health(node: Node): Promise<Record<string, unknown>> {
  const response = await fetch(`${node.url.replace(/^ws/, "http")}/health`, {
    signal: AbortSignal.timeout(3000),
  });
  return (await response.json()) as Record<string, unknown>;
}

/** Whether node `a`'s link to node `b` is up (its /health). */
export async function linkUp(a: Node, b: Node): Promise<boolean> {
  const cluster = (await health(a)).cluster as { links?: Record<string, { up?: boolean }> } | undefined;
  return cluster?.links?.[b.name]?.up === true;
}

/** Streams on node A's link to node B, from A's /health. */
async function linkStreams(a: Node, b: Node): Promise<number> {
  const cluster = (await health(a)).cluster as { links?: Record<string, { streams?: number }> } | undefined;
  return cluster?.links?.[b.name]?.streams ?? 0;
}

/**
 * Holds a few connections open through `target` and counts them on node A's link to B: proof that
 * the path goes where it claims (the preload took, the mirror is A's).
 */
async function checkPath(loadgen: string, target: Target, a: Node, b: Node, viaLink: boolean): Promise<void> {
  const count = 4;
  const p = spawn([loadgen, "hold", String(target.tunnel.port), String(count), String(count)], {
    stdin: true,
    env: { ...target.env, BENCH_TIMEOUT: "30" },
  });
  try {
    const [line] = await p.waitFor(/\{"mode":"hold".*\}/, 20_000);
    const hold = JSON.parse(line) as { ok: number };
    if (hold.ok !== count) throw new Error(`path check: ${hold.ok} of ${count} connections held`);
    let streams = await linkStreams(a, b);
    // The link's count may trail the connections by a round of events.
    for (let i = 0; i < 20 && viaLink && streams < count; i++) {
      await Bun.sleep(50);
      streams = await linkStreams(a, b);
    }
    if (viaLink ? streams < count : streams !== 0)
      throw new Error(
        `path check: ${streams} streams on ${a.name}'s link to ${b.name} with ${count} visitors ${viaLink ? "via" : "straight at"} ${viaLink ? a.name : b.name}`,
      );
    p.write("release\n");
    await p.waitFor(/\{"mode":"released".*\}/, 10_000);
  } finally {
    await p.stop();
  }
}

/** A {@link Target} for the C load generator: `port` at `ip`, with the processes whose CPU is watched. */
function target(
  loadgen: string,
  service: Proc,
  port: number,
  ip: string,
  preload: string,
  watched: TunnelProcess[],
): Target {
  return {
    loadgen,
    service: { role: "service", pid: service.pid },
    tunnel: {
      port,
      processes: () => watched,
      describe: () => watched.map((w) => `${w.role} ${w.pid}`).join(", "),
      stop: async () => {},
    },
    env: ip === "127.0.0.1" ? undefined : { LD_PRELOAD: preload, BENCH_CONNECT_ADDR: ip },
  };
}

/** The headline figure of a hop sample (the median picks on it). */
function headline(measure: HopMeasure, s: Sample): number {
  const r = s.result;
  if (measure === "latency") return Number(r.p50);
  if (measure === "connrate") return Number(r.rate);
  return (Number(r.gbps) * 1000) / 8;
}

/** The median (lower for even counts) by `value`. */
function medianBy<T>(items: T[], value: (t: T) => number): T {
  const sorted = [...items].sort((a, b) => value(a) - value(b));
  return sorted[Math.floor((sorted.length - 1) / 2)] as T;
}

/**
 * Runs `fn` for every key in rounds until each key has `repeat` quiet runs (at most 2 × repeat
 * rounds; keys alternate within a round so that slow drift hits each alike); the median quiet run of
 * each (of all its runs if none was quiet), with every run's figure kept.
 */
async function rounds<K extends string, S>(
  keys: readonly K[],
  repeat: number,
  fn: (key: K) => Promise<S>,
  sampleOf: (s: S) => Sample,
  figure: (s: S) => number,
  label: (key: K) => string,
  log: (line: string) => void,
): Promise<Partial<Record<K, S>>> {
  const runs = new Map<K, S[]>(keys.map((k) => [k, []]));
  const failed = new Set<K>();
  const quietOf = (k: K) => (runs.get(k) ?? []).filter((s) => repeat === 1 || isQuiet(sampleOf(s)));
  for (let round = 0; round < 2 * repeat; round++) {
    const due = keys.filter((k) => !failed.has(k) && quietOf(k).length < repeat);
    if (due.length === 0) break;
    for (const key of due) {
      try {
        const s = await fn(key);
        runs.get(key)?.push(s);
        if (repeat > 1 && !isQuiet(sampleOf(s)))
          log(
            `cluster: ${label(key)}: noisy run (others used ${othersPct(sampleOf(s)).toFixed(0)}% of a core), again`,
          );
      } catch (error) {
        failed.add(key);
        log(`cluster: ${label(key)} FAILED: ${(error as Error).message}`);
      }
    }
  }
  const out: Partial<Record<K, S>> = {};
  for (const key of keys) {
    const all = runs.get(key) ?? [];
    if (all.length === 0) continue;
    const quiet = quietOf(key);
    const picked = medianBy(quiet.length > 0 ? quiet : all, figure);
    const sample = sampleOf(picked);
    sample.runs = all.map(figure);
    sample.quietRuns = quiet.length;
    out[key] = picked;
    log(
      `cluster: ${label(key)}: ${figure(picked).toFixed(1)} (median of ${(quiet.length > 0 ? quiet : all).map((s) => figure(s).toFixed(1)).join(", ")})`,
    );
  }
  return out;
}

/** Two bulk runs at once, one per visitor; the first one's sample watches every process. */
async function aggregateRun(
  targets: [Target, Target],
  params: ClusterParams,
  up: boolean,
): Promise<AggregateSample> {
  const [a, b] = await Promise.all([
    bulk(targets[0], params, up, params.aggregateConns),
    bulk(targets[1], params, up, params.aggregateConns),
  ]);
  const mbps = (s: Sample) => Number(s.result.bytes) / Number(s.result.seconds) / 1e6;
  const seconds = Math.max(Number(a.result.seconds), Number(b.result.seconds));
  const total = (Number(a.result.bytes) + Number(b.result.bytes)) / seconds / 1e6;
  // The second generator's CPU counts as ours, not as noise.
  const second = b.cpu.find((c) => c.role === "loadgen");
  const cpu = a.cpu.map((c) => ({ ...c }));
  const first = cpu.find((c) => c.role === "loadgen");
  if (first && second) {
    first.pct += second.pct;
    first.busiestThreadPct = Math.max(first.busiestThreadPct, second.busiestThreadPct);
  }
  return { sample: { ...a, cpu }, each: [mbps(a), mbps(b)], total };
}

async function codeVersion(): Promise<string> {
  const head = await run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], 5000).catch(() => null);
  if (head?.code !== 0) return "not a git checkout";
  const status = await run(
    ["git", "-C", ROOT, "status", "--porcelain", "--", "server.ts", "client.ts", "shared"],
    5000,
  );
  const dirty = status.stdout.trim() !== "";
  return `commit ${head.stdout.trim()}${dirty ? " + uncommitted changes in server.ts, client.ts or shared/" : ""}`;
}

/** Runs the section; resolves with every figure (failures become notes, not throws, once it started). */
export async function runCluster(options: ClusterOptions): Promise<ClusterResult> {
  const { params, log } = options;
  const started = performance.now();
  const redisVersion = await run([REDIS_SERVER, "--version"], 5000).catch(() => null);
  const result: ClusterResult = {
    params,
    code: await codeVersion(),
    machine: `${cpus().length} × ${cpus()[0]?.model ?? "?"}; Linux ${release()}; Bun ${Bun.version}; ${redisVersion?.stdout.match(/v=\S+/)?.[0] ?? "redis-server ?"}`,
    hop: {},
    integrity: {},
    aggregate: {},
    notes: [],
    elapsedSeconds: 0,
  };
  if (!existsSync(REDIS_SERVER)) {
    result.notes.push(`skipped: ${REDIS_SERVER} not found (apt-get install redis-server)`);
    log(`cluster: ${result.notes[0]}`);
    return result;
  }
  const native = await buildNative();
  const preload = await buildConnectTo();
  const dir = mkdtempSync(join(tmpdir(), "sockets-bench-redis-"));
  const removeDir = () => rmSync(dir, { recursive: true, force: true });
  const forget = atExit(removeDir);
  const procs: Proc[] = [];
  const track = <T extends { proc: Proc }>(x: T): T => {
    procs.push(x.proc);
    return x;
  };
  try {
    const service = spawn([native.service, "2"], { stdin: true });
    procs.push(service);
    const servicePort = Number((await service.waitFor(/port (\d+)/, 10_000))[1]);
    const redis = track(await startRedis(dir));
    const a = track(await startNode("n1", "127.0.0.1", redis.url));
    const b = track(await startNode("n2", "127.0.0.2", redis.url));
    // The hop's tunnel (client on B); the aggregate's: one more on A (two nodes), and another on A (one node).
    const onB = track(await startClient("client-b", b, servicePort));
    const onA = track(await startClient("client-a", a, servicePort));
    const onA2 = track(await startClient("client-a2", a, servicePort));
    // Node A opens B's tunnel's port once it has seen the lease (pub/sub, or its resync each second),
    // and carries visitors once its link to B is up (A dials: its name sorts first).
    await waitForPort(onB.port, 10_000);
    for (let i = 0; i < 200 && !(await linkUp(a, b)); i++) await Bun.sleep(50);
    log(
      `cluster: redis ${redis.proc.pid}; n1 ${a.proc.pid} at ${a.ip}, n2 ${b.proc.pid} at ${b.ip}; tunnel on n2 port ${onB.port}; on n1 ports ${onA.port}, ${onA2.port}`,
    );
    const role = (r: string, p: { proc: Proc }) => ({ role: r, pid: p.proc.pid });
    const hopWatched = [role("node A (n1)", a), role("node B (n2)", b), role("client", onB)];
    const hopTargets: Record<HopPath, Target> = {
      via: target(native.loadgen, service, onB.port, a.ip, preload, hopWatched),
      direct: target(native.loadgen, service, onB.port, b.ip, preload, hopWatched),
    };
    await checkPath(native.loadgen, hopTargets.via, a, b, true);
    await checkPath(native.loadgen, hopTargets.direct, a, b, false);
    const aggWatched = [
      role("n1", a),
      role("n2", b),
      role("client on n1", onA),
      role("second client on n1", onA2),
      role("client on n2", onB),
    ];
    const aggTargets: Record<Layout, [Target, Target]> = {
      one: [
        target(native.loadgen, service, onA.port, a.ip, preload, aggWatched),
        target(native.loadgen, service, onA2.port, a.ip, preload, []),
      ],
      two: [
        target(native.loadgen, service, onA.port, a.ip, preload, aggWatched),
        target(native.loadgen, service, onB.port, b.ip, preload, []),
      ],
    };
    // Warm-up: JIT, buffers, the link's first streams.
    for (const t of [hopTargets.via, hopTargets.direct, aggTargets.one[1]])
      await connRate(t, params, 200).catch((error: Error) => log(`cluster: warm-up: ${error.message}`));

    for (const path of HOP_PATHS) {
      try {
        const s = await integrity(hopTargets[path], params);
        result.integrity[path] = s;
        log(`cluster: integrity ${path}: ${s.result.ok}/${s.result.conns} sha256 match`);
        if (Number(s.result.ok) !== Number(s.result.conns))
          result.notes.push(`integrity ${path}: ${s.result.ok}/${s.result.conns} sha256 match`);
      } catch (error) {
        result.notes.push(`integrity ${path} failed: ${(error as Error).message}`);
        log(`cluster: integrity ${path} FAILED: ${(error as Error).message}`);
      }
    }
    for (const measure of HOP_MEASURES) {
      const fn = (path: HopPath): Promise<Sample> => {
        const t = hopTargets[path];
        if (measure === "latency") return latency(t, params);
        if (measure === "connrate") return connRate(t, params);
        return bulk(t, params, measure === "up", 1);
      };
      result.hop[measure] = await rounds(
        HOP_PATHS,
        params.repeat,
        fn,
        (s) => s,
        (s) => headline(measure, s),
        (path) => `${measure} ${path}`,
        log,
      );
    }
    for (const dir of ["up", "down"] as const)
      result.aggregate[dir] = await rounds(
        LAYOUTS,
        params.repeat,
        (layout) => aggregateRun(aggTargets[layout], params, dir === "up"),
        (s) => s.sample,
        (s) => s.total,
        (layout) => `aggregate ${dir} ${layout} node(s)`,
        log,
      );
    // Anything the nodes complained about while carrying the load belongs in the report.
    for (const node of [a, b]) {
      const warnings = `${node.proc.stdout()}${node.proc.stderr()}`
        .split("\n")
        // The open-server warning is expected here (no API key on loopback).
        .filter((l) => /warn|error/i.test(l) && !l.includes("SOCKETS_SINGLE_API_KEY"));
      if (warnings.length > 0)
        result.notes.push(`${node.name} logged ${warnings.length} warning(s)/error(s), e.g. ${warnings[0]}`);
    }
  } catch (error) {
    result.notes.push(`failed: ${(error as Error).message}`);
    log(`cluster FAILED: ${(error as Error).message}`);
  } finally {
    for (const p of procs.reverse()) await p.stop();
    removeDir();
    forget();
  }
  result.elapsedSeconds = (performance.now() - started) / 1000;
  return result;
}

const fmt = (v: number, digits = 0) =>
  v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });

/** "95% (n1 88, n2 61, client 40, loadgen 12); bound" for one sample. */
function cpuLine(s: Sample | undefined): string {
  if (!s) return "—";
  const parts = s.cpu.filter((c) => c.pct >= 1).map((c) => `${c.role} ${c.pct.toFixed(0)}`);
  return `${parts.join(", ")}; ${boundBy(s)}${isQuiet(s) ? "" : " ⁿ"}`;
}

/** The section's markdown: the hop table, the aggregate table, CPU and notes. */
export function clusterReport(r: ClusterResult): string {
  const p = r.params;
  const lines = [
    `### Cluster (two nodes through Redis, ${fmt(r.elapsedSeconds)} s)`,
    "",
    `Code: ${r.code}. Machine: ${r.machine}. All traffic on loopback (node A = n1 at 127.0.0.1, node B = n2 at 127.0.0.2).`,
    `Each figure is the median of its quiet runs (${p.repeat} wanted, at most ${2 * p.repeat} runs; ⁿ: none was quiet, the median of all), the two sides alternated run by run. Bulk ${p.bulkBytes / 1024 ** 2} MiB each way on one connection; latency ${fmt(p.latencyRounds)} × ${p.latencySize} B after ${fmt(p.latencyWarmup)}; ${fmt(p.connCount)} connections, ${p.connInflight} in flight; integrity ${p.integrityConns} × ${p.integrityBytes / 1024 ** 2} MiB echoed, sha256 both ways.`,
    "",
  ];
  const hop = (m: HopMeasure, path: HopPath) => r.hop[m]?.[path];
  const rows: { label: string; m: HopMeasure; value: (s: Sample) => number; digits: number }[] = [
    { label: "bulk up (visitor → service), MB/s", m: "up", value: (s) => headline("up", s), digits: 0 },
    { label: "bulk down (service → visitor), MB/s", m: "down", value: (s) => headline("down", s), digits: 0 },
    { label: "64 B round trip p50, µs", m: "latency", value: (s) => Number(s.result.p50), digits: 0 },
    { label: "64 B round trip p99, µs", m: "latency", value: (s) => Number(s.result.p99), digits: 0 },
    { label: "new connections/s", m: "connrate", value: (s) => Number(s.result.rate), digits: 0 },
  ];
  lines.push(
    "The extra hop: one tunnel, its client on node B; the visitor at node A (carried over the A→B node link) against the visitor at node B:",
    "",
    "| figure | via A | direct at B | via A ÷ direct |",
    "| --- | --: | --: | --: |",
  );
  for (const row of rows) {
    const v = hop(row.m, "via");
    const d = hop(row.m, "direct");
    const cell = (s: Sample | undefined) =>
      s ? `${fmt(row.value(s), row.digits)}${isQuiet(s) || p.repeat === 1 ? "" : " ⁿ"}` : "failed";
    const ratio = v && d && row.value(d) > 0 ? `${(row.value(v) / row.value(d)).toFixed(2)}×` : "—";
    lines.push(`| ${row.label} | ${cell(v)} | ${cell(d)} | ${ratio} |`);
  }
  const integ = (path: HopPath) => {
    const s = r.integrity[path];
    return s ? `${s.result.ok}/${s.result.conns} match` : "failed";
  };
  lines.push(`| integrity (sha256) | ${integ("via")} | ${integ("direct")} | |`, "");
  lines.push(
    `Two nodes against one: two visitors streaming at once (${p.aggregateConns} connections each, ${p.bulkBytes / 1024 ** 2} MiB per visitor), each to its own tunnel; total = both visitors' bytes over the longer time:`,
    "",
    "| direction | one node: both clients on n1, MB/s (each) | two nodes: a client on each, MB/s (each) | two ÷ one |",
    "| --- | --: | --: | --: |",
  );
  for (const dir of ["up", "down"] as const) {
    const one = r.aggregate[dir]?.one;
    const two = r.aggregate[dir]?.two;
    const cell = (s: AggregateSample | undefined) =>
      s ? `${fmt(s.total)} (${fmt(s.each[0])} + ${fmt(s.each[1])})` : "failed";
    const ratio = one && two ? `${(two.total / one.total).toFixed(2)}×` : "—";
    lines.push(`| ${dir} | ${cell(one)} | ${cell(two)} | ${ratio} |`);
  }
  lines.push(
    "",
    "CPU during each median run, % of one core per process (service, load generator, nodes, clients), and what bounds it:",
    "",
    "| run | CPU |",
    "| --- | --- |",
  );
  for (const m of HOP_MEASURES)
    for (const path of HOP_PATHS) lines.push(`| ${m} ${path} | ${cpuLine(hop(m, path))} |`);
  for (const dir of ["up", "down"] as const)
    for (const layout of LAYOUTS)
      lines.push(`| aggregate ${dir}, ${layout} node(s) | ${cpuLine(r.aggregate[dir]?.[layout]?.sample)} |`);
  lines.push("");
  for (const note of r.notes) lines.push(`- ${note}`);
  if (r.notes.length > 0) lines.push("");
  return lines.join("\n");
}

const HELP = `Usage: bun bench/cluster.ts [--quick] [--repeat N] [--json FILE]

The cluster section of bun run bench alone: a redis-server, two nodes, three clients; the cost of the
extra hop (visitor at node A for a client at node B, against the same visitor at B) and two nodes'
aggregate bulk against one. Needs redis-server (apt-get install redis-server) and gcc.
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      quick: { type: "boolean" },
      repeat: { type: "string" },
      json: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const params = { ...(values.quick ? CLUSTER_QUICK : CLUSTER_FULL) };
  if (values.repeat !== undefined) {
    const n = Number(values.repeat);
    if (!(Number.isInteger(n) && n >= 1 && n <= 20)) throw new Error(`--repeat: expected 1 to 20`);
    params.repeat = n;
  }
  const abort = (signal: string) => {
    process.stderr.write(`${signal}: stopping every process the benchmark started\n`);
    killAll();
    process.exit(130);
  };
  process.once("SIGINT", () => abort("SIGINT"));
  process.once("SIGTERM", () => abort("SIGTERM"));
  try {
    const result = await runCluster({ params, log: (line) => process.stderr.write(`${line}\n`) });
    process.stdout.write(clusterReport(result));
    if (values.json) writeFileSync(values.json, `${JSON.stringify(result, null, 2)}\n`);
  } finally {
    killAll();
  }
}

if (import.meta.main) await main();
