/**
 * The single executables: `bun scripts/build.ts` (what `bun run build` runs) writes
 * dist/sockets-server and dist/sockets-client, and they work end to end like `bun server.ts` and
 * `bun client.ts`. An existing dist/ is reused when it is newer than every source file.
 */

import { beforeAll, expect, test } from "bun:test";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  expectOneLineError,
  ROOT,
  runToExit,
  setupFile,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { echoThrough } from "../support/sockets.ts";

setupFile();

const SERVER = join(ROOT, "dist", "sockets-server");
const CLIENT = join(ROOT, "dist", "sockets-client");

/** Newest modification time (ms) of the files the executables are built from. */
function newestSource(): number {
  const files = ["server.ts", "client.ts", "package.json", "bun.lock", "scripts/build.ts"];
  for (const name of readdirSync(join(ROOT, "shared"), { recursive: true }))
    if (String(name).endsWith(".ts")) files.push(join("shared", String(name)));
  return Math.max(
    ...files
      .map((f) => join(ROOT, f))
      .filter(existsSync)
      .map((f) => statSync(f).mtimeMs),
  );
}

/** True when both executables exist and are newer than every source. */
function upToDate(): boolean {
  if (!existsSync(SERVER) || !existsSync(CLIENT)) return false;
  return Math.min(statSync(SERVER).mtimeMs, statSync(CLIENT).mtimeMs) > newestSource();
}

beforeAll(async () => {
  if (upToDate()) return;
  const result = await runToExit(["bun", "scripts/build.ts"], {}, 120_000);
  expect(result.code, result.stderr).toBe(0);
  expect(result.stdout).toContain("built dist/sockets-server");
  expect(result.stdout).toContain("built dist/sockets-client");
  expect(upToDate()).toBe(true);
}, 130_000);

test("both executables exist and are executable", () => {
  for (const file of [SERVER, CLIENT]) {
    const mode = statSync(file).mode;
    expect(mode & 0o111).not.toBe(0);
  }
});

test("--help on both exits 0 with usage on stdout; a bad flag is one line on stderr", async () => {
  for (const file of [SERVER, CLIENT]) {
    const help = await runToExit([file, "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: /);
    expectOneLineError(await runToExit([file, "--bogus"]), /unknown option --bogus/);
  }
});

test("--version on both: package and protocol version, and the commit built from (a build-time define)", async () => {
  for (const [file, role] of [
    [SERVER, "server"],
    [CLIENT, "client"],
  ]) {
    const result = await runToExit([file as string, "--version"]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(
      new RegExp(
        `^sockets-${role} \\d+\\.\\d+\\.\\d+\\S* \\(protocol \\d+, commit [0-9a-f]{12}(-dirty)?, bun `,
      ),
    );
  }
});

test("end to end: compiled server and client, exposed line, echo with sha256, /health", async () => {
  const service = startEchoService();
  const server = await startServerProcess([], {}, { cmd: [SERVER] });
  const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`], [], {}, [CLIENT]);
  expect(client.stdout()).toMatch(/^exposed with tunnel id [A-Za-z0-9_-]+, url: localhost:\d+\n$/);
  const port = (client.tunnels[0] as { port: number }).port;

  const payloads = Array.from({ length: 4 }, () => randomData(4 * 1024 * 1024));
  const hashes = await Promise.all(payloads.map((p) => echoThrough(port, p)));
  expect(hashes).toEqual(payloads.map((p) => sha256(p)));

  const response = await fetch(`http://127.0.0.1:${server.port}/health`);
  expect(response.status).toBe(200);
  expect(response.headers.get("content-type")).toContain("application/json");
  expect(await response.json()).toMatchObject({ clients: 1, tunnels: 1 });

  client.kill("SIGINT");
  expect(await client.exited(5000)).toBe(0);
  server.kill("SIGTERM");
  expect(await server.exited(5000)).toBe(0);
});
