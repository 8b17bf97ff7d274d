/**
 * `bun bench/ab.ts DIR_A DIR_B RUNS MODE ARGS…`: A/B comparison of two checkouts of sockets on one
 * load-generator mode, runs alternated A B A B … against one service; prints each side's median, then
 * each side's server and client RSS, minor page faults and CPU seconds.
 * For judging a relay change; `bun run bench` is the full comparison.
 * @module
 */

import { join } from "node:path";
import { buildNative } from "./native.ts";
import { CLK_TCK, cpuSample, killAll, minorFaults, rssKiB, run, spawn } from "./procs.ts";
import { startSockets, type Tunnel } from "./providers.ts";

const [dirA, dirB, runsText, mode, ...rest] = process.argv.slice(2);
if (!dirA || !dirB || !runsText || !mode) {
  console.error(
    "usage: bun bench/ab.ts DIR_A DIR_B RUNS MODE ARGS...   (env KEY: figure; ENV_A/ENV_B: environment, SA_A/SA_B: server flags of each side; PIN=S,C: server on CPU S, client on CPU C)",
  );
  process.exit(2);
}
// Pinning server and client to two CPUs removes most of the scheduler's noise (the two on one CPU relay
// ~40% slower), so that small differences show in fewer runs. The C processes are left to float: pinned
// beside them, the runs varied more.
const runs = Number(runsText);
if (!(Number.isInteger(runs) && runs >= 1 && runs <= 100)) {
  console.error(`RUNS: expected a whole number from 1 to 100, got '${runsText}'`);
  process.exit(2);
}
const [pinServer, pinClient] = (process.env.PIN ?? "").split(",");
const pinned = (cpu: string | undefined, cmd: string[]) => (cpu ? ["taskset", "-c", cpu, ...cmd] : cmd);
const key = process.env.KEY ?? (mode === "connrate" ? "rate" : mode === "latency" ? "p50" : "gbps");
const tools = await buildNative();
for (const signal of ["SIGINT", "SIGTERM"] as const)
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
try {
  const service = spawn([tools.service], { stdin: true });
  const servicePort = Number((await service.waitFor(/port (\d+)/, 10_000))[1]);
  const tunnels: Tunnel[] = [];
  for (const [i, dir] of [dirA, dirB].entries()) {
    const extraEnv = Object.fromEntries(
      (process.env[i ? "ENV_B" : "ENV_A"] ?? "")
        .split(" ")
        .filter(Boolean)
        .map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]),
    );
    const serverFlags = (process.env[i ? "SA_B" : "SA_A"] ?? "").split(" ").filter(Boolean);
    tunnels.push(
      await startSockets(
        pinned(pinServer, ["bun", join(dir, "server.ts"), ...serverFlags]),
        pinned(pinClient, ["bun", join(dir, "client.ts")]),
        servicePort,
        { extraEnv, cwd: dir },
      ),
    );
  }
  const figures: number[][] = [[], []];
  for (let r = 0; r < runs; r++) {
    for (const side of [0, 1]) {
      // A run that hangs (a stuck tunnel) is killed after 5 minutes instead of waiting forever.
      const p = await run([tools.loadgen, mode, String(tunnels[side]?.port), ...rest], 300_000);
      if (p.code !== 0) throw new Error(`loadgen exited with ${p.code}: ${p.stderr.trim()}`);
      const result = JSON.parse(p.stdout.trim().split("\n").pop() as string);
      (figures[side] as number[]).push(result[key]);
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const side of [0, 1]) {
    const xs = figures[side] as number[];
    console.log(`${side ? "B" : "A"} ${key} median ${median(xs)}  [${xs.join(" ")}]`);
    for (const { role, pid } of (tunnels[side] as Tunnel).processes()) {
      const [minflt, ticks] = [minorFaults(pid), cpuSample(pid).total];
      console.log(
        `  ${role}: rss ${(rssKiB(pid) / 1024).toFixed(0)} MiB, minor faults ${minflt}, cpu ${ticks / CLK_TCK} s`,
      );
    }
  }
} finally {
  killAll();
}
