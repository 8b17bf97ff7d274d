/**
 * `bun bench/hop-cpu.ts [--rounds N] [--roots DIR,DIR]`: what the cluster's extra hop costs each process
 * in CPU, for judging a change to the hop on a shared machine where wall-clock figures move with the
 * neighbours' load (issue 29, item 5). Per checkout: a redis-server, node A (n1, 127.0.0.1), node B
 * (n2, 127.0.0.2) and a client on B exposing the C service; the C load generator sends 512 MiB up, then
 * down, on one connection, through A (over the A→B node link) and straight at B. For each run: the CPU
 * (user + system, from /proc) each of n1, n2 and the client spent, in ms per 512 MiB, and the wall time.
 * With several checkouts (`--roots`, e.g. a copy of the commit before a change and this one) each runs
 * its own cluster, and every load alternates between them, so slow drift hits both alike.
 * @module
 */

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  buildConnectTo,
  type Client,
  linkUp,
  type Node,
  startClient,
  startNode,
  startRedis,
} from "./cluster.ts";
import { buildNative, ROOT } from "./native.ts";
import { CLK_TCK, killAll, type Proc, run, spawn, waitForPort } from "./procs.ts";

/** Bytes per load: the unit the figures are given in. */
const BYTES = 512 * 1024 ** 2;

/** One checkout's cluster. */
interface Setup {
  root: string;
  a: Node;
  b: Node;
  client: Client;
}

/** CPU ms a process spent so far (user + system). */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
}

/** Starts redis, both nodes and the client of checkout `root`; resolves once A's link to B is up. */
async function setUp(root: string, servicePort: number, procs: Proc[], dirs: string[]): Promise<Setup> {
  const dir = mkdtempSync(join(tmpdir(), "sockets-hop-redis-"));
  dirs.push(dir);
  const redis = await startRedis(dir);
  procs.push(redis.proc);
  const a = await startNode("n1", "127.0.0.1", redis.url, root);
  procs.push(a.proc);
  const b = await startNode("n2", "127.0.0.2", redis.url, root);
  procs.push(b.proc);
  const client = await startClient("client-b", b, servicePort, root);
  procs.push(client.proc);
  await waitForPort(client.port, 10_000);
  for (let i = 0; i < 200 && !(await linkUp(a, b)); i++) await Bun.sleep(50);
  return { root, a, b, client };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    strict: true,
    options: { rounds: { type: "string", default: "3" }, roots: { type: "string" } },
  });
  const rounds = Number(values.rounds);
  if (!(Number.isInteger(rounds) && rounds >= 1 && rounds <= 20)) {
    process.stderr.write("error: --rounds: expected 1 to 20\n");
    process.exit(2);
  }
  const roots = values.roots?.split(",") ?? [ROOT];
  const native = await buildNative();
  const preload = await buildConnectTo();
  const procs: Proc[] = [];
  const dirs: string[] = [];
  process.once("SIGINT", () => {
    killAll();
    process.exit(130);
  });
  try {
    const service = spawn([native.service, "2"], { stdin: true });
    procs.push(service);
    const servicePort = Number((await service.waitFor(/port (\d+)/, 10_000))[1]);
    const setups: Setup[] = [];
    for (const root of roots) setups.push(await setUp(root, servicePort, procs, dirs));
    process.stdout.write(
      "| checkout | load | path | n1 ms | n2 ms | client ms | wall ms |\n| --- | --- | --- | --: | --: | --: | --: |\n",
    );
    for (let round = 0; round < rounds; round++)
      for (const direction of ["up", "down"])
        for (const path of ["via A", "direct at B"])
          for (const setup of setups) {
            const pids = [setup.a.proc.pid, setup.b.proc.pid, setup.client.proc.pid];
            const before = pids.map(cpuMs);
            const started = performance.now();
            const env = {
              LD_PRELOAD: preload,
              BENCH_CONNECT_ADDR: path === "via A" ? setup.a.ip : setup.b.ip,
            };
            const result = await run(
              [native.loadgen, direction, String(setup.client.port), String(BYTES), "1"],
              120_000,
              { env },
            );
            const wall = performance.now() - started;
            const moved = Number(
              (JSON.parse(result.stdout.trim().split("\n").pop() ?? "{}") as { bytes?: number }).bytes,
            );
            if (result.code !== 0 || moved !== BYTES)
              throw new Error(`load generator: exit ${result.code}, ${moved} bytes: ${result.stderr.trim()}`);
            const spent = pids.map((pid, i) => (cpuMs(pid) - (before[i] as number)).toFixed(0));
            process.stdout.write(
              `| ${setup.root} | ${direction} | ${path} | ${spent.join(" | ")} | ${wall.toFixed(0)} |\n`,
            );
          }
  } finally {
    killAll();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) await main();
