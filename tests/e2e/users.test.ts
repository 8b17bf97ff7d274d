/**
 * Users of one server (issue 18, server side), through a real server process and control clients in
 * this process: two users with disjoint allowances, each refused outside its own and unable to touch
 * the other's (take its name or port, close its tunnel, resume its session); a reserved name stays
 * its owner's; /health names users only with --health-detail, and no token appears anywhere.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { AUTH_HEADER, CONNECT_PATH, RESUME_HEADER, SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import { connectControl, UpgradeRefused } from "../support/control-client.ts";
import { eventually, type ServerProcess, setupFile, startServerProcess } from "../support/processes.ts";
import { configFolder, testUser, usersToml, writeConfig } from "../support/server-config.ts";
import { connectVisitor, freePort, visitUntilClosed } from "../support/sockets.ts";

setupFile();

/** /health with per-user detail. */
type DetailedHealth = Awaited<ReturnType<ServerProcess["health"]>> & {
  users?: Record<string, { tunnels: number; visitors: number; clients: number }>;
};

describe("two users with disjoint allowances", () => {
  const alicePort = freePort();
  const bobPort = freePort();
  const alice = testUser("alice", [
    'subdomains = ["alice-*", "shared-*"]',
    `tcp_ports = "${alicePort}-${alicePort}"`,
    "max_tunnels = 3",
  ]);
  const bob = testUser("bob", [
    'subdomains = ["bob-*", "shared-*"]',
    `tcp_ports = [${bobPort}]`,
    "max_visitors = 1",
    "random_subdomain = false",
  ]);
  let server: ServerProcess;
  const health = async () => (await server.health()) as DetailedHealth;

  beforeAll(async () => {
    const file = writeConfig(
      configFolder(),
      "server.toml",
      `health_detail = true\ngrace = 30\n\n${usersToml([alice, bob])}`,
    );
    // Many refused keys and resumes come from 127.0.0.1 in this file: not the rate limit's test.
    server = await startServerProcess(["--config", file, "--auth-fail-limit", "1000"]);
    expect(server.stderr()).not.toMatch(/any client may open tunnels/);
  });

  test("a token that is no user's, or none: 401, no session", async () => {
    for (const token of [undefined, "not-a-user", `${alice.token}x`])
      await expect(connectControl(server.url, token)).rejects.toBeInstanceOf(UpgradeRefused);
    await server.waitFor(/refused \S+: 401 authentication failed/, 5000);
    expect((await health()).clients).toBe(0);
  });

  test("each is refused outside its own allowance, with the rule named, and the log names the user", async () => {
    const a = await connectControl(server.url, alice.token);
    const b = await connectControl(server.url, bob.token);

    expect(await a.expose({ kind: "http", subdomain: "bob-web" })).toMatchObject({
      type: "error",
      code: "not_allowed",
      message: "subdomain 'bob-web' is not allowed for user alice (allowed: alice-*, shared-*)",
    });
    expect(await a.expose({ kind: "tcp", port: bobPort })).toMatchObject({
      type: "error",
      message: `port ${bobPort} is outside user alice's ports ${alicePort}`,
    });
    expect(await b.expose({ kind: "http", subdomain: "alice-web" })).toMatchObject({
      type: "error",
      message: "subdomain 'alice-web' is not allowed for user bob (allowed: bob-*, shared-*)",
    });
    expect(await b.expose({ kind: "tcp", port: alicePort })).toMatchObject({
      type: "error",
      message: `port ${alicePort} is outside user bob's ports ${bobPort}`,
    });
    // bob may not get a random name; alice gets one drawn from her first pattern with a star.
    expect(await b.expose({ kind: "http" })).toMatchObject({
      type: "error",
      message: expect.stringContaining("user bob may not get a random subdomain"),
    });
    const random = await a.expose({ kind: "http" });
    expect(random).toMatchObject({ type: "exposed", name: expect.stringMatching(/^alice-[a-z0-9]{10}$/) });
    await server.waitFor(/expose refused for \S+ \(user alice\): subdomain 'bob-web'/, 5000);
    await server.waitFor(/expose refused for \S+ \(user bob\): port \d+ is outside/, 5000);

    // Inside: alice's own port (none asked: her range) and her names; bob's port.
    const aliceTcp = await a.expose({ kind: "tcp" });
    expect(aliceTcp).toMatchObject({ type: "exposed", port: alicePort });
    const shared = await a.expose({ kind: "http", subdomain: "shared-x" });
    expect(shared).toMatchObject({ type: "exposed", name: "shared-x" });
    expect(await a.expose({ kind: "http", subdomain: "alice-more" })).toMatchObject({
      type: "error",
      code: "limit",
      message: "user alice may hold at most 3 tunnels",
    });
    const bobTcp = await b.expose({ kind: "tcp" });
    expect(bobTcp).toMatchObject({ type: "exposed", port: bobPort });

    // bob cannot take alice's name (both may use shared-*), nor close her tunnel.
    expect(await b.expose({ kind: "http", subdomain: "shared-x" })).toMatchObject({
      type: "error",
      code: "subdomain_taken",
    });
    for (const tunnel of [aliceTcp.tunnel, shared.tunnel])
      expect(await b.unexpose(tunnel as string)).toMatchObject({ type: "error", code: "unknown_tunnel" });
    expect((await health()).users).toMatchObject({
      alice: { tunnels: 3, clients: 1 },
      bob: { tunnels: 1, clients: 1 },
    });
    // alice's port still takes visitors (the control client never answers: the visitor waits, open).
    const visitor = await connectVisitor(alicePort);
    await eventually(
      async () => (await health()).users?.alice?.visitors === 1,
      5000,
      "alice's visitor counted",
    );

    // bob's max_visitors = 1: a second visitor at once is closed, like --max-streams.
    await connectVisitor(bobPort);
    await eventually(async () => (await health()).users?.bob?.visitors === 1, 5000, "bob's visitor counted");
    await visitUntilClosed(bobPort, 5000);
    await server.waitFor(/visitor refused, user bob has 1 visitors open \(max_visitors\)/);

    // alice closes her own TCP tunnel: its visitor is cut, its port freed, its slot counts no more.
    expect(await a.unexpose(aliceTcp.tunnel as string)).toEqual({
      type: "unexposed",
      id: expect.any(Number),
      tunnel: aliceTcp.tunnel,
    });
    await new Promise<void>((resolve) => {
      if (visitor.destroyed) resolve();
      visitor.once("close", () => resolve());
      visitor.resume();
    });
    expect((await health()).users?.alice).toEqual({ tunnels: 2, visitors: 0, clients: 1 });
    expect(await a.expose({ kind: "tcp", port: alicePort })).toMatchObject({
      type: "exposed",
      port: alicePort,
    });
    // An id never held, or already closed: the same answer.
    expect(await a.unexpose(aliceTcp.tunnel as string)).toMatchObject({
      type: "error",
      code: "unknown_tunnel",
    });

    // No token, no hash anywhere.
    const everything = `${server.stderr()}${server.stdout()}${JSON.stringify(await health())}`;
    for (const user of [alice, bob]) {
      expect(everything).not.toContain(user.token);
      expect(everything).not.toContain(new Bun.CryptoHasher("sha256").update(user.token).digest("hex"));
    }
    a.ws.close(1000);
    b.ws.close(1000);
    await eventually(async () => (await health()).clients === 0, 5000, "both gone");
  });

  test("a reserved name stays its owner's: the other user cannot take it, nor resume the session", async () => {
    const a = await connectControl(server.url, alice.token);
    expect(await a.expose({ kind: "http", subdomain: "shared-keep" })).toMatchObject({ type: "exposed" });
    // Any close but 1000 is a blip: the session is reserved for --grace.
    a.ws.close(3000, "blip");
    await eventually(async () => (await health()).reserved === 1, 5000, "alice's session reserved");

    const b = await connectControl(server.url, bob.token);
    expect(await b.expose({ kind: "http", subdomain: "shared-keep" })).toMatchObject({
      type: "error",
      code: "subdomain_taken",
    });
    const claim = { session: a.hello.session as string, secret: a.hello.secret as string };
    await expect(connectControl(server.url, bob.token, claim)).rejects.toBeInstanceOf(UpgradeRefused);
    // The refusal's own words, from the answer itself (its log line may reach our pipe late).
    const refusal = await fetch(`http://127.0.0.1:${server.port}${CONNECT_PATH}`, {
      headers: {
        [AUTH_HEADER]: `Bearer ${bob.token}`,
        "sec-websocket-protocol": SUBPROTOCOL,
        [RESUME_HEADER]: `${claim.session} ${claim.secret}`,
      },
    });
    expect(refusal.status).toBe(403);
    expect(await refusal.text()).toContain("the session belongs to another user");

    const back = await connectControl(server.url, alice.token, claim);
    expect(back.hello).toMatchObject({ resumed: true, session: claim.session });
    expect((await health()).users?.alice?.tunnels).toBe(1);
    b.ws.close(1000);
    back.ws.close(1000);
  });
});

test("/health has no user detail unless asked for", async () => {
  const alice = testUser("alice");
  const file = writeConfig(configFolder(), "plain.toml", usersToml([alice]));
  const server = await startServerProcess(["--config", file]);
  const a = await connectControl(server.url, alice.token);
  expect(await a.expose({ kind: "tcp" })).toMatchObject({ type: "exposed" });
  const health = (await server.health()) as unknown as Record<string, unknown>;
  expect(health).toMatchObject({ clients: 1, tunnels: 1 });
  expect(health.users).toBeUndefined();
  expect(JSON.stringify(health)).not.toContain("alice");
  expect(server.stderr()).not.toMatch(/tunnel \S+ for \S+ \(user alice\)/);
});
