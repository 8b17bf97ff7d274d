/**
 * The measurements, the same for every provider: each runs the C load generator against the tunnel's
 * port and records its figures plus the CPU share of every process involved (load generator, service,
 * tunnel processes), which tells what bounds the figure.
 * @module
 */

import { CLK_TCK, type CpuSample, cpuSample, machineTicks, rssKiB, spawn } from "./procs.ts";
import type { Tunnel, TunnelProcess } from "./providers.ts";

/** Sizes and counts of one run. */
export interface Params {
  bulkBytes: number;
  bulkConns: number;
  latencyRounds: number;
  latencyWarmup: number;
  latencySize: number;
  connCount: number;
  connInflight: number;
  holdCount: number;
  holdInflight: number;
  integrityConns: number;
  integrityBytes: number;
  /** How long memory may take to return to idle after the held connections close (ms). */
  settleMs: number;
  /** Runs of each timed measurement (bulk, latency, connection rate); the median one is reported. */
  repeat: number;
}

/** Full run: the sizes of the spec. */
export const FULL: Params = {
  bulkBytes: 1024 ** 3,
  bulkConns: 8,
  latencyRounds: 20_000,
  latencyWarmup: 2_000,
  latencySize: 64,
  connCount: 2_000,
  connInflight: 32,
  holdCount: 1_000,
  holdInflight: 32,
  integrityConns: 16,
  integrityBytes: 8 * 1024 ** 2,
  settleMs: 10_000,
  repeat: 5,
};

/** `--quick`: everything smaller, the whole run well under two minutes. */
export const QUICK: Params = {
  ...FULL,
  bulkBytes: 256 * 1024 ** 2,
  latencyRounds: 5_000,
  latencyWarmup: 500,
  connCount: 1_000,
  integrityBytes: 2 * 1024 ** 2,
  settleMs: 3_000,
  repeat: 1,
};

/** CPU used by one role during a measurement, in % of one core. */
export interface CpuShare {
  role: string;
  /** All threads of all its processes. */
  pct: number;
  /** Its busiest thread: near 100 means that thread is saturated. */
  busiestThreadPct: number;
}

/** What the load generator printed (one JSON object) plus who used the CPU meanwhile. */
export interface Sample {
  result: Record<string, unknown>;
  cpu: CpuShare[];
  /** Busy CPU of the whole machine meanwhile, in % of one core (at most 100 × cores). */
  machinePct: number;
  seconds: number;
  /** When repeated: the headline figure of every run, in order (this sample is the median quiet one). */
  runs?: number[];
  /** How many of those runs were quiet (the median is taken over them, or over all if none was). */
  quietRuns?: number;
}

/** What a measurement runs against. */
export interface Target {
  loadgen: string;
  service: TunnelProcess;
  tunnel: Tunnel;
  /** Extra environment for the load generator (the cluster section: a preload that dials another loopback address). */
  env?: Record<string, string>;
}

function sampleAll(procs: TunnelProcess[]): Map<number, CpuSample> {
  return new Map(procs.map((p) => [p.pid, cpuSample(p.pid)]));
}

function shares(procs: TunnelProcess[], before: Map<number, CpuSample>, seconds: number): CpuShare[] {
  const roles = new Map<string, CpuShare>();
  for (const { role, pid } of procs) {
    const a = before.get(pid);
    if (!a) continue;
    const b = cpuSample(pid);
    const share = roles.get(role) ?? { role, pct: 0, busiestThreadPct: 0 };
    share.pct += ((b.total - a.total) / CLK_TCK / seconds) * 100;
    for (const [tid, ticks] of b.threads) {
      const pct = ((ticks - (a.threads.get(tid) ?? 0)) / CLK_TCK / seconds) * 100;
      if (pct > share.busiestThreadPct) share.busiestThreadPct = pct;
    }
    roles.set(role, share);
  }
  return [...roles.values()];
}

/** Runs the load generator once with a deadline; rejects when it fails or reports errors. */
export async function loadgen(target: Target, args: (string | number)[], timeoutS: number): Promise<Sample> {
  const watched = [target.service, ...target.tunnel.processes()];
  const before = sampleAll(watched);
  const machineBefore = machineTicks();
  const started = performance.now();
  const p = spawn(
    [target.loadgen, args[0] as string, String(target.tunnel.port), ...args.slice(1).map(String)],
    {
      env: { ...target.env, BENCH_TIMEOUT: String(timeoutS) },
    },
  );
  const timer = setTimeout(() => void p.stop(0), (timeoutS + 5) * 1000);
  const code = await p.proc.exited;
  clearTimeout(timer);
  await p.stop();
  const seconds = (performance.now() - started) / 1000;
  const cpu = shares(watched, before, seconds);
  const machineAfter = machineTicks();
  const machinePct = ((machineAfter.busy - machineBefore.busy) / CLK_TCK / seconds) * 100;
  const line = p.stdout().trim().split("\n").pop() ?? "";
  let result: Record<string, unknown>;
  try {
    result = JSON.parse(line) as Record<string, unknown>;
  } catch {
    throw new Error(`loadgen ${args[0]} exited ${code} without a result: ${p.stderr().trim().slice(0, 200)}`);
  }
  if (typeof result.error === "string") throw new Error(`loadgen ${args[0]}: ${result.error}`);
  const gen = Number(result.cpu ?? 0);
  cpu.unshift({
    role: "loadgen",
    pct: (gen / seconds) * 100,
    busiestThreadPct: (Number(result.cpuThreadMax ?? gen) / seconds) * 100,
  });
  return { result, cpu, machinePct, seconds };
}

/** Bulk transfer: Gbit/s over `conns` connections, one direction. */
export async function bulk(target: Target, params: Params, up: boolean, conns: number): Promise<Sample> {
  const s = await loadgen(target, [up ? "up" : "down", params.bulkBytes, conns], 300);
  if (Number(s.result.errors) !== 0)
    throw new Error(`bulk ${up ? "up" : "down"}: ${s.result.errors} connections failed`);
  return s;
}

/** Ping-pong latency on one connection: p50, p99 in µs. */
export async function latency(target: Target, params: Params): Promise<Sample> {
  const s = await loadgen(
    target,
    ["latency", params.latencyRounds, params.latencyWarmup, params.latencySize],
    120,
  );
  if (Number(s.result.errors) !== 0) throw new Error(`latency: ${s.result.errors} echoes differed`);
  return s;
}

/** Connection rate: connect + 64-byte echo + close, `connInflight` at once. */
export async function connRate(target: Target, params: Params, count = params.connCount): Promise<Sample> {
  const s = await loadgen(target, ["connrate", count, params.connInflight], 120);
  if (Number(s.result.errors) !== 0)
    throw new Error(`connection rate: ${s.result.errors} of ${count} connections failed`);
  return s;
}

/** Integrity: random bytes echoed with half-close, sha256 compared per connection. */
export async function integrity(target: Target, params: Params): Promise<Sample> {
  return loadgen(target, ["integrity", params.integrityConns, params.integrityBytes], 300);
}

/** Memory of the tunnel's processes idle, with N connections held open, and after they closed. */
export interface MemoryFigures {
  idleKiB: number;
  heldKiB: number;
  afterKiB: number;
  held: number;
  kibPerConn: number;
  /** Seconds it took after the close to get back within 10% of idle (or the settle time, if never). */
  settleSeconds: number;
  returned: boolean;
  /** Held connections the tunnel closed on its own before release. */
  dropped: number;
  /** Streams the tunnel still tracked after the close (sockets' /health), if known. */
  streamsAfter?: number;
  perRole: Record<string, { idleKiB: number; heldKiB: number; afterKiB: number }>;
}

function rssByRole(tunnel: Tunnel): Record<string, number> {
  const out: Record<string, number> = {};
  for (const { role, pid } of tunnel.processes()) out[role] = (out[role] ?? 0) + rssKiB(pid);
  return out;
}

const sum = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);

/** Holds `holdCount` echo-verified connections open and reads VmRSS before, during and after. */
export async function memory(target: Target, params: Params): Promise<MemoryFigures> {
  const { tunnel } = target;
  await Bun.sleep(500);
  const idle = rssByRole(tunnel);
  const p = spawn(
    [target.loadgen, "hold", String(tunnel.port), String(params.holdCount), String(params.holdInflight)],
    { stdin: true, env: { ...target.env, BENCH_TIMEOUT: "120" } },
  );
  try {
    const [line] = await p.waitFor(/\{"mode":"hold".*\}/, 60_000);
    const hold = JSON.parse(line) as { ok: number; errors: number };
    if (hold.errors !== 0) throw new Error(`hold: ${hold.errors} of ${params.holdCount} connections failed`);
    await Bun.sleep(300);
    const held = rssByRole(tunnel);
    p.write("release\n");
    const [released] = await p.waitFor(/\{"mode":"released".*\}/, 30_000);
    const { dropped } = JSON.parse(released) as { dropped: number };
    const started = performance.now();
    let after = rssByRole(tunnel);
    while (sum(after) > sum(idle) * 1.1 && performance.now() - started < params.settleMs) {
      await Bun.sleep(250);
      after = rssByRole(tunnel);
    }
    const settleSeconds = (performance.now() - started) / 1000;
    let streamsAfter: number | undefined;
    if (tunnel.streams) {
      streamsAfter = await tunnel.streams();
      for (let i = 0; i < 20 && streamsAfter > 0; i++) {
        await Bun.sleep(100);
        streamsAfter = await tunnel.streams();
      }
    }
    const perRole: MemoryFigures["perRole"] = {};
    for (const role of Object.keys(idle))
      perRole[role] = { idleKiB: idle[role] ?? 0, heldKiB: held[role] ?? 0, afterKiB: after[role] ?? 0 };
    return {
      idleKiB: sum(idle),
      heldKiB: sum(held),
      afterKiB: sum(after),
      held: hold.ok,
      kibPerConn: (sum(held) - sum(idle)) / hold.ok,
      settleSeconds,
      returned: sum(after) <= sum(idle) * 1.1,
      dropped,
      streamsAfter,
      perRole,
    };
  } finally {
    await p.stop();
  }
}
