/**
 * Builds the single executables with `bun build --compile`: for this machine `dist/sockets-server` and
 * `dist/sockets-client`; with `--all` both roles for every release platform
 * (`dist/sockets-client-linux-arm64`, `dist/sockets-server-windows-x64.exe`, …) and `dist/SHA256SUMS`.
 * Other platforms' runtimes are downloaded by Bun from the npm registry once (kept in Bun's install
 * cache). Each executable carries the git commit it was built from (`--version`).
 *
 * ```sh
 * bun run build                                   # for this machine
 * bun run build --all                             # every platform, with SHA256SUMS
 * bun run build --platforms linux-arm64,darwin-arm64 --out /tmp/release
 * bun run build --target bun-linux-x64-baseline   # this machine's role pair, for CPUs without AVX2
 * ```
 * A platform Bun cannot build (its runtime cannot be downloaded, …) is named on stderr; the others are
 * still built, and the exit code is 1.
 * @module
 */

import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { gitCommit } from "../shared/version.ts";

/** The role entry points and the executable each becomes. */
export const EXECUTABLES = [
  { entry: "server.ts", out: "dist/sockets-server" },
  { entry: "client.ts", out: "dist/sockets-client" },
] as const;

/** The release platforms `--all` builds, by the name used in file names (Bun's target is `bun-NAME`). */
export const PLATFORMS = [
  "linux-x64",
  "linux-x64-musl",
  "linux-arm64",
  "darwin-x64",
  "darwin-arm64",
  "windows-x64",
] as const;

/** One release platform. */
export type Platform = (typeof PLATFORMS)[number];

const ROOT = resolve(import.meta.dir, "..");

/** Compiles one entry point to `outfile`; throws with Bun's first error line on failure. */
async function compile(entry: string, outfile: string, target: string | undefined, commit: string) {
  const cmd = ["bun", "build", "--compile", "--minify", "--sourcemap", entry, "--outfile", outfile];
  // The commit as a compile-time constant: shared/version.ts prints it for --version.
  cmd.push("--define", `SOCKETS_BUILD_COMMIT=${JSON.stringify(commit)}`);
  if (target) cmd.push("--target", target);
  const proc = Bun.spawn(cmd, { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  const [code, stdout, stderr] = await Promise.all([
    proc.exited,
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
  ]);
  if (code !== 0) {
    const lines = `${stderr}\n${stdout}`.split("\n").map((line) => line.trim());
    const why = lines.find((line) => /error|fail|cannot|unable/i.test(line)) ?? lines.find(Boolean);
    throw new Error(why ?? `bun build exited with ${code}`);
  }
}

/** Compiles every role for this machine (or `target`); resolves with the paths written. */
export async function buildExecutables(target?: string): Promise<string[]> {
  const commit = gitCommit(ROOT) ?? "unknown";
  const written: string[] = [];
  for (const { entry, out } of EXECUTABLES) {
    try {
      await compile(entry, out, target, commit);
    } catch (error) {
      throw new Error(`bun build ${entry} failed: ${(error as Error).message}`);
    }
    written.push(out);
  }
  return written;
}

/** What a release build did: the files written (paths under `out`) and the platforms that failed. */
export interface ReleaseResult {
  written: string[];
  failed: { platform: Platform; reason: string }[];
}

/** The file name of one role's executable for one platform. */
export function executableName(role: "server" | "client", platform: Platform): string {
  return `sockets-${role}-${platform}${platform.startsWith("windows") ? ".exe" : ""}`;
}

/**
 * Builds both roles for each platform into `out` and writes `out/SHA256SUMS` (`sha256sum -c` reads it)
 * for what was built. A platform that fails is reported and the rest still built.
 */
export async function buildRelease(
  platforms: readonly Platform[],
  out: string,
  report: (line: string) => void = () => {},
): Promise<ReleaseResult> {
  mkdirSync(out, { recursive: true });
  const commit = gitCommit(ROOT) ?? "unknown";
  const result: ReleaseResult = { written: [], failed: [] };
  for (const platform of platforms) {
    const files: string[] = [];
    try {
      for (const { entry } of EXECUTABLES) {
        const role = entry === "server.ts" ? "server" : "client";
        const file = join(out, executableName(role, platform));
        await compile(entry, file, `bun-${platform}`, commit);
        // The source map is embedded in the executable; the copy Bun writes beside it is not shipped.
        rmSync(`${file}.map`, { force: true });
        files.push(file);
      }
      result.written.push(...files);
      for (const file of files) report(`built ${file}`);
    } catch (error) {
      result.failed.push({ platform, reason: (error as Error).message });
      report(`FAILED ${platform}: ${(error as Error).message}`);
    }
  }
  const sums = result.written.map((file) => {
    const digest = createHash("sha256").update(readFileSync(file)).digest("hex");
    return `${digest}  ${basename(file)}\n`;
  });
  writeFileSync(join(out, "SHA256SUMS"), sums.join(""));
  return result;
}

/** Reads `--platforms a,b`: every name must be a release platform. */
export function parsePlatforms(text: string): Platform[] {
  const names = text.split(",").map((name) => name.trim());
  for (const name of names)
    if (!(PLATFORMS as readonly string[]).includes(name))
      throw new Error(`--platforms: unknown platform '${name}' (one of ${PLATFORMS.join(", ")})`);
  return names as Platform[];
}

async function main(): Promise<void> {
  let values: { target?: string; all?: boolean; platforms?: string; out?: string };
  let platforms: Platform[] | undefined;
  try {
    values = parseArgs({
      options: {
        target: { type: "string" },
        all: { type: "boolean" },
        platforms: { type: "string" },
        out: { type: "string" },
      },
      strict: true,
    }).values;
    if (values.all && values.platforms) throw new Error("--all and --platforms: give one");
    if (values.target && (values.all || values.platforms))
      throw new Error("--target builds for one Bun target; --all and --platforms name release platforms");
    if (values.platforms !== undefined) platforms = parsePlatforms(values.platforms);
    else if (values.all) platforms = [...PLATFORMS];
  } catch (error) {
    process.stderr.write(`error: ${(error as Error).message}\n`);
    process.exit(2);
  }
  if (platforms === undefined) {
    try {
      for (const out of await buildExecutables(values.target)) process.stdout.write(`built ${out}\n`);
    } catch (error) {
      process.stderr.write(`error: ${(error as Error).message}\n`);
      process.exit(1);
    }
    return;
  }
  const out = resolve(values.out ?? join(ROOT, "dist"));
  const result = await buildRelease(platforms, out, (line) =>
    line.startsWith("FAILED") ? process.stderr.write(`${line}\n`) : process.stdout.write(`${line}\n`),
  );
  process.stdout.write(`wrote ${join(out, "SHA256SUMS")} (${result.written.length} files)\n`);
  if (result.failed.length > 0) {
    const names = result.failed.map((failure) => failure.platform).join(", ");
    process.stderr.write(
      `error: not built: ${names}; built ${platforms.length - result.failed.length} of ${platforms.length} platforms\n`,
    );
    process.exit(1);
  }
}

if (import.meta.main) await main();
