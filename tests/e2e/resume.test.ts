/**
 * Stays up: a client that loses its server (killed, restarted, frozen, or a network blip) comes back by
 * itself with the same tunnel id and public port; connections in flight survive a blip without losing
 * a byte; nobody else can take a reserved tunnel; a local service that restarts is picked up again.
 */

import { expect, test } from "bun:test";
import { CONNECT_PATH, RESUME_HEADER, SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import { rawStatus, refusedOrClosed, startProxy, upgradeHeaders } from "../support/faults.ts";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  count,
  deferContinue,
  eventually,
  exposedLines,
  setupFile,
  spawnRole,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { closedWithin, connectVisitor, echoThrough, streamEcho } from "../support/sockets.ts";

setupFile();

/** The only tunnel of a client. */
const only = (tunnels: { id: string; port: number }[]) => tunnels[0] as { id: string; port: number };

async function expectEcho(port: number, size = 256 * 1024): Promise<void> {
  const data = randomData(size);
  expect(await echoThrough(port, data, 10_000)).toBe(sha256(data));
}

test("server SIGKILLed and restarted on its port: the client re-exposes the same port and id", async () => {
  const echo = startEchoService();
  const server = await startServerProcess();
  const client = await startClientProcess(server.url, [`127.0.0.1:${echo.port}`]);
  const first = only(client.tunnels);
  await expectEcho(first.port);

  server.kill("SIGKILL");
  await server.exited(5000);
  await client.waitFor(/reconnecting/, 5000);
  const restarted = await startServerProcess([], {}, { port: server.port });
  const backAt = Date.now();
  await eventually(() => exposedLines(client.stdout()).length >= 2, 10_000, "a second exposed line");
  expect(Date.now() - backAt).toBeLessThan(10_000);
  expect(exposedLines(client.stdout())).toEqual([first, first]);
  await expectEcho(first.port);
  expect(client.proc.exitCode).toBeNull();
  expect(await restarted.health()).toMatchObject({ clients: 1, tunnels: 1, reserved: 0 });

  // SIGINT: a clean exit 0.
  client.kill("SIGINT");
  expect(await client.exited(5000)).toBe(0);
});

test("API key rejected on reconnect: the client does not retry and exits non-zero", async () => {
  const echo = startEchoService();
  const server = await startServerProcess([], { SOCKETS_SINGLE_API_KEY: "first-key-0123456789" });
  const client = await startClientProcess(server.url, [`127.0.0.1:${echo.port}`], [], {
    SOCKETS_API_KEY: "first-key-0123456789",
  });
  server.kill("SIGKILL");
  await server.exited(5000);
  await startServerProcess([], { SOCKETS_SINGLE_API_KEY: "second-key-9876543210" }, { port: server.port });
  expect(await client.exited(10_000)).not.toBe(0);
  expect(client.stderr()).toMatch(/API key/);
});

test("blip: 8 visitors × 64 MiB keep flowing across a cut of the client's connection, no byte lost", async () => {
  const echo = startEchoService();
  const server = await startServerProcess(["--grace", "30"]);
  const proxy = startProxy(server.port);
  const client = await startClientProcess(`ws://127.0.0.1:${proxy.port}`, [`127.0.0.1:${echo.port}`]);
  const port = only(client.tunnels).port;

  // Each visitor holds back after 24 MiB until the cut happened, so that all of them are mid-stream.
  let release = () => {};
  const cutDone = new Promise<void>((resolve) => {
    release = resolve;
  });
  const streams = Array.from({ length: 8 }, () =>
    streamEcho(port, 64 * MiB, { gateAfter: 24 * MiB, gate: () => cutDone }),
  );
  const failures = Promise.all(streams.map((s) => s.done)); // rejects at the first early close
  failures.catch(() => {});
  await Promise.race([
    eventually(() => streams.every((s) => s.echoed() >= 16 * MiB), 30_000, "16 MiB echoed on every visitor"),
    failures,
  ]);

  proxy.refuse(true);
  proxy.cut();
  release(); // visitors keep writing during the gap
  await client.waitFor(/reconnecting/, 5000);
  await Bun.sleep(1000); // the outage itself: the test is about surviving it
  proxy.refuse(false);

  const results = await withTimeout(Promise.all(streams.map((s) => s.done)), 60_000, "echo streams");
  for (const r of results) {
    expect(r.bytes).toBe(64 * MiB);
    expect(r.received).toBe(r.sent);
  }
  await client.waitFor(/resumed/, 5000);
  expect(exposedLines(client.stdout())).toHaveLength(1);
  expect(client.proc.exitCode).toBeNull();
  await eventually(async () => (await server.health()).streams === 0, 5000, "server streams freed");
}, 120_000);

test("client frozen (SIGSTOP) past the heartbeat timeout: the server reserves its tunnel; it resumes", async () => {
  const echo = startEchoService();
  const server = await startServerProcess(["--heartbeat", "1", "--grace", "30"]);
  const client = await startClientProcess(server.url, [`127.0.0.1:${echo.port}`], ["--heartbeat", "1"]);
  const tunnel = only(client.tunnels);
  deferContinue(client);

  client.kill("SIGSTOP");
  try {
    await eventually(
      async () => {
        const h = await server.health();
        return h.clients === 0 && h.reserved === 1 && h.tunnels === 1;
      },
      8000,
      "server sees the frozen client as gone (clients 0, reserved 1)",
    );
    // A visitor of the reserved tunnel is closed promptly.
    await refusedOrClosed(tunnel.port, 2000);
  } finally {
    client.kill("SIGCONT");
  }
  await client.waitFor(/resumed/, 10_000);
  expect(exposedLines(client.stdout())).toEqual([tunnel]);
  await expectEcho(tunnel.port);
  expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1, reserved: 0 });
});

test("server frozen (SIGSTOP) past the heartbeat timeout: the client notices; the tunnel comes back", async () => {
  const echo = startEchoService();
  const server = await startServerProcess(["--heartbeat", "1", "--grace", "30"]);
  const client = await startClientProcess(
    server.url,
    [`127.0.0.1:${echo.port}`],
    ["--heartbeat", "1", "--max-backoff", "1"],
  );
  const tunnel = only(client.tunnels);
  deferContinue(server);

  server.kill("SIGSTOP");
  const stoppedAt = Date.now();
  try {
    await client.waitFor(/reconnecting/, 8000);
    expect(Date.now() - stoppedAt).toBeGreaterThan(1500); // heartbeats, not an instant guess
  } finally {
    server.kill("SIGCONT");
  }
  await eventually(
    () => count(client.stderr(), /resumed/g) >= 1 || exposedLines(client.stdout()).length >= 2,
    15_000,
    "client back after the server woke up",
  );
  for (const line of exposedLines(client.stdout())) expect(line.port).toBe(tunnel.port);
  await eventually(
    async () => {
      const data = randomData(64 * 1024);
      try {
        return (await echoThrough(tunnel.port, data, 3000)) === sha256(data);
      } catch {
        return false;
      }
    },
    10_000,
    "echo through the same port",
  );
  expect(client.proc.exitCode).toBeNull();
  expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1, reserved: 0 });
});

test("resume hijack: another client with the same key cannot take the reserved port; the owner resumes", async () => {
  const key = "hijack-test-key-0123456789";
  const echo = startEchoService();
  const server = await startServerProcess(["--grace", "30"], { SOCKETS_SINGLE_API_KEY: key });
  const proxy = startProxy(server.port);
  const owner = await startClientProcess(
    `ws://127.0.0.1:${proxy.port}`,
    [`127.0.0.1:${echo.port}`],
    ["--max-backoff", "1"],
    { SOCKETS_API_KEY: key },
  );
  const tunnel = only(owner.tunnels);

  proxy.refuse(true);
  proxy.cut();
  await eventually(
    async () => {
      const h = await server.health();
      return h.clients === 0 && h.reserved === 1;
    },
    5000,
    "tunnel reserved",
  );
  await owner.waitFor(/reconnecting/, 5000);
  const gapVisit = Date.now();
  await refusedOrClosed(tunnel.port, 2000);
  expect(Date.now() - gapVisit).toBeLessThan(2000);

  const thief = spawnRole(
    [
      "bun",
      "client.ts",
      "--server",
      `ws://127.0.0.1:${server.port}`,
      "--expose",
      `127.0.0.1:${echo.port}`,
      "--port",
      String(tunnel.port),
    ],
    { SOCKETS_API_KEY: key },
  );
  expect(await thief.exited(10_000)).not.toBe(0);
  expect(thief.stderr()).toMatch(/port \d+ .*(taken|in use|reserved)|(taken|in use|reserved).*port/i);
  expect(thief.stdout()).toBe("");
  expect(await server.health()).toMatchObject({ clients: 0, reserved: 1 });

  proxy.refuse(false);
  await owner.waitFor(/resumed/, 10_000);
  expect(exposedLines(owner.stdout())).toEqual([tunnel]);
  // The client says "resumed" once it sent its sync; the server serves visitors once it has read it
  // (a visitor a moment before is refused at once, as during the gap): the first one may be early.
  const data = randomData(64 * 1024);
  await eventually(
    () =>
      echoThrough(tunnel.port, data, 10_000).then(
        (hash) => hash === sha256(data),
        () => false,
      ),
    5000,
    "a visitor served again after the resume",
  );
  expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1, reserved: 0 });
});

test("grace period over: the reserved port is released; the client, back later, exposes the same port and id again", async () => {
  const echo = startEchoService();
  const server = await startServerProcess(["--grace", "1"]);
  const proxy = startProxy(server.port);
  const client = await startClientProcess(
    `ws://127.0.0.1:${proxy.port}`,
    [`127.0.0.1:${echo.port}`],
    ["--max-backoff", "1"],
  );
  const tunnel = only(client.tunnels);

  proxy.refuse(true);
  proxy.cut();
  await eventually(async () => (await server.health()).reserved === 1, 3000, "tunnel reserved");
  await eventually(
    async () => {
      const h = await server.health();
      return h.reserved === 0 && h.tunnels === 0 && h.clients === 0;
    },
    4000,
    "reservation released after --grace 1",
  );
  expect(await refusedOrClosed(tunnel.port, 2000)).toBe("refused");

  proxy.refuse(false);
  await eventually(() => exposedLines(client.stdout()).length >= 2, 10_000, "a second exposed line");
  expect(exposedLines(client.stdout())).toEqual([tunnel, tunnel]);
  await expectEcho(tunnel.port);
  expect(client.proc.exitCode).toBeNull();
  expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1, reserved: 0 });
});

test("resume upgrade with a wrong secret gets 403; with the session's own secret, 101", async () => {
  const key = "resume-secret-test-key-0123";
  const server = await startServerProcess(["--grace", "30"], { SOCKETS_SINGLE_API_KEY: key });
  const proxy = startProxy(server.port);
  // A raw protocol client through the proxy, so that its connection can drop without a close frame.
  const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}${CONNECT_PATH}`, {
    protocols: [SUBPROTOCOL],
    headers: { authorization: `Bearer ${key}` },
  } as unknown as string[]);
  const messages: { type: string; session?: string; secret?: string; port?: number }[] = [];
  ws.addEventListener("message", (e) => {
    if (typeof e.data === "string") messages.push(JSON.parse(e.data));
  });
  await eventually(() => messages.some((m) => m.type === "hello"), 5000, "hello");
  ws.send(JSON.stringify({ type: "expose", id: 1, kind: "tcp" }));
  await eventually(() => messages.some((m) => m.type === "exposed"), 5000, "exposed");
  const hello = messages.find((m) => m.type === "hello") as { session: string; secret: string };
  expect(hello.session).toBeString();
  expect(hello.secret.length).toBeGreaterThanOrEqual(16);
  expect(hello.secret).not.toContain(key);

  proxy.cut();
  await eventually(async () => (await server.health()).reserved === 1, 5000, "session reserved");
  const resume = (secret: string, auth = key) =>
    rawStatus(
      server.port,
      CONNECT_PATH,
      upgradeHeaders({ Authorization: `Bearer ${auth}`, [RESUME_HEADER]: `${hello.session} ${secret}` }),
    );
  const wrong =
    `${hello.secret.slice(0, -4)}AAAA` === hello.secret ? "B".repeat(43) : `${hello.secret.slice(0, -4)}AAAA`;
  expect(await resume(wrong)).toBe(403);
  expect(await resume("")).not.toBe(101);
  expect(await resume(hello.secret, "not-the-key")).toBe(401);
  expect(await server.health()).toMatchObject({ clients: 0, reserved: 1 });
  expect(await resume(hello.secret)).toBe(101);
});

test("local service restarted while visitors come and go: closed promptly during the outage, then served", async () => {
  const echo = startEchoService();
  const server = await startServerProcess();
  const client = await startClientProcess(server.url, [`127.0.0.1:${echo.port}`]);
  const port = only(client.tunnels).port;
  await expectEcho(port);

  const open = await connectVisitor(port);
  open.on("error", () => {});
  open.write("hello");
  await eventually(async () => (await server.health()).streams === 1, 3000, "one stream open");
  echo.stop();
  await closedWithin(open, 2000); // EOF (or reset) from the tunnel
  open.destroy();
  for (let i = 0; i < 5; i++) {
    const start = Date.now();
    await refusedOrClosed(port, 2000);
    expect(Date.now() - start).toBeLessThan(2000);
  }

  echo.restart();
  for (let i = 0; i < 5; i++) await expectEcho(port, 64 * 1024 + i);
  expect(client.proc.exitCode).toBeNull();
  expect(server.proc.exitCode).toBeNull();
  await eventually(async () => (await server.health()).streams === 0, 3000, "server streams freed");
});
