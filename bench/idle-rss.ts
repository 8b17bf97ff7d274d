/**
 * `bun bench/idle-rss.ts [--server CMD] [--client CMD] [--runs N]`: each role's idle RSS split into
 * file-backed pages (Bun's executable mapped in) and anonymous memory (heap, JIT, allocator), after
 * the bench's 200-connection warm-up (issue 30's "memory at rest"). The commands are space-separated
 * (default `bun server.ts`, `bun client.ts`); the median of N starts is printed.
 * @module
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { killAll, spawn } from "./procs.ts";
import { startSockets } from "./providers.ts";

const ROOT = join(import.meta.dir, "..");

/** VmRSS, RssAnon and RssFile of a process, in KiB. */
function rssParts(pid: number): { rss: number; anon: number; file: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string) => Number(status.match(new RegExp(`${name}:\\s+(\\d+)`))?.[1] ?? 0);
  return { rss: field("VmRSS"), anon: field("RssAnon"), file: field("RssFile") + field("RssShmem") };
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
const rows: Record<string, { rss: number; anon: number; file: number }[]> = { server: [], client: [] };
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
    `${role}: RSS ${mib(rss)} MiB (anon ${mib(median(list.map((r) => r.anon)))}, file ${mib(median(list.map((r) => r.file)))})\n`,
  );
}
process.stdout.write(`both: ${mib(total)} MiB\n`);
