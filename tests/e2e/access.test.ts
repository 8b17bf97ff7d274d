/**
 * Allow and deny lists, end to end: a server bound to `::` with a user whose operator list denies
 * 127.0.0.3, and that user's client exposing a TCP and an HTTP tunnel that allow 127.0.0.1, 127.0.0.3
 * and ::1. Visitors from 127.0.0.1, .2, .3 and ::1 each get their bytes (or 200), a close with no
 * byte (TCP) or 403 (HTTP), as the lists say: the operator's deny beats the tunnel's allow; a reload
 * that lifts the deny lets the next visitor from .3 in; every refusal is counted in /metrics; 300
 * refused visitors leave no descriptor or memory behind.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect } from "node:net";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  type ClientProcess,
  cleanup,
  count,
  defer,
  eventually,
  openDescriptors,
  rssKiB,
  type ServerProcess,
  setupFile,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { configFolder, type TestUser, testUser, usersToml, writeConfig } from "../support/server-config.ts";
import { startEchoService } from "../support/services.ts";

setupFile();
afterAll(cleanup);

/** Connects from `from` (a loopback address), sends 64 random bytes, reads until the server closes. */
function tcpVisit(port: number, from: string): Promise<{ bytes: number; intact: boolean }> {
  const data = randomData(64);
  const to = from.includes(":") ? "::1" : "127.0.0.1";
  return withTimeout(
    new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      const socket = connect({ port, host: to, localAddress: from }, () => socket.write(data));
      socket.on("data", (chunk: Buffer) => {
        chunks.push(chunk);
        bytes += chunk.length;
        if (bytes >= data.length) socket.end();
      });
      socket.on("close", () => resolve({ bytes, intact: bytes > 0 && sha256(chunks) === sha256(data) }));
      socket.on("error", () => {});
    }),
    10_000,
    `a TCP visitor from ${from} to finish`,
  );
}

/** One HTTP request to `guarded.localhost` from `from`; the whole answer as text. */
function httpVisit(port: number, from: string): Promise<string> {
  const to = from.includes(":") ? "::1" : "127.0.0.1";
  return withTimeout(
    new Promise((resolve) => {
      let answer = "";
      const socket = connect({ port, host: to, localAddress: from }, () =>
        socket.write("GET / HTTP/1.1\r\nHost: guarded.localhost\r\nConnection: close\r\n\r\n"),
      );
      socket.on("data", (chunk: Buffer) => {
        answer += chunk.toString("latin1");
      });
      socket.on("close", () => resolve(answer));
      socket.on("error", () => {});
    }),
    10_000,
    `an HTTP visitor from ${from} to finish`,
  );
}

describe("allow and deny lists decide who reaches a tunnel, before anything reaches the client", () => {
  let server: ServerProcess;
  let client: ClientProcess;
  let alice: TestUser;
  let dir: string;
  let tcpPort: number;
  let httpPort: number;
  let admin: string;
  const denied = async () => {
    const text = await (await fetch(`${admin}/metrics`)).text();
    return Number(/sockets_visitors_refused_total\{reason="denied"\} (\d+)/.exec(text)?.[1]);
  };

  beforeAll(async () => {
    alice = testUser("alice", ['deny = ["127.0.0.3"]']);
    dir = configFolder();
    const file = writeConfig(dir, "server.toml", usersToml([alice]));
    server = await startServerProcess([
      "--config",
      file,
      "--host",
      "::",
      "--http-port",
      "0",
      "--admin",
      "127.0.0.1:0",
    ]);
    httpPort = Number((await server.waitFor(/http tunnels on http:\/\/\*\.localhost:(\d+)\n/))[1]);
    admin = (await server.waitFor(/admin on (http:\/\/127\.0\.0\.1:\d+)\//))[1] as string;
    const echo = startEchoService();
    defer(() => echo.stop());
    const web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("hello\n") });
    defer(() => web.stop(true));
    client = await startClientProcess(
      server.url,
      [`127.0.0.1:${echo.port}`],
      [
        "--http",
        `127.0.0.1:${web.port}`,
        "--subdomain",
        "guarded",
        "--allow",
        "127.0.0.1",
        "--allow",
        "127.0.0.3",
        "--allow",
        "::1",
      ],
      { SOCKETS_API_KEY: alice.token },
    );
    await client.waitFor(/exposed with tunnel id \S+, url: http\S*\n/);
    tcpPort = client.tunnels[0]?.port as number;
  });

  test("TCP: .1 and ::1 get their bytes; .2 (not allowed) and .3 (the operator's deny) are closed with no byte", async () => {
    const before = await denied();
    expect(await tcpVisit(tcpPort, "127.0.0.1")).toEqual({ bytes: 64, intact: true });
    expect(await tcpVisit(tcpPort, "::1")).toEqual({ bytes: 64, intact: true });
    expect(await tcpVisit(tcpPort, "127.0.0.2")).toEqual({ bytes: 0, intact: false });
    expect(await tcpVisit(tcpPort, "127.0.0.3")).toEqual({ bytes: 0, intact: false });
    expect(await denied()).toBe(before + 2);
  });

  test("HTTP: .1 and ::1 get 200; .2 and .3 get 403 with a one-line body", async () => {
    const before = await denied();
    expect(await httpVisit(httpPort, "127.0.0.1")).toMatch(/^HTTP\/1\.1 200 [\s\S]*hello\n$/);
    expect(await httpVisit(httpPort, "::1")).toMatch(/^HTTP\/1\.1 200 /);
    for (const from of ["127.0.0.2", "127.0.0.3"]) {
      const answer = await httpVisit(httpPort, from);
      expect(answer).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
      expect(answer.split("\r\n\r\n")[1]).toBe("forbidden: this address may not reach this tunnel\n");
    }
    expect(await denied()).toBe(before + 2);
    // The dashboard's API shows the same count.
    const api = (await (await fetch(`${admin}/api/server`)).json()) as {
      visitorsRefused: { denied: number };
    };
    expect(api.visitorsRefused.denied).toBe(before + 2);
  });

  test("300 refused visitors (TCP and HTTP, 50 at a time) leave the server's descriptors and RSS where they were", async () => {
    const pid = server.proc.pid;
    const before = openDescriptors(pid);
    const rssBefore = await rssKiB(pid);
    const refusedBefore = await denied();
    for (let batch = 0; batch < 300; batch += 50)
      await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          i % 2 === 0
            ? tcpVisit(tcpPort, "127.0.0.2").then((visit) => expect(visit.bytes).toBe(0))
            : httpVisit(httpPort, "127.0.0.2").then((answer) => expect(answer).toMatch(/^HTTP\/1\.1 403 /)),
        ),
      );
    expect(await denied()).toBe(refusedBefore + 300);
    await eventually(async () => openDescriptors(pid) <= before + 2, 8000, `descriptors back to ${before}`);
    expect((await rssKiB(pid)) - rssBefore).toBeLessThan(64 * 1024);
    expect(await tcpVisit(tcpPort, "127.0.0.1")).toEqual({ bytes: 64, intact: true });
  });

  test("a reload that lifts the operator's deny lets the next visitor from .3 in; .2 stays out", async () => {
    const done = /configuration reloaded|reload \(\S+\) failed/g;
    const reloads = count(server.stderr(), done);
    writeConfig(dir, "server.toml", usersToml([{ ...alice, limits: [] }]));
    server.kill("SIGHUP");
    await eventually(() => count(server.stderr(), done) > reloads, 5000, "the reload logged");
    expect(server.stderr()).toMatch(/configuration reloaded/);
    expect(await tcpVisit(tcpPort, "127.0.0.3")).toEqual({ bytes: 64, intact: true });
    expect(await httpVisit(httpPort, "127.0.0.3")).toMatch(/^HTTP\/1\.1 200 /);
    expect(await tcpVisit(tcpPort, "127.0.0.2")).toEqual({ bytes: 0, intact: false });
  });
});
