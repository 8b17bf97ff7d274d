/**
 * Pools (`--pool`): three clients serve one public TCP port, each its own local service that names
 * itself with a first byte, so every visitor knows which member it reached. Visitors spread within
 * ±20% of even; a member SIGKILLed mid-load takes only its own visitors' connections (every other
 * transfer completes with sha256 intact) and new visitors go to the two left; a client without
 * `--pool` is refused with the rule named.
 */

import { afterAll, describe, expect, test } from "bun:test";
import { connect, type Socket } from "node:net";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  type ClientProcess,
  cleanup,
  defer,
  eventually,
  expectOneLineError,
  openDescriptors,
  rssKiB,
  runToExit,
  type ServerProcess,
  setupFile,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { configFolder, testUser, usersToml, writeConfig } from "../support/server-config.ts";
import { freePort } from "../support/sockets.ts";

setupFile();
afterAll(cleanup);

/** A local echo service that first sends its own tag byte: the visitor learns which member served it. */
function taggedEcho(tag: number): { port: number; accepted: () => number } {
  let accepted = 0;
  const listener = Bun.listen<{ queue: Uint8Array[] }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        accepted++;
        socket.data = { queue: [] };
        socket.write(new Uint8Array([tag]));
      },
      data(socket, chunk) {
        const { queue } = socket.data;
        if (queue.length > 0) queue.push(chunk.slice());
        else {
          const written = socket.write(chunk);
          if (written < chunk.length) queue.push(chunk.slice(written));
        }
      },
      drain(socket) {
        const { queue } = socket.data;
        while (queue.length > 0) {
          const next = queue[0] as Uint8Array;
          const written = socket.write(next);
          if (written < next.length) {
            queue[0] = next.slice(written);
            return;
          }
          queue.shift();
        }
      },
    },
  });
  defer(() => listener.stop(true));
  return { port: listener.port, accepted: () => accepted };
}

/** A visitor that learns its member's tag, sends `data` and reads it back; resolves with what happened. */
function visit(
  port: number,
  data: Uint8Array,
  onTag?: (tag: number) => void,
): Promise<{ tag: number; sha256?: string; closedEarly: boolean }> {
  return withTimeout(
    new Promise((resolve) => {
      const socket: Socket = connect(port, "127.0.0.1");
      const chunks: Buffer[] = [];
      let received = 0;
      let tag = -1;
      let sent = false;
      socket.on("data", (chunk: Buffer) => {
        let rest = chunk;
        if (tag < 0) {
          tag = chunk[0] as number;
          onTag?.(tag);
          rest = chunk.subarray(1);
        }
        if (!sent) {
          sent = true;
          socket.write(data);
        }
        if (rest.length > 0) {
          chunks.push(rest);
          received += rest.length;
        }
        if (received >= data.length) {
          socket.end();
          resolve({ tag, sha256: sha256(chunks), closedEarly: false });
        }
      });
      socket.on("close", () => resolve({ tag, closedEarly: received < data.length }));
      socket.on("error", () => {});
    }),
    60_000,
    "a pooled visitor to finish",
  );
}

describe("a pool of three clients behind one port", () => {
  let server: ServerProcess;
  let port: number;
  const members: ClientProcess[] = [];
  const services = [taggedEcho(0), taggedEcho(1), taggedEcho(2)];

  test("three members with --pool share the port; 300 visitors spread within ±20% of even", async () => {
    // A short grace: a member SIGKILLed below keeps its visitors (and its share) only that long.
    server = await startServerProcess(["--grace", "2"]);
    port = freePort();
    for (const service of services)
      members.push(
        await startClientProcess(
          server.url,
          [`127.0.0.1:${service.port}`],
          ["--port", String(port), "--pool"],
        ),
      );
    const health = (await (await fetch(`http://127.0.0.1:${server.port}/health`)).json()) as {
      pools?: { place: string; members: unknown[] }[];
    };
    expect(health.pools).toEqual([{ place: `tcp:${port}`, members: expect.any(Array) }]);
    expect(health.pools?.[0]?.members).toHaveLength(3);
    const counts = [0, 0, 0];
    const small = randomData(64);
    const pid = server.proc.pid;
    const descriptors = openDescriptors(pid);
    const rssBefore = await rssKiB(pid);
    // Three hundred visitors, 30 at a time: each is open while the next ones are placed.
    for (let batch = 0; batch < 10; batch++) {
      const results = await Promise.all(Array.from({ length: 30 }, () => visit(port, small)));
      for (const result of results) {
        expect(result.sha256).toBe(sha256(small));
        counts[result.tag] = (counts[result.tag] ?? 0) + 1;
      }
    }
    for (const count of counts) {
      expect(count).toBeGreaterThanOrEqual(80);
      expect(count).toBeLessThanOrEqual(120);
    }
    // Every visitor's socket is freed on the server, and its memory stays near where it was.
    await eventually(() => openDescriptors(pid) <= descriptors, 5000, `descriptors back to ${descriptors}`);
    expect((await rssKiB(pid)) - rssBefore).toBeLessThan(64 * 1024);
  });

  test("a member SIGKILLed mid-load takes only its own visitors; the rest finish intact; new visitors go to the two left", async () => {
    const data = randomData(4 * 1024 * 1024);
    const expected = sha256(data);
    const tags: number[] = [];
    const running = Array.from({ length: 30 }, () => visit(port, data, (tag) => tags.push(tag)));
    // Every visitor reached its member before one of them dies.
    await eventually(() => tags.length === 30, 20_000, "every visitor greeted by its member");
    members[1]?.kill("SIGKILL");
    const results = await Promise.all(running);
    for (const result of results) {
      if (result.tag === 1) expect(result.closedEarly || result.sha256 === expected).toBe(true);
      else expect(result.sha256).toBe(expected);
    }
    expect(results.filter((r) => r.tag !== 1).length).toBeGreaterThan(0);
    const after = await Promise.all(Array.from({ length: 20 }, () => visit(port, randomData(16))));
    expect(new Set(after.map((r) => r.tag))).toEqual(new Set([0, 2]));
  });

  test("a client without --pool is refused with the rule named (exit 2)", async () => {
    const result = await runToExit([
      "bun",
      "client.ts",
      "--server",
      server.url,
      "--expose",
      "127.0.0.1:9",
      "--port",
      String(port),
    ]);
    expectOneLineError(
      result,
      new RegExp(`port ${port} is served by a pool: ask with --pool to join it`),
      10_000,
    );
    // The server is unharmed: its descriptors are those of its listeners and two live members.
    expect(openDescriptors(server.proc.pid)).toBeLessThan(100);
  });
});

test("pools are per user: --pool with a name another user's pool holds is refused, naming the rule (exit 2)", async () => {
  const alice = testUser("alice");
  const bob = testUser("bob");
  const file = writeConfig(configFolder(), "server.toml", usersToml([alice, bob]));
  const server = await startServerProcess(["--config", file, "--http-port", "0"]);
  const app = taggedEcho(7);
  const pool = ["--http", `127.0.0.1:${app.port}`, "--subdomain", "shared", "--pool"];
  for (let i = 0; i < 2; i++) {
    const member = await startClientProcess(server.url, [], pool, { SOCKETS_API_KEY: alice.token });
    await member.waitFor(/exposed with tunnel id \S+, url: http\S*\n/);
  }
  const result = await runToExit(["bun", "client.ts", "--server", server.url, ...pool], {
    SOCKETS_API_KEY: bob.token,
  });
  expectOneLineError(
    result,
    /subdomain 'shared' is taken \(held by another user; pools are per user\)/,
    10_000,
  );
  expect(result.code).toBe(2);
});
