/**
 * `bun bench/abuse.ts [--quick] [--at REV]`: replays every abuse pattern of issue 15 against real server and client
 * processes on loopback, and prints a markdown table of the SERVER process's open descriptors
 * (/proc/PID/fd) and RSS (VmRSS) before, at the peak and after each pattern (after = once the
 * connections closed, with a bounded wait), with what the attacker observed.
 *
 * Each server is started here (`--http-port 0`, `--domain localhost`, an API key) with a client holding
 * the key that publishes a small web app (in this process) as an HTTP tunnel and a TCP tunnel. The
 * patterns: (1) visitors that go away at every point, on `--http-port` and on the control port;
 * (2) a second request smuggled behind `Upgrade: foo`; (3) thousands of incomplete 60 KB heads, and a
 * bare-LF head; (4) visitors on a TCP tunnel whose local service never reads (and the other way round),
 * with the default budgets and with `--client-budget 16777216`; (5) WebSocket sessions whose one expose
 * is refused; (6) a client message over 16 MiB. Every wait is bounded; everything started is stopped
 * by PID. `--quick` runs a tenth of the counts; `--at REV` runs the server and client of that commit (a
 * `git archive` of it) instead of the working tree, which others may be editing.
 * @module
 */

import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AUTH_HEADER, CONNECT_PATH, SUBPROTOCOL } from "../shared/wire/protocol.ts";
import { startStalledSink } from "../tests/support/services.ts";
import { type Pumped, pumpPattern } from "../tests/support/sockets.ts";
import { atExit, freePort, killAll, type Proc, rssKiB, run, spawn } from "./procs.ts";

/** This checkout (git, the script's own imports). */
const REPO = join(import.meta.dir, "..");
const QUICK = process.argv.includes("--quick");
/** `--at REV`: run the server and client of that commit (a `git archive` of it), not the working tree. */
const AT = process.argv.includes("--at") ? process.argv[process.argv.indexOf("--at") + 1] : undefined;
/** Where server.ts and client.ts are run from: {@link REPO}, or the export of `--at`. */
let ROOT = REPO;
const MiB = 1024 * 1024;
/** The API key of every server here: the raw sessions of patterns 5 and 6 hold it, as a client would. */
const KEY = "abuse-bench-key";

/** Counts per pattern (full run; `--quick` a tenth). */
const COUNT = {
  visitors: QUICK ? 100 : 1000,
  heads: QUICK ? 300 : 3000,
  stalled: QUICK ? 10 : 40,
  sessions: QUICK ? 40 : 400,
};
/** Visitors in flight at once in pattern 1. */
const CONCURRENCY = 100;
/** How long "after" waits for the server's descriptors to come back. */
const AFTER_WAIT_MS = 20_000;
/** The whole run's deadline: past it, everything is killed. */
const RUN_DEADLINE_MS = QUICK ? 5 * 60_000 : 20 * 60_000;

// ---------- descriptor limit: re-exec with the hard limit when the soft one is too small ----------

/** Soft and hard "Max open files" of this process, from /proc/self/limits. */
function fileLimits(): { soft: number; hard: number } {
  const line = readFileSync("/proc/self/limits", "utf8").match(/^Max open files\s+(\S+)\s+(\S+)/m);
  const value = (s: string | undefined) => (s === undefined || s === "unlimited" ? Infinity : Number(s));
  return { soft: value(line?.[1]), hard: value(line?.[2]) };
}

const NEEDED_FDS = COUNT.heads + CONCURRENCY * 2 + 1000;
{
  const { soft, hard } = fileLimits();
  if (soft < NEEDED_FDS && hard > soft && !process.env.ABUSE_REEXEC) {
    const limit = hard === Infinity ? 65536 : Math.min(hard, 65536);
    const child = Bun.spawn(
      ["bash", "-c", `ulimit -n ${limit} && exec "$@"`, "bash", process.execPath, ...process.argv.slice(1)],
      { env: { ...process.env, ABUSE_REEXEC: "1" }, stdio: ["inherit", "inherit", "inherit"] },
    );
    process.exit(await child.exited);
  }
  if (soft < NEEDED_FDS)
    console.error(`warning: descriptor limit ${soft} < ${NEEDED_FDS}: some visitors may fail`);
}

// ---------- measuring the server ----------

/** Open descriptors of a process, or -1 if it is gone. */
function descriptors(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return -1;
  }
}

/** Descriptors and RSS (KiB) of the server at one moment. */
interface Snapshot {
  fds: number;
  rss: number;
}

const snapshot = (pid: number): Snapshot => ({ fds: descriptors(pid), rss: rssKiB(pid) });

/** How often the peak sampler reads /proc (fast enough to see 100 visitors in flight). */
const SAMPLE_MS = 20;

/** Samples a process every {@link SAMPLE_MS} and keeps the largest descriptor count and RSS seen. */
class PeakSampler {
  readonly peak: Snapshot;
  private readonly timer: ReturnType<typeof setInterval>;
  constructor(private readonly pid: number) {
    this.peak = snapshot(pid);
    this.timer = setInterval(() => this.sample(), SAMPLE_MS);
  }
  sample(): void {
    const now = snapshot(this.pid);
    this.peak.fds = Math.max(this.peak.fds, now.fds);
    this.peak.rss = Math.max(this.peak.rss, now.rss);
  }
  stop(): Snapshot {
    clearInterval(this.timer);
    this.sample();
    return this.peak;
  }
}

/** One row of the table. */
interface Row {
  pattern: string;
  port: string;
  before: Snapshot;
  peak: Snapshot;
  after: Snapshot;
  /** How long "after" waited, and whether descriptors came back within it. */
  afterMs: number;
  settled: boolean;
  observed: string;
}

const rows: Row[] = [];

/**
 * Runs one pattern against `server`: snapshot, the pattern (which returns what the attacker saw), then
 * waits (at most {@link AFTER_WAIT_MS}) until the server's descriptors are back within 2 of where they
 * were and `settledToo` (if given) holds, sampling the peak throughout.
 */
async function measure(
  server: Server,
  pattern: string,
  port: string,
  body: () => Promise<string>,
  settledToo?: () => Promise<boolean>,
): Promise<Row> {
  log(`${pattern} (${port})`);
  const pid = server.proc.pid;
  const before = snapshot(pid);
  const sampler = new PeakSampler(pid);
  let observed: string;
  try {
    observed = await body();
  } catch (error) {
    observed = `error: ${error instanceof Error ? error.message : String(error)}`;
  }
  const started = performance.now();
  let settled = false;
  while (performance.now() - started < AFTER_WAIT_MS) {
    if (descriptors(pid) <= before.fds + 2 && (!settledToo || (await settledToo().catch(() => false)))) {
      settled = true;
      break;
    }
    await Bun.sleep(100);
  }
  const afterMs = performance.now() - started;
  const peak = sampler.stop();
  const row: Row = { pattern, port, before, peak, after: snapshot(pid), afterMs, settled, observed };
  rows.push(row);
  log(
    `  fds ${before.fds} / ${peak.fds} / ${row.after.fds}, RSS ${mib(before.rss)} / ${mib(peak.rss)} / ${mib(row.after.rss)} MiB: ${observed}`,
  );
  return row;
}

const mib = (kib: number) => (kib / 1024).toFixed(0);
const log = (text: string) => process.stderr.write(`${text}\n`);
const count = (n: number) => n.toLocaleString("en-US");

// ---------- processes ----------

/** What /health says. */
interface Health {
  clients: number;
  tunnels: number;
  streams: number;
  reserved: number;
  buffered: { received: number; sent: number };
  largestWindow: { send: number; receive: number };
}

/** A server process started here. */
interface Server {
  proc: Proc;
  /** Control port. */
  port: number;
  httpPort: number;
  url: string;
  health(): Promise<Health>;
}

async function startServer(args: string[] = []): Promise<Server> {
  const proc = spawn(
    [
      "bun",
      join(ROOT, "server.ts"),
      ...["--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--domain", "localhost", ...args],
    ],
    { cwd: ROOT, env: { SOCKETS_SINGLE_API_KEY: KEY, SOCKETS_API_KEY: "", SOCKETS_SERVER: "" } },
  );
  const port = Number((await proc.waitFor(/listening on ws:\/\/\S+:(\d+)/, 20_000))[1]);
  const httpPort = Number((await proc.waitFor(/http tunnels on http:\/\/\*\.localhost:(\d+)/, 20_000))[1]);
  return {
    proc,
    port,
    httpPort,
    url: `ws://127.0.0.1:${port}`,
    async health() {
      const response = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(5000) });
      return (await response.json()) as Health;
    },
  };
}

/** Starts a client holding the key: each `http` entry as an HTTP tunnel, each `tcp` local port as a TCP tunnel. */
async function startClient(
  server: Server,
  http: [port: number, name: string][],
  tcp: number[],
): Promise<{ proc: Proc; tcpPorts: number[] }> {
  const tcpPorts = tcp.map(() => freePort());
  const proc = spawn(
    [
      "bun",
      join(ROOT, "client.ts"),
      ...["--server", server.url],
      ...http.flatMap(([port, name]) => ["--http", `127.0.0.1:${port}`, "--subdomain", name]),
      ...tcp.flatMap((port, i) => ["--expose", `127.0.0.1:${port}`, "--port", String(tcpPorts[i])]),
    ],
    { cwd: ROOT, env: { SOCKETS_API_KEY: KEY, SOCKETS_SINGLE_API_KEY: "", SOCKETS_SERVER: "" } },
  );
  const tunnels = http.length + tcp.length;
  await proc.waitFor(new RegExp(`(?:exposed with tunnel id[^]*){${tunnels}}`), 20_000);
  return { proc, tcpPorts };
}

/**
 * Starts a server with `args` and a client holding the key that publishes the web app as HTTP tunnel
 * `app` (and `http`) and a TCP tunnel to each local port in `tcp`; checks that the HTTP tunnel answers,
 * runs `body` with the TCP tunnels' public ports, then stops both.
 */
async function withServer(
  args: string[],
  tcp: number[],
  body: (server: Server, tcpPorts: number[]) => Promise<void>,
  http: [port: number, name: string][] = [],
): Promise<void> {
  const server = await startServer(args);
  try {
    const client = await startClient(server, [[appPort, "app"], ...http], tcp);
    const warm = await exchange(
      server.httpPort,
      "GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
    );
    if (!warm.answer.startsWith("HTTP/1.1 200"))
      throw new Error(`the HTTP tunnel does not answer: ${warm.answer.slice(0, 100) || "nothing"}`);
    await body(server, client.tcpPorts);
    await client.proc.stop();
  } finally {
    await server.proc.stop();
  }
}

// ---------- local services (in this process) ----------

/** The small web app behind every HTTP tunnel. */
const app = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("hello\n") });
const appPort = app.port as number;

/** An echo service for the TCP tunnel. */
const echo = Bun.listen({
  hostname: "127.0.0.1",
  port: 0,
  socket: {
    data(socket, chunk) {
      socket.write(chunk);
    },
  },
});

/** A raw HTTP/1.1 backend that records every byte and answers each head `200 ok` (keep-alive). */
const recorder = (() => {
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
          socket.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
          if (/\r\nconnection: close\r\n/i.test(head)) socket.end();
          end = socket.data.buffer.indexOf("\r\n\r\n");
        }
      },
    },
  });
  return {
    port: listener.port,
    received: () => received,
    reset() {
      received = "";
    },
  };
})();

/** A local service that accepts and never reads. */
const sink = startStalledSink();

/** Bytes the flooding visitors and the source send: 1 MiB of random bytes, repeated. */
const PATTERN = new Uint8Array(MiB).map(() => (Math.random() * 256) | 0);
/** Writes the rest of `size` bytes of {@link PATTERN} as far as the socket takes them, then half-closes. */
const pump = (socket: import("bun").Socket<Pumped>) => pumpPattern(socket, PATTERN);

const FLOOD_BYTES = 64 * MiB;
/** A local service that sends {@link FLOOD_BYTES} on every connection. */
const source = Bun.listen<Pumped>({
  hostname: "127.0.0.1",
  port: 0,
  allowHalfOpen: true,
  socket: {
    open(socket) {
      socket.data = { sent: 0, size: FLOOD_BYTES };
      pump(socket);
    },
    drain: pump,
    data() {},
    error() {},
  },
});

// ---------- visitors ----------

/** What one visitor saw. */
interface Visit {
  /** The answer's status code, if one came. */
  status: string | null;
  /** The server ended the connection (FIN or reset) before the visitor gave up. */
  closedByServer: boolean;
  /** Milliseconds from connecting to the end. */
  ms: number;
}

/**
 * Connects to `port`, runs `act` once connected, and resolves when the connection is gone, or gives up
 * (destroys it) after `giveUpMs`.
 */
function visit(port: number, act: (socket: Socket) => void, giveUpMs: number): Promise<Visit> {
  return new Promise((resolve) => {
    const started = performance.now();
    let answer = "";
    let closedByServer = false;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const status = answer.match(/^HTTP\/1\.1 (\d{3})/)?.[1] ?? null;
      resolve({ status, closedByServer, ms: performance.now() - started });
    };
    const socket = connect({ port, host: "127.0.0.1" }, () => act(socket));
    socket.on("data", (chunk: Buffer) => {
      if (answer.length < 64) answer += chunk.toString("latin1");
    });
    socket.on("end", () => {
      closedByServer = true;
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "ECONNRESET" || error.code === "EPIPE") closedByServer = true;
      finish();
    });
    socket.on("close", finish);
    const timer = setTimeout(finish, giveUpMs);
  });
}

/** Runs `total` visits with at most `concurrency` in flight. */
async function pool(total: number, concurrency: number, one: () => Promise<Visit>): Promise<Visit[]> {
  const results: Visit[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        next++;
        results.push(await one());
      }
    }),
  );
  return results;
}

/** "200 ×1,000; server closed 1,000 (p50 3 ms)" */
function summarize(visits: Visit[], visitorCloses: boolean): string {
  const statuses = new Map<string, number>();
  for (const v of visits)
    statuses.set(v.status ?? "no answer", (statuses.get(v.status ?? "no answer") ?? 0) + 1);
  const answers = [...statuses].map(([s, n]) => `${s} ×${count(n)}`).join(", ");
  if (visitorCloses) return `${answers}; the visitor closed`;
  const closed = visits.filter((v) => v.closedByServer);
  const ms = closed.map((v) => v.ms).sort((a, b) => a - b);
  const p50 = ms[Math.floor(ms.length / 2)] ?? 0;
  const max = ms[ms.length - 1] ?? 0;
  return `${answers}; server closed ${count(closed.length)}/${count(visits.length)} (p50 ${p50.toFixed(0)} ms, max ${max.toFixed(0)} ms)`;
}

/** Sends `bytes` on a new connection and collects what comes back until the server closes (or `ms`). */
function exchange(
  port: number,
  bytes: string,
  ms = 5000,
): Promise<{ answer: string; closed: boolean; ms: number }> {
  return new Promise((resolve) => {
    const started = performance.now();
    let answer = "";
    let closed = false;
    const socket = connect({ port, host: "127.0.0.1" }, () => socket.write(bytes));
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ answer, closed, ms: performance.now() - started });
    };
    socket.on("data", (chunk: Buffer) => {
      answer += chunk.toString("latin1");
    });
    socket.on("end", () => {
      closed = true;
    });
    socket.on("close", () => {
      closed = true;
      finish();
    });
    socket.on("error", () => {});
    const timer = setTimeout(finish, ms);
  });
}

// ---------- pattern 1: visitors that go away at every point ----------

async function goneVisitors(server: Server): Promise<void> {
  const ports: [string, number, string][] = [
    ["--http-port", server.httpPort, "app.localhost"],
    ["control", server.port, `app.localhost:${server.port}`],
  ];
  for (const [label, port, host] of ports) {
    const good = `GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`;
    const unknown = `GET / HTTP/1.1\r\nHost: nope.localhost${label === "control" ? `:${port}` : ""}\r\n\r\n`;
    const kinds: [string, (s: Socket) => void, boolean][] = [
      ["1 connect, nothing sent, FIN", (s) => s.end(), false],
      ["1 a partial head, FIN", (s) => s.end("GET / HTTP/1.1\r\nHo"), false],
      ["1 a request for an unknown name, FIN", (s) => s.end(unknown), false],
      ["1 a good request, FIN at once", (s) => s.end(good), false],
      [
        "1 a good request, close at the answer's first bytes",
        (s) => {
          s.write(good);
          s.once("data", () => s.destroy());
        },
        true,
      ],
    ];
    for (const [name, act, visitorCloses] of kinds)
      await measure(
        server,
        `${name} (${count(COUNT.visitors)} visitors)`,
        label,
        async () =>
          summarize(await pool(COUNT.visitors, CONCURRENCY, () => visit(port, act, 5000)), visitorCloses),
        async () => (await server.health()).streams === 0,
      );
  }
}

// ---------- pattern 2: a second request behind Upgrade ----------

async function smuggling(server: Server): Promise<void> {
  const ports: [string, number, string][] = [
    ["--http-port", server.httpPort, "rec.localhost"],
    ["control", server.port, `rec.localhost:${server.port}`],
  ];
  for (const [label, port, host] of ports)
    await measure(server, "2 a second request behind `Upgrade: foo` in one packet", label, async () => {
      recorder.reset();
      const bytes =
        `GET /upgrade HTTP/1.1\r\nHost: ${host}\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n` +
        `GET /second HTTP/1.1\r\nHost: ${host}\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: gopher\r\n` +
        `X-Forwarded-Host: forged.example\r\nX-Real-IP: 6.6.6.7\r\nX_Forwarded_For: 6.6.6.8\r\n` +
        `Forwarded: for=6.6.6.9\r\nConnection: close\r\n\r\n`;
      const { answer } = await exchange(port, bytes);
      const statuses = [...answer.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1]).join(", ");
      const received = recorder.received();
      const at = received.indexOf("GET /second");
      if (at < 0) return `visitor got ${statuses || "nothing"}; the second request never reached the backend`;
      const second = received.slice(at, received.indexOf("\r\n\r\n", at) + 4);
      const header = (name: string) => second.match(new RegExp(`^${name}: (.*)\\r$`, "im"))?.[1] ?? "none";
      const forged = ["6.6.6.6", "6.6.6.7", "6.6.6.8", "6.6.6.9", "gopher", "forged.example"].filter((v) =>
        second.includes(v),
      );
      return (
        `visitor got ${statuses}; backend's 2nd request: X-Forwarded-For ${header("X-Forwarded-For")}, ` +
        `-Proto ${header("X-Forwarded-Proto")}, -Host ${header("X-Forwarded-Host")}, Host ${header("Host")}; ` +
        `forged values passed: ${forged.length ? forged.join(", ") : "none"}`
      );
    });
}

// ---------- pattern 3: incomplete heads ----------

async function heldHeads(server: Server): Promise<void> {
  await measure(
    server,
    `3 ${count(COUNT.heads)} connections each holding 60 KB of a head (--request-timeout 10)`,
    "--http-port",
    async () => {
      const chunk = `GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Pad: ${"a".repeat(60_000)}`;
      interface Held {
        opened: number;
        status: string | null;
        answeredAt: number;
        closedAt: number;
      }
      const held: Held[] = [];
      const sockets: Socket[] = [];
      const started = performance.now();
      const open = () =>
        new Promise<void>((resolve) => {
          const h: Held = { opened: 0, status: null, answeredAt: 0, closedAt: 0 };
          const socket = connect({ port: server.httpPort, host: "127.0.0.1" }, () => {
            h.opened = performance.now();
            held.push(h);
            socket.write(chunk);
            resolve();
          });
          socket.on("data", (data: Buffer) => {
            if (h.status === null) {
              h.status = data.toString("latin1").match(/^HTTP\/1\.1 (\d{3})/)?.[1] ?? "?";
              h.answeredAt = performance.now();
            }
          });
          socket.on("error", () => resolve());
          socket.on("close", () => {
            h.closedAt = performance.now();
            resolve();
          });
          sockets.push(socket);
        });
      for (let i = 0; i < COUNT.heads; i += 100)
        await Promise.all(Array.from({ length: Math.min(100, COUNT.heads - i) }, open));
      const opening = performance.now() - started;
      const deadline = performance.now() + 40_000;
      while (performance.now() < deadline && held.some((h) => h.closedAt === 0)) await Bun.sleep(100);
      const stillOpen = held.filter((h) => h.closedAt === 0).length;
      for (const s of sockets) s.destroy();
      const busy = held.filter((h) => h.status === "503");
      const other = held.filter((h) => h.status !== null && h.status !== "503");
      const silent = held
        .filter((h) => h.status === null && h.closedAt > 0)
        .map((h) => (h.closedAt - h.opened) / 1000)
        .sort((a, b) => a - b);
      const busyAt = busy.map((h) => (h.answeredAt - h.opened) / 1000).sort((a, b) => a - b);
      const q = (list: number[], f: number) => (list[Math.floor((list.length - 1) * f)] ?? 0).toFixed(1);
      return (
        `${count(held.length)} connected in ${(opening / 1000).toFixed(1)} s; 503 ×${count(busy.length)}` +
        (busy.length ? ` (${q(busyAt, 0)}–${q(busyAt, 1)} s after connecting)` : "") +
        (other.length ? `, other answers ×${count(other.length)}` : "") +
        `; the other ${count(silent.length)} closed with no answer ${q(silent, 0)}–${q(silent, 1)} s ` +
        `after connecting (p50 ${q(silent, 0.5)} s)` +
        (stillOpen ? `; ${count(stillOpen)} still open after 40 s` : "")
      );
    },
    async () => (await server.health()).streams === 0,
  );
  await measure(server, "3 a head with bare LF line ends", "--http-port", async () => {
    const { answer, closed, ms } = await exchange(server.httpPort, "GET / HTTP/1.1\nHost: app.localhost\n\n");
    const line = answer.split("\r\n")[0] || "no answer";
    const body = answer.slice(answer.indexOf("\r\n\r\n") + 4).trim();
    return `\`${line}\` (${body || "empty body"}) in ${ms.toFixed(0)} ms, ${closed ? "then closed" : "not closed within 5 s"}`;
  });
}

// ---------- pattern 4: a local service that never reads; visitors that never read ----------

/** Polls /health until `figure` has not grown for 3 s (at most 25 s); returns its peak. */
async function plateau(
  server: Server,
  figure: (h: Health) => number,
): Promise<{ peak: number; health: Health }> {
  let peak = 0;
  let last: Health | null = null;
  let grewAt = performance.now();
  const started = performance.now();
  while (performance.now() - started < 25_000 && performance.now() - grewAt < 3000) {
    last = await server.health();
    const value = figure(last);
    if (value > peak * 1.01 + 64 * 1024) grewAt = performance.now();
    peak = Math.max(peak, value);
    await Bun.sleep(250);
  }
  if (!last) throw new Error("no /health answer");
  return { peak, health: last };
}

/** Both directions of pattern 4, each on a fresh server started with `budgetArgs`. */
async function budgets(budgetArgs: string[], label: string): Promise<void> {
  await withServer(budgetArgs, [sink.port], async (server, [sinkPort]) => {
    await measure(
      server,
      `4 ${COUNT.stalled} visitors sending ${FLOOD_BYTES / MiB} MiB each to a local service that never reads, ${label}`,
      "TCP tunnel",
      async () => {
        const visitors = await Promise.all(
          Array.from({ length: COUNT.stalled }, () =>
            Bun.connect<Pumped>({
              hostname: "127.0.0.1",
              port: sinkPort as number,
              allowHalfOpen: true,
              data: { sent: 0, size: FLOOD_BYTES },
              socket: { open: pump, drain: pump, data() {}, error() {} },
            }),
          ),
        );
        const { peak, health } = await plateau(server, (h) => h.buffered.sent);
        const sent = visitors.reduce((sum, v) => sum + v.data.sent, 0);
        for (const v of visitors) v.terminate();
        return (
          `the tunnel took ${(sent / MiB).toFixed(0)} MiB from the visitors, then stopped reading them; ` +
          `server buffered (/health buffered.sent) peak ${(peak / MiB).toFixed(1)} MiB, ${health.streams} streams`
        );
      },
      async () => (await server.health()).streams === 0,
    );
  });
  await withServer(budgetArgs, [source.port], async (server, [sourcePort]) => {
    await measure(
      server,
      `4 ${COUNT.stalled} visitors that never read a local service sending ${FLOOD_BYTES / MiB} MiB each, ${label}`,
      "TCP tunnel",
      async () => {
        const visitors = await Promise.all(
          Array.from(
            { length: COUNT.stalled },
            () =>
              new Promise<Socket>((resolve, reject) => {
                const socket = connect({ port: sourcePort as number, host: "127.0.0.1" }, () =>
                  resolve(socket),
                );
                socket.pause();
                socket.on("error", reject);
              }),
          ),
        );
        const { peak, health } = await plateau(server, (h) => h.buffered.received);
        for (const v of visitors) v.destroy();
        return (
          `server buffered (/health buffered.received) peak ${(peak / MiB).toFixed(1)} MiB, largest receive ` +
          `window ${(health.largestWindow.receive / MiB).toFixed(1)} MiB, ${health.streams} streams`
        );
      },
      async () => (await server.health()).streams === 0,
    );
  });
}

// ---------- patterns 5 and 6: raw WebSocket sessions ----------

/** A raw protocol session holding the key; resolves once the server's hello arrived. */
async function rawSession(server: Server) {
  const ws = new WebSocket(`${server.url}${CONNECT_PATH}`, {
    protocols: [SUBPROTOCOL],
    headers: { [AUTH_HEADER]: `Bearer ${KEY}` },
  } as unknown as string[]);
  ws.binaryType = "arraybuffer";
  const messages: string[] = [];
  const wake = new Set<() => void>();
  const opened = performance.now();
  const closed = new Promise<{ code: number; ms: number }>((resolve) =>
    ws.addEventListener("close", (e) => resolve({ code: e.code, ms: performance.now() - opened })),
  );
  ws.addEventListener("message", (e) => {
    if (typeof e.data === "string") messages.push(e.data);
    for (const w of wake) w();
  });
  /** Resolves with the first message that contains `text`, or rejects after `ms` or on close. */
  const waitFor = (text: string, ms: number) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const found = messages.find((m) => m.includes(text));
        if (found) {
          clearTimeout(timer);
          wake.delete(check);
          resolve(found);
        }
      };
      const timer = setTimeout(() => {
        wake.delete(check);
        reject(new Error(`no ${text} within ${ms} ms`));
      }, ms);
      wake.add(check);
      void closed.then(() => setTimeout(check, 0));
      check();
    });
  await waitFor('"hello"', 10_000);
  return { ws, closed, waitFor };
}

const HANDSHAKE_TIMEOUT_S = 2;

async function refusedExposes(): Promise<void> {
  await withServer(["--handshake-timeout", String(HANDSHAKE_TIMEOUT_S)], [echo.port], async (server) => {
    const baseline = (await server.health()).clients;
    await measure(
      server,
      `5 ${count(COUNT.sessions)} WebSocket sessions: one refused expose (invalid subdomain), then nothing (--handshake-timeout ${HANDSHAKE_TIMEOUT_S})`,
      "control",
      async () => {
        const sessions: Awaited<ReturnType<typeof rawSession>>[] = [];
        let refused = 0;
        let failed = 0;
        for (let i = 0; i < COUNT.sessions; i += 50)
          await Promise.all(
            Array.from({ length: Math.min(50, COUNT.sessions - i) }, async (_, j) => {
              try {
                const session = await rawSession(server);
                sessions.push(session);
                session.ws.send(
                  JSON.stringify({ type: "expose", id: 1, kind: "http", subdomain: `-bad-${i + j}-` }),
                );
                await session.waitFor('"error"', 10_000);
                refused++;
              } catch {
                failed++;
              }
            }),
          );
        await Bun.sleep((HANDSHAKE_TIMEOUT_S + 1) * 1000);
        const counted = (await server.health()).clients - baseline;
        const closes = new Map<number, number>();
        const closedMs: number[] = [];
        await Promise.all(
          sessions.map(async (s) => {
            const result = await Promise.race([s.closed, Bun.sleep(0).then(() => null)]);
            if (result) {
              closes.set(result.code, (closes.get(result.code) ?? 0) + 1);
              closedMs.push(result.ms / 1000);
            }
          }),
        );
        for (const s of sessions) s.ws.close();
        closedMs.sort((a, b) => a - b);
        const codes = [...closes].map(([code, n]) => `${code} ×${count(n)}`).join(", ") || "none";
        return (
          `${count(refused)} refused${failed ? `, ${failed} failed to connect` : ""}; ` +
          `${HANDSHAKE_TIMEOUT_S + 1} s after the last refusal /health counts ${counted} of them as clients; ` +
          `closed by the server: ${codes} (${(closedMs[0] ?? 0).toFixed(1)}–${(closedMs[closedMs.length - 1] ?? 0).toFixed(1)} s after connecting)`
        );
      },
      async () => (await server.health()).clients === baseline,
    );
  });
}

async function oversizedMessage(): Promise<void> {
  await withServer([], [echo.port], async (server) => {
    await measure(
      server,
      "6 a client message of 17 MiB (limit 16 MiB) after exposing a TCP tunnel",
      "control",
      async () => {
        const before = await server.health();
        const session = await rawSession(server);
        session.ws.send(JSON.stringify({ type: "expose", id: 1, kind: "tcp" }));
        await session.waitFor('"exposed"', 10_000);
        const during = await server.health();
        session.ws.send(new Uint8Array(17 * MiB));
        const closed = await Promise.race([session.closed, Bun.sleep(10_000).then(() => null)]);
        await Bun.sleep(1000);
        const after = await server.health();
        session.ws.close();
        return (
          `closed with ${closed ? closed.code : "nothing within 10 s"}; 1 s later /health reserved ${after.reserved}` +
          ` (before ${before.reserved}), tunnels ${after.tunnels} (${during.tunnels} while it held one), clients ${after.clients} (before ${before.clients})`
        );
      },
    );
  });
}

// ---------- the run ----------

function table(): string {
  const lines = [
    "| pattern | port | fds before | fds peak | fds after | RSS MiB before | peak | after | after waited | the attacker observed |",
    "| --- | --- | --: | --: | --: | --: | --: | --: | --: | --- |",
  ];
  for (const r of rows) {
    const waited = `${(r.afterMs / 1000).toFixed(1)} s${r.settled ? "" : " (not back)"}`;
    lines.push(
      `| ${r.pattern} | ${r.port} | ${r.before.fds} | ${r.peak.fds} | ${r.after.fds} | ${mib(r.before.rss)} | ${mib(r.peak.rss)} | ${mib(r.after.rss)} | ${waited} | ${r.observed.replaceAll("|", "\\|")} |`,
    );
  }
  return lines.join("\n");
}

/**
 * With `--at REV`, exports that commit (`git archive`) to a temporary directory beside a link to this
 * checkout's node_modules, points {@link ROOT} at it and returns the commit; else describes the working tree.
 */
async function checkout(): Promise<string> {
  const git = async (args: string[]) => {
    const result = await run(["git", "-C", REPO, ...args], 60_000);
    if (result.code !== 0) throw new Error(`git ${args.join(" ")}: ${result.stderr.trim()}`);
    return result.stdout.trim();
  };
  if (AT === undefined) {
    const dirty = await git(["status", "--porcelain", "--", "server.ts", "client.ts", "shared"]);
    const head = await git(["rev-parse", "--short", "HEAD"]);
    return `${head}${dirty ? " + uncommitted changes in server.ts/client.ts/shared" : ""} (working tree)`;
  }
  if (!/^[\w./^~-]+$/.test(AT)) throw new Error(`--at: not a revision: '${AT}'`);
  const commit = await git(["rev-parse", "--short", `${AT}^{commit}`]);
  const dir = mkdtempSync(join(tmpdir(), "sockets-abuse-"));
  atExit(() => rmSync(dir, { recursive: true, force: true }));
  const tar = join(dir, "tree.tar");
  await git(["archive", "--format=tar", "-o", tar, commit]);
  const untar = await run(["tar", "-xf", tar, "-C", dir], 60_000);
  if (untar.code !== 0) throw new Error(`tar: ${untar.stderr.trim()}`);
  rmSync(tar);
  symlinkSync(join(REPO, "node_modules"), join(dir, "node_modules"));
  ROOT = dir;
  return `${commit} (git archive of --at ${AT})`;
}

async function main(): Promise<void> {
  const commit = await checkout();
  const header =
    `Commit ${commit}, Bun ${Bun.version}, ` +
    `${navigator.hardwareConcurrency} cores, descriptor limit ${fileLimits().soft}${QUICK ? ", --quick" : ""}; ` +
    `fds = the server's /proc/PID/fd, RSS = its VmRSS; peak sampled every ${SAMPLE_MS} ms; after = once descriptors are ` +
    `within 2 of before (and no stream is left), waiting at most ${AFTER_WAIT_MS / 1000} s. Patterns 1 and 2 share ` +
    `one server; every other row has a fresh one (default flags but those named; an API key, held by the client).`;
  log(header);

  await withServer(
    [],
    [echo.port],
    async (server) => {
      await goneVisitors(server);
      await smuggling(server);
    },
    [[recorder.port, "rec"]],
  );
  await withServer([], [echo.port], heldHeads);
  await budgets([], "default budgets (--client-budget 64 MiB)");
  await budgets(["--client-budget", String(16 * MiB)], "--client-budget 16777216");
  await refusedExposes();
  await oversizedMessage();

  process.stdout.write(`${header}\n\n${table()}\n`);
}

for (const signal of ["SIGINT", "SIGTERM"] as const)
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
const watchdog = setTimeout(() => {
  log(`abuse: the run took over ${RUN_DEADLINE_MS / 60_000} min; stopping`);
  if (rows.length) process.stdout.write(`${table()}\n`);
  killAll();
  process.exit(1);
}, RUN_DEADLINE_MS);
try {
  await main();
} catch (error) {
  log(`abuse: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  if (rows.length) process.stdout.write(`${table()}\n`);
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  killAll();
}
process.exit();
