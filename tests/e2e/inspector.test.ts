/**
 * The client's request inspector (issue 19) with real server and client processes: its JSON API
 * (list, one, replay with and without edits, clear, tunnels, TCP connections, status; an unknown id is
 * 404, a malformed replay 400), and its page in a real browser (headless Chromium through
 * playwright-core, as tests/e2e/browser.test.ts): a request through the tunnel appears within a second
 * without reload, its detail shows the JSON body pretty-printed, replay reaches the local service and
 * shows in the list, a filter narrows it. Screenshots at desktop and phone width go to
 * tests/artifacts/ (gitignored), whose path the test prints.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { openBrowserPage } from "../support/browser.ts";
import {
  defer,
  eventually,
  type HttpServerProcess,
  ROOT,
  setupFile,
  startClientProcess,
  startHttpServer,
  withTimeout,
} from "../support/processes.ts";

setupFile();

/** Where screenshots go (gitignored). */
const ARTIFACTS = join(ROOT, "tests", "artifacts");

/** The local web app: counts hits, echoes JSON, answers plain text elsewhere. */
function startApp() {
  const app = {
    hits: 0,
    server: Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(request) {
        app.hits++;
        const url = new URL(request.url);
        const body = await request.text();
        if (url.pathname === "/echo")
          return Response.json({ method: request.method, path: url.pathname, received: body, items: [1, 2] });
        if (url.pathname === "/missing") return new Response("nothing here", { status: 404 });
        return new Response(`hello ${url.pathname}`, { headers: { "content-type": "text/plain" } });
      },
    }),
  };
  defer(() => app.server.stop(true));
  return app;
}

/** A TCP echo service for the TCP tunnel. */
function startEcho() {
  // Half-open allowed: Bun otherwise closes both directions on the visitor's FIN, and an echo of bytes
  // that arrived with that FIN could be lost (the FIN test then saw fewer bytes back).
  const listener = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: { data: (socket, chunk) => void socket.write(chunk), end: (socket) => void socket.end() },
  });
  defer(() => listener.stop(true));
  return listener;
}

let app: ReturnType<typeof startApp>;
let server: HttpServerProcess;
let inspector: string;
let publicUrl: string;
let tcpPort: number;

const api = async (path: string, init?: RequestInit) => {
  const response = await fetch(`${inspector}${path}`, { ...init, signal: AbortSignal.timeout(10_000) });
  return { status: response.status, body: (await response.json().catch(() => null)) as never };
};

beforeAll(async () => {
  app = startApp();
  const echo = startEcho();
  server = await startHttpServer();
  const client = await startClientProcess(
    server.url,
    [`127.0.0.1:${echo.port}`],
    ["--http", `127.0.0.1:${app.server.port}`, "--subdomain", "inspected", "--inspect", "127.0.0.1:0"],
  );
  inspector = (await client.waitFor(/inspector: (http:\/\/127\.0\.0\.1:\d+)\n/))[1] as string;
  publicUrl = `http://inspected.localhost:${server.httpPort}`;
  tcpPort = client.tunnels[0]?.port as number;
  // The inspector line follows the tunnel lines.
  const out = client.stdout();
  expect(out.indexOf("inspector:")).toBeGreaterThan(out.lastIndexOf("exposed with tunnel id"));
});

/** Sends a request through the tunnel. */
function visit(path: string, init?: RequestInit) {
  return fetch(`${publicUrl}${path}`, { ...init, signal: AbortSignal.timeout(10_000) });
}

interface Summary {
  id: string;
  state: string;
  replay_of?: string;
  request: { method: string; uri: string };
  response?: { status_code: number };
}

describe("inspector JSON API", () => {
  test("list, one, replay (plain and edited), tunnels, TCP connections, status, clear; 404 and 400", async () => {
    expect((await api("/api/requests/http", { method: "DELETE" })).status).toBe(204);
    const sent = await visit("/echo?api=1", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ hello: "inspector", n: [1, 2, 3] }),
    });
    expect(sent.status).toBe(200);
    await sent.text();
    let list: { requests: Summary[] } = { requests: [] };
    await eventually(
      async () => {
        list = (await api("/api/requests/http?summary=1")).body;
        return list.requests.length === 1 && list.requests[0]?.state === "complete";
      },
      15_000,
      "the POST listed as complete",
    );
    const first = list.requests[0] as Summary;
    expect(first.request).toMatchObject({ method: "POST", uri: "/echo?api=1" });
    expect(first.response?.status_code).toBe(200);

    // One: ngrok's shape, bodies ready to show, raw bytes that start with the request line.
    const one = (await api(`/api/requests/http/${first.id}`)).body as {
      tunnel_name: string;
      remote_addr: string;
      duration: number;
      request: { headers: Record<string, string[]>; raw: string; body: { pretty: string; format: string } };
      response: { status: string; body: { pretty: string } };
    };
    expect(one.tunnel_name).toBe("http-1");
    expect(one.remote_addr).toMatch(/^(127\.0\.0\.1|::1|::ffff:127\.0\.0\.1):\d+$/);
    expect(one.duration).toBeGreaterThan(0);
    expect(one.request.headers["X-Forwarded-Host"]).toEqual([`inspected.localhost:${server.httpPort}`]);
    expect(one.request.body.format).toBe("json");
    expect(one.request.body.pretty).toBe(JSON.stringify({ hello: "inspector", n: [1, 2, 3] }, null, 2));
    expect(Buffer.from(one.request.raw, "base64").toString()).toStartWith("POST /echo?api=1 HTTP/1.1\r\n");
    expect(one.response.status).toBe("200 OK");
    expect(JSON.parse(one.response.body.pretty).received).toBe('{"hello":"inspector","n":[1,2,3]}');
    // The list without summary=1 is the same objects as one (ngrok's list carries everything).
    const full = (await api("/api/requests/http?limit=1&tunnel_name=http-1")).body as { requests: unknown[] };
    expect(full.requests).toEqual([one]);
    expect(
      ((await api("/api/requests/http?tunnel_name=tcp-1")).body as { requests: unknown[] }).requests,
    ).toEqual([]);

    // Replay: the local service is hit again, and the replay is listed, marked.
    const hits = app.hits;
    const replay = await api("/api/requests/http", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ id: first.id }),
    });
    expect(replay.status).toBe(200);
    const replayed = replay.body as Summary & { remote_addr: string; response: { body: { pretty: string } } };
    expect(replayed.replay_of).toBe(first.id);
    expect(replayed.remote_addr).toBe("replay");
    expect(app.hits).toBe(hits + 1);
    expect(JSON.parse(replayed.response.body.pretty).received).toBe('{"hello":"inspector","n":[1,2,3]}');

    // Replay with edits: method, path, headers and body all changed.
    const edited = await api("/api/requests/http", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        id: first.id,
        method: "PUT",
        path: "/echo?edited=1",
        headers: [
          ["Host", `127.0.0.1:${app.server.port}`],
          ["Content-Type", "application/x-www-form-urlencoded"],
        ],
        body: "a=1&b=two",
      }),
    });
    expect(edited.status).toBe(200);
    const editedBody = edited.body as Summary & {
      request: { body: { pretty: string; format: string } };
      response: { body: { pretty: string } };
    };
    expect(editedBody.request).toMatchObject({ method: "PUT", uri: "/echo?edited=1" });
    expect(editedBody.request.body).toMatchObject({ format: "form", pretty: "a = 1\nb = two" });
    expect(JSON.parse(editedBody.response.body.pretty)).toMatchObject({
      method: "PUT",
      received: "a=1&b=two",
    });
    expect(app.hits).toBe(hits + 2);
    list = (await api("/api/requests/http?summary=1")).body;
    expect(list.requests.map((r) => r.replay_of)).toEqual([first.id, first.id, undefined]);

    // Bad input.
    expect((await api("/api/requests/http/req_999999")).status).toBe(404);
    const post = (body: string) =>
      api("/api/requests/http", { method: "POST", headers: { "content-type": "application/json" }, body });
    expect((await post("{not json")).status).toBe(400);
    expect((await post("[1, 2]")).status).toBe(400);
    expect((await post('{"id": 7}')).status).toBe(400);
    expect((await post(`{"id": "${first.id}", "method": "GE T"}`)).status).toBe(400);
    expect((await post(`{"id": "${first.id}", "headers": [["Bad Name", "x"]]}`)).status).toBe(400);
    expect((await post('{"id": "req_999999"}')).status).toBe(404);

    // Tunnels and the client's figures.
    const tunnels = (await api("/api/tunnels")).body as { tunnels: { name: string; proto: string }[] };
    expect(tunnels.tunnels.map((t) => [t.name, t.proto]).sort()).toEqual([
      ["http-1", "http"],
      ["tcp-1", "tcp"],
    ]);

    // TCP: one connection closed with FIN, one reset by the visitor.
    let lastConnections = "";
    // Half-open: our FIN goes first and the echo still comes back (without it, Bun may close the
    // socket before the echo arrives, and the server's write then meets EPIPE: a reset, not a FIN).
    const finished = await Bun.connect({
      hostname: "127.0.0.1",
      port: tcpPort,
      allowHalfOpen: true,
      socket: { data() {}, close() {} },
    });
    finished.write("ping through tcp");
    finished.end();
    await eventually(
      async () => {
        const { connections } = (await api("/api/connections/tcp")).body as {
          connections: { end?: string; bytes_in: number; bytes_out: number }[];
        };
        lastConnections = JSON.stringify(connections);
        return connections.some((c) => c.end === "fin" && c.bytes_in === 16 && c.bytes_out === 16);
      },
      15_000,
      "a TCP connection ended by FIN with 16 bytes each way",
    ).catch((error) => {
      throw new Error(`${(error as Error).message}; the inspector's connections: ${lastConnections}`);
    });
    const reset = await Bun.connect({ hostname: "127.0.0.1", port: tcpPort, socket: { data() {} } });
    reset.write("x");
    await eventually(
      async () => {
        const { connections } = (await api("/api/connections/tcp")).body as {
          connections: { state: string }[];
        };
        return connections.some((c) => c.state === "open");
      },
      15_000,
      "a TCP connection open",
    );
    reset.terminate();
    await eventually(
      async () => {
        const { connections } = (await api("/api/connections/tcp")).body as {
          connections: { end?: string }[];
        };
        return connections.some((c) => c.end === "rst");
      },
      15_000,
      "a TCP connection ended by RST",
    );

    const status = (await api("/api/status")).body as Record<string, number>;
    expect(status.tunnels).toBe(2);
    expect(status.connections_total).toBeGreaterThanOrEqual(3);
    expect(status.bytes_in).toBeGreaterThan(16);
    expect(status.bytes_out).toBeGreaterThan(16);
    expect(status.requests_kept).toBe(3);

    expect((await api("/api/requests/http", { method: "DELETE" })).status).toBe(204);
    expect(((await api("/api/requests/http")).body as { requests: unknown[] }).requests).toEqual([]);
  });
});

describe("inspector page in a real browser", () => {
  test("live list, JSON detail pretty-printed, replay, filters; screenshots at desktop and phone width", async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    await api("/api/requests/http", { method: "DELETE" });

    const { browser, page, problems } = await openBrowserPage({ width: 1280, height: 800 });
    try {
      expect((await page.goto(inspector))?.status()).toBe(200);
      await page.waitForSelector("#live:not(.off)");

      // A request through the tunnel shows up within a second, without reload.
      const response = await visit("/echo", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ user: { name: "ada", langs: ["ts", "c"] }, ok: true }),
      });
      await response.text();
      const answered = performance.now();
      await page.waitForSelector('.row:has(.path:text-is("/echo")) .status.s2', { timeout: 1000 });
      expect(performance.now() - answered).toBeLessThan(1000);

      // Its detail: the JSON body pretty-printed.
      await page.click('.row:has(.path:text-is("/echo"))');
      const pretty = page.locator("#detail pre.body-pretty").first();
      await pretty.waitFor({ timeout: 5000 }).catch(async (error) => {
        throw new Error(`${error}\n${problems.join("\n")}\n${await page.locator("#detail").innerHTML()}`);
      });
      expect(await pretty.textContent()).toBe(
        JSON.stringify({ user: { name: "ada", langs: ["ts", "c"] }, ok: true }, null, 2),
      );

      // Replay from the page: the local service's hit count rises, and the replay is listed, marked.
      const hits = app.hits;
      await page.click("#replay");
      await page.waitForSelector('.row:has(.tag:text-is("replay"))');
      expect(app.hits).toBe(hits + 1);
      await page.waitForSelector('#detail .meta:has-text("replay of")');

      // More traffic, then filters narrow the list.
      for (const path of ["/a", "/b", "/missing"]) await (await visit(path)).text();
      await (
        await visit("/echo", { method: "PUT", body: "{}", headers: { "content-type": "application/json" } })
      ).text();
      const rows = page.locator("#list .row");
      await eventually(async () => (await rows.count()) === 6, 5000, "six rows");
      await page.keyboard.press("Escape");
      await page.keyboard.press("/");
      await page.keyboard.type("/echo");
      await eventually(async () => (await rows.count()) === 3, 2000, "three /echo rows");
      await page.selectOption("#f-method", "PUT");
      await eventually(async () => (await rows.count()) === 1, 2000, "one PUT row");
      await page.selectOption("#f-method", "");
      await page.fill("#f-path", "");
      await page.selectOption("#f-status", "4");
      await eventually(async () => (await rows.count()) === 1, 2000, "one 4xx row");
      expect(await rows.first().locator(".path").textContent()).toBe("/missing");
      await page.selectOption("#f-status", "");
      await page.fill("#f-ms", "100000");
      await eventually(async () => (await rows.count()) === 0, 2000, "no row slower than 100 s");
      await page.fill("#f-ms", "");
      await eventually(async () => (await rows.count()) === 6, 2000, "all rows again");

      // Keyboard: the list moves with j/k and the detail follows.
      await page.focus("#list");
      await page.keyboard.press("j");
      await page.waitForSelector('#list .row[aria-selected="true"]');

      // Screenshots: desktop, with a JSON detail open, and phone width.
      await page.click('.row:has(.path:text-is("/echo")) >> nth=-1');
      await pretty.waitFor();
      const desktop = join(ARTIFACTS, "inspector-desktop.png");
      await page.screenshot({ path: desktop });
      await page.setViewportSize({ width: 390, height: 844 });
      const phone = join(ARTIFACTS, "inspector-phone.png");
      await page.screenshot({ path: phone, fullPage: true });
      // Nothing wider than the phone's screen.
      expect(await page.evaluate("document.documentElement.scrollWidth")).toBeLessThanOrEqual(390);
      console.log(`inspector screenshots: ${desktop} ${phone}`);
      expect(problems).toEqual([]);
    } finally {
      await withTimeout(browser.close(), 10_000, "browser did not close");
    }
  });
});
