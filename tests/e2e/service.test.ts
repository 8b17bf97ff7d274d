/**
 * The systemd units in deploy/systemd: `systemd-analyze verify` accepts them, they say what the
 * README promises (an unprivileged dynamic user that may bind 80/443, a state directory, SIGHUP
 * reload, a client that always restarts), and the command lines they run work from their config
 * files, with log lines journald files at the right priority.
 */

import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomData, sha256 } from "../support/hashing.ts";
import { ROOT, runToExit, setupFile, spawnRole } from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { echoThrough } from "../support/sockets.ts";

setupFile();

const ANALYZE = Bun.which("systemd-analyze");
const UNITS = join(ROOT, "deploy", "systemd");
const ROLES = ["server", "client"] as const;

/** A unit's `Key=value` lines of one section, in order (a key may repeat). */
function directives(role: (typeof ROLES)[number]): [string, string][] {
  const text = readFileSync(join(UNITS, `sockets-${role}.service`), "utf8");
  const pairs: [string, string][] = [];
  let section = "";
  for (const line of text.split("\n")) {
    if (line.startsWith("[")) section = line;
    else if (section === "[Service]" && /^\w+=/.test(line)) {
      const at = line.indexOf("=");
      pairs.push([line.slice(0, at), line.slice(at + 1)]);
    }
  }
  return pairs;
}

/** A service directive's value (the last one given). */
function directive(role: (typeof ROLES)[number], key: string): string | undefined {
  return directives(role).findLast(([name]) => name === key)?.[1];
}

/** The unit with its executable replaced by `bun ROLE.ts` from this checkout, in a temp folder. */
function localUnit(role: (typeof ROLES)[number], extra = ""): string {
  const folder = mkdtempSync(join(tmpdir(), "sockets-unit-"));
  const text = readFileSync(join(UNITS, `sockets-${role}.service`), "utf8").replace(
    `ExecStart=/usr/local/bin/sockets-${role}`,
    `ExecStart=${process.execPath} ${join(ROOT, `${role}.ts`)}`,
  );
  const file = join(folder, `sockets-${role}.service`);
  writeFileSync(file, text.replace("[Service]\n", `[Service]\n${extra}`));
  return file;
}

test.skipIf(ANALYZE === null)(
  "systemd-analyze verify accepts both units, and catches a bad one",
  async () => {
    for (const role of ROLES) {
      const result = await runToExit([ANALYZE as string, "verify", localUnit(role)], {}, 30_000);
      expect(`${result.stdout}${result.stderr}`).toBe("");
      expect(result.code).toBe(0);
    }
    // The same check on a unit with a misspelt directive and an executable that does not exist.
    const bad = localUnit("server", "DynamicUsr=yes\nExecStartPre=/nonexistent/sockets\n");
    const result = await runToExit([ANALYZE as string, "verify", bad], {}, 30_000);
    expect(result.stderr).toContain("DynamicUsr");
    expect(result.stderr).toContain("/nonexistent/sockets");
  },
);

test("the units: unprivileged with port 80/443, state and config directories, reload by SIGHUP", () => {
  expect(directive("server", "DynamicUser")).toBe("yes");
  expect(directive("server", "AmbientCapabilities")).toBe("CAP_NET_BIND_SERVICE");
  expect(directive("server", "CapabilityBoundingSet")).toBe("CAP_NET_BIND_SERVICE");
  expect(directive("server", "StateDirectory")).toBe("sockets-server");
  expect(directive("server", "ExecStart")).toBe(
    "/usr/local/bin/sockets-server --config /etc/sockets/server.toml",
  );
  expect(directive("client", "ExecStart")).toBe(
    "/usr/local/bin/sockets-client --config /etc/sockets/client.toml",
  );
  expect(directive("client", "Restart")).toBe("always");
  for (const role of ROLES) {
    expect(directive(role, "ExecReload")).toBe("/bin/kill -HUP $MAINPID");
    expect(directive(role, "NoNewPrivileges")).toBe("yes");
  }
});

/** The unit's ExecStart as a command: this checkout's role, its config file at `config`. */
function execStart(role: (typeof ROLES)[number], config: string): string[] {
  const words = (directive(role, "ExecStart") as string).split(" ");
  expect(words[0]).toBe(`/usr/local/bin/sockets-${role}`);
  return [
    process.execPath,
    join(ROOT, `${role}.ts`),
    ...words.slice(1).map((word) => (word === `/etc/sockets/${role}.toml` ? config : word)),
  ];
}

/**
 * Runs `cmd` as systemd runs a service whose output goes to the journal: `JOURNAL_STREAM` names the
 * stderr it was given (device:inode), which is how the process knows.
 */
function asJournalService(cmd: string[]) {
  const script = 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$@"';
  return spawnRole(["/bin/sh", "-c", script, "sh", ...cmd]);
}

test("the units' command lines run from their config files; journald sees priorities, not timestamps; SIGHUP reloads", async () => {
  const folder = mkdtempSync(join(tmpdir(), "sockets-service-"));
  const service = startEchoService();
  const serverConfig = join(folder, "server.toml");
  writeFileSync(serverConfig, 'host = "127.0.0.1"\nport = 0\n');
  const server = asJournalService(execStart("server", serverConfig));
  const listening = await server.waitFor(/^<6>\[server\] listening on ws:\/\/127\.0\.0\.1:(\d+) /m);
  const clientConfig = join(folder, "client.toml");
  writeFileSync(
    clientConfig,
    `server = "ws://127.0.0.1:${listening[1]}"\n[[tunnels]]\nname = "echo"\ntype = "tcp"\nlocal = "127.0.0.1:${service.port}"\n`,
  );
  const client = asJournalService(execStart("client", clientConfig));
  const exposed = await client.waitFor(/exposed with tunnel id \S+, url: \S+:(\d+)/);
  const payload = randomData(2 * 1024 * 1024);
  expect(await echoThrough(Number(exposed[1]), payload)).toBe(sha256(payload));

  server.kill("SIGHUP");
  await server.waitFor(/^<6>\[server\] reloading .*server\.toml \(SIGHUP\)$/m);
  client.kill("SIGHUP");
  await client.waitFor(/^<6>\[client\] reload \(SIGHUP\): 0 added, 0 removed, 0 changed, 1 unchanged$/m);

  client.kill("SIGTERM");
  expect(await client.exited(10_000)).toBe(0);
  server.kill("SIGTERM");
  expect(await server.exited(15_000)).toBe(0);
  // Every log line carries its priority; the open server's warning is a warning.
  const lines = [...server.stderr().split("\n"), ...client.stderr().split("\n")].filter(
    (line) => line !== "" && line !== "SIGTERM: shutting down",
  );
  expect(lines.length).toBeGreaterThan(4);
  for (const line of lines) expect(line).toMatch(/^<[346]>\[(server|client)\] /);
  expect(server.stderr()).toContain("<4>[server] WARNING: no SOCKETS_SINGLE_API_KEY set");
  // No timestamp of its own: journald stamps each entry.
  expect(server.stderr()).not.toMatch(/^\d{4}-\d\d-\d\dT/m);
});
