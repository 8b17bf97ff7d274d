/**
 * The HTTP section of `bun run bench` (`--measures http`, issue 16): the same web load, side by side in
 * one run, through four paths to the same local web service:
 *
 * - `control`: an HTTP tunnel on the server's control port (`NAME.localhost:CONTROL_PORT`, README's
 *   default);
 * - `http-port`: the same HTTP tunnel on `--http-port`;
 * - `tcp`: a TCP tunnel (`--expose`) to the same service;
 * - `direct`: the service itself.
 *
 * One sockets server (`--domain localhost --http-port 0`) and one client carry all three tunnels (an
 * HTTP and a TCP tunnel to the C web service, the same to the WebSocket echo server), so every path
 * runs through the same processes. The load: `wrk -t2 -c32` small GETs (1,400-byte body) with
 * keep-alive and 64-byte POSTs, 200 MiB up and down with sha256 checked (`httpbench up|down`, C), and a
 * 64-byte WebSocket echo round trip (`wsecho.ts`, Bun). Rounds are interleaved (each repetition runs
 * every path once), and each figure is the median of its quiet runs, as in the TCP section.
 * @module
 */

import { existsSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Sample } from "./measure.ts";
import { NATIVE, ROOT } from "./native.ts";
import { CLK_TCK, type CpuSample, cpuSample, machineTicks, type Proc, run, spawn } from "./procs.ts";
import type { TunnelProcess } from "./providers.ts";
import { boundBy, isQuiet, othersPct } from "./report.ts";

/** The four paths, in table order. */
export const HTTP_PATHS = ["control", "http-port", "tcp", "direct"] as const;

/** A path name. */
export type HttpPath = (typeof HTTP_PATHS)[number];

/** The measurements, in the order they run. */
export const HTTP_MEASURES = ["get", "post", "up", "down", "ws"] as const;

/** A measurement name. */
export type HttpMeasure = (typeof HTTP_MEASURES)[number];

/** Sizes and counts of the section. */
export interface HttpParams {
  /** Seconds per wrk run. */
  wrkSeconds: number;
  wrkThreads: number;
  wrkConns: number;
  /** Bytes per upload and per download. */
  bulkBytes: number;
  wsRounds: number;
  wsWarmup: number;
  wsSize: number;
  /** Runs per figure (median reported). */
  repeat: number;
}

/** Full run. */
export const HTTP_FULL: HttpParams = {
  wrkSeconds: 5,
  wrkThreads: 2,
  wrkConns: 32,
  bulkBytes: 200 * 1024 ** 2,
  wsRounds: 10_000,
  wsWarmup: 1_000,
  wsSize: 64,
  repeat: 5,
};

/** `--quick`: shorter wrk runs, fewer round trips, one run each (the bulk size stays: it is a limit test too). */
export const HTTP_QUICK: HttpParams = {
  ...HTTP_FULL,
  wrkSeconds: 3,
  wsRounds: 3_000,
  wsWarmup: 300,
  repeat: 1,
};

/** Everything the section measured. */
export interface HttpResult {
  params: HttpParams;
  /** The sockets checkout measured (its commit, when it is a git checkout). */
  code: string;
  /** measure → path → the median run (absent: failed or skipped). */
  samples: Partial<Record<HttpMeasure, Partial<Record<HttpPath, Sample>>>>;
  /** measure → path → why it failed. */
  errors: Partial<Record<HttpMeasure, Partial<Record<HttpPath, string>>>>;
  /** Why the whole section, or a measurement, was skipped. */
  notes: string[];
  /** The processes measured, for the report. */
  processes?: string;
}

/** Options of {@link runHttp}. */
export interface HttpOptions {
  params: HttpParams;
  /** Run sockets from this checkout (default this one). */
  socketsRoot?: string;
  log: (line: string) => void;
}

const BUILD = join(import.meta.dir, ".build");
const HTTPBENCH = join(BUILD, "httpbench");

/** Compiles bench/native/httpbench.c when the binary is missing or older than its sources. */
export async function buildHttpBench(): Promise<string> {
  mkdirSync(BUILD, { recursive: true });
  const source = join(NATIVE, "httpbench.c");
  const newest = Math.max(statSync(source).mtimeMs, statSync(join(NATIVE, "sha256.h")).mtimeMs);
  if (!existsSync(HTTPBENCH) || statSync(HTTPBENCH).mtimeMs < newest) {
    const r = await run(["gcc", "-O2", "-Wall", "-pthread", "-o", HTTPBENCH, source], 60_000);
    if (r.code !== 0) throw new Error(`gcc httpbench.c failed: ${r.stderr.trim()}`);
  }
  return HTTPBENCH;
}

/** Where one path's visitor connects, and what it names in Host. */
interface Endpoint {
  port: number;
  host: string;
  /** The WebSocket echo's URL on this path. */
  ws: string;
}

function shares(procs: TunnelProcess[], before: Map<number, CpuSample>, seconds: number): Sample["cpu"] {
  const roles = new Map<string, Sample["cpu"][number]>();
  for (const { role, pid } of procs) {
    const a = before.get(pid);
    if (!a) continue;
    const b = cpuSample(pid);
    const share = roles.get(role) ?? { role, pct: 0, busiestThreadPct: 0 };
    share.pct += ((b.total - a.total) / CLK_TCK / seconds) * 100;
    for (const [tid, ticks] of b.threads)
      share.busiestThreadPct = Math.max(
        share.busiestThreadPct,
        ((ticks - (a.threads.get(tid) ?? 0)) / CLK_TCK / seconds) * 100,
      );
    roles.set(role, share);
  }
  return [...roles.values()];
}

/**
 * Runs one load generator with the CPU of every watched process sampled around its timed part. With
 * `handshake`, the generator prepares, prints "ready", starts on a stdin line and prints a line with
 * `"phase":"timed"` when its timed part ends (its own CPU over it in the last JSON line's `cpu`);
 * otherwise (wrk) the whole run is timed and its CPU is its resource usage.
 */
async function timed(
  cmd: string[],
  watched: TunnelProcess[],
  handshake: boolean,
  timeoutS: number,
  parse: (stdout: string) => Record<string, unknown>,
  genThreads = 1,
): Promise<Sample> {
  const p: Proc = spawn(cmd, { stdin: handshake, env: { BENCH_TIMEOUT: String(timeoutS) } });
  const timer = setTimeout(() => void p.stop(0), (timeoutS + 10) * 1000);
  try {
    if (handshake) await p.waitFor(/^ready$/m, timeoutS * 1000);
    const before = new Map(watched.map((w) => [w.pid, cpuSample(w.pid)]));
    const machineBefore = machineTicks();
    const started = performance.now();
    if (handshake) {
      p.write("go\n");
      await p.waitFor(/"phase":"timed"|"error"/, timeoutS * 1000).catch(() => undefined);
    } else await p.proc.exited;
    const seconds = (performance.now() - started) / 1000;
    const cpu = shares(watched, before, seconds);
    const machinePct = ((machineTicks().busy - machineBefore.busy) / CLK_TCK / seconds) * 100;
    await p.proc.exited;
    const result = parse(p.stdout());
    if (typeof result.error === "string") throw new Error(result.error);
    const usage = p.proc.resourceUsage();
    const genCpu = handshake ? Number(result.cpu ?? 0) : usage ? Number(usage.cpuTime.total) / 1e6 : 0;
    // Its busiest thread is not sampled (it may be gone): taken as an even share of its threads.
    const pct = (genCpu / seconds) * 100;
    cpu.unshift({ role: "generator", pct, busiestThreadPct: pct / genThreads });
    return { result, cpu, machinePct, seconds };
  } finally {
    clearTimeout(timer);
    await p.stop();
  }
}

/** The last JSON line of a generator's output. */
function lastJson(stdout: string): Record<string, unknown> {
  const line = stdout.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return { error: `no result: ${stdout.trim().slice(-200) || "(no output)"}` };
  }
}

/** Microseconds from a wrk duration such as `812.00us`, `1.23ms` or `2.00s`. */
function micros(text: string): number {
  const m = text.match(/^([\d.]+)(us|ms|s)$/);
  if (!m) return Number.NaN;
  return Math.round(Number(m[1]) * (m[2] === "us" ? 1 : m[2] === "ms" ? 1000 : 1_000_000));
}

/** wrk's output (run with --latency) as figures; an error when any response was not 2xx/3xx or a socket failed. */
export function parseWrk(stdout: string): Record<string, unknown> {
  const rps = stdout.match(/Requests\/sec:\s+([\d.]+)/)?.[1];
  if (!rps) return { error: `wrk printed no rate: ${stdout.trim().slice(-200)}` };
  const p50 = stdout.match(/^\s+50%\s+(\S+)/m)?.[1] ?? "";
  const p99 = stdout.match(/^\s+99%\s+(\S+)/m)?.[1] ?? "";
  const requests = Number(stdout.match(/(\d+) requests in/)?.[1] ?? 0);
  const non2xx = Number(stdout.match(/Non-2xx or 3xx responses:\s+(\d+)/)?.[1] ?? 0);
  const socket = stdout.match(/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/);
  const socketErrors = socket ? socket.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  if (requests === 0 || non2xx > 0 || socketErrors > 0)
    return {
      error: `${requests} requests, ${non2xx} not 2xx/3xx, socket errors: ${socket?.[0] ?? "none"}`,
    };
  return { rps: Number(rps), p50: micros(p50), p99: micros(p99), requests };
}

/** Starts the web service, the echo server and one sockets server + client with every tunnel. */
async function setUp(
  httpbench: string,
  params: HttpParams,
  root: string,
  track: (p: Proc) => Proc,
): Promise<{ endpoints: Record<HttpPath, Endpoint>; watched: TunnelProcess[]; describe: string }> {
  const web = track(spawn([httpbench, "serve", "2", String(params.bulkBytes)], { stdin: true }));
  const webPort = Number((await web.waitFor(/port (\d+)/, 10_000))[1]);
  const echo = track(spawn(["bun", join(import.meta.dir, "wsecho.ts"), "serve"], { stdin: true }));
  const echoPort = Number((await echo.waitFor(/port (\d+)/, 10_000))[1]);
  const env = { SOCKETS_SINGLE_API_KEY: "", SOCKETS_API_KEY: "", SOCKETS_SERVER: "" };
  const server = track(
    spawn(
      [
        "bun",
        join(root, "server.ts"),
        ...["--host", "127.0.0.1", "--port", "0", "--domain", "localhost", "--http-port", "0"],
      ],
      { cwd: root, env },
    ),
  );
  const [, url] = await server.waitFor(/listening on (ws:\/\/\S+)/, 20_000);
  const control = Number(new URL(url as string).port);
  const local = (port: number) => `127.0.0.1:${port}`;
  const client = track(
    spawn(
      [
        "bun",
        join(root, "client.ts"),
        ...["--server", url as string],
        ...["--http", local(webPort), "--subdomain", "web", "--http", local(echoPort), "--subdomain", "ws"],
        ...["--expose", local(webPort), "--expose", local(echoPort)],
      ],
      { cwd: root, env },
    ),
  );
  // Every tunnel is logged as `tunnel ID: URL -> LOCAL`; the TCP ones' URLs are localhost:PORT.
  const tunnels = new Map<string, number>();
  for (let i = 0; i < 100 && tunnels.size < 2; i++) {
    await client.waitFor(/tunnel \S+(?: \([^)]*\))?: localhost:\d+ -> /, 20_000);
    for (const m of client
      .stderr()
      .matchAll(/tunnel \S+(?: \([^)]*\))?: localhost:(\d+) -> 127\.0\.0\.1:(\d+)/g))
      tunnels.set(m[2] as string, Number(m[1]));
    if (tunnels.size < 2) await Bun.sleep(50);
  }
  const httpPort = Number((await client.waitFor(/url: http:\/\/web\.localhost:(\d+)/, 20_000))[1]);
  await client.waitFor(/url: http:\/\/ws\.localhost:\d+/, 20_000);
  const tcpWeb = tunnels.get(String(webPort));
  const tcpEcho = tunnels.get(String(echoPort));
  if (!tcpWeb || !tcpEcho) throw new Error(`the client announced no TCP tunnel for ${webPort}/${echoPort}`);
  const named = (port: number): Endpoint => ({
    port,
    host: `web.localhost:${port}`,
    ws: `ws://ws.localhost:${port}/`,
  });
  return {
    endpoints: {
      control: named(control),
      "http-port": named(httpPort),
      tcp: { port: tcpWeb, host: local(tcpWeb), ws: `ws://${local(tcpEcho)}/` },
      direct: { port: webPort, host: local(webPort), ws: `ws://${local(echoPort)}/` },
    },
    watched: [
      { role: "server", pid: server.pid },
      { role: "client", pid: client.pid },
      { role: "web", pid: web.pid },
      { role: "ws echo", pid: echo.pid },
    ],
    describe: `server ${server.pid} (control port ${control}, --http-port ${httpPort}) + client ${client.pid}; web service (httpbench.c) ${web.pid}; WebSocket echo (wsecho.ts) ${echo.pid}`,
  };
}

/** The web service's counters (asked directly; /stats does not count itself). */
async function webStats(port: number): Promise<{ connections: number; requests: number }> {
  const response = await fetch(`http://127.0.0.1:${port}/stats`, {
    signal: AbortSignal.timeout(5000),
    keepalive: false,
  });
  return (await response.json()) as { connections: number; requests: number };
}

/** The headline figure of each measurement (the median run is picked by it). */
const HEADLINE: Record<HttpMeasure, string> = {
  get: "rps",
  post: "rps",
  up: "gbps",
  down: "gbps",
  ws: "p50",
};

/** The commit of a checkout, with a mark when its tunnel sources have uncommitted changes. */
async function commitOf(root: string): Promise<string> {
  const head = await run(["git", "-C", root, "rev-parse", "--short", "HEAD"], 5000).catch(() => null);
  if (head?.code !== 0) return `${root} (not a git checkout)`;
  const status = await run(
    ["git", "-C", root, "status", "--porcelain", "--", "server.ts", "client.ts", "shared"],
    5000,
  );
  const dirty = status.stdout.trim() ? " + uncommitted changes in server.ts/client.ts/shared" : "";
  return `commit ${head.stdout.trim()}${dirty}`;
}

/** Runs the HTTP section; failures of one figure are recorded, not thrown. */
export async function runHttp(options: HttpOptions): Promise<HttpResult> {
  const { params, log } = options;
  const root = options.socketsRoot ?? ROOT;
  const result: HttpResult = { params, code: await commitOf(root), samples: {}, errors: {}, notes: [] };
  const wrk = Bun.which("wrk");
  const measures = HTTP_MEASURES.filter((m) => {
    if ((m === "get" || m === "post") && !wrk) {
      if (m === "get") result.notes.push("wrk not found: small GET and POST skipped (apt-get install wrk)");
      return false;
    }
    return true;
  });
  const httpbench = await buildHttpBench();
  const postScript = join(BUILD, "post64.lua");
  writeFileSync(
    postScript,
    `wrk.method = "POST"\nwrk.body = string.rep("x", ${64})\nwrk.headers["Content-Type"] = "application/octet-stream"\n`,
  );
  const procs: Proc[] = [];
  const track = (p: Proc) => {
    procs.push(p);
    return p;
  };
  try {
    const { endpoints, watched, describe } = await setUp(httpbench, params, root, track);
    result.processes = describe;
    log(`http: ${describe}`);
    const command = (
      m: HttpMeasure,
      e: Endpoint,
    ): { cmd: string[]; handshake: boolean; parse: typeof parseWrk; threads: number } => {
      const wrkCmd = (path: string, extra: string[]) => ({
        cmd: [
          wrk as string,
          `-t${params.wrkThreads}`,
          `-c${params.wrkConns}`,
          `-d${params.wrkSeconds}s`,
          "--latency",
          ...extra,
          "-H",
          `Host: ${e.host}`,
          `http://127.0.0.1:${e.port}${path}`,
        ],
        handshake: false,
        parse: parseWrk,
        threads: params.wrkThreads,
      });
      switch (m) {
        case "get":
          return wrkCmd("/small", []);
        case "post":
          return wrkCmd("/post", ["-s", postScript]);
        case "up":
        case "down":
          return {
            cmd: [httpbench, m, String(e.port), String(params.bulkBytes), e.host],
            handshake: true,
            parse: lastJson,
            threads: 1,
          };
        case "ws":
          return {
            cmd: [
              "bun",
              join(import.meta.dir, "wsecho.ts"),
              "ping",
              e.ws,
              String(params.wsRounds),
              String(params.wsWarmup),
              String(params.wsSize),
            ],
            handshake: true,
            parse: lastJson,
            threads: 1,
          };
      }
    };
    // Warm-up: the JIT and the first connections of each path.
    for (const path of HTTP_PATHS)
      if (wrk)
        await timed(
          command("get", endpoints[path]).cmd.map((a) => (a.startsWith("-d") ? "-d1s" : a)),
          watched,
          false,
          30,
          parseWrk,
        ).catch((error: Error) => log(`http: warm-up ${path}: ${error.message}`));
    for (const m of measures) {
      const runs = new Map<HttpPath, Sample[]>(HTTP_PATHS.map((p) => [p, []]));
      const failed = new Set<HttpPath>();
      const quiet = (p: HttpPath) =>
        (runs.get(p) ?? []).filter((s) => isQuiet(s) || params.repeat === 1).length;
      // Rounds: each runs every path still short of `repeat` quiet runs; at most 2 × repeat rounds.
      for (let round = 0; round < 2 * params.repeat; round++) {
        const due = HTTP_PATHS.filter((p) => !failed.has(p) && quiet(p) < params.repeat);
        if (due.length === 0) break;
        for (const path of due) {
          const { cmd, handshake, parse, threads } = command(m, endpoints[path]);
          try {
            const timeout = m === "up" || m === "down" ? 120 : 60;
            const statsBefore = await webStats(endpoints.direct.port);
            const s = await timed(cmd, watched, handshake, timeout, parse, threads);
            const statsAfter = await webStats(endpoints.direct.port);
            // What reached the web service: requests, and connections it accepted for them.
            s.result.backendRequests = statsAfter.requests - statsBefore.requests;
            s.result.backendConns = statsAfter.connections - statsBefore.connections;
            const served = Number(s.result.backendRequests);
            if (served > 0) s.result.connsPer1k = (Number(s.result.backendConns) / served) * 1000;
            if (s.result.ok === false || Number(s.result.errors ?? 0) > 0)
              throw new Error(`${m}: sha256 or echo mismatch (${JSON.stringify(s.result)})`);
            runs.get(path)?.push(s);
            const noisy = !isQuiet(s) && params.repeat > 1;
            log(
              `http: ${m} ${path}: ${figure(m, s)}${noisy ? ` (noisy: others used ${othersPct(s).toFixed(0)}% of a core)` : ""}`,
            );
          } catch (error) {
            failed.add(path);
            result.errors[m] = { ...result.errors[m], [path]: (error as Error).message };
            log(`http: ${m} ${path} FAILED: ${(error as Error).message}`);
          }
        }
      }
      for (const path of HTTP_PATHS) {
        const all = runs.get(path) ?? [];
        if (all.length === 0) continue;
        const quietRuns = all.filter((s) => isQuiet(s));
        const pool = quietRuns.length > 0 ? quietRuns : all;
        const value = (s: Sample) => Number(s.result[HEADLINE[m]]);
        const sorted = [...pool].sort((a, b) => value(a) - value(b));
        const mid = sorted[Math.floor((sorted.length - 1) / 2)] as Sample;
        result.samples[m] = {
          ...result.samples[m],
          [path]: { ...mid, runs: all.map(value), quietRuns: quietRuns.length },
        };
      }
    }
  } catch (error) {
    result.notes.push(`could not start: ${(error as Error).message}`);
    log(`http: could not start: ${(error as Error).message}`);
  } finally {
    for (const p of procs.reverse()) await p.stop();
  }
  return result;
}

function figure(m: HttpMeasure, s: Sample): string {
  const r = s.result;
  if (m === "get" || m === "post")
    return `${Math.round(Number(r.rps))} req/s, p50 ${r.p50} µs, p99 ${r.p99} µs`;
  if (m === "ws") return `p50 ${r.p50} µs, p99 ${r.p99} µs`;
  return `${Number(r.gbps).toFixed(2)} Gbit/s${r.contentLength === false ? " (no Content-Length)" : ""}`;
}

// ---------- report ----------

const PATH_LABEL: Record<HttpPath, string> = {
  control: "HTTP tunnel, control port",
  "http-port": "HTTP tunnel, --http-port",
  tcp: "TCP tunnel",
  direct: "direct",
};

const fixed = (digits: number) => (v: number) =>
  v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });

interface HttpRow {
  label: string;
  unit: string;
  measure: HttpMeasure;
  field: string;
  format: (v: number) => string;
  /** Lower is better (latency). */
  lower?: boolean;
  /** No ratio columns (a count, not a speed). */
  noRatio?: boolean;
  target?: { text: string; met(v: (p: HttpPath) => number | undefined): string };
}

const verdict = (ok: boolean | undefined) => (ok === undefined ? "n/a" : ok ? "yes" : "**no**");
const ratioAtLeast = (a: number | undefined, b: number | undefined, k: number) =>
  a === undefined || b === undefined ? undefined : a >= k * b;
const ratioAtMost = (a: number | undefined, b: number | undefined, k: number) =>
  a === undefined || b === undefined ? undefined : a <= k * b;

function httpRows(p: HttpParams): HttpRow[] {
  const mib = p.bulkBytes / 1024 ** 2;
  const wrkLabel = `${p.wrkConns} connections, keep-alive (wrk -t${p.wrkThreads} -c${p.wrkConns} -d${p.wrkSeconds}s)`;
  return [
    {
      label: `small GET (1,400 B body), ${wrkLabel}`,
      unit: "req/s",
      measure: "get",
      field: "rps",
      format: fixed(0),
      target: {
        text: "HTTP ≥ 0.9× TCP tunnel (each port); control ≥ 0.95× --http-port",
        met: (v) =>
          `control: ${verdict(ratioAtLeast(v("control"), v("tcp"), 0.9))}, --http-port: ${verdict(ratioAtLeast(v("http-port"), v("tcp"), 0.9))}, control ÷ --http-port: ${verdict(ratioAtLeast(v("control"), v("http-port"), 0.95))}`,
      },
    },
    {
      label: "small GET latency p50",
      unit: "µs",
      measure: "get",
      field: "p50",
      format: fixed(0),
      lower: true,
    },
    {
      label: "small GET latency p99",
      unit: "µs",
      measure: "get",
      field: "p99",
      format: fixed(0),
      lower: true,
    },
    {
      label: "small GET: connections the web service saw, per 1,000 requests",
      unit: "",
      measure: "get",
      field: "connsPer1k",
      format: fixed(1),
      noRatio: true,
    },
    { label: `64 B POST, ${wrkLabel}`, unit: "req/s", measure: "post", field: "rps", format: fixed(0) },
    {
      label: "64 B POST latency p50",
      unit: "µs",
      measure: "post",
      field: "p50",
      format: fixed(0),
      lower: true,
    },
    {
      label: `upload ${mib} MiB, 1 request (Content-Length), sha256 checked`,
      unit: "Gbit/s",
      measure: "up",
      field: "gbps",
      format: fixed(2),
      target: {
        text: "any size streams on both ports, sha256 matches",
        met: (v) =>
          `control: ${verdict(v("control") !== undefined)}, --http-port: ${verdict(v("http-port") !== undefined)}`,
      },
    },
    {
      label: `download ${mib} MiB, 1 request, sha256 checked`,
      unit: "Gbit/s",
      measure: "down",
      field: "gbps",
      format: fixed(2),
      target: {
        text: "any size streams on both ports, sha256 matches, Content-Length kept",
        met: () => "",
      },
    },
    {
      label: `WebSocket echo round trip p50, ${p.wsSize} B, one at a time`,
      unit: "µs",
      measure: "ws",
      field: "p50",
      format: fixed(0),
      lower: true,
      target: {
        text: "HTTP tunnel ≤ 1.2× TCP tunnel (each port)",
        met: (v) =>
          `control: ${verdict(ratioAtMost(v("control"), v("tcp"), 1.2))}, --http-port: ${verdict(ratioAtMost(v("http-port"), v("tcp"), 1.2))}`,
      },
    },
    {
      label: `WebSocket echo round trip p99, ${p.wsSize} B`,
      unit: "µs",
      measure: "ws",
      field: "p99",
      format: fixed(0),
      lower: true,
    },
  ];
}

function value(r: HttpResult, m: HttpMeasure, field: string, path: HttpPath): number | undefined {
  const v = r.samples[m]?.[path]?.result[field];
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

function cell(r: HttpResult, row: HttpRow, path: HttpPath): string {
  const v = value(r, row.measure, row.field, path);
  if (v === undefined) return r.errors[row.measure]?.[path] ? "failed" : "—";
  const s = r.samples[row.measure]?.[path] as Sample;
  let text = row.format(v);
  if (row.measure === "down" && s.result.contentLength === false) text += " (chunked, no Content-Length)";
  if (!isQuiet(s)) text += " ⁿ";
  return text;
}

const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || b === 0 ? "—" : `${fixed(2)(a / b)}×`;

/** The section's markdown: the table with ratios and target verdicts, footnotes, and the CPU table. */
export function httpReport(r: HttpResult): string {
  const p = r.params;
  const lines = [
    `### HTTP tunnels (${r.code})`,
    "",
    `Four paths to the same local web service, side by side in one run: an HTTP tunnel on the control port (\`NAME.localhost:PORT\`), the same tunnel on \`--http-port\`, a TCP tunnel, and direct. One server and one client carry every tunnel. Each figure is the median of ${p.repeat} run(s), paths interleaved.`,
    "",
  ];
  for (const note of r.notes) lines.push(`- ${note}`);
  if (r.notes.length) lines.push("");
  const header = [
    "figure",
    "unit",
    ...HTTP_PATHS.map((x) => PATH_LABEL[x]),
    "control ÷ TCP",
    "--http-port ÷ TCP",
    "control ÷ --http-port",
    "TCP ÷ direct",
    "target",
    "met?",
  ];
  lines.push(`| ${header.join(" | ")} |`, `| ${header.map(() => "---").join(" | ")} |`);
  for (const row of httpRows(p)) {
    const v = (path: HttpPath) => value(r, row.measure, row.field, path);
    let met = row.target?.met(v) ?? "";
    if (row.measure === "down" && row.target) {
      const ok = (path: HttpPath) => {
        const s = r.samples.down?.[path];
        return s === undefined ? false : s.result.contentLength === true;
      };
      met = `control: ${verdict(ok("control"))}, --http-port: ${verdict(ok("http-port"))}`;
    }
    lines.push(
      `| ${[
        row.label,
        row.unit,
        ...HTTP_PATHS.map((x) => cell(r, row, x)),
        ...(row.noRatio
          ? ["", "", "", ""]
          : [
              ratio(v("control"), v("tcp")),
              ratio(v("http-port"), v("tcp")),
              ratio(v("control"), v("http-port")),
              ratio(v("tcp"), v("direct")),
            ]),
        row.target?.text ?? "",
        met,
      ].join(" | ")} |`,
    );
  }
  lines.push("");
  lines.push("ⁿ = processes outside the benchmark used ≥ 25% of a core during this figure: noisy.");
  for (const m of HTTP_MEASURES)
    for (const path of HTTP_PATHS) {
      const e = r.errors[m]?.[path];
      if (e) lines.push(`- ${m}, ${PATH_LABEL[path]}: failed: ${e}`);
    }
  if (r.processes) lines.push(`- processes: ${r.processes}`);
  lines.push(
    "",
    "CPU during each measurement (median run), % of one core per process (its busiest thread in brackets when lower; generator = wrk, httpbench or wsecho.ts ping), and what bounds it:",
    "",
  );
  const cpuHeader = ["measurement", ...HTTP_PATHS.map((x) => PATH_LABEL[x])];
  lines.push(`| ${cpuHeader.join(" | ")} |`, `| ${cpuHeader.map(() => "---").join(" | ")} |`);
  const CPU_LABEL: Record<HttpMeasure, string> = {
    get: "small GET",
    post: "64 B POST",
    up: "upload",
    down: "download",
    ws: "WebSocket echo",
  };
  for (const m of HTTP_MEASURES) {
    if (!r.samples[m] && !r.errors[m]) continue;
    lines.push(`| ${[CPU_LABEL[m], ...HTTP_PATHS.map((x) => cpuCell(r.samples[m]?.[x]))].join(" | ")} |`);
  }
  lines.push("");
  return lines.join("\n");
}

function cpuCell(s: Sample | undefined): string {
  if (!s) return "—";
  const parts = s.cpu
    .filter((c) => c.pct >= 1)
    .sort((a, b) => b.pct - a.pct)
    .map(
      (c) =>
        `${c.role} ${c.pct.toFixed(0)}${c.busiestThreadPct > 0 && c.busiestThreadPct < c.pct - 5 ? ` (${c.busiestThreadPct.toFixed(0)})` : ""}`,
    );
  const other = othersPct(s);
  if (other >= 5) parts.push(`other ${other.toFixed(0)}`);
  return `${parts.join(", ")} → ${boundBy(s)}`;
}
