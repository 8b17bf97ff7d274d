/**
 * The failover section of `bun run bench` (`--measures failover`, issue 29), also runnable alone
 * (`bun bench/failover.ts [--runs N] [--json FILE]`): how long an HTTP name stays unanswered through a
 * node that stays up when its client's node is SIGKILLed, SIGSTOPped, or cut off from Redis (a TCP proxy
 * between that node and Redis stops passing bytes), at the default timings (lease 5 s, heartbeat 10 s).
 * The measurement is the one tests/e2e/cluster-failover.test.ts asserts loosely (tests/support/failover.ts):
 * a real `redis-server`, a node on 127.0.0.2 that stays up, and per run a new node on 127.0.0.1 whose
 * client (given both nodes) holds a fresh name; a visitor asks through 127.0.0.2 every 100 ms. Every
 * process is stopped by PID at the end of each run and on failure.
 * @module
 */

import { existsSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { type ClusterNodeProcess, startClusterNode } from "../tests/support/cluster.ts";
import {
  describeGap,
  FAULTS,
  type FailoverGap,
  type Fault,
  measureFailover,
} from "../tests/support/failover.ts";
import { cleanup, deferContinue } from "../tests/support/processes.ts";
import { type RedisProcess, startRedis } from "../tests/support/redis.ts";

/** What the section measured: every run's gap per fault, and what failed or was skipped. */
export interface FailoverResult {
  runs: number;
  gaps: Partial<Record<Fault, FailoverGap[]>>;
  notes: string[];
  elapsedSeconds: number;
}

/** Options of {@link runFailover}. */
export interface FailoverOptions {
  /** Runs per fault (faults alternate within a round). */
  runs: number;
  log: (line: string) => void;
}

const REDIS_SERVER = Bun.which("redis-server") ?? "/usr/bin/redis-server";

/** What each fault does, for the table. */
const FAULT_NAMES: Record<Fault, string> = {
  killed: "owner node SIGKILLed",
  frozen: "owner node SIGSTOPped",
  partitioned: "owner cut off from Redis (TCP proxy cut)",
};

/** Runs the section; failures become notes once it started. */
export async function runFailover(options: FailoverOptions): Promise<FailoverResult> {
  const started = performance.now();
  const result: FailoverResult = { runs: options.runs, gaps: {}, notes: [], elapsedSeconds: 0 };
  if (!existsSync(REDIS_SERVER)) {
    result.notes.push(`skipped: ${REDIS_SERVER} not found (apt-get install redis-server)`);
    options.log(`failover: ${result.notes[0]}`);
    return result;
  }
  try {
    const redis: RedisProcess = await startRedis();
    const steady: ClusterNodeProcess = await startClusterNode("127.0.0.2", redis.url);
    deferContinue(steady);
    for (let run = 0; run < options.runs; run++)
      for (const fault of FAULTS) {
        try {
          const gap = await measureFailover(steady, redis, fault, `${fault}${run}`);
          result.gaps[fault] = [...(result.gaps[fault] ?? []), gap];
          options.log(`failover: ${fault} run ${run + 1}: ${describeGap(gap)}`);
        } catch (error) {
          result.notes.push(`${fault} run ${run + 1} failed: ${(error as Error).message.split("\n")[0]}`);
          options.log(`failover: ${fault} run ${run + 1} FAILED: ${(error as Error).message}`);
        }
      }
  } catch (error) {
    result.notes.push(`failed: ${(error as Error).message.split("\n")[0]}`);
    options.log(`failover: FAILED: ${(error as Error).message}`);
  } finally {
    await cleanup();
  }
  result.elapsedSeconds = (performance.now() - started) / 1000;
  return result;
}

/** Seconds with two decimals. */
const seconds = (ms: number) => (ms / 1000).toFixed(2);

/** The markdown section: one row per fault, the gap's range and median over the runs, and what was met. */
export function failoverReport(result: FailoverResult): string {
  const lines = [
    `### Failover at the default timings (lease 5 s, heartbeat 10 s; ${result.runs} run(s) per fault, ${result.elapsedSeconds.toFixed(0)} s)`,
    "",
    "The gap: the longest time without an answer from the client's app, for a visitor asking every 100 ms through a node that stays up, from the fault until the client moved and was answered through its new node.",
    "",
    "| fault | gap, median (s) | gap, every run (s) | answers other than the app's, all runs |",
    "| --- | ---: | --- | --- |",
  ];
  for (const fault of FAULTS) {
    const gaps = result.gaps[fault] ?? [];
    if (gaps.length === 0) {
      lines.push(`| ${FAULT_NAMES[fault]} | – | – | not measured |`);
      continue;
    }
    const sorted = gaps.map((g) => g.gapMs).sort((a, b) => a - b);
    const median = sorted[Math.floor((sorted.length - 1) / 2)] as number;
    const seen: Record<string, number> = {};
    for (const gap of gaps) for (const [k, n] of Object.entries(gap.seen)) seen[k] = (seen[k] ?? 0) + n;
    const met = Object.entries(seen)
      .map(([k, n]) => `${n} × ${k}`)
      .join(", ");
    lines.push(
      `| ${FAULT_NAMES[fault]} | ${seconds(median)} | ${gaps.map((g) => seconds(g.gapMs)).join(", ")} | ${met || "none"} |`,
    );
  }
  for (const note of result.notes) lines.push("", `- ${note}`);
  return `${lines.join("\n")}\n`;
}

const HELP = `Usage: bun bench/failover.ts [--runs N] [--json FILE]

The failover section of bun run bench alone: a redis-server, a node that stays up, and per run a node
whose client holds a name; the gap a visitor through the node that stays up sees when that node is
SIGKILLed, SIGSTOPped or cut off from Redis. Needs redis-server (apt-get install redis-server).
--runs N   runs per fault, 1 to 20 (default 3)
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: {
      runs: { type: "string", default: "3" },
      json: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const runs = Number(values.runs);
  if (!(Number.isInteger(runs) && runs >= 1 && runs <= 20)) {
    process.stderr.write("error: --runs: expected 1 to 20\n");
    process.exit(2);
  }
  const abort = async (signal: string) => {
    process.stderr.write(`${signal}: stopping every process the benchmark started\n`);
    await cleanup();
    process.exit(130);
  };
  process.once("SIGINT", () => void abort("SIGINT"));
  process.once("SIGTERM", () => void abort("SIGTERM"));
  const result = await runFailover({ runs, log: (line) => process.stderr.write(`${line}\n`) });
  process.stdout.write(failoverReport(result));
  if (values.json) writeFileSync(values.json, `${JSON.stringify(result, null, 2)}\n`);
}

if (import.meta.main) await main();
