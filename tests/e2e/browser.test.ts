/**
 * An HTTP tunnel seen by a real browser: headless Chromium (Debian's `chromium`, driven by
 * playwright-core) opens http://NAME.localhost:PORT, whose page loads a script and an image and opens
 * a WebSocket to its own origin, all through real server and client processes. The test fails, not
 * skips, when chromium is missing: CI installs it (`apt-get install chromium`).
 */

import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import { openBrowserPage } from "../support/browser.ts";
import { defer, setupFile, startHttpClient, startHttpServer, withTimeout } from "../support/processes.ts";

setupFile();

/** A PNG of `width`×`height` pixels of one RGB colour, built by hand (signature, IHDR, IDAT, IEND). */
function solidPng(width: number, height: number, [r, g, b]: [number, number, number]): Uint8Array {
  const chunk = (type: string, data: Uint8Array) => {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(data, 8);
    view.setUint32(8 + data.length, Bun.hash.crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const header = new Uint8Array(13);
  const headerView = new DataView(header.buffer);
  headerView.setUint32(0, width);
  headerView.setUint32(4, height);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit depth, truecolour, deflate, no filter, no interlace
  const row = new Uint8Array(1 + 3 * width); // filter byte 0, then the pixels
  for (let x = 0; x < width; x++) row.set([r, g, b], 1 + 3 * x);
  const pixels = new Uint8Array(row.length * height);
  for (let y = 0; y < height; y++) pixels.set(row, y * row.length);
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(pixels)),
    chunk("IEND", new Uint8Array(0)),
  ];
  return new Uint8Array(Buffer.concat(parts));
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

const PAGE = `<!doctype html>
<html>
<head><meta charset="utf-8"><link rel="icon" href="data:,"><title>sockets browser test</title></head>
<body style="font: 32px sans-serif; margin: 40px">
<h1>Through the tunnel</h1>
<img id="pixel" src="/pixel.png" alt="pixel" width="64" height="64" style="image-rendering: pixelated; border: 1px solid #000">
<p>status: <b id="status">loading</b></p>
<script src="/app.js"></script>
</body>
</html>
`;

// Runs in the page: waits for the image and for the WebSocket echo, then writes ok (or fail: why)
// into #status and marks it done.
const SCRIPT = `
const status = document.getElementById("status");
const finish = (text) => {
  status.textContent = text;
  status.dataset.done = "1";
};
const image = document.getElementById("pixel");
const imageLoaded = image.decode().then(() => {
  if (image.naturalWidth !== 1 || image.naturalHeight !== 1) throw new Error("image is " + image.naturalWidth + "x" + image.naturalHeight);
});
const echoed = new Promise((resolve, reject) => {
  const sent = "hello through the tunnel " + Math.random();
  const ws = new WebSocket(location.origin.replace("http", "ws") + "/ws");
  ws.onopen = () => ws.send(sent);
  ws.onmessage = (event) => {
    if (event.data === sent) resolve();
    else reject(new Error("echo was " + JSON.stringify(event.data)));
    ws.close();
  };
  ws.onerror = () => reject(new Error("WebSocket error"));
  ws.onclose = (event) => reject(new Error("WebSocket closed with " + event.code));
});
Promise.all([imageLoaded, echoed]).then(
  () => finish("ok"),
  (error) => finish("fail: " + (error && error.message ? error.message : error)),
);
`;

/** The local web app: the page, its script and image, and a WebSocket echo; records what it served. */
function startApp() {
  const png = solidPng(1, 1, [0x22, 0xaa, 0x44]);
  const seen: { path: string; forwardedHost: string | null }[] = [];
  const app = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req, server) {
      const url = new URL(req.url);
      seen.push({ path: url.pathname, forwardedHost: req.headers.get("x-forwarded-host") });
      if (url.pathname === "/ws") {
        if (server.upgrade(req)) return undefined;
        return new Response("expected a WebSocket", { status: 400 });
      }
      if (url.pathname === "/") return new Response(PAGE, { headers: { "content-type": "text/html" } });
      if (url.pathname === "/app.js")
        return new Response(SCRIPT, { headers: { "content-type": "text/javascript" } });
      if (url.pathname === "/pixel.png")
        return new Response(png, { headers: { "content-type": "image/png" } });
      return new Response("not found", { status: 404 });
    },
    websocket: {
      message(ws, message) {
        ws.send(message);
      },
    },
  });
  defer(() => app.stop(true));
  return { port: app.port as number, seen };
}

describe("http tunnel in a real browser", () => {
  test("headless Chromium loads a page, its script and image, and a WebSocket echo through the tunnel", async () => {
    const app = startApp();
    const server = await startHttpServer();
    const httpPort = server.httpPort;
    const client = await startHttpClient(server.url, app.port, "browser");
    const publicUrl = `http://browser.localhost:${httpPort}`;
    expect(client.stdout()).toContain(`url: ${publicUrl}\n`);

    const dir = mkdtempSync(join(tmpdir(), "sockets-browser-"));
    defer(() => rmSync(dir, { recursive: true, force: true }));

    const { browser, page, problems } = await openBrowserPage({ width: 800, height: 400 });
    try {
      const response = await page.goto(`${publicUrl}/`, { timeout: 15_000 });
      expect(response?.status()).toBe(200);
      await page.waitForSelector("#status[data-done]", { timeout: 15_000 });
      const status = await page.locator("#status").textContent();
      expect(status, problems.join("\n")).toBe("ok");
      expect(problems).toEqual([]);

      // Everything reached the local app through the tunnel, the WebSocket upgrade included.
      const paths = new Set(app.seen.map((s) => s.path));
      for (const path of ["/", "/app.js", "/pixel.png", "/ws"]) expect(paths).toContain(path);
      for (const s of app.seen) expect(s.forwardedHost).toBe(`browser.localhost:${httpPort}`);

      const shot = join(dir, "page.png");
      await page.screenshot({ path: shot, timeout: 15_000 });
      const bytes = new Uint8Array(await Bun.file(shot).arrayBuffer());
      expect(bytes.length).toBeGreaterThan(1000);
      expect([...bytes.subarray(0, 8)]).toEqual(PNG_SIGNATURE);
    } finally {
      await withTimeout(browser.close(), 10_000, "browser did not close");
    }
  });
});
