// @ts-check
/**
 * The two commands of README's first lines, for a machine with Node and npm only:
 *
 * ```sh
 * npm run demo    # node scripts/setup.mjs demo: Bun, `bun install`, then scripts/demo.ts
 * npm test        # node scripts/setup.mjs ci:   Bun, then .ci/run (apt packages, install, typecheck, lint, bun test)
 * ```
 *
 * Plain Node (no Bun, no dependencies), because it runs before either exists. Bun is the pinned
 * version: the `bun` on PATH when it is that version, else one installed with npm into
 * `~/.cache/sockets/bun-VERSION` (`SOCKETS_BUN_DIR` to move it) without root and without touching
 * this checkout's package.json or node_modules. npm 11 may skip the bun package's postinstall, which
 * places the binary: when the installed `bun` does not start, this runs that script itself (as .ci/run
 * does). The directory of the Bun it found goes first on PATH for everything it starts, so the demo,
 * the tests and .ci/run all use that Bun.
 *
 * Signals: Ctrl-C reaches every process of the terminal's group; this one waits for its child to
 * finish stopping and exits with the child's status.
 * @module
 */

import { spawn, spawnSync } from "node:child_process";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The Bun version the project pins (package.json's bun-types, .ci/run's BUN_VERSION). */
export const BUN_VERSION = "1.4.5";
const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/**
 * The version a `bun` executable reports, or undefined when it does not start.
 * @param {string} bun
 * @returns {string | undefined}
 */
function versionOf(bun) {
  const run = spawnSync(bun, ["--version"], { encoding: "utf8" });
  return run.status === 0 ? run.stdout.trim() : undefined;
}

/**
 * Finds or installs the pinned Bun; returns the path of its executable.
 * @returns {string}
 */
export function ensureBun() {
  if (versionOf("bun") === BUN_VERSION) {
    const which = spawnSync("sh", ["-c", "command -v bun"], { encoding: "utf8" });
    return which.stdout.trim() || "bun";
  }
  const dir = process.env.SOCKETS_BUN_DIR ?? join(homedir(), ".cache", "sockets", `bun-${BUN_VERSION}`);
  const bun = join(dir, "node_modules", ".bin", "bun");
  if (versionOf(bun) === BUN_VERSION) return bun;
  process.stderr.write(`setup: installing Bun ${BUN_VERSION} with npm into ${dir}\n`);
  const npm = process.platform === "win32" ? "npm.cmd" : "npm";
  const install = spawnSync(
    npm,
    [
      "install",
      "--prefix",
      dir,
      "--no-save",
      "--no-package-lock",
      "--no-audit",
      "--no-fund",
      `bun@${BUN_VERSION}`,
    ],
    { stdio: ["ignore", "inherit", "inherit"] },
  );
  if (install.status !== 0) throw new Error(`npm install bun@${BUN_VERSION} failed (exit ${install.status})`);
  if (versionOf(bun) !== BUN_VERSION) {
    // npm 11 may skip the package's postinstall, which puts the platform binary in place.
    const pkg = join(dir, "node_modules", "bun");
    process.stderr.write("setup: npm skipped Bun's install script; running it\n");
    spawnSync(process.execPath, ["install.js"], { cwd: pkg, stdio: "inherit" });
  }
  const version = versionOf(bun);
  if (version !== BUN_VERSION) throw new Error(`${bun} does not start (version: ${version ?? "none"})`);
  return bun;
}

/**
 * Runs a command to its end, its output on ours; resolves with its exit status. SIGINT and SIGTERM
 * are left to the child (the terminal sends Ctrl-C to it too), and passed on when sent to us alone.
 * @param {string} command
 * @param {string[]} args
 * @param {NodeJS.ProcessEnv} env
 * @returns {Promise<number>}
 */
function run(command, args, env) {
  const child = spawn(command, args, { cwd: ROOT, env, stdio: "inherit" });
  /** @param {NodeJS.Signals} signal */
  const forward = (signal) => {
    if (child.exitCode === null) child.kill(signal);
  };
  process.on("SIGINT", forward);
  process.on("SIGTERM", forward);
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      process.off("SIGINT", forward);
      process.off("SIGTERM", forward);
      resolve(code ?? (signal === "SIGINT" ? 130 : 1));
    });
  });
}

async function main() {
  const [what, ...rest] = process.argv.slice(2);
  if (what !== "demo" && what !== "ci") {
    process.stderr.write("usage: node scripts/setup.mjs demo|ci [options for scripts/demo.ts]\n");
    return 2;
  }
  const bun = ensureBun();
  const env = {
    ...process.env,
    PATH: `${dirname(bun)}${process.platform === "win32" ? ";" : ":"}${process.env.PATH ?? ""}`,
  };
  if (what === "ci") return run("bash", [join(ROOT, ".ci", "run")], env);
  // As CI installs: exactly what bun.lock says (a no-op when node_modules already matches it).
  const installed = await run(bun, ["install", "--frozen-lockfile"], env);
  if (installed !== 0) return installed;
  return run(bun, [join(ROOT, "scripts", "demo.ts"), ...rest], env);
}

// Run as a command (not when imported for ensureBun).
if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url))
  main().then(
    (code) => process.exit(code),
    (error) => {
      process.stderr.write(`setup: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exit(1);
    },
  );
