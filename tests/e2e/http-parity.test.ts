/**
 * Issue 16: an HTTP tunnel behaves the same on the control port (`NAME.DOMAIN:--port`) and on
 * `--http-port`, end to end through real server and client processes. Each case runs against both
 * ports of one server: a 1 GiB upload and a 1 GiB download (BIG_TRANSFER_BYTES; sha256, streamed); Content-Length kept for
 * a 64 MiB response and for an HTTP/1.0 upstream (`python3 -m http.server`); three pipelined requests
 * answered in order; the visitor's header list arriving as sent apart from the documented X-Forwarded-*
 * and hop-by-hop rules; WebSocket upgrades refused with 404 and 401; a 32 MiB WebSocket message each
 * way; 200 MiB `curl -T` uploads (past Bun.serve's 128 MiB default), fixed-length and chunked.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  defer,
  type HttpServerProcess,
  type RoleProcess,
  setupFile,
  spawnRole,
  startClientProcess,
  startHttpServer,
  withTimeout,
} from "../support/processes.ts";
import { field, RawHttp } from "../support/raw-http.ts";
import { hashBodyResponse } from "../support/services.ts";
import { writeQueued } from "../support/sockets.ts";

setupFile();

/** Bytes of each big transfer: one upload and one download through each port. */
const BIG_TRANSFER_BYTES = 1024 * MiB;
/** Bytes of the `curl -T` uploads that must pass Bun.serve's 128 MiB default request-body limit. */
const PAST_128_MIB_BYTES = 200 * MiB;
/** Bytes of the response whose Content-Length must survive the tunnel. */
const LENGTH_KEPT_BYTES = 64 * MiB;
/** Bytes of the WebSocket message sent each way (Bun.serve's default limit is 16 MiB). */
const WS_MESSAGE_BYTES = 32 * MiB;

/** The two ports an HTTP tunnel is served on. */
type PortKind = "control" | "http-port";
const PORT_KINDS: PortKind[] = ["control", "http-port"];

const encoder = new TextEncoder();

/** What every big body is made of: this block repeated (an odd length, so a shifted piece changes the hash). */
const BLOCK = randomData(MiB + 13);

/** The first `total` bytes of {@link BLOCK} repeated, as chunks (views, not copies). */
function* patternChunks(total: number): Generator<Uint8Array> {
  for (let sent = 0; sent < total; ) {
    const length = Math.min(BLOCK.length, total - sent);
    yield BLOCK.subarray(0, length);
    sent += length;
  }
}

const patternShas = new Map<number, string>();
/** sha256 of {@link patternChunks}(`total`), computed once per size. */
function patternSha(total: number): string {
  let known = patternShas.get(total);
  if (known === undefined) {
    const hash = createHash("sha256");
    for (const chunk of patternChunks(total)) hash.update(chunk);
    known = hash.digest("hex");
    patternShas.set(total, known);
  }
  return known;
}

/** A pull stream of {@link patternChunks}(`total`), for a fetch body. */
function patternStream(total: number): ReadableStream<Uint8Array> {
  const chunks = patternChunks(total);
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      const next = chunks.next();
      if (next.done) controller.close();
      else controller.enqueue(next.value);
    },
  });
}

/** Hashes a body as it streams; resolves with its length and sha256. */
async function hashStream(body: AsyncIterable<Uint8Array>): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of body) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  return { bytes, sha256: hash.digest("hex") };
}

/**
 * The web app behind the `app` and `locked` tunnels (Bun.serve, limits raised past the sizes here):
 * `/sha256` hashes a request body as it streams; `/ws` echoes WebSocket messages.
 */
function startApp() {
  let hits = 0;
  const wsReceived: number[] = [];
  const app = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    maxRequestBodySize: 4 * BIG_TRANSFER_BYTES,
    fetch(req, server) {
      hits++;
      const url = new URL(req.url);
      if (url.pathname === "/ws") {
        if (server.upgrade(req)) return undefined;
        return new Response("expected a WebSocket\n", { status: 400 });
      }
      if (url.pathname === "/sha256") return hashBodyResponse(req);
      return new Response(`hello from ${url.pathname}\n`);
    },
    websocket: {
      perMessageDeflate: false,
      maxPayloadLength: 2 * WS_MESSAGE_BYTES,
      backpressureLimit: 4 * WS_MESSAGE_BYTES,
      message(ws, message) {
        wsReceived.push(message.length);
        ws.send(message);
      },
    },
  });
  defer(() => app.stop(true));
  return { port: app.port as number, hits: () => hits, wsReceived };
}

/** One request as the raw backend received it: the head's bytes (latin1) and the body. */
interface ReceivedRequest {
  head: string;
  body: string;
}

/** Per-connection state of the raw backend. */
interface RawBackendSocket {
  input: string;
  out: Uint8Array[];
  download: { left: number; offset: number; close: boolean } | null;
}

/**
 * A raw HTTP/1.1 backend (Bun.listen) that records every request head byte for byte (order and case
 * kept, which Bun.serve would hide) with its Content-Length body, and answers in order:
 * `GET /bytes?n=N` with N bytes of {@link BLOCK} repeated under `Content-Length: N` (streamed, with
 * backpressure), anything else with `200` and the request target as the body.
 */
function startRawBackend() {
  const received: ReceivedRequest[] = [];
  type Sock = Bun.Socket<RawBackendSocket>;
  const flush = (socket: Sock): void => {
    const state = socket.data;
    for (;;) {
      if (!writeQueued(socket, state.out)) return; // the rest after 'drain'
      const download = state.download;
      if (download === null) return;
      if (download.left === 0) {
        state.download = null;
        if (download.close) socket.end();
        else serve(socket);
        return;
      }
      const length = Math.min(BLOCK.length - download.offset, download.left);
      state.out.push(BLOCK.subarray(download.offset, download.offset + length));
      download.offset = (download.offset + length) % BLOCK.length;
      download.left -= length;
    }
  };
  const serve = (socket: Sock): void => {
    const state = socket.data;
    while (state.download === null) {
      const end = state.input.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = state.input.slice(0, end + 4);
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      if (state.input.length < end + 4 + length) return;
      received.push({ head, body: state.input.slice(end + 4, end + 4 + length) });
      state.input = state.input.slice(end + 4 + length);
      const target = head.split(" ")[1] ?? "";
      const close = /\r\nconnection: *close\r\n/i.test(head);
      const size = /^\/bytes\?n=(\d+)$/.exec(target)?.[1];
      if (size !== undefined) {
        state.out.push(
          encoder.encode(
            `HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${size}\r\n\r\n`,
          ),
        );
        state.download = { left: Number(size), offset: 0, close };
        flush(socket);
        return;
      }
      state.out.push(
        encoder.encode(
          `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${target.length}\r\n\r\n${target}`,
        ),
      );
      flush(socket);
      if (close) {
        socket.end();
        return;
      }
    }
  };
  const listener = Bun.listen<RawBackendSocket>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = { input: "", out: [], download: null };
      },
      data(socket, chunk) {
        socket.data.input += Buffer.from(chunk).toString("latin1");
        serve(socket);
      },
      drain(socket) {
        flush(socket);
      },
    },
  });
  defer(() => listener.stop(true));
  return { port: listener.port, received };
}

/** A short-lived curl run: its exit code and output. */
interface CurlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs curl (stdout and stderr collected, or stdout streamed through `consume`), with `stdin` from a
 * file when given; killed by PID if still running at the end of the file or after `timeoutMs`.
 */
async function runCurl(
  args: string[],
  options: {
    stdin?: string;
    timeoutMs?: number;
    consume?: (stdout: ReadableStream<Uint8Array>) => Promise<void>;
  } = {},
): Promise<CurlResult> {
  if (!Bun.which("curl")) throw new Error("curl is not installed (apt-get install curl)");
  const timeoutMs = options.timeoutMs ?? 60_000;
  const proc = Bun.spawn(["curl", "-sS", "--max-time", String(Math.ceil(timeoutMs / 1000)), ...args], {
    stdin: options.stdin === undefined ? "ignore" : Bun.file(options.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const kill = () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  };
  defer(kill);
  try {
    const [stdout, stderr, code] = await withTimeout(
      Promise.all([
        options.consume ? options.consume(proc.stdout).then(() => "") : new Response(proc.stdout).text(),
        new Response(proc.stderr).text(),
        proc.exited,
      ]),
      timeoutMs + 5000,
      `curl ${args.join(" ")} did not finish`,
    );
    return { code, stdout, stderr };
  } finally {
    kill();
  }
}

/** Writes {@link patternChunks}(`total`) to a file, streamed. */
async function writePatternFile(path: string, total: number): Promise<void> {
  const writer = Bun.file(path).writer();
  for (const chunk of patternChunks(total)) await writer.write(chunk);
  await writer.end();
}

describe("HTTP tunnels behave the same on the control port and on --http-port (issue 16)", () => {
  let server: HttpServerProcess;
  let app: ReturnType<typeof startApp>;
  let raw: ReturnType<typeof startRawBackend>;
  let python: RoleProcess;
  let pythonFile: { bytes: number; sha256: string };
  let dir: string;
  const ports: Record<PortKind, number> = { control: 0, "http-port": 0 };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "sockets-parity-"));
    defer(() => rmSync(dir, { recursive: true, force: true }));
    app = startApp();
    raw = startRawBackend();
    // An HTTP/1.0 upstream: python's http.server answers HTTP/1.0 with Content-Length, then closes.
    const served = mkdtempSync(join(dir, "www-"));
    const file = randomData(3 * MiB + 5);
    await Bun.write(join(served, "file.bin"), file);
    pythonFile = { bytes: file.length, sha256: sha256(file) };
    if (!Bun.which("python3")) throw new Error("python3 is not installed (apt-get install python3)");
    python = spawnRole([
      "python3",
      "-u",
      "-m",
      "http.server",
      "0",
      "--bind",
      "127.0.0.1",
      "--directory",
      served,
    ]);
    const pythonPort = Number((await python.waitFor(/port (\d+)/))[1]);

    server = await startHttpServer(["--http-port", "0"]);
    ports.control = server.port;
    ports["http-port"] = server.httpPort;
    const open = await startClientProcess(
      server.url,
      [],
      [
        ...["--http", `127.0.0.1:${app.port}`, "--subdomain", "app"],
        ...["--http", `127.0.0.1:${raw.port}`, "--subdomain", "raw"],
        ...["--http", `127.0.0.1:${pythonPort}`, "--subdomain", "py"],
      ],
    );
    await open.waitFor(/(?:exposed with tunnel id \S+, url: http\S+\n[\s\S]*){3}/);
    const locked = await startClientProcess(
      server.url,
      [],
      ["--http", `127.0.0.1:${app.port}`, "--subdomain", "locked", "--basic-auth", "alice:s3cret"],
    );
    await locked.waitFor(/exposed with tunnel id \S+, url: http/);
  });

  for (const kind of PORT_KINDS) {
    const host = (name: string) => `${name}.localhost:${ports[kind]}`;

    test(`${kind}: a ${BIG_TRANSFER_BYTES / MiB} MiB upload with Content-Length arrives intact (sha256, streamed)`, async () => {
      const response = await withTimeout(
        fetch(`http://${host("app")}/sha256`, {
          method: "PUT",
          headers: { "content-length": String(BIG_TRANSFER_BYTES) },
          body: patternStream(BIG_TRANSFER_BYTES),
          duplex: "half",
        } as RequestInit),
        60_000,
        "the upload was not answered",
      );
      const text = await response.text();
      expect(response.status, text).toBe(200);
      expect(JSON.parse(text)).toEqual({
        bytes: BIG_TRANSFER_BYTES,
        sha256: patternSha(BIG_TRANSFER_BYTES),
      });
    }, 90_000);

    test(`${kind}: a ${BIG_TRANSFER_BYTES / MiB} MiB download arrives intact (curl, sha256, streamed)`, async () => {
      let got = { bytes: 0, sha256: "" };
      const result = await runCurl(["--fail", `http://${host("raw")}/bytes?n=${BIG_TRANSFER_BYTES}`], {
        consume: async (stdout) => {
          got = await hashStream(stdout);
        },
      });
      expect(result.code, result.stderr).toBe(0);
      expect(got).toEqual({ bytes: BIG_TRANSFER_BYTES, sha256: patternSha(BIG_TRANSFER_BYTES) });
    }, 90_000);

    test(`${kind}: a ${LENGTH_KEPT_BYTES / MiB} MiB response keeps its Content-Length (not re-chunked)`, async () => {
      const response = await withTimeout(
        fetch(`http://${host("raw")}/bytes?n=${LENGTH_KEPT_BYTES}`),
        5000,
        "no response head",
      );
      expect(response.status).toBe(200);
      expect(response.headers.get("transfer-encoding")).toBeNull();
      expect(response.headers.get("content-length")).toBe(String(LENGTH_KEPT_BYTES));
      const got = await withTimeout(
        hashStream(response.body as ReadableStream<Uint8Array>),
        30_000,
        "the body did not end",
      );
      expect(got).toEqual({ bytes: LENGTH_KEPT_BYTES, sha256: patternSha(LENGTH_KEPT_BYTES) });
    });

    test(`${kind}: a response from an HTTP/1.0 upstream (python3 -m http.server) keeps its Content-Length`, async () => {
      const response = await withTimeout(fetch(`http://${host("py")}/file.bin`), 5000, "no response head");
      expect(response.status).toBe(200);
      expect(response.headers.get("transfer-encoding")).toBeNull();
      expect(response.headers.get("content-length")).toBe(String(pythonFile.bytes));
      const got = await withTimeout(
        hashStream(response.body as ReadableStream<Uint8Array>),
        10_000,
        "the body did not end",
      );
      expect(got).toEqual(pythonFile);
    });

    test(`${kind}: three pipelined GETs in one write are answered in order on one connection`, async () => {
      const visitor = await RawHttp.open(ports[kind]);
      const paths = [`/pipelined/${kind}/1`, `/pipelined/${kind}/2?x=y`, `/pipelined/${kind}/3`];
      visitor.write(paths.map((path) => `GET ${path} HTTP/1.1\r\nHost: ${host("raw")}\r\n\r\n`).join(""));
      const bodies: string[] = [];
      for (const _ of paths) {
        const response = await visitor.readResponse(5000);
        expect(response.status).toBe(200);
        bodies.push(response.body.toString("latin1"));
      }
      expect(bodies).toEqual(paths);
      expect(raw.received.filter((r) => r.head.includes(`/pipelined/${kind}/`)).length).toBe(3);
      visitor.destroy();
    });

    test(`${kind}: pipelined POSTs in one write (64 B, 20 KiB past the size sent on with its head, empty) reach the backend whole, in order`, async () => {
      const visitor = await RawHttp.open(ports[kind]);
      const bodies = ["a".repeat(63) + kind[0], "b".repeat(20 * 1024), ""];
      const paths = bodies.map((_, i) => `/posted/${kind}/${i}`);
      visitor.write(
        paths
          .map((path, i) => {
            const body = bodies[i] as string;
            return `POST ${path} HTTP/1.1\r\nHost: ${host("raw")}\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
          })
          .join(""),
      );
      for (const path of paths) {
        const response = await visitor.readResponse(5000);
        expect(response.status).toBe(200);
        expect(response.body.toString("latin1")).toBe(path);
      }
      const got = raw.received.filter((r) => r.head.includes(`/posted/${kind}/`));
      expect(got.map((r) => r.body)).toEqual(bodies);
      visitor.destroy();
    });

    test(`${kind}: the backend receives the visitor's header list as sent, but for the documented X-Forwarded-* and hop-by-hop rules`, async () => {
      const target = `/headers/${kind}?q=1&r=%20`;
      const body = "hello world";
      // What the visitor sends: mixed case, repeated fields, no User-Agent or Accept.
      const sent = [
        `POST ${target} HTTP/1.1`,
        `Host: ${host("raw")}`,
        "x-lower: a",
        "X-UPPER: B",
        "X-Mixed-Case: c, d",
        "Cookie: a=1",
        "Connection: keep-alive, X-Hop",
        "Cookie: b=2",
        "X-Hop: dropped, Connection lists it",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Proxy-Connection: keep-alive",
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-Proto: gopher",
        "X-Forwarded-Host: evil.example",
        "Forwarded: for=6.6.6.6",
        "X-Real-IP: 6.6.6.6",
        "X_Forwarded_For: 6.6.6.6",
        "Accept-Language: en;q=0.8",
        "Content-Type: text/plain",
        `Content-Length: ${body.length}`,
        "X-Last: z",
      ];
      // What the backend must see: the same fields in the same order and case, Host rewritten in place
      // to the local address, hop-by-hop and forwarding fields gone, X-Forwarded-* appended.
      const expected = [
        `POST ${target} HTTP/1.1`,
        `Host: 127.0.0.1:${raw.port}`,
        "x-lower: a",
        "X-UPPER: B",
        "X-Mixed-Case: c, d",
        "Cookie: a=1",
        "Cookie: b=2",
        "Accept-Language: en;q=0.8",
        "Content-Type: text/plain",
        `Content-Length: ${body.length}`,
        "X-Last: z",
        "X-Forwarded-For: 127.0.0.1",
        "X-Forwarded-Proto: http",
        `X-Forwarded-Host: ${host("raw")}`,
      ];
      const visitor = await RawHttp.open(ports[kind]);
      visitor.write(`${sent.join("\r\n")}\r\n\r\n${body}`);
      const response = await visitor.readResponse(5000);
      expect(response.status).toBe(200);
      expect(response.body.toString("latin1")).toBe(target);
      const seen = raw.received.find((r) => r.head.includes(`/headers/${kind}?`));
      expect(seen?.head.slice(0, -4).split("\r\n")).toEqual(expected);
      expect(seen?.body).toBe(body);
      visitor.destroy();
    });

    test(`${kind}: WebSocket upgrades: an unknown name gets 404, a --basic-auth tunnel without credentials 401 with WWW-Authenticate`, async () => {
      const upgrade = (name: string, extra = "") =>
        `GET /ws HTTP/1.1\r\nHost: ${host(name)}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`;
      const hitsBefore = app.hits();
      const ask = async (request: string) => {
        const visitor = await RawHttp.open(ports[kind]);
        visitor.write(request);
        const response = await visitor.readResponse(5000);
        visitor.destroy();
        return response;
      };
      const unknown = await ask(upgrade("nobody"));
      expect(unknown.statusLine).toMatch(/^HTTP\/1\.1 404 /);
      const anonymous = await ask(upgrade("locked"));
      expect(anonymous.statusLine).toMatch(/^HTTP\/1\.1 401 /);
      expect(field(anonymous, "www-authenticate")).toMatch(/^Basic /);
      const wrong = await ask(upgrade("locked", `Authorization: Basic ${btoa("alice:wrong")}\r\n`));
      expect(wrong.statusLine).toMatch(/^HTTP\/1\.1 401 /);
      expect(app.hits()).toBe(hitsBefore);
      // The right credentials pass: the refusals were about them, not about upgrades.
      const visitor = await RawHttp.open(ports[kind]);
      visitor.write(upgrade("locked", `Authorization: Basic ${btoa("alice:s3cret")}\r\n`));
      expect((await visitor.readResponse(5000)).statusLine).toMatch(/^HTTP\/1\.1 101 /);
      visitor.destroy();
    });

    test(`${kind}: a ${WS_MESSAGE_BYTES / MiB} MiB WebSocket message goes up and comes back whole (sha256)`, async () => {
      const ws = new WebSocket(`ws://${host("app")}/ws`);
      ws.binaryType = "arraybuffer";
      defer(() => ws.close());
      const closed = new Promise<{ code: number; reason: string }>((resolve) =>
        ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason })),
      );
      await withTimeout(
        new Promise((resolve, reject) => {
          ws.addEventListener("open", resolve, { once: true });
          ws.addEventListener("error", reject, { once: true });
        }),
        5000,
        "the WebSocket did not open",
      );
      const message = randomData(WS_MESSAGE_BYTES);
      const echoed = new Promise<ArrayBuffer>((resolve) =>
        ws.addEventListener("message", (e) => resolve(e.data as ArrayBuffer), { once: true }),
      );
      const receivedBefore = app.wsReceived.length;
      ws.send(message);
      const echo = await withTimeout(
        Promise.race([
          echoed,
          closed.then((c) => {
            throw new Error(`closed with ${c.code} ${c.reason} before the echo`);
          }),
        ]),
        20_000,
        "no echo",
      );
      expect(app.wsReceived.slice(receivedBefore)).toEqual([WS_MESSAGE_BYTES]);
      expect(echo.byteLength).toBe(WS_MESSAGE_BYTES);
      expect(sha256(new Uint8Array(echo))).toBe(sha256(message));
      ws.close(1000);
      expect((await withTimeout(closed, 5000, "no close")).code).toBe(1000);
    });

    test(`${kind}: ${PAST_128_MIB_BYTES / MiB} MiB uploads with curl -T, fixed-length and chunked, pass (no 413)`, async () => {
      const file = join(dir, "upload.bin");
      if (!(await Bun.file(file).exists())) await writePatternFile(file, PAST_128_MIB_BYTES);
      const expected = { bytes: PAST_128_MIB_BYTES, sha256: patternSha(PAST_128_MIB_BYTES) };
      const url = `http://${host("app")}/sha256`;
      const fixed = await runCurl(["-T", file, "-w", "\n%{http_code}", url], { timeoutMs: 30_000 });
      expect(fixed.code, fixed.stderr).toBe(0);
      expect(fixed.stdout.split("\n").at(-1), fixed.stdout).toBe("200");
      expect(JSON.parse(fixed.stdout.slice(0, fixed.stdout.lastIndexOf("\n")))).toEqual(expected);
      const chunked = await runCurl(["-T", "-", "-w", "\n%{http_code}", url], {
        stdin: file,
        timeoutMs: 30_000,
      });
      expect(chunked.code, chunked.stderr).toBe(0);
      expect(chunked.stdout.split("\n").at(-1), chunked.stdout).toBe("200");
      expect(JSON.parse(chunked.stdout.slice(0, chunked.stdout.lastIndexOf("\n")))).toEqual(expected);
    });
  }
});
