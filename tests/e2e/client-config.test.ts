/**
 * The client's config file (issue 18, client side), through real server and client processes: many
 * tunnels from one file; reload on SIGHUP adding, removing and changing tunnels while a visitor streams
 * 64 MiB through an unchanged one (its sha256 matches, its connection never drops, its URL stays);
 * a bad file on reload is one log line and changes nothing; `--watch` picks up edits; every bad input
 * at start-up is one line and exit 2; `--init`'s file works as written; a revoked key ends the client.
 */

import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { refusedOrClosed } from "../support/faults.ts";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  count,
  eventually,
  expectOneLineError,
  exposedLines,
  ROOT,
  type RoleProcess,
  runToExit,
  type ServerProcess,
  setupFile,
  spawnRole,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { configFolder, testUser, usersToml, writeConfig } from "../support/server-config.ts";
import { startEchoService } from "../support/services.ts";
import { closedWithin, connectVisitor, echoThrough, streamEcho } from "../support/sockets.ts";

setupFile();

/** A tunnel as the client logged it: `tunnel ID (NAME): URL -> HOST:PORT`. */
interface Named {
  id: string;
  url: string;
  port: number;
}

/** The latest tunnel the client logged under each name. */
function byName(stderr: string): Record<string, Named> {
  const tunnels: Record<string, Named> = {};
  for (const m of stderr.matchAll(/tunnel (\S+) \((\S+)\): (\S+) -> /g))
    tunnels[m[2] as string] = {
      id: m[1] as string,
      url: m[3] as string,
      port: Number(/:(\d+)$/.exec(m[3] as string)?.[1]),
    };
  return tunnels;
}

/** A `[[tunnels]]` entry. */
function tunnel(name: string, type: string, local: string, ...extra: string[]): string {
  return [`[[tunnels]]`, `name = "${name}"`, `type = "${type}"`, `local = "${local}"`, ...extra, ""].join(
    "\n",
  );
}

/** Starts `bun client.ts --config FILE --server URL …` and waits for `n` exposed lines. */
async function startConfigClient(
  file: string,
  server: ServerProcess,
  n: number,
  args: string[] = [],
  env: Record<string, string> = {},
): Promise<RoleProcess> {
  const client = spawnRole(["bun", "client.ts", "--config", file, "--server", server.url, ...args], env);
  await client.waitFor(new RegExp(`(?:exposed with tunnel id \\S+, url: \\S+\\n[^]*){${n}}`));
  // The log line naming each tunnel follows its stdout line.
  await eventually(() => Object.keys(byName(client.stderr())).length >= n, 5000, `${n} named tunnels`);
  if (args.includes("--watch")) await client.waitFor(/watching \S+: each change is applied/);
  return client;
}

async function expectEcho(port: number): Promise<void> {
  const data = randomData(64 * 1024);
  expect(await echoThrough(port, data, 10_000)).toBe(sha256(data));
}

/** A promise and its resolve, for pacing a stream around reloads. */
function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve = () => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

test("many tunnels from one file: three TCP and one HTTP tunnel, each reaching its own service", async () => {
  const dir = configFolder();
  const echoes = [startEchoService(), startEchoService(), startEchoService()];
  const app = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: (req) => new Response(`web ${new URL(req.url).pathname}`),
  });
  const subdomain = `many-${Date.now().toString(36)}`;
  const file = writeConfig(
    dir,
    "client.toml",
    [
      "heartbeat = 5",
      ...echoes.map((echo, i) => tunnel(`tcp${i}`, "tcp", `127.0.0.1:${echo.port}`)),
      tunnel("web", "http", `127.0.0.1:${app.port}`, `subdomain = "${subdomain}"`, "log_requests = true"),
    ].join("\n"),
  );
  try {
    const server = await startServerProcess();
    const client = await startConfigClient(file, server, 4);
    const tunnels = byName(client.stderr());
    for (const [i, echo] of echoes.entries()) {
      const before = echo.accepted;
      await expectEcho((tunnels[`tcp${i}`] as Named).port);
      expect(echo.accepted).toBe(before + 1);
    }
    expect(tunnels.web?.url).toBe(`http://${subdomain}.localhost:${server.port}`);
    const response = await fetch(`http://${subdomain}.localhost:${server.port}/hello`);
    expect(await response.text()).toBe("web /hello");
    await client.waitFor(/GET \/hello 200/);
    expect((await server.health()).tunnels).toBe(4);
    client.kill("SIGINT");
    expect(await client.exited()).toBe(0);
  } finally {
    app.stop(true);
  }
});

describe("reload on SIGHUP", () => {
  test("added, removed and changed tunnels while 64 MiB stream through an unchanged one; then a bad file changes nothing", async () => {
    const dir = configFolder();
    const [keepEcho, goneEcho, changeEcho, newEcho, addedEcho] = [1, 2, 3, 4, 5].map(() =>
      startEchoService(),
    );
    const v1 = [
      tunnel("keep", "tcp", `127.0.0.1:${keepEcho?.port}`),
      tunnel("gone", "tcp", `127.0.0.1:${goneEcho?.port}`),
      tunnel("change", "tcp", `127.0.0.1:${changeEcho?.port}`),
    ].join("\n");
    const file = writeConfig(dir, "client.toml", v1);
    const server = await startServerProcess();
    const client = await startConfigClient(file, server, 3);
    const before = byName(client.stderr());
    const keep = before.keep as Named;
    const gone = before.gone as Named;
    const change = before.change as Named;
    await expectEcho(gone.port);
    await expectEcho(change.port);

    // Visitors of the tunnels about to go: connected before the reload.
    const goneVisitor = await connectVisitor(gone.port);
    const changeVisitor = await connectVisitor(change.port);

    // 64 MiB through "keep", paced so that the reloads happen while it flows.
    const size = 64 * MiB;
    const midway = signal();
    const reloaded = signal();
    const stream = streamEcho(keep.port, size, {
      gateAfter: 16 * MiB,
      gate: async () => {
        midway.resolve();
        if (stream.echoed() > 40 * MiB) await reloaded.promise;
      },
    });
    await withTimeout(midway.promise, 20_000, "16 MiB through the kept tunnel");

    // v2: gone removed, change now points at another service, added is new; keep is as it was.
    writeConfig(
      dir,
      "client.toml",
      [
        tunnel("keep", "tcp", `127.0.0.1:${keepEcho?.port}`),
        tunnel("change", "tcp", `127.0.0.1:${newEcho?.port}`),
        tunnel("added", "tcp", `127.0.0.1:${addedEcho?.port}`),
      ].join("\n"),
    );
    client.kill("SIGHUP");
    await client.waitFor(/reload \(SIGHUP\): 1 added, 1 removed, 1 changed, 1 unchanged/);
    expect(stream.echoed()).toBeLessThan(size);
    const after = byName(client.stderr());
    // The closed and exposed lines are on stdout, the reload's summary on stderr: another pipe, which
    // the test may read first. Wait for them.
    await client.waitFor(new RegExp(`closed tunnel ${gone.id} \\(gone\\)\n`), 5000);
    await client.waitFor(new RegExp(`closed tunnel ${change.id} \\(change\\)\n`), 5000);
    await eventually(() => exposedLines(client.stdout()).length >= 5, 5000, "five exposed lines");
    expect(client.stdout()).toContain(`closed tunnel ${gone.id} (gone)\n`);
    expect(client.stdout()).toContain(`closed tunnel ${change.id} (change)\n`);
    expect(after.keep).toEqual(keep);
    expect(after.change?.id).not.toBe(change.id);
    // A changed tunnel that names no port asks for its old one again, and gets it (it was just freed).
    expect(after.change?.port).toBe(change.port);
    expect(exposedLines(client.stdout())).toHaveLength(5);

    // What the visitors saw: those of the removed and the changed tunnel are closed; the port of the
    // removed one is closed or refuses; the changed one reaches its new service; the added one works.
    await closedWithin(goneVisitor, 5000);
    await closedWithin(changeVisitor, 5000);
    expect(["refused", "closed"]).toContain(await refusedOrClosed(gone.port, 5000));
    const newAccepted = newEcho?.accepted ?? 0;
    await expectEcho(after.change?.port as number);
    expect(newEcho?.accepted).toBe(newAccepted + 1);
    await expectEcho(after.added?.port as number);
    expect(addedEcho?.accepted).toBe(1);
    expect((await server.health()).tunnels).toBe(3);

    // A bad file: one log line naming FILE:LINE:COL, and nothing changes.
    const good = readFileSync(file, "utf8");
    writeFileSync(file, `${good}\n[[tunnels]]\nname = "x"\ntype = "tcp"\nlocal = "127.0.0.1:1"\nprot = 5\n`);
    const errorsBefore = count(client.stderr(), /error: /g);
    client.kill("SIGHUP");
    const line = await client.waitFor(/error: reload \(SIGHUP\): .*\n/);
    const prot = readFileSync(file, "utf8").split("\n").indexOf("prot = 5") + 1;
    expect(line[0]).toContain(`${file}:${prot}:1: unknown key 'prot' (did you mean port?); nothing changed`);
    expect(count(client.stderr(), /error: /g)).toBe(errorsBefore + 1);
    writeFileSync(
      file,
      `server = "ws://localhost:1"\n${good.replace('name = "added"', 'name = "added"\nport = 0')}`,
    );
    client.kill("SIGHUP");
    await client.waitFor(/error: reload \(SIGHUP\): \S+:\d+:1: port: '0' is not a port/);
    expect(exposedLines(client.stdout())).toHaveLength(5);
    expect(count(client.stdout(), /closed tunnel/g)).toBe(2);
    expect((await server.health()).tunnels).toBe(3);

    // The same file again is no change at all.
    writeFileSync(file, good);
    client.kill("SIGHUP");
    await client.waitFor(/reload \(SIGHUP\): 0 added, 0 removed, 0 changed, 3 unchanged/);

    reloaded.resolve();
    const result = await withTimeout(stream.done, 30_000, "the 64 MiB echo");
    expect(result.bytes).toBe(size);
    expect(result.received).toBe(result.sent);
    expect(keepEcho?.accepted).toBe(1);
    for (const port of [keep.port, after.change?.port as number, after.added?.port as number])
      await expectEcho(port);
    expect(byName(client.stderr()).keep).toEqual(keep);
    expect(client.proc.exitCode).toBeNull();
  });

  test("an HTTP tunnel changed (basic_auth added) is exposed again at the same URL, now behind a login", async () => {
    const dir = configFolder();
    const app = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("hello") });
    try {
      const server = await startServerProcess();
      const file = writeConfig(dir, "client.toml", tunnel("web", "http", `127.0.0.1:${app.port}`));
      const client = await startConfigClient(file, server, 1);
      const before = byName(client.stderr()).web as Named;
      expect((await fetch(`${before.url}/`)).status).toBe(200);
      writeConfig(
        dir,
        "client.toml",
        tunnel("web", "http", `127.0.0.1:${app.port}`, 'basic_auth = "ann:pw"'),
      );
      client.kill("SIGHUP");
      await client.waitFor(/reload \(SIGHUP\): 0 added, 0 removed, 1 changed, 0 unchanged/);
      const after = byName(client.stderr()).web as Named;
      expect(after.id).not.toBe(before.id);
      expect(after.url).toBe(before.url);
      expect((await fetch(`${after.url}/`)).status).toBe(401);
      const login = await fetch(`${after.url}/`, { headers: { authorization: `Basic ${btoa("ann:pw")}` } });
      expect(await login.text()).toBe("hello");
    } finally {
      app.stop(true);
    }
  });

  test("after a reload, a server restart exposes the current set again: same ports, not the removed one", async () => {
    const dir = configFolder();
    const echo = startEchoService();
    const server = await startServerProcess();
    const local = `127.0.0.1:${echo.port}`;
    const file = writeConfig(
      dir,
      "client.toml",
      [tunnel("a", "tcp", local), tunnel("b", "tcp", local)].join("\n"),
    );
    const client = await startConfigClient(file, server, 2);
    writeConfig(dir, "client.toml", [tunnel("a", "tcp", local), tunnel("c", "tcp", local)].join("\n"));
    client.kill("SIGHUP");
    await client.waitFor(/reload \(SIGHUP\): 1 added, 1 removed, 0 changed, 1 unchanged/);
    const current = byName(client.stderr());
    // c's exposed line is on stdout, the summary on stderr (another pipe): count once it is there.
    await eventually(() => exposedLines(client.stdout()).length >= 3, 5000, "c's exposed line");
    const printed = exposedLines(client.stdout()).length;

    server.kill("SIGKILL");
    await server.exited(5000);
    const restarted = await startServerProcess([], {}, { port: server.port });
    await eventually(
      () => exposedLines(client.stdout()).length >= printed + 2,
      10_000,
      "two exposed lines again",
    );
    expect(exposedLines(client.stdout()).slice(printed)).toEqual([
      { id: (current.a as Named).id, port: (current.a as Named).port },
      { id: (current.c as Named).id, port: (current.c as Named).port },
    ]);
    expect((await restarted.health()).tunnels).toBe(2);
    await expectEcho((current.c as Named).port);
  });

  test("a top-level option that needs a restart is named; a tunnel the server refuses is logged and the others applied", async () => {
    const dir = configFolder();
    const echo = startEchoService();
    const server = await startServerProcess();
    // Another client holds a port: a reload that asks for it is refused for that tunnel only.
    const holder = await startConfigClient(
      writeConfig(dir, "holder.toml", tunnel("h", "tcp", `127.0.0.1:${echo.port}`)),
      server,
      1,
    );
    const taken = (byName(holder.stderr()).h as Named).port;
    const file = writeConfig(dir, "client.toml", tunnel("a", "tcp", `127.0.0.1:${echo.port}`));
    const client = await startConfigClient(file, server, 1);
    writeConfig(
      dir,
      "client.toml",
      [
        "max_backoff = 3",
        tunnel("a", "tcp", `127.0.0.1:${echo.port}`),
        tunnel("b", "tcp", `127.0.0.1:${echo.port}`, `port = ${taken}`),
        tunnel("c", "tcp", `127.0.0.1:${echo.port}`),
      ].join("\n"),
    );
    client.kill("SIGHUP");
    await client.waitFor(/reload \(SIGHUP\): 2 added, 0 removed, 0 changed, 1 unchanged, 1 failed/);
    expect(client.stderr()).toMatch(/max_backoff changed in \S+; that takes a restart of the client/);
    expect(client.stderr()).toMatch(/error: reload: tunnel 'b': server refused the tunnel: .*port/);
    const tunnels = byName(client.stderr());
    expect(tunnels.b).toBeUndefined();
    await expectEcho((tunnels.c as Named).port);
    // The next reload tries the refused one again: once the port is free, it gets it.
    holder.kill("SIGINT");
    expect(await holder.exited()).toBe(0);
    client.kill("SIGHUP");
    await client.waitFor(/reload \(SIGHUP\): 1 added, 0 removed, 0 changed, 2 unchanged\n/);
    expect(byName(client.stderr()).b?.port).toBe(taken);
  });
});

test("--watch: an edit in place and a file replaced by rename are both applied", async () => {
  const dir = configFolder();
  const echo = startEchoService();
  const server = await startServerProcess();
  const file = writeConfig(dir, "client.toml", tunnel("one", "tcp", `127.0.0.1:${echo.port}`));
  const client = await startConfigClient(file, server, 1, ["--watch"]);
  const one = byName(client.stderr()).one as Named;

  writeFileSync(
    file,
    [tunnel("one", "tcp", `127.0.0.1:${echo.port}`), tunnel("two", "tcp", `127.0.0.1:${echo.port}`)].join(
      "\n",
    ),
  );
  await client.waitFor(/reload \(\S+ changed\): 1 added, 0 removed, 0 changed, 1 unchanged/);
  await expectEcho((byName(client.stderr()).two as Named).port);

  // An editor's save: a new file renamed over the old one.
  writeFileSync(join(dir, "client.toml.tmp"), tunnel("two", "tcp", `127.0.0.1:${echo.port}`));
  renameSync(join(dir, "client.toml.tmp"), file);
  await client.waitFor(new RegExp(`closed tunnel ${one.id} \\(one\\)`));
  await client.waitFor(/0 added, 1 removed, 0 changed, 1 unchanged/);
  expect(["refused", "closed"]).toContain(await refusedOrClosed(one.port, 5000));
  expect((await server.health()).tunnels).toBe(1);
});

describe("bad input at start-up: one line, exit 2", () => {
  const dir = configFolder();
  const ok = tunnel("a", "tcp", "127.0.0.1:9");
  test.each([
    ["not TOML", 'server = "ws://x\n', /^error: \S+:1:\d+: not valid TOML: /],
    [
      "unknown key",
      `heartbaet = 3\n${ok}`,
      /^error: \S+:1:1: unknown key 'heartbaet' \(did you mean heartbeat\?\)$/,
    ],
    ["wrong type", `quiet = "yes"\n${ok}`, /^error: \S+:1:1: quiet must be true or false$/],
    ["port out of range", `${ok}port = 65536\n`, /^error: \S+:5:1: port: '65536' is not a port \(1-65535\)$/],
    [
      "two tunnels with the same name",
      `${ok}\n${ok}`,
      /^error: \S+:7:1: two tunnels are named 'a' \(the other at \S+:2:1\)/,
    ],
    [
      "a tunnel without local",
      '[[tunnels]]\nname = "a"\ntype = "tcp"\n',
      /^error: \S+:1:1: tunnel 'a' has no local/,
    ],
    [
      "unknown type",
      tunnel("a", "sctp", "9"),
      /^error: \S+:3:1: tunnel 'a': unknown type "sctp" \(one of: tcp, http, udp, tls\)$/,
    ],
    ["no tunnels", "quiet = true\n", /^error: \S+: no tunnels: add a \[\[tunnels\]\] table/],
  ])("%s", async (name, text, pattern) => {
    const file = writeConfig(dir, `${name.replaceAll(" ", "-")}.toml`, text);
    const result = await runToExit(["bun", "client.ts", "--config", file]);
    expectOneLineError(result, pattern);
    expect(result.code).toBe(2);
  });

  test("an unreadable file", async () => {
    const missing = join(dir, "missing.toml");
    const result = await runToExit(["bun", "client.ts", "--config", missing]);
    expectOneLineError(result, /^error: \S+missing\.toml: cannot read the config file \(ENOENT\)$/);
    expect(result.code).toBe(2);
    const folder = await runToExit(["bun", "client.ts", "--config", dir]);
    expectOneLineError(folder, /cannot read the config file \(EISDIR\)$/);
    expect(folder.code).toBe(2);
  });

  test("--watch without --config", async () => {
    const result = await runToExit(["bun", "client.ts", "--watch", "--expose", "9"]);
    expectOneLineError(result, /^error: --watch needs --config FILE/);
    expect(result.code).toBe(2);
  });
});

describe("--init", () => {
  test("writes a file that works as written against a local server, and never overwrites one", async () => {
    const dir = configFolder();
    const file = join(dir, "sockets.toml");
    // In the folder, with no name: ./sockets.toml (the shell execs bun, so the PID is the client's).
    const init = await runToExit(["sh", "-c", `cd '${dir}' && exec bun '${ROOT}/client.ts' --init`]);
    expect(init.code).toBe(0);
    expect(init.stderr).toBe("");
    expect(init.stdout).toContain("wrote sockets.toml");
    expect(init.stdout).toMatch(/bun client\.ts --config sockets\.toml/);
    expect(existsSync(file)).toBe(true);
    const written = readFileSync(file, "utf8");

    const again = await runToExit(["bun", "client.ts", "--init", file]);
    expectOneLineError(again, /^error: \S+sockets\.toml already exists; not overwriting it/);
    expect(readFileSync(file, "utf8")).toBe(written);

    // As written, against a server with the defaults but a free port (--server overrides the file's).
    const server = await startServerProcess();
    const client = await startConfigClient(file, server, 2);
    expect(Object.keys(byName(client.stderr()))).toEqual(["ssh", "web"]);
    expect(byName(client.stderr()).web?.url).toMatch(
      new RegExp(`^http://[a-z0-9]+\\.localhost:${server.port}$`),
    );
    expect((await server.health()).tunnels).toBe(2);
    client.kill("SIGTERM");
    expect(await client.exited()).toBe(0);
  });

  test("without --config, ./sockets.toml is not read: one info line says so", async () => {
    const dir = configFolder();
    writeConfig(dir, "sockets.toml", tunnel("a", "tcp", "127.0.0.1:9"));
    const server = await startServerProcess();
    const client = spawnRole([
      "sh",
      "-c",
      `cd '${dir}' && exec bun '${ROOT}/client.ts' --expose 127.0.0.1:9 --server ${server.url}`,
    ]);
    await client.waitFor(/exposed with tunnel id/);
    // Logged on stderr at start-up; the exposed line is on stdout (another pipe): wait for it.
    await client.waitFor(
      /\.\/sockets\.toml was not read: a config file is used only when named \(--config sockets\.toml\)/,
      5000,
    );
    expect(client.stderr()).toContain(
      "./sockets.toml was not read: a config file is used only when named (--config sockets.toml)",
    );
    expect((await server.health()).tunnels).toBe(1);
  });
});

test("credentials revoked by the server's reload: one line, exit non-zero, no retry", async () => {
  const dir = configFolder();
  const alice = testUser("alice");
  const bob = testUser("bob");
  const serverFile = writeConfig(dir, "server.toml", usersToml([alice, bob]));
  const server = await startServerProcess(["--config", serverFile]);
  const echo = startEchoService();
  const file = writeConfig(dir, "client.toml", tunnel("a", "tcp", `127.0.0.1:${echo.port}`));
  const client = await startConfigClient(file, server, 1, [], { SOCKETS_API_KEY: alice.token });
  const port = (byName(client.stderr()).a as Named).port;
  const visitor = streamEcho(port, 256 * MiB);
  const visitorSaw = visitor.done.then(
    () => "ended",
    (error: Error) => error.message,
  );
  await withTimeout(
    (async () => {
      while (visitor.echoed() < MiB) await Bun.sleep(20);
    })(),
    10_000,
    "bytes through the tunnel",
  );

  writeConfig(dir, "server.toml", usersToml([bob]));
  server.kill("SIGHUP");
  expect(await client.exited(10_000)).not.toBe(0);
  const lines = client.stderr().split("\n");
  expect(
    lines.filter((line) => line.startsWith("error: ")),
    client.stderr(),
  ).toEqual([expect.stringMatching(/^error: the server revoked this client's credentials: \S/)]);
  expect(client.stderr()).not.toMatch(/reconnect/);
  expect(await visitorSaw).toMatch(/ECONNRESET|closed early/);
  expect(alice.token).not.toBe(bob.token);
});
