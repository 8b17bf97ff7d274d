/**
 * `bun bench/budget-memory.ts [--visitors N] [--mib N] [--budget BYTES] [--root DIR]`: does the server's
 * memory follow its budgets (issue 30)? A server and a client (default budgets unless `--budget`)
 * tunnel to a local service that never reads; N visitors each try to send N MiB through it. The
 * tunnel takes bytes until the client's budget is spent, then stops reading them. Prints the server's
 * RSS idle, at the peak, and 10 s after every stream closed, against the targets: peak at most idle +
 * client budget + 25%, and 10 s after within 20% of idle. Idle is taken after a warm-up transfer
 * (8 MiB into the same sink), as a server that has carried traffic. `BUDGET_MEMORY_TRACE=1` prints
 * RSS and buffered bytes as the flood and the close go.
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_CLIENT_BUDGET } from "../shared/relay/budget.ts";
import { startStalledSink } from "../tests/support/services.ts";
import { type Pumped, pumpPattern } from "../tests/support/sockets.ts";
import { killAll, type Proc, rssKiB, spawn } from "./procs.ts";

const MiB = 1024 * 1024;

/** What one run measured (KiB for RSS, bytes for buffered). */
export interface BudgetMemoryResult {
  visitors: number;
  budget: number;
  idleKiB: number;
  peakKiB: number;
  /** Largest `/health` buffered.sent seen: what the budgets count. */
  bufferedPeak: number;
  /** RSS 10 s after the last stream closed. */
  afterKiB: number;
  /** Bytes the visitors got into the tunnel. */
  taken: number;
  /** Peak ≤ idle + budget × 1.25 and after ≤ idle × 1.2. */
  peakMet: boolean;
  afterMet: boolean;
}

/** Bytes every visitor sends: 1 MiB of random bytes, repeated. */
const PATTERN = new Uint8Array(MiB).map(() => (Math.random() * 256) | 0);
/** Writes the rest of `size` bytes of {@link PATTERN} as far as the socket takes them, then half-closes. */
const pump = (socket: import("bun").Socket<Pumped>) => pumpPattern(socket, PATTERN);

interface Health {
  streams: number;
  buffered: { received: number; sent: number };
}

/** Polls until `check` holds (every 50 ms, at most `ms`). */
async function until(check: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const started = performance.now();
  while (performance.now() - started < ms) {
    if (await check()) return;
    await Bun.sleep(50);
  }
  throw new Error(`${what}: not within ${ms} ms`);
}

/**
 * One run: starts the service, server and client, measures, stops everything it started.
 * @param root the checkout whose server.ts and client.ts run (before/after comparisons).
 * @param env extra environment for both roles.
 */
export async function runBudgetMemory({
  visitors = 40,
  mibEach = 64,
  budget,
  root = join(import.meta.dir, ".."),
  env = {},
  serverCommand,
  log = (line: string) => process.stderr.write(`${line}\n`),
  onServer,
}: {
  visitors?: number;
  mibEach?: number;
  budget?: number;
  root?: string;
  env?: Record<string, string>;
  /** The server's command instead of `bun server.ts` (a compiled executable, `bun --smol`). */
  serverCommand?: string[];
  log?: (line: string) => void;
  /** Told the server's PID once it listens (a probe of its memory maps, a profiler). */
  onServer?: (pid: number) => void;
} = {}): Promise<BudgetMemoryResult> {
  const sink = startStalledSink();
  const procs: Proc[] = [];
  const sockets: import("bun").Socket<Pumped>[] = [];
  try {
    const roleEnv = { SOCKETS_SINGLE_API_KEY: "", SOCKETS_API_KEY: "", SOCKETS_SERVER: "", ...env };
    const budgetArgs = budget === undefined ? [] : ["--client-budget", String(budget)];
    const server = spawn(
      [...(serverCommand ?? ["bun", "server.ts"]), "--host", "127.0.0.1", "--port", "0", ...budgetArgs],
      { cwd: root, env: roleEnv },
    );
    procs.push(server);
    const [, url] = await server.waitFor(/listening on (ws:\/\/\S+)/, 20_000);
    onServer?.(server.pid);
    const client = spawn(
      ["bun", "client.ts", "--expose", `127.0.0.1:${sink.port}`, "--server", url as string],
      { cwd: root, env: roleEnv },
    );
    procs.push(client);
    const port = Number((await client.waitFor(/exposed with tunnel id \S+, url: \S+:(\d+)/, 20_000))[1]);
    const healthUrl = `${(url as string).replace(/^ws/, "http")}/health`;
    const health = async () =>
      (await (await fetch(healthUrl, { signal: AbortSignal.timeout(5000) })).json()) as Health;
    // Idle: after a warm-up (the relay's code compiled, the first buffers made: a server that has
    // carried traffic before, as every server soon has), settled for 2 s.
    for (let i = 0; i < 3; i++) await health();
    const warm = await Bun.connect<Pumped>({
      hostname: "127.0.0.1",
      port,
      allowHalfOpen: true,
      data: { sent: 0, size: 8 * MiB },
      socket: { open: pump, drain: pump, data() {}, error() {} },
    });
    await until(() => warm.data.sent === 8 * MiB, 20_000, "warm-up sent");
    warm.terminate();
    await until(async () => (await health()).streams === 0, 20_000, "warm-up stream closed");
    await Bun.sleep(3000);
    const idleKiB = rssKiB(server.pid);
    let peakKiB = idleKiB;
    const sampler = setInterval(() => {
      peakKiB = Math.max(peakKiB, rssKiB(server.pid));
    }, 20);
    let bufferedPeak = 0;
    try {
      for (let i = 0; i < visitors; i++)
        sockets.push(
          await Bun.connect<Pumped>({
            hostname: "127.0.0.1",
            port,
            allowHalfOpen: true,
            data: { sent: 0, size: mibEach * MiB },
            socket: { open: pump, drain: pump, data() {}, error() {} },
          }),
        );
      // Until the buffered bytes stop growing for 3 s (at most 30 s).
      let grewAt = performance.now();
      const started = performance.now();
      while (performance.now() - started < 30_000 && performance.now() - grewAt < 3000) {
        const sent = (await health()).buffered.sent;
        if (process.env.BUDGET_MEMORY_TRACE)
          log(
            `  flood: RSS ${(rssKiB(server.pid) / 1024).toFixed(1)} MiB (peak ${(peakKiB / 1024).toFixed(1)}), buffered ${(sent / MiB).toFixed(1)} MiB`,
          );
        if (sent > bufferedPeak * 1.01 + 64 * 1024) grewAt = performance.now();
        bufferedPeak = Math.max(bufferedPeak, sent);
        await Bun.sleep(100);
      }
    } catch (error) {
      clearInterval(sampler);
      throw error;
    }
    const taken = sockets.reduce((sum, s) => sum + s.data.sent, 0);
    for (const s of sockets.splice(0)) s.terminate();
    const closedAt = performance.now();
    await until(
      async () => {
        const h = await health().catch(() => null);
        if (process.env.BUDGET_MEMORY_TRACE)
          log(
            `  +${((performance.now() - closedAt) / 1000).toFixed(2)} s: RSS ${(rssKiB(server.pid) / 1024).toFixed(1)} MiB, ${h ? `${h.streams} streams, buffered ${(h.buffered.sent / MiB).toFixed(1)} MiB` : "no /health answer"}`,
          );
        return h?.streams === 0;
      },
      20_000,
      "streams closed",
    );
    // The peak counts the close too: resets free buffers and resumed sockets read what was queued.
    await Bun.sleep(10_000);
    clearInterval(sampler);
    const afterKiB = rssKiB(server.pid);
    peakKiB = Math.max(peakKiB, afterKiB);
    const limit = budget ?? DEFAULT_CLIENT_BUDGET;
    const result: BudgetMemoryResult = {
      visitors,
      budget: limit,
      idleKiB,
      peakKiB,
      bufferedPeak,
      afterKiB,
      taken,
      peakMet: peakKiB <= idleKiB + (limit / 1024) * 1.25,
      afterMet: afterKiB <= idleKiB * 1.2,
    };
    log(
      `budget memory: server idle ${(idleKiB / 1024).toFixed(1)} MiB, peak ${(peakKiB / 1024).toFixed(1)} MiB ` +
        `(buffered ${(bufferedPeak / MiB).toFixed(1)} MiB of a ${(limit / MiB).toFixed(0)} MiB budget), ` +
        `10 s after ${(afterKiB / 1024).toFixed(1)} MiB`,
    );
    return result;
  } finally {
    for (const s of sockets) s.terminate();
    for (const p of procs.reverse()) await p.stop();
    sink.stop();
  }
}

/** The report's table for one or more labelled runs. */
export function budgetMemoryReport(rows: [string, BudgetMemoryResult][]): string {
  const mib = (kib: number) => (kib / 1024).toFixed(1);
  const lines = [
    "| server | visitors | budget MiB | idle MiB | peak MiB (target ≤ idle + budget × 1.25) | buffered peak MiB | 10 s after MiB (target ≤ idle × 1.2) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const [label, r] of rows)
    lines.push(
      `| ${label} | ${r.visitors} | ${(r.budget / MiB).toFixed(0)} | ${mib(r.idleKiB)} | ${mib(r.peakKiB)} (${r.peakMet ? "met" : "**not met**"}: ≤ ${mib(r.idleKiB + (r.budget / 1024) * 1.25)}) | ${(r.bufferedPeak / MiB).toFixed(1)} | ${mib(r.afterKiB)} (${r.afterMet ? "met" : "**not met**"}: ≤ ${mib(r.idleKiB * 1.2)}) |`,
    );
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      visitors: { type: "string" },
      mib: { type: "string" },
      budget: { type: "string" },
      root: { type: "string" },
    },
  });
  try {
    const result = await runBudgetMemory({
      visitors: values.visitors === undefined ? undefined : Number(values.visitors),
      mibEach: values.mib === undefined ? undefined : Number(values.mib),
      budget: values.budget === undefined ? undefined : Number(values.budget),
      root: values.root,
    });
    process.stdout.write(`${budgetMemoryReport([[values.root ?? "this checkout", result]])}\n`);
  } catch (error) {
    process.stderr.write(`error: ${(error as Error).message}\n`);
    process.exitCode = 1;
  } finally {
    killAll();
  }
}
