/**
 * What a new user tripped over (issue 15), and which public ports a client may claim, each through
 * real server and client processes: a mistyped flag names the flag meant; a client gets no privileged
 * port and none of the server's own without --tcp-ports; a port a crashed client's session still holds
 * says so and for how long; several tunnels come up together or not at all; the default bind takes
 * IPv6 as well as IPv4; a --server that is no sockets server, or has no port, says so; README's
 * /health example is what the server answers.
 */

import { describe, expect, test } from "bun:test";
import type { Socket } from "node:net";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  defer,
  eventually,
  expectOneLineError,
  type RunResult,
  runToExit,
  setupFile,
  spawnRole,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { connectVisitor, freePort, readAll } from "../support/sockets.ts";

setupFile();

const SERVER = ["bun", "server.ts"];
const CLIENT = ["bun", "client.ts"];

/** Asserts a bad-flag run: exit 2, nothing on stdout, exactly `line` on stderr. */
function expectUsage(result: RunResult, line: string): void {
  expectOneLineError(result, /./);
  expect(result.code).toBe(2);
  expect(result.stderr.trim()).toBe(line);
}

describe("a mistyped flag names the flag meant", () => {
  const cases: [string, string[], string][] = [
    ["server --prot", [...SERVER, "--prot", "7070"], "error: unknown option --prot; did you mean --port?"],
    [
      "server --tcp-port",
      [...SERVER, "--tcp-port", "5000-6000"],
      "error: unknown option --tcp-port; did you mean --tcp-ports?",
    ],
    [
      "client --exposee",
      [...CLIENT, "--exposee", "127.0.0.1:80"],
      "error: unknown option --exposee; did you mean --expose?",
    ],
    [
      "client --insecur",
      [...CLIENT, "--expose", "80", "--insecur"],
      "error: unknown option --insecur; did you mean --insecure?",
    ],
    [
      "client --prot=5000",
      [...CLIENT, "--expose", "80", "--prot=5000"],
      "error: unknown option --prot; did you mean --port?",
    ],
    [
      "client --port without a value",
      [...CLIENT, "--expose", "80", "--port"],
      "error: --port needs a value (see --help)",
    ],
  ];
  for (const [name, cmd, line] of cases) test(name, async () => expectUsage(await runToExit(cmd), line));
});

describe("public ports without --tcp-ports", () => {
  test("a privileged port is refused, even to a server running as root", async () => {
    const service = startEchoService();
    const server = await startServerProcess();
    // 1000: privileged, and nothing on a test machine listens there (so "in use" cannot be the answer).
    const result = await runToExit([
      ...CLIENT,
      "--server",
      server.url,
      "--expose",
      `127.0.0.1:${service.port}`,
      "--port",
      "1000",
    ]);
    expectOneLineError(
      result,
      /^error: server refused the tunnel: port 1000 is privileged \(below 1024\); this server hands out 1024-65535 unless started with --tcp-ports$/,
    );
    expect(await server.health()).toMatchObject({ tunnels: 0 });
  });

  test("the server's own ports (control, --http-port) are refused as the server's own", async () => {
    const service = startEchoService();
    const server = await startServerProcess(["--http-port", "0"]);
    const httpPort = Number((await server.waitFor(/http tunnels on http:\/\/\*\.localhost:(\d+)/))[1]);
    for (const own of [server.port, httpPort]) {
      const result = await runToExit([
        ...CLIENT,
        "--server",
        server.url,
        "--expose",
        `127.0.0.1:${service.port}`,
        "--port",
        String(own),
      ]);
      expectOneLineError(
        result,
        new RegExp(
          `^error: server refused the tunnel: port ${own} is the server's own \\(control or HTTP port\\)$`,
        ),
      );
    }
    expect(await server.health()).toMatchObject({ tunnels: 0 });
  });
});

test("the port of a crashed client: reserved for its session, for how long (--grace)", async () => {
  const service = startEchoService();
  const server = await startServerProcess(["--grace", "30"]);
  const port = freePort();
  const crashed = await startClientProcess(
    server.url,
    [`127.0.0.1:${service.port}`],
    ["--port", String(port)],
  );
  crashed.kill("SIGKILL");
  await crashed.exited();
  await eventually(
    async () => (await server.health()).tunnels === 1 && (await server.health()).clients === 0,
    5000,
    "session reserved",
  );
  const result = await runToExit([
    ...CLIENT,
    "--server",
    server.url,
    "--expose",
    `127.0.0.1:${service.port}`,
    "--port",
    String(port),
  ]);
  expectOneLineError(
    result,
    new RegExp(
      `^error: server refused the tunnel: port ${port} is reserved for a dropped client's session for up to (\\d+) s more \\(the server's --grace\\); wait, or ask for another port$`,
    ),
  );
  const left = Number(/up to (\d+) s/.exec(result.stderr)?.[1]);
  expect(left).toBeGreaterThan(20);
  expect(left).toBeLessThanOrEqual(30);
});

test("several --expose, one refused: no exposed line, the others closed, exit 1", async () => {
  const service = startEchoService();
  const server = await startServerProcess();
  const holder = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
  const taken = (holder.tunnels[0] as { port: number }).port;
  const free = freePort();
  // The first tunnel is granted (and answered first); the second is refused.
  const result = await runToExit([
    ...CLIENT,
    "--server",
    server.url,
    "--expose",
    `127.0.0.1:${service.port}`,
    "--port",
    String(free),
    "--expose",
    `127.0.0.1:${service.port}`,
    "--port",
    String(taken),
  ]);
  expectOneLineError(result, new RegExp(`server refused the tunnel: port ${taken} is already in use`));
  // The granted one was released with the connection: only the holder's tunnel is left, its port free.
  await eventually(async () => (await server.health()).tunnels === 1, 5000, "granted tunnel released");
  const probe = Bun.listen({ hostname: "127.0.0.1", port: free, socket: { data() {} } });
  probe.stop(true);
});

/** True when this machine can listen on ::1 (where it cannot, dual stack has nothing to show). */
function hasIPv6(): boolean {
  try {
    Bun.listen({ hostname: "::1", port: 0, socket: { data() {} } }).stop(true);
    return true;
  } catch {
    return false;
  }
}

/** Sends `data` through a visitor from `host`, half-closes and returns the sha256 of the echo. */
async function echoFrom(host: string, port: number, data: Uint8Array): Promise<string> {
  const socket: Socket = await connectVisitor(port, host);
  const received = readAll(socket);
  socket.end(data);
  return (await withTimeout(received, 10_000, `echo from ${host}`)).sha256;
}

test.skipIf(!hasIPv6())("the default bind takes IPv4 and IPv6 clients and visitors", async () => {
  const service = startEchoService();
  const server = spawnRole([...SERVER, "--port", "0"]);
  const port = Number((await server.waitFor(/listening on ws:\/\/\[::\]:(\d+)/))[1]);
  for (const host of ["127.0.0.1", "[::1]"]) {
    const health = await (await fetch(`http://${host}:${port}/health`)).json();
    expect(health).toMatchObject({ status: "ok" });
  }
  const v6 = await startClientProcess(`ws://[::1]:${port}`, [`127.0.0.1:${service.port}`]);
  const v4 = await startClientProcess(`ws://127.0.0.1:${port}`, [`127.0.0.1:${service.port}`]);
  for (const client of [v6, v4]) {
    expect(client.stdout()).toMatch(/url: localhost:\d+/);
    const tunnel = (client.tunnels[0] as { port: number }).port;
    for (const host of ["127.0.0.1", "::1"]) {
      const data = randomData(64 * 1024);
      expect(await echoFrom(host, tunnel, data)).toBe(sha256(data));
    }
  }
  const health = await (await fetch(`http://127.0.0.1:${port}/health`)).json();
  expect(health).toMatchObject({ clients: 2, tunnels: 2 });
});

describe("--server that is not what it should be", () => {
  /** Runs the client against a web server that answers every request with `body` and `init`. */
  async function clientAgainst(body: string, init: ResponseInit) {
    const web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response(body, init) });
    defer(() => web.stop(true));
    const result = await runToExit([...CLIENT, "--expose", "80", "--server", `ws://127.0.0.1:${web.port}`]);
    return { result, port: web.port };
  }

  test("an ordinary web server: not a sockets server, no HTML", async () => {
    const { result, port } = await clientAgainst("<!DOCTYPE html>\n<html><body>It works!</body></html>\n", {
      headers: { "content-type": "text/html; charset=utf-8" },
    });
    expectOneLineError(
      result,
      new RegExp(
        `^error: ws://127\\.0\\.0\\.1:${port} is not a sockets server \\(it answered HTTP 200 OK, text/html instead of a WebSocket upgrade\\); check the host and port in --server$`,
      ),
    );
  });

  test("a proxy whose sockets server is down: says so, not 'not a sockets server'", async () => {
    const { result, port } = await clientAgainst("<html>502 Bad Gateway</html>", {
      status: 502,
      headers: { "content-type": "text/html" },
    });
    expectOneLineError(
      result,
      new RegExp(
        `^error: ws://127\\.0\\.0\\.1:${port} answered HTTP 502 Bad Gateway, text/html: a proxy there cannot reach the sockets server behind it$`,
      ),
    );
  });

  test("ws://localhost without a port: says it meant 80 and names the server's 7070", async () => {
    const result = await runToExit([...CLIENT, "--expose", "80", "--server", "ws://localhost"], {}, 20_000);
    // Whatever port 80 does here (refuse, answer, drop), the line says what the URL meant.
    expectOneLineError(
      result,
      /ws:\/\/localhost.*\(the URL has no port, so ws:\/\/ meant 80; a sockets server listens on 7070 unless told otherwise: --server ws:\/\/localhost:7070\)$/,
      15_000,
    );
  });
});

test("README's /health example has the fields and the protocol version the server answers", async () => {
  const readme = await Bun.file(new URL("../../README.md", import.meta.url)).text();
  const example = /`(\{"status":"ok",[^`]*\})`/.exec(readme)?.[1];
  expect(example, "README has a /health example").toBeDefined();
  const server = await startServerProcess();
  const actual = await server.health();
  const documented = JSON.parse(example as string) as Record<string, unknown>;
  expect(
    Object.keys(documented).sort(),
    "README's /health example lists exactly the fields the server answers (document new ones there)",
  ).toEqual(Object.keys(actual).sort());
  expect(documented.protocol).toBe((actual as unknown as Record<string, unknown>).protocol);
});
