/**
 * Test support, server config files: users with fresh tokens (and their sha256, as a config file
 * holds them), TOML for their `[[users]]` entries, and config files in a temporary folder removed at
 * the end of the test file.
 * @module
 */

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hashToken } from "../../shared/server/users.ts";
import { defer } from "./processes.ts";

/** A user of a test server: its token (what a client presents) and its entry's extra lines. */
export interface TestUser {
  name: string;
  token: string;
  /** `key = value` lines for limits, as TOML. */
  limits: string[];
}

/** A user with a fresh random token. */
export function testUser(name: string, limits: string[] = []): TestUser {
  return { name, token: `${name}-${crypto.randomUUID()}`, limits };
}

/** The `[[users]]` entries of `users`, as TOML. */
export function usersToml(users: TestUser[]): string {
  return users
    .map((user) =>
      ["[[users]]", `name = "${user.name}"`, `token_hash = "${hashToken(user.token)}"`, ...user.limits].join(
        "\n",
      ),
    )
    .join("\n\n");
}

/** A temporary folder for config files, removed by the test file's cleanup. */
export function configFolder(): string {
  const dir = mkdtempSync(join(tmpdir(), "sockets-config-"));
  defer(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes `text` to `name` in `dir` and returns its path. */
export function writeConfig(dir: string, name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, `${text}\n`);
  return file;
}
