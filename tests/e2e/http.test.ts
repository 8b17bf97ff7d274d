/**
 * HTTP tunnels end to end: a local web app published at http://NAME.localhost:PORT through real server
 * and client processes, reached with fetch and a WebSocket (Bun resolves *.localhost to loopback).
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeCertificate } from "../support/certificates.ts";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  type ClientProcess,
  defer,
  eventually,
  type HttpServerProcess,
  runToExit,
  setupFile,
  spawnRole,
  startClientProcess,
  startHttpClient,
  startHttpServer,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { hashBodyResponse } from "../support/services.ts";

setupFile();

/** The local web app: echoes what it saw, hashes uploads, streams downloads, echoes WebSocket messages. */
function startApp() {
  let hits = 0;
  const app = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req, server) {
      hits++;
      const url = new URL(req.url);
      if (url.pathname === "/ws") {
        if (server.upgrade(req)) return undefined;
        return new Response("expected a WebSocket", { status: 400 });
      }
      if (url.pathname === "/headers") return Response.json(Object.fromEntries(req.headers));
      if (url.pathname === "/sha256") return hashBodyResponse(req);
      if (url.pathname === "/bytes") {
        const size = Number(url.searchParams.get("n"));
        return new Response(deterministic(size), { headers: { "content-type": "application/octet-stream" } });
      }
      if (url.pathname === "/cookies") {
        const headers = new Headers();
        for (const c of ["a=1", "b=2", "c=3"]) headers.append("set-cookie", c);
        return new Response("ok", { headers });
      }
      if (url.pathname === "/empty") return new Response(null, { status: 204 });
      return new Response(`hello from ${url.pathname}`);
    },
    websocket: {
      message(ws, message) {
        ws.send(message);
      },
    },
  });
  return { port: app.port as number, hits: () => hits, stop: () => app.stop(true) };
}

/** `size` pseudo-random bytes, the same for the same size (so both sides can hash them). */
function deterministic(size: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = 0x9e3779b9;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/**
 * Opens a WebSocket to `url`, sends `count` messages (even ones text, odd ones binary of up to
 * `maxBinary` bytes) and resolves with what was sent and what the echo brought back, in order; then
 * closes with 4321 and resolves the close code the visitor saw.
 */
async function echoOverWebSocket(url: string, count: number, maxBinary: number) {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  await withTimeout(
    new Promise((resolve) => ws.addEventListener("open", resolve, { once: true })),
    5000,
    "no open",
  );
  const sent: string[] = [];
  const received: string[] = [];
  const all = new Promise<void>((resolve) =>
    ws.addEventListener("message", (event) => {
      received.push(
        typeof event.data === "string" ? `t:${event.data}` : `b:${sha256(new Uint8Array(event.data))}`,
      );
      if (received.length === count) resolve();
    }),
  );
  for (let i = 0; i < count; i++) {
    const data =
      i % 2 === 0 ? `message ${i} ${"x".repeat(i * 13)}` : randomData(1 + ((i * 7919) % maxBinary));
    sent.push(typeof data === "string" ? `t:${data}` : `b:${sha256(data)}`);
    ws.send(data);
  }
  await withTimeout(all, 20_000, "echoes did not all arrive");
  const closed = new Promise<number>((resolve) => ws.addEventListener("close", (e) => resolve(e.code)));
  ws.close(4321, "bye");
  return { sent, received, closeCode: await withTimeout(closed, 5000, "no close") };
}

describe("http tunnel", () => {
  let server: HttpServerProcess;
  let client: ClientProcess;
  let app: ReturnType<typeof startApp>;
  let base: string;
  let httpPort: number;

  beforeAll(async () => {
    app = startApp();
    server = await startHttpServer();
    httpPort = server.httpPort;
    client = await startHttpClient(server.url, app.port, "demo");
    base = `http://demo.localhost:${httpPort}`;
  });

  test("prints the URL; a GET reaches the local app with X-Forwarded-* and the local Host", async () => {
    expect(client.stdout()).toContain(`url: ${base}\n`);
    const response = await fetch(`${base}/headers`, { headers: { "x-forwarded-for": "6.6.6.6" } });
    expect(response.status).toBe(200);
    const seen = (await response.json()) as Record<string, string>;
    expect(seen.host).toBe(`127.0.0.1:${app.port}`);
    expect(seen["x-forwarded-for"]).toBe("127.0.0.1"); // the visitor's own copy is not trusted
    expect(seen["x-forwarded-host"]).toBe(`demo.localhost:${httpPort}`);
    expect(seen["x-forwarded-proto"]).toBe("http");
  });

  test("keep-alive: 50 sequential requests, then 50 concurrent clients × 20 requests, every body checked", async () => {
    for (let i = 0; i < 50; i++)
      expect(await (await fetch(`${base}/n${i}`)).text()).toBe(`hello from /n${i}`);
    const clients = Array.from({ length: 50 }, async (_, c) => {
      for (let i = 0; i < 20; i++)
        expect(await (await fetch(`${base}/c${c}/${i}`)).text()).toBe(`hello from /c${c}/${i}`);
    });
    await Promise.all(clients);
  });

  test("curl: GET, a 16 MiB POST and HEAD through the tunnel (sha256)", async () => {
    if (!Bun.which("curl")) throw new Error("curl is not installed (apt-get install curl)");
    const dir = mkdtempSync(join(tmpdir(), "sockets-curl-"));
    defer(() => rmSync(dir, { recursive: true, force: true }));
    const get = await runToExit(["curl", "-sS", "--max-time", "10", `${base}/curl`]);
    expect(get.stdout).toBe("hello from /curl");
    const body = randomData(16 * MiB);
    await Bun.write(join(dir, "body.bin"), body);
    const post = await runToExit([
      "curl",
      "-sS",
      "--max-time",
      "20",
      "--data-binary",
      `@${join(dir, "body.bin")}`,
      `${base}/sha256`,
    ]);
    expect((JSON.parse(post.stdout) as { sha256: string }).sha256).toBe(sha256(body));
    const head = await runToExit(["curl", "-sS", "-I", "--max-time", "10", `${base}/hello`]);
    expect(head.stdout).toMatch(/^HTTP\/1\.1 200/);
  });

  test("a 32 MiB upload and a 32 MiB download arrive intact (sha256)", async () => {
    const body = randomData(32 * MiB);
    const up = (await (await fetch(`${base}/sha256`, { method: "POST", body })).json()) as { sha256: string };
    expect(up.sha256).toBe(sha256(body));
    const down = new Uint8Array(await (await fetch(`${base}/bytes?n=${32 * MiB}`)).arrayBuffer());
    expect(sha256(down)).toBe(sha256(deterministic(32 * MiB)));
  });

  test("HEAD, 204 and three Set-Cookie headers come through as sent", async () => {
    const head = await fetch(`${base}/hello`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe("");
    expect((await fetch(`${base}/empty`)).status).toBe(204);
    const cookies = await fetch(`${base}/cookies`);
    expect(cookies.headers.getSetCookie()).toEqual(["a=1", "b=2", "c=3"]);
  });

  test("a WebSocket through the tunnel: 200 messages of random sizes, text and binary, all equal", async () => {
    const echo = await echoOverWebSocket(`ws://demo.localhost:${httpPort}/ws`, 200, 256 * 1024);
    expect(echo.received).toEqual(echo.sent);
    expect(echo.closeCode).toBe(4321);
  });

  test("a connection stays with its first request's tunnel: a request for another host on it is cut off", async () => {
    const socket = connect({ host: "127.0.0.1", port: httpPort });
    defer(() => socket.destroy());
    await new Promise((resolve) => socket.once("connect", resolve));
    let received = "";
    socket.on("data", (d) => {
      received += String(d);
    });
    socket.on("error", () => {});
    const closed = new Promise((resolve) => socket.once("close", resolve));
    socket.write(`GET /first HTTP/1.1\r\nHost: demo.localhost:${httpPort}\r\n\r\n`);
    await eventually(() => received.includes("hello from /first"), 5000, "an answer to the first request");
    const before = app.hits();
    socket.write(`GET /second HTTP/1.1\r\nHost: other.localhost:${httpPort}\r\n\r\n`);
    await withTimeout(closed, 5000, "the connection was not closed");
    expect(received).not.toContain("/second");
    expect(app.hits()).toBe(before);
  });

  test("an unknown name gets 404 and nothing reaches the app", async () => {
    const before = app.hits();
    const response = await fetch(`http://nobody.localhost:${httpPort}/`);
    expect(response.status).toBe(404);
    expect(await response.text()).toContain("no tunnel at nobody.localhost");
    expect(app.hits()).toBe(before);
  });

  test("a taken --subdomain: the second client exits non-zero with one clear line", async () => {
    const second = spawnRole([
      "bun",
      "client.ts",
      "--server",
      server.url,
      "--http",
      `127.0.0.1:${app.port}`,
      "--subdomain",
      "demo",
    ]);
    expect(await second.exited(10_000)).not.toBe(0);
    expect(second.stderr()).toMatch(/subdomain 'demo' is taken/);
  });
});

test("local service down: the visitor gets 502 promptly", async () => {
  const server = await startHttpServer();
  const port = server.httpPort;
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const deadPort = probe.port;
  probe.stop(true);
  const _client = await startHttpClient(server.url, deadPort, "down");
  const started = Date.now();
  const response = await fetch(`http://down.localhost:${port}/`);
  expect(response.status).toBe(502);
  expect(await response.text()).toContain("did not answer");
  expect(Date.now() - started).toBeLessThan(2000);
});

test("https: with a wildcard certificate for *.DOMAIN the HTTP port serves https URLs", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sockets-https-"));
  defer(() => rmSync(dir, { recursive: true, force: true }));
  // A wildcard needs two labels after it: *.tunnel.localhost, not *.localhost.
  const [cert, key] = await makeCertificate(dir, "wild", "DNS:localhost,DNS:*.tunnel.localhost,IP:127.0.0.1");
  const app = startApp();
  defer(app.stop);
  const server = await startServerProcess([
    "--http-port",
    "0",
    "--domain",
    "tunnel.localhost",
    "--tls-cert",
    cert,
    "--tls-key",
    key,
  ]);
  const port = Number((await server.waitFor(/http tunnels on https:\/\/\*\.tunnel\.localhost:(\d+)/))[1]);
  const client = await startClientProcess(server.url, [], ["--ca", cert, "--http", `127.0.0.1:${app.port}`]);
  const url = (await client.waitFor(/url: (https:\/\/[a-z0-9]+\.tunnel\.localhost:\d+)/))[1] as string;
  expect(url).toEndWith(`.tunnel.localhost:${port}`);
  const tls = { ca: await Bun.file(cert).text() };
  const response = await fetch(`${url}/headers`, { tls } as RequestInit);
  const seen = (await response.json()) as Record<string, string>;
  expect(seen["x-forwarded-proto"]).toBe("https");
  const body = randomData(4 * MiB);
  const up = (await (await fetch(`${url}/sha256`, { method: "POST", body, tls } as RequestInit)).json()) as {
    sha256: string;
  };
  expect(up.sha256).toBe(sha256(body));
});

test("--basic-auth: no or wrong credentials get 401 before anything reaches the app; right ones pass, unforwarded", async () => {
  const app = startApp();
  defer(app.stop);
  const server = await startHttpServer();
  const port = server.httpPort;
  const _client = await startHttpClient(server.url, app.port, "locked", ["--basic-auth", "alice:s3cret"]);
  const url = `http://locked.localhost:${port}/headers`;
  const basic = (credentials: string) => ({ authorization: `Basic ${btoa(credentials)}` });
  const before = app.hits();
  const anonymous = await fetch(url);
  expect(anonymous.status).toBe(401);
  expect(anonymous.headers.get("www-authenticate")).toContain("Basic");
  expect((await fetch(url, { headers: basic("alice:wrong") })).status).toBe(401);
  expect(app.hits()).toBe(before);
  const allowed = await fetch(url, { headers: basic("alice:s3cret") });
  expect(allowed.status).toBe(200);
  expect(((await allowed.json()) as Record<string, string>).authorization).toBeUndefined();
});

// With the inspector on, its capture prints the lines; off, the request log's own tap does.
for (const inspect of ["off", "127.0.0.1:0"])
  test(`--log-requests (--inspect ${inspect}): one stdout line per request with method, path, status, duration and bytes`, async () => {
    const app = startApp();
    defer(app.stop);
    const server = await startHttpServer();
    const port = server.httpPort;
    const client = await startHttpClient(server.url, app.port, "logged", [
      "--log-requests",
      "--inspect",
      inspect,
    ]);
    const base = `http://logged.localhost:${port}`;
    expect(await (await fetch(`${base}/hello`)).text()).toBe("hello from /hello");
    expect((await fetch(`${base}/empty`)).status).toBe(204);
    await fetch(`${base}/sha256`, { method: "POST", body: randomData(1000) }).then((r) => r.text());
    await client.waitFor(/POST \/sha256 200 \d+ ms \d+ B/);
    const lines = client
      .stdout()
      .split("\n")
      .filter((l) => / ms \d+ B$/.test(l));
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^\d\d:\d\d:\d\d GET \/hello 200 \d+ ms 17 B$/);
    expect(lines[1]).toMatch(/^\d\d:\d\d:\d\d GET \/empty 204 \d+ ms 0 B$/);
  });

test("without --http-port, HTTP tunnels are served on the control port, next to /health and the clients", async () => {
  const app = startApp();
  defer(app.stop);
  const server = await startServerProcess(["--domain", "localhost"]);
  expect(await server.waitFor(/http tunnels on http:\/\/\*\.localhost:(\d+)/).then((m) => Number(m[1]))).toBe(
    server.port,
  );
  const client = await startClientProcess(
    server.url,
    [],
    ["--http", `127.0.0.1:${app.port}`, "--subdomain", "front"],
  );
  await client.waitFor(new RegExp(`url: http://front\\.localhost:${server.port}\\n`));
  const base = `http://front.localhost:${server.port}`;
  const seen = (await (await fetch(`${base}/headers`)).json()) as Record<string, string>;
  expect(seen.host).toBe(`127.0.0.1:${app.port}`);
  expect(seen["x-forwarded-host"]).toBe(`front.localhost:${server.port}`);
  expect(seen["x-forwarded-for"]).toBe("127.0.0.1");
  expect(seen["x-sockets-via"]).toBeUndefined();
  const body = randomData(8 * MiB);
  const up = (await (await fetch(`${base}/sha256`, { method: "POST", body })).json()) as { sha256: string };
  expect(up.sha256).toBe(sha256(body));
  const down = new Uint8Array(await (await fetch(`${base}/bytes?n=${8 * MiB}`)).arrayBuffer());
  expect(sha256(down)).toBe(sha256(deterministic(8 * MiB)));
  expect((await fetch(`http://nobody.localhost:${server.port}/`)).status).toBe(404);
  expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1 });
});

test("a WebSocket to an HTTP tunnel on the control port is bridged: messages both ways, close code kept", async () => {
  const app = startApp();
  defer(app.stop);
  const server = await startServerProcess(["--domain", "localhost"]);
  await startHttpClient(server.url, app.port, "wsfront");
  const echo = await echoOverWebSocket(`ws://wsfront.localhost:${server.port}/ws`, 100, 512 * 1024);
  expect(echo.received).toEqual(echo.sent);
  expect(echo.closeCode).toBe(4321);
  expect(await server.health()).toMatchObject({ clients: 1 });
});
