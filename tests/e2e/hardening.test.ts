/**
 * The public HTTP port under abuse, as real processes: visitors that close at every point leave no
 * descriptor behind; an upgrade request cannot smuggle a second request past routing and rewriting;
 * incomplete heads and idle connections time out, and all incomplete heads together have a budget;
 * error pages say no more than a visitor needs.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type Socket } from "node:net";
import { CONNECT_PATH, SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import {
  type ClientProcess,
  defer,
  eventually,
  type HttpServerProcess,
  openDescriptors,
  rssKiB,
  setupFile,
  startHttpClient,
  startHttpServer,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";

setupFile();

/**
 * A raw HTTP/1.1 backend that records every byte it receives and answers each request head with
 * `200 ok` (keep-alive), or with `answer` when that returns one. Bodies are not expected.
 */
function startRecordingBackend(answer?: (head: string) => string | undefined) {
  let received = "";
  const listener = Bun.listen<{ buffer: string }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = { buffer: "" };
      },
      data(socket, chunk) {
        const text = Buffer.from(chunk).toString("latin1");
        received += text;
        socket.data.buffer += text;
        for (let end = socket.data.buffer.indexOf("\r\n\r\n"); end >= 0; ) {
          const head = socket.data.buffer.slice(0, end + 4);
          socket.data.buffer = socket.data.buffer.slice(end + 4);
          socket.write(answer?.(head) ?? "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
          if (/\r\nconnection: close\r\n/i.test(head)) socket.end();
          end = socket.data.buffer.indexOf("\r\n\r\n");
        }
      },
    },
  });
  defer(() => listener.stop(true));
  return { port: listener.port, received: () => received };
}

/** Sends `bytes` on a new connection and collects what comes back until the server closes (or `ms`). */
function exchange(port: number, bytes: string, ms = 5000): Promise<string> {
  return withTimeout(
    new Promise<string>((resolve) => {
      let answer = "";
      const socket = connect(port, "127.0.0.1", () => socket.write(bytes));
      socket.on("data", (chunk) => {
        answer += chunk.toString("latin1");
      });
      socket.on("close", () => resolve(answer));
      socket.on("error", () => {});
    }),
    ms,
    "the server to close the connection",
  );
}

/** Sends `bytes` and resolves with what came back once `done` says it is complete; the socket stays open. */
function sendAndRead(socket: Socket, bytes: string, done: (answer: string) => boolean): Promise<string> {
  return withTimeout(
    new Promise<string>((resolve) => {
      let answer = "";
      const onData = (chunk: Buffer) => {
        answer += chunk.toString("latin1");
        if (done(answer)) {
          socket.off("data", onData);
          resolve(answer);
        }
      };
      socket.on("data", onData);
      socket.write(bytes);
    }),
    5000,
    "the answer",
  );
}

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => resolve(socket));
    socket.on("error", reject);
    defer(() => socket.destroy());
  });
}

describe("visitors that go away at any point leave nothing behind", () => {
  let server: HttpServerProcess;
  let client: ClientProcess;
  beforeAll(async () => {
    const app = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("hello\n") });
    defer(() => app.stop(true));
    server = await startHttpServer(["--http-port", "0"]);
    client = await startHttpClient(server.url, app.port as number, "app");
  });
  afterAll(() => client.kill());

  const GOOD = "GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
  const patterns: [string, (socket: Socket) => void][] = [
    ["nothing sent, then FIN", (s) => s.end()],
    ["a partial head, then FIN", (s) => s.end("GET / HTTP/1.1\r\nHo")],
    [
      "a request for an unknown name, then FIN",
      (s) => s.end("GET / HTTP/1.1\r\nHost: nope.localhost\r\n\r\n"),
    ],
    ["a good request, then FIN at once", (s) => s.end(GOOD)],
    [
      "a good request, FIN after the answer's first bytes",
      (s) => {
        s.write(GOOD);
        s.once("data", () => s.end());
      },
    ],
    [
      "a good request, then a reset",
      (s) => {
        s.write(GOOD);
        s.once("data", () => s.resetAndDestroy());
      },
    ],
  ];

  for (const [name, visit] of patterns)
    test(`300 visitors: ${name}; descriptors and RSS return`, async () => {
      const pid = server.proc.pid;
      const before = openDescriptors(pid);
      const rssBefore = await rssKiB(pid);
      for (let batch = 0; batch < 300; batch += 50)
        await Promise.all(
          Array.from(
            { length: 50 },
            () =>
              new Promise<void>((resolve) => {
                const socket = connect(server.httpPort, "127.0.0.1", () => visit(socket));
                socket.on("data", () => {});
                socket.on("close", () => resolve());
                socket.on("error", () => resolve());
                // The visitor side gives up after a while; the server must still free its side.
                setTimeout(() => {
                  socket.destroy();
                  resolve();
                }, 3000);
              }),
          ),
        );
      // Back to where it was (the client's connections to the app close too), within the linger time.
      await eventually(async () => openDescriptors(pid) <= before + 2, 8000, `descriptors back to ${before}`);
      expect((await rssKiB(pid)) - rssBefore).toBeLessThan(64 * 1024);
      // Still serving.
      expect(
        await exchange(server.httpPort, GOOD.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")),
      ).toMatch(/^HTTP\/1\.1 200 [\s\S]*hello\n$/);
      await eventually(async () => (await server.health()).streams === 0, 3000, "no stream left");
    });
});

describe("an upgrade request cannot smuggle a second request", () => {
  const SMUGGLE = (host: string) =>
    `GET /upgrade HTTP/1.1\r\nHost: ${host}\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n` +
    `GET /second HTTP/1.1\r\nHost: ${host}\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: gopher\r\n` +
    `X-Forwarded-Host: evil.example\r\nX-Smuggled: yes\r\nConnection: close\r\n\r\n`;

  for (const mode of ["rewrite", "preserve"])
    test(`a refused upgrade (200) returns to request framing: the next request is routed and rewritten (host ${mode})`, async () => {
      const backend = startRecordingBackend();
      const server = await startHttpServer(["--http-port", "0"]);
      const client = await startHttpClient(server.url, backend.port, "app", ["--host-header", mode]);
      defer(() => client.kill());
      const answer = await exchange(server.httpPort, SMUGGLE("app.localhost"));
      expect(answer.match(/HTTP\/1\.1 200/g)?.length, answer).toBe(2);
      const second = backend.received().slice(backend.received().indexOf("GET /second"));
      expect(second).toMatch(/^GET \/second HTTP\/1\.1\r\n/);
      expect(second).toContain("X-Forwarded-For: 127.0.0.1\r\n");
      expect(second).toContain("X-Forwarded-Proto: http\r\n");
      expect(second).not.toContain("6.6.6.6");
      expect(second).not.toContain("evil.example");
      expect(second).not.toContain("gopher");
      if (mode === "rewrite") expect(second).toContain(`Host: 127.0.0.1:${backend.port}\r\n`);
    });

  test("a 101 switches to raw bytes only then: what follows the upgrade request arrives as sent", async () => {
    const backend = startRecordingBackend((head) =>
      head.startsWith("GET /upgrade")
        ? "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"
        : undefined,
    );
    const server = await startHttpServer(["--http-port", "0"]);
    const client = await startHttpClient(server.url, backend.port, "app");
    defer(() => client.kill());
    const socket = await open(server.httpPort);
    const answer = await sendAndRead(socket, SMUGGLE("app.localhost"), (a) => a.includes("\r\n\r\n"));
    expect(answer).toMatch(/^HTTP\/1\.1 101 /);
    // After the 101 the bytes are the upgraded protocol's: passed on untouched, by design.
    await eventually(async () => backend.received().includes("X-Smuggled: yes"), 3000, "raw bytes");
  });

  test("a request held behind an upgrade over 64 KiB is refused, not buffered", async () => {
    const backend = startRecordingBackend(() => undefined);
    const server = await startHttpServer(["--http-port", "0"]);
    const client = await startHttpClient(server.url, backend.port, "app");
    defer(() => client.kill());
    // The backend never answers the upgrade (it answers 200 to every head... but only once the head is
    // in): hold more than 64 KiB after it in one go.
    const upgrade =
      "GET /upgrade HTTP/1.1\r\nHost: app.localhost\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n";
    const answer = await exchange(server.httpPort, upgrade + "x".repeat(100 * 1024));
    expect(answer).not.toContain("xxxx");
  });
});

describe("heads and idle connections time out; incomplete heads have a budget", () => {
  let server: HttpServerProcess;
  let client: ClientProcess;
  beforeAll(async () => {
    const app = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("hello\n") });
    defer(() => app.stop(true));
    server = await startHttpServer(["--http-port", "0", "--request-timeout", "1"]);
    client = await startHttpClient(server.url, app.port as number, "app");
  });
  afterAll(() => client.kill());

  test("a head that never completes gets 408 and is closed after --request-timeout", async () => {
    const started = performance.now();
    const answer = await exchange(server.httpPort, "GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Slow: ", 5000);
    expect(answer).toMatch(
      /^HTTP\/1\.1 408 Request Timeout\r\n[\s\S]*connection: close\r\n\r\nrequest timeout/,
    );
    expect(performance.now() - started).toBeGreaterThanOrEqual(900);
  });

  test("a connection that never sends a byte is closed after --request-timeout without a page", async () => {
    expect(await exchange(server.httpPort, "", 5000)).toBe("");
  });

  test("an idle keep-alive connection is closed after --request-timeout; one in use is not", async () => {
    const socket = await open(server.httpPort);
    const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
    for (let i = 0; i < 3; i++) {
      const answer = await sendAndRead(socket, "GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n", (a) =>
        a.endsWith("hello\n"),
      );
      expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    }
    await withTimeout(closed, 5000, "the idle connection to close");
  });

  test("a head with bare LF line ends gets 400 at once", async () => {
    const answer = await exchange(server.httpPort, "GET / HTTP/1.1\nHost: app.localhost\n\n");
    expect(answer).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n[\s\S]*bare LF/);
  });

  test("1,000 visitors each holding 60 KB of a head: the server's heads budget (32 MiB) holds, all are closed", async () => {
    // A server of its own with a request timeout longer than the 1,000 take to arrive on a loaded
    // machine: heads expiring early would free the budget before it is reached.
    const app = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("hello\n") });
    defer(() => app.stop(true));
    const server = await startHttpServer(["--http-port", "0", "--request-timeout", "4"]);
    const client = await startHttpClient(server.url, app.port as number, "app");
    defer(() => client.kill());
    const pid = server.proc.pid;
    const before = openDescriptors(pid);
    const rssBefore = await rssKiB(pid);
    const chunk = `GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Pad: ${"a".repeat(60_000)}`;
    const sockets: Socket[] = [];
    let busy = 0;
    let closed = 0;
    for (let batch = 0; batch < 1000; batch += 100) {
      const opened = await Promise.all(Array.from({ length: 100 }, () => open(server.httpPort)));
      for (const socket of opened) {
        socket.on("data", (data) => {
          if (data.toString("latin1").startsWith("HTTP/1.1 503")) busy++;
        });
        socket.on("close", () => closed++);
        socket.write(chunk);
        sockets.push(socket);
      }
    }
    await eventually(async () => closed === 1000, 20_000, "every stalled visitor closed");
    expect(busy).toBeGreaterThan(300); // 32 MiB holds ~550 of them
    expect((await rssKiB(pid)) - rssBefore).toBeLessThan(128 * 1024);
    await eventually(async () => openDescriptors(pid) <= before + 2, 5000, `descriptors back to ${before}`);
  });
});

describe("answers say what a visitor needs and no more", () => {
  test("HTTP/2.0 gets 505 with its reason phrase; a refused local service's 502 names no address", async () => {
    const server = await startHttpServer(["--http-port", "0"]);
    // A local port nobody listens on.
    const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const dead = probe.port;
    probe.stop(true);
    const client = await startHttpClient(server.url, dead, "app");
    defer(() => client.kill());
    expect(await exchange(server.httpPort, "GET / HTTP/2.0\r\nHost: app.localhost\r\n\r\n")).toMatch(
      /^HTTP\/1\.1 505 HTTP Version Not Supported\r\n/,
    );
    const page = await exchange(server.httpPort, "GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n");
    expect(page).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n/);
    expect(page).not.toMatch(/127\.0\.0\.1|:\d{2,5}\b/);
  });
});

describe("the control port: a client that holds no tunnel, or breaks the protocol, holds nothing", () => {
  /** A raw protocol client: resolves once the server's hello arrived. */
  async function rawClient(url: string) {
    const ws = new WebSocket(`${url}${CONNECT_PATH}`, [SUBPROTOCOL]);
    const messages: string[] = [];
    const closed = new Promise<number>((resolve) => ws.addEventListener("close", (e) => resolve(e.code)));
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        ws.addEventListener("message", (e) => {
          messages.push(String(e.data));
          resolve();
        });
        ws.addEventListener("error", () => reject(new Error("WebSocket error")));
      }),
      5000,
      "hello",
    );
    defer(() => ws.close());
    return { ws, messages, closed };
  }

  test("refused exposes do not end the handshake: the connection closes at --handshake-timeout", async () => {
    const server = await startServerProcess(["--handshake-timeout", "1"]);
    const client = await rawClient(server.url);
    client.ws.send(JSON.stringify({ type: "expose", id: 1, kind: "http", subdomain: "-bad-" }));
    await eventually(async () => client.messages.some((m) => m.includes('"error"')), 3000, "the refusal");
    expect(await withTimeout(client.closed, 5000, "the close")).toBe(1008);
    await eventually(async () => (await server.health()).clients === 0, 3000, "no client counted");
  });

  test("a message over the size limit ends the session (1009): nothing stays reserved", async () => {
    const server = await startServerProcess();
    const client = await rawClient(server.url);
    client.ws.send(JSON.stringify({ type: "expose", id: 1, kind: "tcp" }));
    await eventually(async () => client.messages.some((m) => m.includes('"exposed"')), 3000, "the tunnel");
    client.ws.send(new Uint8Array(17 * 1024 * 1024));
    expect(await withTimeout(client.closed, 5000, "the close")).toBe(1009);
    await eventually(
      async () => {
        const health = await server.health();
        return health.reserved === 0 && health.tunnels === 0 && health.clients === 0;
      },
      3000,
      "the session gone, not reserved",
    );
  });
});
