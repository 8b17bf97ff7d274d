/**
 * HTTP tunnels carrying streams, end to end through real server and client processes: bodies and
 * connections that stay open, both ways. Server-sent events arrive as sent, `Expect: 100-continue`,
 * one keep-alive connection for 200 requests, a chunked upload with a trailer, 100 MiB each way, a
 * WebSocket with 1,000 messages and an app-chosen close code, invalid `--subdomain` values, a visitor
 * that never reads a 1 GiB download, and requests per second next to the app reached directly
 * (printed, never asserted).
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  defer,
  expectOneLineError,
  type HttpServerProcess,
  rssKiB,
  runToExit,
  setupFile,
  startHttpClient,
  startHttpServer,
  withTimeout,
} from "../support/processes.ts";
import { RawHttp, type RawResponse } from "../support/raw-http.ts";
import { hashBodyResponse } from "../support/services.ts";

setupFile();

const KiB = 1024;
const MiB = 1024 * KiB;
const encoder = new TextEncoder();

/** The bytes downloads are made of: chunk `i` is the first `length` bytes of BLOCK with `i` in its first 4. */
const BLOCK = randomData(MiB);
function blockChunk(i: number, length: number): Uint8Array {
  const chunk = BLOCK.slice(0, length);
  new DataView(chunk.buffer).setUint32(0, i);
  return chunk;
}

/** sha256 of what `/bytes?n=N&chunk=C` sends, computed here without keeping it. */
function expectedDownloadSha(n: number, chunk: number): string {
  const hash = createHash("sha256");
  for (let i = 0, sent = 0; sent < n; i++) {
    const length = Math.min(chunk, n - sent);
    hash.update(blockChunk(i, length));
    sent += length;
  }
  return hash.digest("hex");
}

/** The local web app behind the tunnel. */
function startApp() {
  let produced = 0;
  let dropped = 0;
  const app = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req, server) {
      const url = new URL(req.url);
      switch (url.pathname) {
        case "/ws":
          if (server.upgrade(req)) return undefined;
          return new Response("expected a WebSocket", { status: 400 });
        case "/small":
          return new Response("ok");
        case "/ka":
          // The port the tunnel's client connected from: one port means one connection.
          return new Response(`hello ${url.searchParams.get("i")} ${server.requestIP(req)?.port}`);
        case "/sse": {
          let n = 0;
          const stream = new ReadableStream<Uint8Array>({
            async pull(controller) {
              if (n === 10) return controller.close();
              if (n > 0) await Bun.sleep(100);
              controller.enqueue(encoder.encode(`id: ${n}\ndata: event ${n}\n\n`));
              n++;
            },
          });
          return new Response(stream, {
            headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
          });
        }
        case "/sha256":
          return hashBodyResponse(req);
        case "/bytes": {
          // Pull-based: the next chunk is made only when the previous one was taken (backpressure).
          const n = Number(url.searchParams.get("n"));
          const size = Number(url.searchParams.get("chunk") ?? MiB);
          let sent = 0;
          let i = 0;
          const stream = new ReadableStream<Uint8Array>({
            pull(controller) {
              if (sent >= n) return controller.close();
              const length = Math.min(size, n - sent);
              controller.enqueue(blockChunk(i++, length));
              sent += length;
              produced += length;
            },
          });
          return new Response(stream, {
            headers: { "content-type": "application/octet-stream", "content-length": String(n) },
          });
        }
        default:
          return new Response("not found", { status: 404 });
      }
    },
    websocket: {
      maxPayloadLength: 4 * MiB,
      message(ws, message) {
        if (message === "bye") {
          ws.close(4123, "the app chose 4123");
          return;
        }
        if (ws.send(message) === 0) dropped++;
      },
    },
  });
  defer(() => app.stop(true));
  return { port: app.port as number, produced: () => produced, dropped: () => dropped };
}

/** Runs `workers` fetch loops against `url` for `ms`; resolves with the statuses counted. */
async function load(
  url: string,
  workers: number,
  ms: number,
): Promise<{ rps: number; statuses: Map<number, number> }> {
  const statuses = new Map<number, number>();
  const started = performance.now();
  const deadline = started + ms;
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (performance.now() < deadline) {
        let status = 0;
        try {
          const response = await fetch(url);
          await response.arrayBuffer();
          status = response.status;
        } catch {}
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
      }
    }),
  );
  const total = [...statuses.values()].reduce((a, b) => a + b, 0);
  return { rps: total / ((performance.now() - started) / 1000), statuses };
}

describe("http tunnel, more", () => {
  let server: HttpServerProcess;
  let app: ReturnType<typeof startApp>;
  let httpPort: number;
  let host: string;
  let base: string;

  beforeAll(async () => {
    app = startApp();
    server = await startHttpServer();
    httpPort = server.httpPort;
    await startHttpClient(server.url, app.port, "more");
    host = `more.localhost:${httpPort}`;
    base = `http://${host}`;
  });

  test("server-sent events arrive one by one as the app sends them, not all at the end", async () => {
    const response = await fetch(`${base}/sse`);
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("text/event-stream");
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    const events: { data: string; at: number }[] = [];
    let text = "";
    await withTimeout(
      (async () => {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          const at = performance.now();
          text += decoder.decode(value, { stream: true });
          let end = text.indexOf("\n\n");
          while (end >= 0) {
            const data = /^data: (.*)$/m.exec(text.slice(0, end))?.[1] ?? "";
            events.push({ data, at });
            text = text.slice(end + 2);
            end = text.indexOf("\n\n");
          }
        }
      })(),
      5000,
      "the event stream did not end",
    );
    expect(events.map((e) => e.data)).toEqual(Array.from({ length: 10 }, (_, i) => `event ${i}`));
    const times = events.map((e) => e.at);
    const first = times[0] as number;
    const last = times[times.length - 1] as number;
    expect(last - first).toBeGreaterThanOrEqual(700);
    let distinct = 1;
    let previous = first;
    for (const t of times)
      if (t - previous >= 50) {
        distinct++;
        previous = t;
      }
    expect(distinct).toBeGreaterThanOrEqual(8);
  });

  test("Expect: 100-continue: 100 Continue comes back, then the body is sent and answered", async () => {
    const conn = await RawHttp.open(httpPort);
    const body = randomData(256 * KiB);
    await conn.write(
      `POST /sha256 HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nExpect: 100-continue\r\n\r\n`,
    );
    let first: RawResponse | null = null;
    try {
      first = await conn.readResponse(3000);
    } catch {
      // No interim answer in time: send the body anyway, as curl does after its wait.
    }
    if (first !== null && first.status !== 100) {
      // A final answer before the body: the connection must still take the body if sent.
      expect(first.status).toBe(200);
    }
    await conn.write(body);
    const final = first !== null && first.status !== 100 ? first : await conn.readResponse(5000);
    expect(final.status).toBe(200);
    expect(JSON.parse(Buffer.from(final.body).toString())).toEqual({
      bytes: body.length,
      sha256: sha256(body),
    });
    conn.destroy();
  });

  test("keep-alive: 200 sequential requests on one visitor connection, one connection to the app", async () => {
    const conn = await RawHttp.open(httpPort);
    const ports = new Set<string>();
    for (let i = 0; i < 200; i++) {
      await conn.write(`GET /ka?i=${i} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
      const response = await conn.readResponse(5000);
      expect(response.status).toBe(200);
      const [hello, n, port] = Buffer.from(response.body).toString().split(" ");
      expect(`${hello} ${n}`).toBe(`hello ${i}`);
      ports.add(port as string);
    }
    expect(ports.size).toBe(1);
    conn.destroy();
  });

  test("a chunked upload of 5 MiB in random chunk sizes with a trailer: the app hashes what was sent", async () => {
    const conn = await RawHttp.open(httpPort);
    const data = randomData(5 * MiB);
    await conn.write(
      `POST /sha256 HTTP/1.1\r\nHost: ${host}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n`,
    );
    let offset = 0;
    let chunks = 0;
    while (offset < data.length) {
      const size = Math.min(data.length - offset, 1 + Math.floor(Math.random() ** 3 * 128 * KiB));
      await conn.write(`${size.toString(16)}\r\n`);
      await conn.write(data.subarray(offset, offset + size));
      await conn.write("\r\n");
      offset += size;
      chunks++;
    }
    // Bun.serve 1.4.5 reads the trailer section as the start of a next request (and answers it 400);
    // the first response, the one for this upload, is what counts here.
    await conn.write(`0\r\nX-Checksum: ${sha256(data)}\r\n\r\n`);
    const response = await conn.readResponse(10_000);
    expect(response.status).toBe(200);
    expect(JSON.parse(Buffer.from(response.body).toString())).toEqual({
      bytes: data.length,
      sha256: sha256(data),
    });
    expect(chunks).toBeGreaterThan(40);
    conn.destroy();
  });

  test("100 MiB up and 100 MiB down arrive intact (sha256), streamed and hashed as they go", async () => {
    const size = 100 * MiB;
    const upHash = createHash("sha256");
    let made = 0;
    const upload = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (made >= size) return controller.close();
        const chunk = new Uint8Array(randomBytes(MiB));
        upHash.update(chunk);
        made += chunk.length;
        controller.enqueue(chunk);
      },
    });
    let started = performance.now();
    const up = (await withTimeout(
      fetch(`${base}/sha256`, { method: "POST", body: upload, duplex: "half" } as RequestInit).then((r) =>
        r.json(),
      ),
      30_000,
      "the upload was not answered",
    )) as { bytes: number; sha256: string };
    const upMs = performance.now() - started;
    expect(up).toEqual({ bytes: size, sha256: upHash.digest("hex") });

    started = performance.now();
    const response = await fetch(`${base}/bytes?n=${size}`);
    expect(response.status).toBe(200);
    const downHash = createHash("sha256");
    let got = 0;
    await withTimeout(
      (async () => {
        for await (const chunk of response.body as ReadableStream<Uint8Array>) {
          downHash.update(chunk);
          got += chunk.length;
        }
      })(),
      30_000,
      "the download did not end",
    );
    const downMs = performance.now() - started;
    expect(got).toBe(size);
    expect(downHash.digest("hex")).toBe(expectedDownloadSha(size, MiB));
    const rate = (ms: number) => ((size / MiB / ms) * 1000).toFixed(0);
    console.log(
      `http tunnel 100 MiB: upload ${upMs.toFixed(0)} ms (${rate(upMs)} MiB/s), download ${downMs.toFixed(0)} ms (${rate(downMs)} MiB/s)`,
    );
  });

  test("a WebSocket: 1,000 messages up to 1 MiB, text and binary, echoed in order; the app's close code arrives", async () => {
    const ws = new WebSocket(`ws://${host}/ws`);
    ws.binaryType = "arraybuffer";
    defer(() => ws.close());
    await withTimeout(
      new Promise((resolve, reject) => {
        ws.addEventListener("open", resolve, { once: true });
        ws.addEventListener("error", reject, { once: true });
      }),
      5000,
      "no open",
    );
    const total = 1000;
    const sizes = Array.from({ length: total }, (_, i) =>
      i < 2 ? MiB : Math.max(1, Math.floor(2 ** (Math.random() * 20))),
    );
    const sent: string[] = [];
    const sentBytes: number[] = [];
    const received: string[] = [];
    let wake: (() => void) | null = null;
    const closed = new Promise<{ code: number; reason: string }>((resolve) =>
      ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason })),
    );
    ws.addEventListener("message", (event) => {
      received.push(
        typeof event.data === "string"
          ? `t:${sha256(encoder.encode(event.data))}`
          : `b:${sha256(new Uint8Array(event.data as ArrayBuffer))}`,
      );
      wake?.();
    });
    const outstanding = () => {
      let bytes = 0;
      for (let j = received.length; j < sent.length; j++) bytes += sentBytes[j] as number;
      return bytes;
    };
    await withTimeout(
      (async () => {
        for (let i = 0; i < total; i++) {
          // A window (at most 64 messages / 8 MiB in flight) so the app never drops an echo for backpressure.
          while (sent.length - received.length >= 64 || outstanding() > 8 * MiB)
            await new Promise<void>((resolve) => {
              wake = resolve;
            });
          const size = sizes[i] as number;
          if (i % 2 === 0) {
            // Text: ASCII with some multi-byte characters, about `size` bytes of UTF-8.
            const text = `é€😀${randomBytes(Math.ceil(size * 0.75))
              .toString("base64")
              .slice(0, size)}`;
            sent.push(`t:${sha256(encoder.encode(text))}`);
            sentBytes.push(size);
            ws.send(text);
          } else {
            const data = randomData(size);
            sent.push(`b:${sha256(data)}`);
            sentBytes.push(size);
            ws.send(data);
          }
        }
        while (received.length < total)
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
      })(),
      40_000,
      "the echoes did not all arrive",
    );
    expect(app.dropped()).toBe(0);
    expect(received.length).toBe(total);
    expect(received).toEqual(sent);
    ws.send("bye");
    const close = await withTimeout(closed, 5000, "no close");
    expect(close.code).toBe(4123);
    expect(close.reason).toBe("the app chose 4123");
  });

  test("invalid --subdomain values: one clear stderr line and a non-zero exit", async () => {
    const bad = ["UPPER", "a_b", "a".repeat(64), "..", "-a", "a-"];
    const results = await Promise.all(
      bad.map((name) =>
        runToExit([
          "bun",
          "client.ts",
          "--server",
          server.url,
          "--http",
          `127.0.0.1:${app.port}`,
          `--subdomain=${name}`,
        ]),
      ),
    );
    for (const [i, result] of results.entries())
      expectOneLineError(
        result,
        new RegExp(`--subdomain: '${bad[i]?.replaceAll(".", "\\.")}' is not a DNS label`),
        10_000,
      );
    // "-a" after a space reads as an option to the argument parser: still one clear line.
    const spaced = await runToExit([
      "bun",
      "client.ts",
      "--server",
      server.url,
      "--http",
      `127.0.0.1:${app.port}`,
      "--subdomain",
      "-a",
    ]);
    expectOneLineError(spaced, /--subdomain/, 10_000);
  });

  test("a visitor that never reads a 1 GiB download stalls nothing else, and memory stays bounded", async () => {
    // A pair of its own, so RSS is not measured against what the 100 MiB transfers left behind.
    const server2 = await startHttpServer();
    const port2 = server2.httpPort;
    const client2 = await startHttpClient(server2.url, app.port, "slow");
    const host2 = `slow.localhost:${port2}`;
    // Warm up both processes on this path (JIT, buffers) before the baseline.
    for (let i = 0; i < 20; i++)
      await (await fetch(`http://${host2}/bytes?n=${MiB}&chunk=${64 * KiB}`)).arrayBuffer();
    const pids = [server2.proc.pid, client2.proc.pid];
    const before = await Promise.all(pids.map(rssKiB));
    const peak = [...before];
    const sample = async () => {
      for (const [i, kib] of (await Promise.all(pids.map(rssKiB))).entries())
        peak[i] = Math.max(peak[i] as number, kib);
    };

    const producedBefore = app.produced();
    const slow = await RawHttp.open(port2);
    await slow.write(`GET /bytes?n=${1024 * MiB}&chunk=${64 * KiB} HTTP/1.1\r\nHost: ${host2}\r\n\r\n`);
    slow.socket.pause();

    // Meanwhile 20 ordinary requests on the same tunnel, each answered promptly.
    const started = performance.now();
    for (let i = 0; i < 20; i++) {
      const response = await withTimeout(fetch(`http://${host2}/small`), 2000, `request ${i} stalled`);
      expect(response.status).toBe(200);
      expect(await response.text()).toBe("ok");
    }
    const normalMs = performance.now() - started;

    // Wait (bounded) until the app stops producing: backpressure reached it through the tunnel.
    const deadline = Date.now() + 15_000;
    let last = -1;
    let stableSince = Date.now();
    while (Date.now() < deadline) {
      await sample();
      const now = app.produced();
      if (now !== last) {
        last = now;
        stableSince = Date.now();
      } else if (Date.now() - stableSince >= 1000) break;
      await Bun.sleep(100);
    }
    const stalledAt = app.produced() - producedBefore;
    const growthMiB = peak.map((kib, i) => (kib - (before[i] as number)) / KiB);
    console.log(
      `slow visitor: the app produced ${(stalledAt / MiB).toFixed(1)} of 1024 MiB before stalling; ` +
        `20 requests meanwhile in ${normalMs.toFixed(0)} ms; peak RSS growth: server ${growthMiB[0]?.toFixed(1)} MiB, client ${growthMiB[1]?.toFixed(1)} MiB`,
    );
    expect(stalledAt).toBeLessThan(256 * MiB);
    for (const growth of growthMiB) expect(growth).toBeLessThan(150);

    // Still answering after the slow visitor leaves.
    slow.destroy();
    const response = await withTimeout(
      fetch(`http://${host2}/small`),
      2000,
      "no answer after the slow visitor left",
    );
    expect(await response.text()).toBe("ok");
  });

  test("requests per second for a small GET, through the tunnel and direct (printed, not asserted)", async () => {
    const workers = 16;
    const direct = await load(`http://127.0.0.1:${app.port}/small`, workers, 2000);
    const tunnel = await load(`${base}/small`, workers, 2000);
    console.log(
      `small GET, ${workers} concurrent fetch workers, 2 s each: direct ${direct.rps.toFixed(0)} req/s, through the tunnel ${tunnel.rps.toFixed(0)} req/s`,
    );
    expect([...direct.statuses.keys()]).toEqual([200]);
    expect([...tunnel.statuses.keys()]).toEqual([200]);
  });
});
