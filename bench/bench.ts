/**
 * `bun run bench`: starts a local C service, then measures the same work through each provider
 * (direct, ssh -R, sockets from source, sockets compiled), one after another, and prints one markdown
 * table with absolute figures, each one's ratio to direct, and whether our targets are met.
 *
 * ```sh
 * bun run bench                       # full run (1 GiB bulk, 20,000 pings, 2,000 connections, …)
 * bun run bench --quick               # smaller sizes, under two minutes
 * bun run bench --only direct,sockets --measures bulk,latency --json out.json
 * bun run bench --only direct,ssh,sockets --measures longpath   # the long-path section alone
 * bun run bench --measures http      # the HTTP section alone: HTTP tunnels (both ports), TCP tunnel, direct
 * bun run bench --measures cluster   # the cluster section alone (also: bun bench/cluster.ts)
 * bun run bench --measures failover  # cluster failover gaps (also: bun bench/failover.ts)
 * bun run bench --measures udp       # the UDP section alone (also: bun bench/udp.ts)
 * ```
 * @module
 */

import { readFileSync, writeFileSync } from "node:fs";
import { cpus, release } from "node:os";
import { parseArgs } from "node:util";
import { type BudgetMemoryResult, budgetMemoryReport, runBudgetMemory } from "./budget-memory.ts";
import { CLUSTER_FULL, CLUSTER_QUICK, type ClusterResult, clusterReport, runCluster } from "./cluster.ts";
import { type FailoverResult, failoverReport, runFailover } from "./failover.ts";
import { HTTP_FULL, HTTP_QUICK, type HttpResult, httpReport, runHttp } from "./http.ts";
import { LONG_PATH_PROVIDERS, type LongPathProvider, longPathReport, runLongPath } from "./longpath.ts";
import { type ManyClientsResult, manyClientsReport, runManyClients } from "./many-clients.ts";
import {
  bulk,
  connRate,
  FULL,
  integrity,
  latency,
  memory,
  type Params,
  QUICK,
  type Sample,
  type Target,
} from "./measure.ts";
import { buildNative, ROOT } from "./native.ts";
import { killAll, type Proc, run, spawn } from "./procs.ts";
import { PROVIDER_NAMES, PROVIDERS, type ProviderName, setSocketsBase } from "./providers.ts";
import { type RedisResult, redisReport, runRedisGet } from "./redis-get.ts";
import {
  cpuTable,
  floorTable,
  footnotes,
  isQuiet,
  markdownTable,
  othersPct,
  type ProviderResult,
  referenceTable,
  type SampleKey,
} from "./report.ts";
import { runUdp, UDP_FULL, UDP_QUICK, type UdpResult, udpReport } from "./udp.ts";

/** Measurement groups, in the order they run on each tunnel. */
export const MEASURES = [
  "memory",
  "integrity",
  "latency",
  "connrate",
  "bulk",
  "longpath",
  "http",
  "cluster",
  "failover",
  "udp",
  "budget",
  "clients",
  "redis",
] as const;

/** A measurement group name. */
export type Measure = (typeof MEASURES)[number];

/** Parsed command line. */
export interface BenchOptions {
  quick: boolean;
  /** Runs per timed measurement (default 5, --quick 1). */
  repeat?: number;
  json?: string;
  only: ProviderName[];
  measures: Measure[];
  /** The long path and the HTTP section run sockets from this checkout instead (before/after tables). */
  socketsRoot?: string;
}

const HELP = `Usage: bun run bench [options]

Options:
  --quick              smaller sizes (256 MiB bulk, 5,000 pings, …): the whole run in under two minutes
  --repeat N           runs of each timed measurement, the median is reported (default 5, --quick 1)
  --json FILE          also write every figure (and CPU shares) as JSON to FILE
  --only LIST          providers to run, comma-separated: ${PROVIDER_NAMES.join(",")} (default: all)
  --measures LIST      measurements to run, comma-separated: ${MEASURES.join(",")} (default: all);
                       longpath: direct (as the bare path), ssh and sockets across +50 and +200 ms (longpath.ts)
                       http: HTTP tunnels on the control port and on --http-port, a TCP tunnel and direct:
                       small GET and 64 B POST (wrk), 200 MiB each way (sha256), WebSocket echo (http.ts)
                       cluster: a redis-server and two nodes: a visitor at node A for a client at node B
                       against the same visitor at B, two nodes' aggregate bulk against one (cluster.ts)
                       failover: the gap through a node that stays up when the client's node is SIGKILLed,
                       SIGSTOPped or cut off from Redis, default timings, 3 runs each (failover.ts)
                       udp: UDP tunnels: 64 B request/response beside direct and the TCP tunnel, iperf3 -u
                       at 10/100/500 Mbit/s beside direct, a TCP stream beside a saturating UDP flow (udp.ts)
                       budget: 40 visitors flood a local service that never reads: the server's RSS
                       idle, at the peak and 10 s after, against its client budget (budget-memory.ts)
                       clients: 2,000 idle clients with a TCP tunnel each: the server's KiB per client and
                       CPU while they idle (many-clients.ts)
                       redis: redis-benchmark GET -c 50 direct and through the chosen tunnels (redis-get.ts)
  --sockets-root DIR   longpath, http, budget: run sockets from another checkout (for a before/after table);
                       the loopback measures run it as provider sockets-base
  -h, --help           show this help
`;

function pickList<T extends string>(value: string | undefined, allowed: readonly T[], flag: string): T[] {
  if (value === undefined) return [...allowed];
  const picked = value
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  for (const p of picked)
    if (!allowed.includes(p as T)) throw new Error(`${flag}: unknown '${p}' (one of ${allowed.join(", ")})`);
  return allowed.filter((a) => picked.includes(a));
}

/** Turns argv into options; throws on bad input. */
export function parseBenchArgs(argv: string[]): BenchOptions | "help" {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      quick: { type: "boolean" },
      repeat: { type: "string" },
      json: { type: "string" },
      only: { type: "string" },
      measures: { type: "string" },
      "sockets-root": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  const repeat = values.repeat === undefined ? undefined : Number(values.repeat);
  if (repeat !== undefined && !(Number.isInteger(repeat) && repeat >= 1 && repeat <= 20))
    throw new Error(`--repeat: expected a whole number from 1 to 20, got '${values.repeat}'`);
  return {
    quick: values.quick ?? false,
    repeat,
    json: values.json,
    only: pickList(values.only, PROVIDER_NAMES, "--only"),
    measures: pickList(values.measures, MEASURES, "--measures"),
    socketsRoot: values["sockets-root"],
  };
}

const log = (line: string) => process.stderr.write(`${line}\n`);

/** The figure that picks the median run of each measurement. */
const HEADLINE: Record<SampleKey, string> = {
  bulkUp1: "gbps",
  bulkDown1: "gbps",
  bulkUpN: "gbps",
  bulkDownN: "gbps",
  latency: "p50",
  connRate: "rate",
  integrity: "ok",
};

/** The run whose headline figure is the median (lower median for even counts), with every run's figure. */
export function median(runs: Sample[], field: string): Sample {
  const value = (s: Sample) => Number(s.result[field]);
  const sorted = [...runs].sort((a, b) => value(a) - value(b));
  const mid = sorted[Math.floor((sorted.length - 1) / 2)] as Sample;
  return runs.length > 1 ? { ...mid, runs: runs.map(value) } : mid;
}

function summary(key: SampleKey, s: Sample): string {
  const r = s.result;
  switch (key) {
    case "latency":
      return `p50 ${r.p50} µs, p99 ${r.p99} µs`;
    case "connRate":
      return `${r.rate} conn/s, p99 ${r.p99} µs`;
    case "integrity":
      return `${r.ok}/${r.conns} sha256 match`;
    default:
      return `${Number(r.gbps).toFixed(2)} Gbit/s`;
  }
}

/** Runs every selected measurement against one provider's tunnel; failures are recorded, not thrown. */
async function measureProvider(
  name: ProviderName,
  tools: { loadgen: string; service: Proc },
  params: Params,
  measures: Measure[],
): Promise<ProviderResult> {
  const result: ProviderResult = { name, errors: {}, samples: {} };
  const provider = PROVIDERS[name];
  const skip = await provider.prepare();
  if (skip) {
    log(`${name}: skipped: ${skip}`);
    return { ...result, skipped: skip };
  }
  let tunnel: Awaited<ReturnType<typeof provider.start>>;
  try {
    tunnel = await provider.start(Number(tools.service.stdout().match(/port (\d+)/)?.[1]));
  } catch (error) {
    result.errors.start = (error as Error).message;
    log(`${name}: could not start: ${result.errors.start}`);
    return result;
  }
  try {
    const target: Target = {
      loadgen: tools.loadgen,
      service: { role: "service", pid: tools.service.pid },
      tunnel,
    };
    result.processes = tunnel.describe();
    log(`${name}: tunnel on port ${tunnel.port} (${result.processes})`);
    const step = async (key: SampleKey, fn: () => Promise<Sample>, repeat = params.repeat) => {
      try {
        // A run during which other processes took a good share of the CPU is redone (at most `repeat`
        // extra runs); the median is taken over the quiet runs, or over all if none was quiet.
        const runs: Sample[] = [];
        const quiet: Sample[] = [];
        for (let i = 0; i < 2 * repeat && quiet.length < repeat; i++) {
          const run = await fn();
          runs.push(run);
          if (isQuiet(run) || repeat === 1) quiet.push(run);
          else log(`${name}: ${key}: noisy run (others used ${othersPct(run).toFixed(0)}% of a core), again`);
        }
        const picked = median(quiet.length > 0 ? quiet : runs, HEADLINE[key]);
        const figure = (r: Sample) => Number(r.result[HEADLINE[key]]);
        const s: Sample = { ...picked, runs: runs.map(figure), quietRuns: quiet.length };
        result.samples[key] = s;
        if (runs.length > 1)
          log(
            `${name}: ${key}: ${summary(key, s)} (median of ${(quiet.length > 0 ? quiet : runs).map(figure).join(", ")}; ${runs.length - quiet.length} noisy run(s) set aside)`,
          );
        else log(`${name}: ${key}: ${summary(key, s)}`);
      } catch (error) {
        result.errors[key] = (error as Error).message;
        log(`${name}: ${key} FAILED: ${result.errors[key]}`);
      }
    };
    // Warm-up: JIT, buffers, the first connections of a fresh tunnel.
    await connRate(target, params, 200).catch((error: Error) => log(`${name}: warm-up: ${error.message}`));
    if (measures.includes("memory") && name !== "direct") {
      try {
        result.memory = await memory(target, params);
        const m = result.memory;
        log(
          `${name}: memory: idle ${(m.idleKiB / 1024).toFixed(1)} MiB, ${m.held} open ${(m.heldKiB / 1024).toFixed(1)} MiB (${m.kibPerConn.toFixed(1)} KiB each), after ${(m.afterKiB / 1024).toFixed(1)} MiB`,
        );
      } catch (error) {
        result.errors.memory = (error as Error).message;
        log(`${name}: memory FAILED: ${result.errors.memory}`);
      }
    }
    if (measures.includes("integrity")) await step("integrity", () => integrity(target, params), 1);
    if (measures.includes("latency")) await step("latency", () => latency(target, params));
    if (measures.includes("connrate")) await step("connRate", () => connRate(target, params));
    if (measures.includes("bulk")) {
      await step("bulkUp1", () => bulk(target, params, true, 1));
      await step("bulkDown1", () => bulk(target, params, false, 1));
      await step("bulkUpN", () => bulk(target, params, true, params.bulkConns));
      await step("bulkDownN", () => bulk(target, params, false, params.bulkConns));
    }
  } finally {
    await tunnel.stop();
  }
  return result;
}

/** The code measured: commit, and which tunnel sources differ from it. */
async function codeVersion(): Promise<string> {
  const head = await run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], 5000).catch(() => null);
  if (head?.code !== 0) return "not a git checkout";
  const paths = ["server.ts", "client.ts", "shared", "scripts", "package.json"];
  const status = await run(["git", "-C", ROOT, "status", "--porcelain", "--", ...paths], 5000);
  const changed = status.stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => l.slice(3));
  return `commit ${head.stdout.trim()}${changed.length ? ` + uncommitted changes in ${changed.join(", ")}` : ""}`;
}

async function machine(): Promise<Record<string, string>> {
  const ssh = await run(["ssh", "-V"], 5000).catch(() => ({ stderr: "absent" }));
  return {
    code: await codeVersion(),
    cpus: `${cpus().length} × ${cpus()[0]?.model ?? "?"}`,
    kernel: release(),
    bun: Bun.version,
    ssh: ssh.stderr.trim(),
  };
}

function fdLimit(): number {
  try {
    const m = readFileSync("/proc/self/limits", "utf8").match(/Max open files\s+(\d+)/);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** The table against `mux-floor`, with its lead-in; nothing when the floor did not run. */
function floorSection(
  results: Partial<Record<ProviderName, ProviderResult>>,
  params: { bulkConns: number; holdCount: number },
): string[] {
  const table = floorTable(results, params.bulkConns, params.holdCount);
  if (!table) return [];
  return [
    "Against the floor: each figure divided by mux-floor's (a minimal multiplexing relay in C: the tunnel's topology, visitors over one link and a connection to the service each, with no other work; latency and connection p99: lower is better):",
    "",
    table,
    "",
  ];
}

/** The table against rathole (issue 30's targets are ratios to it), with its lead-in; nothing when it did not run. */
function ratholeSection(
  results: Partial<Record<ProviderName, ProviderResult>>,
  params: { bulkConns: number; holdCount: number },
): string[] {
  const table = referenceTable(results, "rathole", params.bulkConns, params.holdCount, true);
  if (!table) return [];
  return [
    "Against rathole 0.5.0 (the fastest peer tunnel; each figure and its ratio to rathole's in this run; for latency, connection p99 and memory lower is better):",
    "",
    table,
    "",
  ];
}

/** Runs the benchmark; resolves with the markdown report. */
export async function runBench(options: BenchOptions): Promise<string> {
  const started = performance.now();
  const params = { ...(options.quick ? QUICK : FULL) };
  setSocketsBase(options.socketsRoot);
  if (options.repeat !== undefined) params.repeat = options.repeat;
  const limit = fdLimit();
  if (limit > 0 && limit < 2 * params.holdCount + 256)
    log(
      `warning: open-file limit ${limit} may be too low for ${params.holdCount} connections (ulimit -n 65536)`,
    );
  const native = await buildNative();
  const service = spawn([native.service, "2"], { stdin: true });
  const results: Partial<Record<ProviderName, ProviderResult>> = {};
  const loopback = options.measures.filter(
    (m) =>
      m !== "longpath" &&
      m !== "http" &&
      m !== "cluster" &&
      m !== "failover" &&
      m !== "udp" &&
      m !== "budget" &&
      m !== "clients" &&
      m !== "redis",
  );
  try {
    await service.waitFor(/port (\d+)/, 10_000);
    for (const name of loopback.length > 0 ? options.only : [])
      results[name] = await measureProvider(name, { loadgen: native.loadgen, service }, params, loopback);
  } finally {
    await service.stop();
  }
  const longPathProviders = options.only
    .map((name) => (name === "direct" ? "bare" : name))
    .filter((name): name is LongPathProvider => (LONG_PATH_PROVIDERS as readonly string[]).includes(name));
  const longPathSeconds = options.quick ? 3 : 5;
  const longPath = options.measures.includes("longpath")
    ? await runLongPath({
        rtts: [50, 200],
        seconds: longPathSeconds,
        providers: longPathProviders,
        socketsRoot: options.socketsRoot,
        log,
      })
    : [];
  let http: HttpResult | undefined;
  if (options.measures.includes("http") && options.only.includes("sockets")) {
    const httpParams = { ...(options.quick ? HTTP_QUICK : HTTP_FULL) };
    if (options.repeat !== undefined) httpParams.repeat = options.repeat;
    http = await runHttp({ params: httpParams, socketsRoot: options.socketsRoot, log });
  } else if (options.measures.includes("http")) log("http: skipped: it measures sockets (add it to --only)");
  let cluster: ClusterResult | undefined;
  if (options.measures.includes("cluster") && options.only.includes("sockets")) {
    const clusterParams = { ...(options.quick ? CLUSTER_QUICK : CLUSTER_FULL) };
    if (options.repeat !== undefined) clusterParams.repeat = options.repeat;
    cluster = await runCluster({ params: clusterParams, log });
  } else if (options.measures.includes("cluster"))
    log("cluster: skipped: it measures sockets (add it to --only)");
  let failover: FailoverResult | undefined;
  if (options.measures.includes("failover") && options.only.includes("sockets"))
    failover = await runFailover({ runs: options.quick ? 1 : (options.repeat ?? 3), log });
  else if (options.measures.includes("failover"))
    log("failover: skipped: it measures sockets (add it to --only)");
  let udp: UdpResult | undefined;
  if (options.measures.includes("udp") && options.only.includes("sockets")) {
    const udpParams = { ...(options.quick ? UDP_QUICK : UDP_FULL) };
    if (options.repeat !== undefined) udpParams.repeat = options.repeat;
    udp = await runUdp({ params: udpParams, log });
  } else if (options.measures.includes("udp")) log("udp: skipped: it measures sockets (add it to --only)");
  const budget: [string, BudgetMemoryResult][] = [];
  if (options.measures.includes("budget") && options.only.includes("sockets")) {
    budget.push(["bun server.ts", await runBudgetMemory({ log })]);
    if (options.socketsRoot)
      budget.push([options.socketsRoot, await runBudgetMemory({ root: options.socketsRoot, log })]);
  } else if (options.measures.includes("budget"))
    log("budget: skipped: it measures sockets (add it to --only)");
  const clients: [string, ManyClientsResult][] = [];
  if (options.measures.includes("clients") && options.only.includes("sockets")) {
    const count = options.quick ? 500 : 2000;
    const seconds = options.quick ? 10 : 20;
    clients.push(["bun server.ts", await runManyClients({ clients: count, seconds, log })]);
    if (options.socketsRoot)
      clients.push([
        options.socketsRoot,
        await runManyClients({ clients: count, seconds, root: options.socketsRoot, log }),
      ]);
  } else if (options.measures.includes("clients"))
    log("clients: skipped: it measures sockets (add it to --only)");
  let redis: RedisResult | null = null;
  if (options.measures.includes("redis"))
    redis = await runRedisGet({
      providers: options.only.filter((n) => n === "direct" || n === "rathole" || n.startsWith("sockets")),
      repeat: options.quick ? 1 : Math.min(params.repeat, 3),
      requests: options.quick ? 50_000 : 100_000,
      log,
    });
  const elapsed = (performance.now() - started) / 1000;
  const info = await machine();
  const report = [
    `## sockets benchmark (${options.quick ? "--quick" : "full"} run, ${new Date().toISOString().slice(0, 16)}Z, ${elapsed.toFixed(0)} s)`,
    "",
    `Code: ${info.code}.`,
    `Machine: ${info.cpus}; Linux ${info.kernel}; Bun ${info.bun}; ${info.ssh}. All traffic on 127.0.0.1.`,
    "",
    ...(loopback.length > 0
      ? [
          `Each timed loopback figure is the median of ${params.repeat} run(s). Sizes: bulk ${params.bulkBytes / 1024 ** 2} MiB per run; latency ${params.latencyRounds} × ${params.latencySize} B after ${params.latencyWarmup} warm-up; ${params.connCount} connections, ${params.connInflight} in flight; ${params.holdCount} held; integrity ${params.integrityConns} × ${params.integrityBytes / 1024 ** 2} MiB.`,
          "",
          markdownTable(results, options.only, params.bulkConns, params.holdCount),
          "",
          ...footnotes(results, options.only).map((n) => `- ${n}`),
          "",
          ...floorSection(results, params),
          ...ratholeSection(results, params),
          "CPU during each measurement (median run), % of one core per process (its busiest thread in brackets when lower; other = kernel threads and processes outside the benchmark), and what bounds it:",
          "",
          cpuTable(results, options.only),
          "",
        ]
      : []),
    longPathReport(longPath, longPathSeconds),
    http ? httpReport(http) : "",
    cluster ? clusterReport(cluster) : "",
    failover ? failoverReport(failover) : "",
    udp ? udpReport(udp) : "",
    budget.length > 0
      ? [
          "### Memory under the budgets (a local service that never reads; server RSS)",
          "",
          budgetMemoryReport(budget),
          "",
        ].join("\n")
      : "",
    redis
      ? [
          "### redis-benchmark GET, 50 clients (a real client of small requests)",
          "",
          redisReport(redis),
          "",
        ].join("\n")
      : "",
    clients.length > 0
      ? [
          "### Idle clients (one TCP tunnel each; server RSS and CPU)",
          "",
          manyClientsReport(clients),
          "",
        ].join("\n")
      : "",
  ].join("\n");
  if (options.json)
    writeFileSync(
      options.json,
      `${JSON.stringify({ quick: options.quick, elapsedSeconds: elapsed, machine: info, params, results, longPath, http, cluster, failover, udp, budget, clients, redis }, null, 2)}\n`,
    );
  return report;
}

async function main(): Promise<void> {
  let options: BenchOptions | "help";
  try {
    options = parseBenchArgs(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`error: ${(error as Error).message} (see --help)\n`);
    process.exit(2);
  }
  if (options === "help") {
    process.stdout.write(HELP);
    return;
  }
  const abort = (signal: string) => {
    process.stderr.write(`${signal}: stopping every process the benchmark started\n`);
    killAll();
    process.exit(130);
  };
  process.once("SIGINT", () => abort("SIGINT"));
  process.once("SIGTERM", () => abort("SIGTERM"));
  try {
    process.stdout.write(await runBench(options));
  } catch (error) {
    process.stderr.write(`error: ${(error as Error).message}\n`);
    process.exitCode = 1;
  } finally {
    killAll();
  }
}

if (import.meta.main) await main();
