/**
 * `bun bench/profile.ts`: where a tunnel's processes spend their time during one load-generator run.
 * Starts the C service and one provider's tunnel, attaches `perf record` (or `strace -c`) to each tunnel
 * process, runs one load, and prints per process: kernel / libc / runtime / JIT shares and the top
 * symbols (perf), or the syscall counts (strace).
 *
 * ```sh
 * bun bench/profile.ts                                   # sockets, 1 GiB visitor → service, perf
 * bun bench/profile.ts --provider ssh --load down
 * bun bench/profile.ts --load connrate --tool strace
 * ```
 * @module
 */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { buildNative } from "./native.ts";
import { killAll, run, spawn } from "./procs.ts";
import { PROVIDER_NAMES, PROVIDERS, type ProviderName } from "./providers.ts";

/** Load-generator arguments (after the port) for each load. */
export const LOADS: Record<string, string[]> = {
  up: ["up", String(1024 ** 3), "1"],
  down: ["down", String(1024 ** 3), "1"],
  up8: ["up", String(1024 ** 3), "8"],
  down8: ["down", String(1024 ** 3), "8"],
  latency: ["latency", "20000", "1000", "64"],
  connrate: ["connrate", "10000", "32"],
};

/** Summarises one perf.data file: shares by shared object, then the top symbols. */
async function perfSummary(file: string): Promise<string> {
  const report = (sort: string) =>
    run(["perf", "report", "-i", file, "--no-children", "--sort", sort, "--stdio", "-g", "none"], 60_000);
  const lines = (text: string, n: number) =>
    text
      .split("\n")
      .filter((l) => l.trim() && !l.startsWith("#"))
      .slice(0, n)
      .join("\n");
  const [dso, sym] = await Promise.all([report("dso"), report("sym")]);
  return `${lines(dso.stdout, 6)}\n  top symbols:\n${lines(sym.stdout, 12)}`;
}

/** Profiles one provider under one load; resolves with the printable summary. */
export async function profile(
  provider: ProviderName,
  load: string,
  tool: "perf" | "strace",
): Promise<string> {
  if (!Bun.which(tool))
    throw new Error(`${tool} not found (apt-get install ${tool === "perf" ? "linux-perf" : "strace"})`);
  const args = LOADS[load];
  if (!args) throw new Error(`unknown load '${load}' (one of ${Object.keys(LOADS).join(", ")})`);
  const native = await buildNative();
  const dir = mkdtempSync(join(tmpdir(), "sockets-profile-"));
  const service = spawn([native.service, "2"], { stdin: true });
  try {
    const [, port] = await service.waitFor(/port (\d+)/, 10_000);
    const skip = await PROVIDERS[provider].prepare();
    if (skip) throw new Error(`${provider}: ${skip}`);
    const tunnel = await PROVIDERS[provider].start(Number(port));
    try {
      const lg = [native.loadgen, args[0] as string, String(tunnel.port), ...args.slice(1)];
      // Warm-up (JIT, buffers) with a smaller load of the same kind, before the tracers attach.
      const p = String(tunnel.port);
      const warm =
        load === "latency"
          ? ["latency", p, "2000", "100", "64"]
          : load === "connrate"
            ? ["connrate", p, "500", "32"]
            : [args[0] as string, p, String(256 * 1024 ** 2), args[2] as string];
      await run([native.loadgen, ...warm], 120_000);
      const procs = tunnel.processes();
      const tracers = procs.map(({ role, pid }) =>
        spawn(
          tool === "perf"
            ? ["perf", "record", "-g", "-F", "999", "-p", String(pid), "-o", join(dir, `${role}.${pid}`)]
            : ["strace", "-c", "-f", "-p", String(pid), "-o", join(dir, `${role}.${pid}`)],
        ),
      );
      await Bun.sleep(700);
      const result = await run(lg, 300_000);
      for (const t of tracers) await t.stop(10_000);
      const out = [`${provider}, load ${load}: ${result.stdout.trim()}`];
      for (const { role, pid } of procs) {
        const file = join(dir, `${role}.${pid}`);
        out.push(`\n== ${role} (pid ${pid})`);
        out.push(
          tool === "perf"
            ? await perfSummary(file)
            : (await Bun.file(file).text()).split("\n").slice(0, 14).join("\n"),
        );
      }
      return out.join("\n");
    } finally {
      await tunnel.stop();
    }
  } finally {
    await service.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      provider: { type: "string", default: "sockets" },
      load: { type: "string", default: "up" },
      tool: { type: "string", default: "perf" },
    },
    strict: true,
  });
  process.once("SIGINT", () => {
    killAll();
    process.exit(130);
  });
  try {
    if (!PROVIDER_NAMES.includes(values.provider as ProviderName))
      throw new Error(`--provider: one of ${PROVIDER_NAMES.join(", ")}`);
    if (values.tool !== "perf" && values.tool !== "strace") throw new Error("--tool: perf or strace");
    process.stdout.write(`${await profile(values.provider as ProviderName, values.load, values.tool)}\n`);
  } catch (error) {
    process.stderr.write(`error: ${(error as Error).message}\n`);
    process.exitCode = 1;
  } finally {
    killAll();
  }
}
