/**
 * Build steps the benchmark needs before it measures: the C load generator, service and floor relay
 * (bench/native/*.c, gcc -O2 into bench/.build/, gitignored) and the compiled tunnel executables (dist/,
 * via scripts/build.ts) when they are missing or older than the sources.
 * @module
 */

import { existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { run } from "./procs.ts";

/** Repository root. */
export const ROOT = join(import.meta.dir, "..");
const BUILD = join(import.meta.dir, ".build");
/** The C sources (bench/native/). */
export const NATIVE = join(import.meta.dir, "native");

function mtime(path: string): number {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}

/** Paths of the compiled C helpers. */
export interface NativeTools {
  loadgen: string;
  service: string;
  /** The minimal multiplexing relay of the `mux-floor` provider. */
  muxfloor: string;
  /** The UDP section's echo service and request/response probe. */
  udpping: string;
}

/**
 * Compiles bench/native/loadgen.c, service.c, muxfloor.c and udpping.c when the binary is missing or older than its source.
 * @throws {Error} when gcc is missing or fails; the benchmark cannot run without them.
 */
export async function buildNative(): Promise<NativeTools> {
  if (!Bun.which("gcc"))
    throw new Error("gcc not found: install it (apt-get install gcc) to build bench/native/*.c");
  mkdirSync(BUILD, { recursive: true });
  const header = mtime(join(NATIVE, "sha256.h"));
  const tools: NativeTools = {
    loadgen: join(BUILD, "loadgen"),
    service: join(BUILD, "service"),
    muxfloor: join(BUILD, "muxfloor"),
    udpping: join(BUILD, "udpping"),
  };
  for (const [name, out] of Object.entries(tools)) {
    const source = join(NATIVE, `${name}.c`);
    if (mtime(out) > Math.max(mtime(source), header)) continue;
    const result = await run(["gcc", "-O2", "-Wall", "-pthread", "-o", out, source], 60_000);
    if (result.code !== 0) throw new Error(`gcc ${name}.c failed: ${result.stderr.trim()}`);
  }
  return tools;
}

/** Newest modification time of the files that go into the compiled tunnel executables. */
function sourcesMtime(): number {
  const files = ["server.ts", "client.ts", "package.json", "bun.lock", "scripts/build.ts"].map((f) =>
    join(ROOT, f),
  );
  try {
    for (const f of readdirSync(join(ROOT, "shared"), { recursive: true }))
      files.push(join(ROOT, "shared", String(f)));
  } catch {}
  return Math.max(...files.map(mtime));
}

/** The compiled tunnel executables. */
export const EXECUTABLES = {
  server: join(ROOT, "dist", "sockets-server"),
  client: join(ROOT, "dist", "sockets-client"),
};

/**
 * Runs `bun scripts/build.ts` when dist/ is missing or older than the sources.
 * @returns a note for the report: what was done, or why the compiled provider cannot run.
 */
export async function ensureExecutables(): Promise<{ ok: boolean; note: string }> {
  const built = Math.min(mtime(EXECUTABLES.server), mtime(EXECUTABLES.client));
  if (built > sourcesMtime() && existsSync(EXECUTABLES.server))
    return { ok: true, note: "dist/ is up to date" };
  const result = await run(["bun", join(ROOT, "scripts", "build.ts")], 300_000, { cwd: ROOT });
  if (result.code !== 0)
    return { ok: false, note: `bun scripts/build.ts failed: ${result.stderr.trim().split("\n")[0]}` };
  return { ok: true, note: "built dist/ with bun scripts/build.ts" };
}
