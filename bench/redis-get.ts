/**
 * `bun bench/redis-get.ts [--providers LIST] [--repeat N] [--requests N]`: a real client of small
 * requests through each tunnel (issue 30): `redis-benchmark -t get -c 50` against a private
 * `redis-server` on 127.0.0.1, directly and through each provider (default direct, rathole,
 * sockets; sockets-base with `--sockets-root DIR`), runs alternated, median requests/s and its ratio to
 * direct. Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools); skipped with a
 * note when they are missing.
 * @module
 */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { atExit, freePort, killAll, type Proc, run, spawn, waitForPort } from "./procs.ts";
import { PROVIDERS, type ProviderName, setSocketsBase, type Tunnel } from "./providers.ts";

/** Requests/s per provider: every run's figure and the median. */
export type RedisResult = Partial<Record<ProviderName, { runs: number[]; median: number }>>;

/** Runs redis-benchmark GET through each provider; null when redis is not installed. */
export async function runRedisGet({
  providers = ["direct", "rathole", "sockets"] as ProviderName[],
  repeat = 3,
  requests = 100_000,
  log = (line: string) => process.stderr.write(`${line}\n`),
}: {
  providers?: ProviderName[];
  repeat?: number;
  requests?: number;
  log?: (line: string) => void;
} = {}): Promise<RedisResult | null> {
  if (!Bun.which("redis-server") || !Bun.which("redis-benchmark")) {
    log("redis: skipped: redis-server or redis-benchmark missing (apt-get install redis-server redis-tools)");
    return null;
  }
  const dir = mkdtempSync(join(tmpdir(), "bench-redis-"));
  const forget = atExit(() => rmSync(dir, { recursive: true, force: true }));
  const port = freePort();
  const redis: Proc = spawn([
    "redis-server",
    "--bind",
    "127.0.0.1",
    "--port",
    String(port),
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    dir,
  ]);
  const tunnels: [ProviderName, Tunnel][] = [];
  try {
    await waitForPort(port, 10_000);
    await run(["redis-cli", "-p", String(port), "set", "key:__rand_int__", "x"], 5000).catch(() => {});
    for (const name of providers) {
      const skip = await PROVIDERS[name].prepare();
      if (skip) {
        log(`redis: ${name} skipped: ${skip}`);
        continue;
      }
      tunnels.push([name, await PROVIDERS[name].start(port)]);
    }
    const bench = async (p: number) => {
      const out = await run(
        [
          "redis-benchmark",
          "-h",
          "127.0.0.1",
          "-p",
          String(p),
          "-t",
          "get",
          "-c",
          "50",
          "-n",
          String(requests),
          "-q",
        ],
        120_000,
      );
      const m = out.stdout.match(/GET: ([\d.]+) requests per second/);
      if (!m) throw new Error(`redis-benchmark: no figure in ${out.stdout.slice(-200)}`);
      return Number(m[1]);
    };
    for (const [, tunnel] of tunnels) await bench(tunnel.port); // warm-up
    const result: RedisResult = {};
    for (let i = 0; i < repeat; i++)
      for (const [name, tunnel] of tunnels) {
        const entry = result[name] ?? { runs: [], median: 0 };
        result[name] = entry;
        entry.runs.push(await bench(tunnel.port));
      }
    for (const entry of Object.values(result)) {
      const sorted = [...entry.runs].sort((a, b) => a - b);
      entry.median = sorted[Math.floor((sorted.length - 1) / 2)] as number;
    }
    log(
      `redis GET -c 50: ${Object.entries(result)
        .map(([n, e]) => `${n} ${Math.round(e.median)}/s`)
        .join(", ")}`,
    );
    return result;
  } finally {
    for (const [, tunnel] of tunnels.reverse()) await tunnel.stop();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
    forget();
  }
}

/** The report's table. */
export function redisReport(result: RedisResult): string {
  const direct = result.direct?.median;
  const lines = [
    "| provider | GET requests/s (median) | ÷ direct (target for sockets ≥ 0.55) | runs |",
    "| --- | ---: | ---: | --- |",
  ];
  for (const [name, e] of Object.entries(result))
    lines.push(
      `| ${name} | ${Math.round(e.median).toLocaleString("en-US")} | ${direct ? (e.median / direct).toFixed(2) : "—"} | ${e.runs.map((r) => Math.round(r)).join(", ")} |`,
    );
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      providers: { type: "string" },
      repeat: { type: "string" },
      requests: { type: "string" },
      "sockets-root": { type: "string" },
    },
  });
  setSocketsBase(values["sockets-root"]);
  try {
    const result = await runRedisGet({
      providers: values.providers?.split(",") as ProviderName[] | undefined,
      repeat: values.repeat === undefined ? undefined : Number(values.repeat),
      requests: values.requests === undefined ? undefined : Number(values.requests),
    });
    if (result) process.stdout.write(`${redisReport(result)}\n`);
  } catch (error) {
    process.stderr.write(`error: ${(error as Error).message}\n`);
    process.exitCode = 1;
  } finally {
    killAll();
  }
}
