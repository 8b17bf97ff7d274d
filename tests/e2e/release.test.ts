/**
 * Release executables (`bun run build --all`, scripts/build.ts) and `--version`: the linux-arm64
 * client runs under qemu-user and carries bytes through an x64 server with sha256 intact; the musl
 * build is a musl executable (and runs when this machine has a musl C++ runtime); a platform that
 * cannot be built is named and the rest built, with SHA256SUMS for what was. Cross builds are cached
 * in the temp directory while the sources do not change (the first one downloads Bun's target
 * runtimes from the npm registry into Bun's cache).
 */

import { beforeAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PLATFORMS } from "../../scripts/build.ts";
import { PROTOCOL_VERSION } from "../../shared/wire/protocol.ts";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  defer,
  expectOneLineError,
  ROOT,
  runToExit,
  setupFile,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { echoThrough, freePort } from "../support/sockets.ts";

setupFile();

const QEMU = Bun.which("qemu-aarch64-static");
const ARM64_SYSROOT = "/usr/aarch64-linux-gnu";
const MUSL_LOADER = "/lib/ld-musl-x86_64.so.1";
/** Where the cross builds this file needs are kept between runs. */
const CACHE = join(tmpdir(), "sockets-release-test");
const PACKAGE_VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string })
  .version;
/** `--version`'s shape, for a role. */
const versionPattern = (role: string, platform: string) =>
  new RegExp(
    `^sockets-${role} ${PACKAGE_VERSION.replaceAll(".", "\\.")} \\(protocol ${PROTOCOL_VERSION}, commit [0-9a-f]{12}(-dirty)?, bun \\S+ ${platform}\\)\\n$`,
  );

/** Newest modification time (ms) of the files the executables are built from. */
function newestSource(): number {
  const files = ["server.ts", "client.ts", "package.json", "bun.lock", "scripts/build.ts"];
  for (const name of readdirSync(join(ROOT, "shared"), { recursive: true }))
    if (String(name).endsWith(".ts")) files.push(join("shared", String(name)));
  return Math.max(...files.map((f) => join(ROOT, f)).map((f) => (existsSync(f) ? statSync(f).mtimeMs : 0)));
}

const ARM64_CLIENT = join(CACHE, "sockets-client-linux-arm64");
const MUSL_CLIENT = join(CACHE, "sockets-client-linux-x64-musl");

beforeAll(async () => {
  const built = [ARM64_CLIENT, MUSL_CLIENT].every(
    (f) => existsSync(f) && statSync(f).mtimeMs > newestSource(),
  );
  if (built) return;
  const result = await runToExit(
    ["bun", "scripts/build.ts", "--platforms", "linux-arm64,linux-x64-musl", "--out", CACHE],
    {},
    170_000,
  );
  expect(result.code, result.stderr).toBe(0);
  expect(result.stdout).toContain(`built ${ARM64_CLIENT}`);
  expect(result.stdout).toContain(`built ${MUSL_CLIENT}`);
}, 180_000);

test("--version on both roles from source: package version, protocol version, commit", async () => {
  for (const role of ["server", "client"]) {
    for (const flag of ["--version", "-V"]) {
      const result = await runToExit(["bun", `${role}.ts`, flag]);
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout).toMatch(versionPattern(role, `${process.platform}-${process.arch}`));
    }
  }
});

test("SHA256SUMS lists what was built, with the files' digests", () => {
  const sums = readFileSync(join(CACHE, "SHA256SUMS"), "utf8").trim().split("\n");
  expect(sums).toHaveLength(4);
  for (const line of sums) {
    const [digest, name] = line.split("  ") as [string, string];
    expect(digest).toBe(sha256(readFileSync(join(CACHE, name))));
  }
  expect(readdirSync(CACHE).filter((name) => name.endsWith(".map"))).toEqual([]);
});

test.skipIf(QEMU === null || !existsSync(ARM64_SYSROOT))(
  "linux-arm64 client under qemu-user: --version, then a tunnel through an x64 server with sha256 intact",
  async () => {
    const qemu = [QEMU as string, "-L", ARM64_SYSROOT, ARM64_CLIENT];
    const version = await runToExit([...qemu, "--version"], {}, 30_000);
    expect(version.code, version.stderr).toBe(0);
    expect(version.stdout).toMatch(versionPattern("client", "linux-arm64"));

    const service = startEchoService();
    const server = await startServerProcess();
    const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`], [], {}, qemu);
    const port = (client.tunnels[0] as { port: number }).port;
    const payloads = [randomData(1024 * 1024), randomData(3 * 1024 * 1024 + 17)];
    const hashes = await Promise.all(payloads.map((p) => echoThrough(port, p)));
    expect(hashes).toEqual(payloads.map((p) => sha256(p)));
    expect((await server.health()).tunnels).toBe(1);
    client.kill("SIGINT");
    expect(await client.exited(15_000)).toBe(0);
  },
  90_000,
);

test("linux-x64-musl client: a musl executable; it runs under Debian's musl loader when a musl libstdc++ is there", async () => {
  // PT_INTERP of the ELF names the loader: musl's, not glibc's.
  const head = readFileSync(MUSL_CLIENT).subarray(0, 4096).toString("latin1");
  expect(head).toContain(MUSL_LOADER);
  expect(head).not.toContain("ld-linux-x86-64.so.2");
  if (!existsSync(MUSL_LOADER)) return;
  const result = await runToExit([MUSL_CLIENT, "--version"], {}, 30_000);
  if (result.code === 0) expect(result.stdout).toMatch(versionPattern("client", "linux-x64"));
  // Debian's musl package has no C++ runtime built for musl (Alpine's libstdc++/libgcc): the one
  // thing that stops it here, and nothing else.
  else expect(result.stderr).toMatch(/^Error loading shared library libstdc\+\+\.so\.6/);
});

test("a platform Bun cannot build is named; the others are built and summed", async () => {
  const out = mkdtempSync(join(tmpdir(), "sockets-release-fail-"));
  defer(() => rmSync(out, { recursive: true, force: true }));
  // An empty runtime cache and a download URL nobody answers: only the host platform can be built.
  const result = await runToExit(
    ["bun", "scripts/build.ts", "--platforms", "linux-x64,linux-arm64", "--out", out],
    {
      BUN_INSTALL_CACHE_DIR: join(out, "empty-cache"),
      BUN_COMPILE_TARGET_TARBALL_URL: `http://127.0.0.1:${freePort()}/bun.tgz`,
    },
    120_000,
  );
  expect(result.code).toBe(1);
  expect(result.stderr).toMatch(/^FAILED linux-arm64: .*bun-linux-aarch64/m);
  expect(result.stderr).toMatch(/error: not built: linux-arm64; built 1 of 2 platforms\n$/);
  const sums = readFileSync(join(out, "SHA256SUMS"), "utf8");
  expect(sums).toBe(
    ["server", "client"]
      .map(
        (role) =>
          `${sha256(readFileSync(join(out, `sockets-${role}-linux-x64`)))}  sockets-${role}-linux-x64\n`,
      )
      .join(""),
  );
  expect(existsSync(join(out, "sockets-client-linux-arm64"))).toBe(false);
}, 130_000);

test("an unknown platform is refused with one line (exit 2)", async () => {
  const result = await runToExit(["bun", "scripts/build.ts", "--platforms", "linux-x64,freebsd-x64"]);
  expectOneLineError(
    result,
    new RegExp(`^error: --platforms: unknown platform 'freebsd-x64' \\(one of ${PLATFORMS.join(", ")}\\)$`),
  );
  expect(result.code).toBe(2);
});
