/**
 * Failover across several servers (no cluster, no Redis: two independent servers): a client given
 * `--server A --server B` moves to B within seconds when A is killed and publishes its tunnel there
 * again; a first server that does not answer at start is skipped; when none answers, the last failure
 * is the one error line.
 */

import { expect, test } from "bun:test";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  eventually,
  exposedLines,
  runToExit,
  setupFile,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { closedWithin, connectVisitor, echoThrough, freePort } from "../support/sockets.ts";

setupFile();

/** Sends 256 KiB through a tunnel port and expects them back intact. */
async function expectEcho(port: number): Promise<void> {
  const data = randomData(256 * 1024);
  expect(await echoThrough(port, data, 10_000)).toBe(sha256(data));
}

/** A regex source for a literal string. */
const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

test("server A killed with SIGKILL: the client moves to B within seconds; a visitor through B echoes", async () => {
  const echo = startEchoService();
  const a = await startServerProcess();
  const b = await startServerProcess();
  const client = await startClientProcess(
    a.url,
    [`127.0.0.1:${echo.port}`],
    ["--server", b.url, "--heartbeat", "1"],
  );
  await client.waitFor(new RegExp(`connected to server ${literal(a.url)}\\n`), 5000);
  const first = client.tunnels[0] as { id: string; port: number };
  await expectEcho(first.port);
  // A visitor carried by A: lost with A (said so in README), never left hanging.
  const carried = await connectVisitor(first.port);

  a.kill("SIGKILL");
  const killedAt = Date.now();
  await a.exited(5000);
  await client.waitFor(new RegExp(`moved to server ${literal(b.url)}\\n`), 5000);
  const movedIn = Date.now() - killedAt;
  await closedWithin(carried, 5000);

  await eventually(() => exposedLines(client.stdout()).length >= 2, 5000, "an exposed line from B");
  const again = exposedLines(client.stdout())[1] as { id: string; port: number };
  // The same id is asked for again (a new server has no reason to refuse it).
  expect(again.id).toBe(first.id);
  expect(client.stderr()).toMatch(/exposing the tunnels again/);
  expect(movedIn, client.stderr()).toBeLessThan(3000);
  await expectEcho(again.port);
  expect(await b.health()).toMatchObject({ clients: 1, tunnels: 1 });
  expect(client.proc.exitCode).toBeNull();

  client.kill("SIGINT");
  expect(await client.exited(5000)).toBe(0);
});

test("the first server is unreachable at start: the client connects to the second", async () => {
  const echo = startEchoService();
  const dead = `ws://127.0.0.1:${freePort()}`;
  const b = await startServerProcess();
  const client = await startClientProcess(dead, [`127.0.0.1:${echo.port}`], ["--server", b.url]);
  expect(client.stderr()).toMatch(
    new RegExp(`cannot reach server ${literal(dead)}: connection refused; trying ${literal(b.url)}\\n`),
  );
  await client.waitFor(new RegExp(`connected to server ${literal(b.url)}\\n`), 5000);
  await expectEcho((client.tunnels[0] as { port: number }).port);
  expect(await b.health()).toMatchObject({ clients: 1, tunnels: 1 });
});

test("no server answers at start: one info line per server tried, then the last failure, exit non-zero", async () => {
  const [first, second] = [`ws://127.0.0.1:${freePort()}`, `ws://127.0.0.1:${freePort()}`];
  const result = await runToExit([
    "bun",
    "client.ts",
    "--expose",
    "9",
    "--server",
    first,
    "--server",
    second,
  ]);
  expect(result.code).not.toBe(0);
  expect(result.stdout).toBe("");
  const lines = result.stderr.trim().split("\n");
  expect(lines, result.stderr).toHaveLength(2);
  expect(lines[0]).toMatch(new RegExp(`cannot reach server ${literal(first)}: connection refused; trying`));
  expect(lines[1]).toBe(`error: cannot reach server ${second}: connection refused`);
  expect(result.ms).toBeLessThan(5000);
});
