/**
 * The server's config file at start-up (issue 18, server side), through real processes: every bad
 * input is one line naming FILE:LINE:COL where known, exit 2; options come from the file with the
 * command line winning; `hash-token`'s output works as a user's token_hash; a server with users does
 * not warn that anyone may connect, one with neither users nor key does.
 */

import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { connectControl, UpgradeRefused } from "../support/control-client.ts";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  expectOneLineError,
  runToExit,
  setupFile,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { configFolder, testUser, usersToml, writeConfig } from "../support/server-config.ts";
import { startEchoService } from "../support/services.ts";
import { echoThrough, freePort } from "../support/sockets.ts";

setupFile();

const SERVER = ["bun", "server.ts"];
const HASH = "a".repeat(64);
const user = (lines: string) => `[[users]]\nname = "alice"\n${lines}`;

describe("bad input at start-up: one line with the place, exit 2", () => {
  const dir = configFolder();
  const cases: [string, string, RegExp][] = [
    ["not TOML", "port = \n", /bad\.toml:1:8: not valid TOML/],
    [
      "an unknown key",
      'domain = "x"\nmax_tunels = 3\n',
      /bad\.toml:2:1: unknown key 'max_tunels' \(did you mean max_tunnels\?\)/,
    ],
    ["a wrong type (switch)", 'quiet = "yes"\n', /bad\.toml:1:1: quiet must be true or false/],
    ["a wrong type (number)", "port = true\n", /bad\.toml:1:1: port must be a number/],
    ["a port out of range", "\nport = 70000\n", /bad\.toml:2:1: port: '70000' is not a port \(0-65535\)/],
    [
      "a user's port out of range",
      user(`token_hash = "${HASH}"\ntcp_ports = ["20000-20010", 70000]`),
      /bad\.toml:4:1: tcp_ports of user alice: '70000' is not a port/,
    ],
    [
      "two users with the same name",
      `${user(`token_hash = "${HASH}"`)}\n${user(`token_hash = "${"b".repeat(64)}"`)}`,
      /bad\.toml:5:1: user 'alice' is defined twice \(first at \S+bad\.toml:2:1\)/,
    ],
    [
      "a user without a token_hash",
      user("max_tunnels = 2"),
      /bad\.toml:1:1: user alice has no token_hash \(make one with: bun server.ts hash-token\)/,
    ],
    [
      "a malformed token_hash",
      user('token_hash = "my-secret-token"'),
      /bad\.toml:3:1: token_hash of user alice is not a sha256 hex digest/,
    ],
    ["a user without a name", `[[users]]\ntoken_hash = "${HASH}"`, /bad\.toml:1:1: a user without a name/],
    [
      "an unknown key in [[users]]",
      user(`token_hash = "${HASH}"\nmax_tunels = 2`),
      /bad\.toml:4:1: unknown key 'max_tunels' in \[\[users\]\] \(did you mean max_tunnels\?\)/,
    ],
    [
      "a wrong type in [[users]]",
      user(`token_hash = "${HASH}"\nrandom_subdomain = "no"`),
      /bad\.toml:4:1: random_subdomain of user alice must be true or false/,
    ],
    [
      "a bad subdomain pattern",
      user(`token_hash = "${HASH}"\nsubdomains = ["Alice.*"]`),
      /bad\.toml:4:1: subdomains of user alice: "Alice\.\*" is not a pattern/,
    ],
    [
      "a malformed CIDR in a user's allow list",
      user(`token_hash = "${HASH}"\nallow = ["10.0.0.0/8", "10.0.0"]`),
      /bad\.toml:4:1: allow of user alice: '10\.0\.0' is not an IP address or CIDR range/,
    ],
    [
      "an IPv4 /33 in a user's deny list",
      user(`token_hash = "${HASH}"\ndeny = "192.0.2.0/33"`),
      /bad\.toml:4:1: deny of user alice: '192\.0\.2\.0\/33': \/33 is longer than an IPv4 address \(at most \/32\)/,
    ],
    [
      "a bad CIDR in the server's own deny list",
      'deny = ["::1/129"]\n',
      /bad\.toml:1:1: deny: '::1\/129': \/129 is longer than an IPv6 address \(at most \/128\)/,
    ],
    [
      "two users with one token",
      `${user(`token_hash = "${HASH}"`)}\n[[users]]\nname = "bob"\ntoken_hash = "${HASH.toUpperCase()}"`,
      /bad\.toml:6:1: users alice and bob have the same token_hash/,
    ],
  ];
  for (const [what, text, pattern] of cases)
    test(what, async () => {
      const file = writeConfig(dir, "bad.toml", text);
      const result = await runToExit([...SERVER, "--config", file, "--port", "0"]);
      expectOneLineError(result, pattern);
      expect(result.code).toBe(2);
      // A hash, or a token pasted where the hash goes, is never echoed.
      expect(result.stderr).not.toContain("my-secret-token");
      expect(result.stderr).not.toContain(HASH);
    });

  test("an unreadable file", async () => {
    const result = await runToExit([...SERVER, "--config", join(dir, "missing.toml")]);
    expectOneLineError(result, /missing\.toml: cannot read the config file \(ENOENT\)/);
    expect(result.code).toBe(2);
  });
});

test("options come from the file, the command line wins; users need their token, no open-server warning", async () => {
  const alice = testUser("alice");
  const file = writeConfig(
    configFolder(),
    "server.toml",
    `domain = "example.test"\nport = ${freePort()}\nmax_tunnels = 1\n${usersToml([alice])}`,
  );
  // startServerProcess passes --port 0 and --host: they win over the file's port.
  const server = await startServerProcess(["--config", file]);
  await server.waitFor(/listening on ws:\/\/127\.0\.0\.1:\d+ \(domain example\.test\)/, 5000);
  expect(server.stderr()).toMatch(/listening on ws:\/\/127\.0\.0\.1:\d+ \(domain example\.test\)/);
  expect(server.stderr()).not.toMatch(/any client may open tunnels/);
  await expect(connectControl(server.url, undefined)).rejects.toBeInstanceOf(UpgradeRefused);
  const a = await connectControl(server.url, alice.token);
  expect(a.hello.maxTunnelsPerClient).toBe(1);
});

test("SOCKETS_SINGLE_API_KEY beside users: one more user; neither: the warning stays", async () => {
  const alice = testUser("alice");
  const file = writeConfig(configFolder(), "server.toml", usersToml([alice]));
  const both = await startServerProcess(["--config", file], { SOCKETS_SINGLE_API_KEY: "the-single-key" });
  await connectControl(both.url, "the-single-key");
  await connectControl(both.url, alice.token);
  const open = await startServerProcess([]);
  // The warning follows the listening line: wait for it rather than read stderr at once.
  await open.waitFor(/WARNING: no SOCKETS_SINGLE_API_KEY set: any client may open tunnels/, 5000);
});

describe("hash-token", () => {
  test("of a given token: its sha256, one line", async () => {
    const result = await runToExit([...SERVER, "hash-token", "some token"]);
    expect(result).toMatchObject({ code: 0, stderr: "" });
    expect(result.stdout).toBe(`${createHash("sha256").update("some token").digest("hex")}\n`);
  });

  test("without one: a fresh token and its hash, which work as a user's token_hash with a real client", async () => {
    const result = await runToExit([...SERVER, "hash-token"]);
    expect(result.code).toBe(0);
    const token = /^token: (\S+)$/m.exec(result.stdout)?.[1] as string;
    const hash = /^token_hash: ([0-9a-f]{64})$/m.exec(result.stdout)?.[1] as string;
    expect(token.length).toBeGreaterThanOrEqual(43);
    expect(hash).toBe(createHash("sha256").update(token).digest("hex"));
    const file = writeConfig(
      configFolder(),
      "server.toml",
      `[[users]]\nname = "gina"\ntoken_hash = "${hash}"`,
    );
    const server = await startServerProcess(["--config", file]);
    const service = startEchoService();
    const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`], [], {
      SOCKETS_API_KEY: token,
    });
    const data = randomData(256 * 1024);
    expect(await echoThrough((client.tunnels[0] as { port: number }).port, data)).toBe(sha256(data));
  });

  test("two tokens: one line, exit 2", async () => {
    const result = await runToExit([...SERVER, "hash-token", "a", "b"]);
    expectOneLineError(result, /hash-token takes at most one TOKEN/);
    expect(result.code).toBe(2);
  });
});
