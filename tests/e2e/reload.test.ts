/**
 * Reloading the server's config file (issue 18, server side), through real processes: a token
 * revoked by SIGHUP mid-transfer (that user's client closes with 4001 and its visitors are cut while
 * another user's 64 MiB echo carries on, sha256 intact), a removed user, changed limits, a bad file
 * (the old configuration stays whole), options that need a restart, and --watch.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { connectControl, UpgradeRefused } from "../support/control-client.ts";
import { MiB } from "../support/hashing.ts";
import {
  count,
  eventually,
  type ServerProcess,
  setupFile,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { configFolder, type TestUser, testUser, usersToml, writeConfig } from "../support/server-config.ts";
import { startEchoService } from "../support/services.ts";
import { closedWithin, connectVisitor, streamEcho } from "../support/sockets.ts";

setupFile();

/** Lines a reload ends with: applied, or refused. */
const RELOAD_DONE = /configuration reloaded|reload \(\S+\) failed/g;

/** A server on a config file, and a way to rewrite the file and reload it by SIGHUP. */
async function serverWithConfig(
  text: string,
  args: string[] = [],
): Promise<{ server: ServerProcess; file: string; reload(text: string): Promise<string> }> {
  const dir = configFolder();
  const file = writeConfig(dir, "server.toml", text);
  const server = await startServerProcess(["--config", file, ...args]);
  return {
    server,
    file,
    async reload(next: string) {
      const before = count(server.stderr(), RELOAD_DONE);
      writeConfig(dir, "server.toml", next);
      server.kill("SIGHUP");
      await eventually(() => count(server.stderr(), RELOAD_DONE) > before, 5000, "reload logged");
      return server
        .stderr()
        .split("\n")
        .filter((line) => /reload|restart/.test(line))
        .slice(-3)
        .join("\n");
    },
  };
}

describe("a token revoked by SIGHUP mid-transfer", () => {
  const alice = testUser("alice");
  const bob = testUser("bob");
  const service = startEchoService();

  test("alice's connections close with 4001 and her visitor is cut; bob's 64 MiB echo carries on intact", async () => {
    const { server, reload } = await serverWithConfig(`health_detail = true\n${usersToml([alice, bob])}`);
    const target = [`127.0.0.1:${service.port}`];
    const aliceClient = await startClientProcess(server.url, target, [], { SOCKETS_API_KEY: alice.token });
    const bobClient = await startClientProcess(server.url, target, [], { SOCKETS_API_KEY: bob.token });
    const aliceControl = await connectControl(server.url, alice.token);

    // Both visitors stream; each pauses after 8 MiB until the reload happened.
    let release: () => void = () => {};
    const reloaded = new Promise<void>((resolve) => {
      release = resolve;
    });
    const size = 64 * MiB;
    const gate = { gateAfter: 8 * MiB, gate: () => reloaded };
    const aliceStream = streamEcho((aliceClient.tunnels[0] as { port: number }).port, size, gate);
    const bobStream = streamEcho((bobClient.tunnels[0] as { port: number }).port, size, gate);
    // Cut: the connection errs, or ends (FIN) short of what was sent.
    const aliceCut = aliceStream.done.then(
      (result) => (result.bytes < size ? `ended after ${result.bytes} bytes` : "completed"),
      (error: Error) => error.message,
    );
    await eventually(
      () => aliceStream.echoed() >= 4 * MiB && bobStream.echoed() >= 4 * MiB,
      20_000,
      "both streaming",
    );

    const changed: TestUser = { ...alice, token: `${alice.token}-new` };
    const logged = await reload(`health_detail = true\n${usersToml([changed, bob])}`);
    expect(logged).toMatch(
      /configuration reloaded: users: new token for alice; 2 sessions closed \(4001 revoked\)/,
    );
    release();

    expect(await aliceControl.closed()).toEqual({
      code: 4001,
      reason: "user alice's token was changed",
    });
    expect(await aliceCut).toMatch(/closed early|failed|ended after/);
    const echoed = await bobStream.done;
    expect(echoed.bytes).toBe(size);
    expect(echoed.received).toBe(echoed.sent);

    // alice's client does not come back with the old token; bob's never left.
    expect(await aliceClient.exited(15_000)).not.toBe(0);
    expect(aliceClient.stderr()).toContain("user alice's token was changed");
    expect(bobClient.proc.exitCode).toBeNull();
    await server.waitFor(/closing client \S+ \(user alice\): user alice's token was changed/, 5000);
    await expect(connectControl(server.url, alice.token)).rejects.toBeInstanceOf(UpgradeRefused);
    const fresh = await connectControl(server.url, changed.token);
    expect(fresh.hello.resumed).toBe(false);
    const health = (await server.health()) as unknown as { users: Record<string, { clients: number }> };
    expect(health.users).toMatchObject({ alice: { clients: 1 }, bob: { clients: 1 } });
    expect(server.stderr()).not.toContain(alice.token);
  });
});

describe("reload", () => {
  const alice = testUser("alice", ['subdomains = ["alice-*"]', "max_tunnels = 2"]);
  const carol = testUser("carol");
  let server: ServerProcess;
  let reload: (text: string) => Promise<string>;

  beforeAll(async () => {
    ({ server, reload } = await serverWithConfig(usersToml([alice, carol])));
  });

  test("a removed user: its session closes with 4001, its visitor is cut, its token opens nothing", async () => {
    const c = await connectControl(server.url, carol.token);
    const tunnel = await c.expose({ kind: "tcp" });
    const visitor = await connectVisitor(tunnel.port as number);
    const a = await connectControl(server.url, alice.token);
    await eventually(async () => (await server.health()).streams === 1, 5000, "carol's visitor open");

    expect(await reload(usersToml([alice]))).toMatch(
      /users: removed carol; 1 session closed \(4001 revoked\)/,
    );
    expect(await c.closed()).toEqual({
      code: 4001,
      reason: "user carol was removed from the server's configuration",
    });
    await closedWithin(visitor, 5000);
    await expect(connectControl(server.url, carol.token)).rejects.toBeInstanceOf(UpgradeRefused);
    // alice's session was not touched.
    expect(await a.expose({ kind: "http", subdomain: "alice-one" })).toMatchObject({ type: "exposed" });
    a.ws.close(1000);
  });

  test("a removed user's reserved session ends too: its port and name are free at once", async () => {
    const hana = testUser("hana");
    await reload(usersToml([alice, hana]));
    const h = await connectControl(server.url, hana.token);
    const tunnel = await h.expose({ kind: "tcp" });
    expect(await h.expose({ kind: "http", subdomain: "hana-site" })).toMatchObject({ type: "exposed" });
    h.ws.close(3000, "blip");
    await eventually(async () => (await server.health()).reserved === 1, 5000, "hana's session reserved");

    expect(await reload(usersToml([alice]))).toMatch(
      /users: removed hana; 1 session closed \(4001 revoked\)/,
    );
    expect(await server.health()).toMatchObject({ reserved: 0, tunnels: 0 });
    const again = Bun.listen({ hostname: "127.0.0.1", port: tunnel.port as number, socket: { data() {} } });
    again.stop(true);
  });

  test("changed limits apply to new tunnels; tunnels already held stay", async () => {
    const a = await connectControl(server.url, alice.token);
    for (const name of ["alice-a", "alice-b"])
      expect(await a.expose({ kind: "http", subdomain: name })).toMatchObject({ type: "exposed" });
    const narrower = testUser("alice", ['subdomains = ["alice-x*"]', "max_tunnels = 1"]);
    expect(await reload(usersToml([{ ...narrower, token: alice.token }]))).toMatch(
      /users: new limits for alice$/m,
    );
    expect((await server.health()).tunnels).toBe(2);
    expect(await a.unexpose("unknown-id")).toMatchObject({ type: "error", code: "unknown_tunnel" });
    expect(await a.expose({ kind: "http", subdomain: "alice-xy" })).toMatchObject({
      message: "user alice may hold at most 1 tunnels",
    });
    expect(
      await reload(usersToml([{ ...testUser("alice", ['subdomains = ["alice-x*"]']), token: alice.token }])),
    ).toMatch(/new limits for alice/);
    expect(await a.expose({ kind: "http", subdomain: "alice-c" })).toMatchObject({
      message: "subdomain 'alice-c' is not allowed for user alice (allowed: alice-x*)",
    });
    expect(await a.expose({ kind: "http", subdomain: "alice-xc" })).toMatchObject({ type: "exposed" });
    a.ws.close(1000);
    await eventually(async () => (await server.health()).tunnels === 0, 5000, "alice's tunnels gone");
  });

  for (const [what, text, error] of [
    ["not TOML", "[[users]\nname = ", /server\.toml:1:\d+: not valid TOML/],
    ["a duplicate user", `${usersToml([alice])}\n${usersToml([alice])}`, /user 'alice' is defined twice/],
    [
      "an unknown key",
      `max_tunels = 3\n${usersToml([alice])}`,
      /unknown key 'max_tunels' \(did you mean max_tunnels\?\)/,
    ],
    [
      "a user's deny list with a /33",
      `${usersToml([alice])}\ndeny = ["10.0.0.0/33"]`,
      /deny of user alice: '10\.0\.0\.0\/33': \/33 is longer than an IPv4 address/,
    ],
  ] as const)
    test(`a bad file (${what}): one log line, the old configuration stays whole`, async () => {
      const before = server.stderr().split("\n").length;
      // A file that also adds dave changes nothing when any part of it is bad: dave stays out.
      const dave = testUser("dave");
      await reload(`${text}\n${usersToml([dave])}`);
      const lines = server
        .stderr()
        .split("\n")
        .slice(before - 1)
        .filter((line) => line.trim() !== "");
      expect(lines.filter((line) => /reload \(SIGHUP\) failed/.test(line))).toHaveLength(1);
      expect(lines.join("\n")).toMatch(error);
      expect(lines.join("\n")).not.toMatch(/configuration reloaded/);
      const a = await connectControl(server.url, alice.token);
      expect(await a.expose({ kind: "http", subdomain: "alice-xz" })).toMatchObject({ type: "exposed" });
      await expect(connectControl(server.url, dave.token)).rejects.toBeInstanceOf(UpgradeRefused);
      a.ws.close(1000);
    });

  test("an option that needs a restart: one warning; the rest applies", async () => {
    const dave = testUser("dave");
    const logged = await reload(`domain = "example.test"\nwindow = 8388608\n${usersToml([alice, dave])}`);
    expect(logged).toMatch(/WARNING: config: domain, window changed; a restart is needed/);
    expect(logged).toMatch(/users: added dave/);
    const d = await connectControl(server.url, dave.token);
    const tunnel = await d.expose({ kind: "tcp" });
    // Still the domain and window the server started with.
    expect(tunnel.url).toMatch(/^localhost:/);
    expect(d.hello.window).toBe(16 * MiB);
    d.ws.close(1000);
  });
});

test("--watch: a change of the file is applied without a signal", async () => {
  const erin = testUser("erin");
  const dir = configFolder();
  const file = writeConfig(dir, "watched.toml", usersToml([testUser("frank")]));
  const server = await startServerProcess(["--config", file, "--watch"]);
  await expect(connectControl(server.url, erin.token)).rejects.toBeInstanceOf(UpgradeRefused);
  writeConfig(dir, "watched.toml", usersToml([erin]));
  await server.waitFor(/reloading \S+ \(file changed\)/);
  await server.waitFor(
    /configuration reloaded: users: removed frank; added erin|users: added erin; removed frank/,
  );
  const e = await connectControl(server.url, erin.token);
  expect(await e.expose({ kind: "tcp" })).toMatchObject({ type: "exposed" });
  // A burst of writes is one reload (debounced), not one per write.
  const before = count(server.stderr(), /reloading \S+ \(file changed\)/g);
  for (let i = 0; i < 5; i++) writeConfig(dir, "watched.toml", `${usersToml([erin])}\n# ${i}`);
  await eventually(
    () => count(server.stderr(), /reloading \S+ \(file changed\)/g) > before,
    5000,
    "one reload",
  );
  expect(count(server.stderr(), /reloading \S+ \(file changed\)/g)).toBe(before + 1);
});
