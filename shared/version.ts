/**
 * What `--version` prints: the package's version, the wire protocol's version and the git commit the
 * code was built from. A compiled executable carries its commit as a build-time define
 * (`SOCKETS_BUILD_COMMIT`, set by scripts/build.ts); run from a checkout, the commit is read from git.
 * @module
 */

import { spawnSync } from "node:child_process";
import { realpathSync } from "node:fs";
import { dirname } from "node:path";
import packageJson from "../package.json" with { type: "json" };
import { PROTOCOL_VERSION } from "./wire/protocol.ts";

/** Set by `bun build --define` in scripts/build.ts; absent when run from source. */
declare const SOCKETS_BUILD_COMMIT: string | undefined;

/** The package version (package.json). */
export const PACKAGE_VERSION: string = packageJson.version;

/** The commit this code was built from: the build's define, else `git rev-parse`, else "unknown". */
export function buildCommit(): string {
  if (typeof SOCKETS_BUILD_COMMIT === "string") return SOCKETS_BUILD_COMMIT;
  return gitCommit(dirname(import.meta.dir)) ?? "unknown";
}

/**
 * The checkout's commit (12 hex digits, `-dirty` when tracked files changed), or undefined when `root`
 * is not a git checkout or git is missing (an installed package).
 */
export function gitCommit(root: string): string | undefined {
  const run = (args: string[]) => {
    try {
      const result = spawnSync("git", args, { cwd: root, encoding: "utf8", timeout: 5000 });
      return result.status === 0 ? result.stdout.trim() : undefined;
    } catch {
      return undefined;
    }
  };
  // Only this repository's own checkout: an installed package inside someone's project is not it.
  const top = run(["rev-parse", "--show-toplevel"]);
  if (top === undefined || realpathSync(top) !== realpathSync(root)) return undefined;
  const commit = run(["rev-parse", "--short=12", "HEAD"]);
  if (commit === undefined) return undefined;
  const dirty = run(["status", "--porcelain", "--untracked-files=no"]);
  return dirty ? `${commit}-dirty` : commit;
}

/** The `--version` line: `sockets-client 0.1.0 (protocol 3, commit 0123456789ab, bun 1.4.5 linux-x64)`. */
export function versionLine(role: "server" | "client"): string {
  return `sockets-${role} ${PACKAGE_VERSION} (protocol ${PROTOCOL_VERSION}, commit ${buildCommit()}, bun ${Bun.version} ${process.platform}-${process.arch})\n`;
}
