/**
 * `bun bench/idle-rss.ts [--server CMD] [--client CMD] [--runs N]`: each role's idle RSS split into
 * file-backed pages (Bun's executable mapped in) and anonymous memory (heap, JIT, allocator), after
 * the bench's 200-connection warm-up (issue 30's "memory at rest"), and the proportional set size
 * (the executable's pages, shared by both roles and any other Bun process, counted by their share). The commands are space-separated
 * (default `bun server.ts`, `bun client.ts`); the median of N starts is printed.
 * @module
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { killAll, spawn } from "./procs.ts";
import { startSockets } from "./providers.ts";

const ROOT = join(import.meta.dir, "..");

/** Memory of a process, in KiB. */
interface Parts {
  rss: number;
  anon: number;
  file: number;
  /** Proportional set size: pages shared with other processes (Bun's executable) count by their share. */
  pss: number;
}

/** VmRSS, RssAnon, RssFile and Pss of a process, in KiB. */
function rssParts(pid: number): Parts {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (text: string, name: string) =>
    Number(text.match(new RegExp(`${name}:\\s+(\\d+)`))?.[1] ?? 0);
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  return {
    rss: field(status, "VmRSS"),
    anon: field(status, "RssAnon"),
    file: field(status, "RssFile") + field(status, "RssShmem"),
    pss: field(rollup, "Pss"),
  };
}

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    server: { type: "string", default: "bun server.ts" },
    client: { type: "string", default: "bun client.ts" },
    runs: { type: "string", default: "3" },
    cwd: { type: "string", default: ROOT },
  },
});
const native = {
  loadgen: join(import.meta.dir, ".build/loadgen"),
  service: join(import.meta.dir, ".build/service"),
};
const rows: Record<string, Parts[]> = { server: [], client: [] };
const service = spawn([native.service, "2"], { stdin: true });
try {
  const [, servicePort] = await service.waitFor(/port (\d+)/, 10_000);
  for (let run = 0; run < Number(values.runs); run++) {
    const tunnel = await startSockets(
      (values.server as string).split(" "),
      (values.client as string).split(" "),
      Number(servicePort),
      { cwd: values.cwd as string },
    );
    try {
      const warm = spawn([native.loadgen, "connrate", String(tunnel.port), "200", "16"], {
        env: { BENCH_TIMEOUT: "60" },
      });
      await warm.proc.exited;
      await Bun.sleep(1000);
      for (const { role, pid } of tunnel.processes()) rows[role]?.push(rssParts(pid));
    } finally {
      await tunnel.stop();
    }
  }
} finally {
  await service.stop();
  killAll();
}
const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const mib = (kib: number) => (kib / 1024).toFixed(1);
let total = 0;
for (const [role, list] of Object.entries(rows)) {
  const rss = median(list.map((r) => r.rss));
  total += rss;
  process.stdout.write(
    `${role}: RSS ${mib(rss)} MiB (anon ${mib(median(list.map((r) => r.anon)))}, file ${mib(median(list.map((r) => r.file)))}; PSS ${mib(median(list.map((r) => r.pss)))})\n`,
  );
}
process.stdout.write(`both: ${mib(total)} MiB\n`);
