/**
 * The long-path section of `bun run bench`: the same tunnels across a wide-area path, emulated by a
 * user-space delay proxy (`../shared/tools/delayproxy.c`, built into bench/.build; the kernel here has
 * no netem) between the tunnel's two ends: sockets' client dials its server through it, ssh dials sshd
 * through it, and the bare path puts it between visitor and service. Visitors and the service stay on
 * loopback at either end, as they would be beside a server and behind a client.
 *
 * Per added round trip: one stream each way, four and sixteen streams (throughput each 100 ms, counted
 * where the bytes arrive, by `loadgen ramp`), how long a stream takes to reach full speed, and the
 * time to the first byte of a fresh connection (`loadgen ttfb`).
 *
 * The proxy ends TCP on both sides, so the kernels' own windows and congestion control never see the
 * delay: what it shows is the tunnel's flow control (and, for the bare path, a ceiling).
 * @module
 */

import { existsSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { buildNative, ROOT } from "./native.ts";
import { freePort, type Proc, run, spawn } from "./procs.ts";
import { startSockets, type Tunnel } from "./providers.ts";
import { sshProvider, startSsh } from "./ssh.ts";

/** The providers of the long path. */
export const LONG_PATH_PROVIDERS = ["bare", "ssh", "sockets"] as const;

/** A long-path provider name. */
export type LongPathProvider = (typeof LONG_PATH_PROVIDERS)[number];

/** One throughput-over-time run. */
export interface Ramp {
  dir: "up" | "down";
  conns: number;
  /** Mbit/s per 100 ms, from the moment every connection was through. */
  mbps: number[];
  /** Mean Mbit/s from 1 s on: full speed. */
  steady: number;
  /** Mean Mbit/s over the first second. */
  firstSecond: number;
  /** Seconds until a 300 ms mean first reached 90% of {@link Ramp.steady}. */
  toFull: number;
}

/** Everything measured for one provider at one round trip. */
export interface LongPathResult {
  provider: LongPathProvider;
  rttMs: number;
  ramps: Ramp[];
  /** Median time to first byte of a fresh connection, ms. */
  ttfbMs?: number;
  /** sockets: the session's window (bytes), from `--help` of the code measured. */
  window?: number;
  error?: string;
}

/** Options of the section. */
export interface LongPathOptions {
  /** Added round trips, ms. */
  rtts: number[];
  /** Seconds per ramp. */
  seconds: number;
  providers: LongPathProvider[];
  /** Run sockets from this checkout (a before/after table); default this one. */
  socketsRoot?: string;
  log: (line: string) => void;
}

/** The ramps each provider runs at each round trip: [direction, streams]. */
const RAMPS: ["up" | "down", number][] = [
  ["up", 1],
  ["down", 1],
  ["down", 4],
  ["down", 16],
];

const PROXY_SOURCE = join(ROOT, "..", "shared", "tools", "delayproxy.c");
const PROXY = join(import.meta.dir, ".build", "delayproxy");

/** Builds the delay proxy from ../shared/tools (never copied here); null when it is not beside the checkout. */
export async function buildDelayProxy(): Promise<string | null> {
  if (!existsSync(PROXY_SOURCE)) return null;
  mkdirSync(join(import.meta.dir, ".build"), { recursive: true });
  const fresh = existsSync(PROXY) && statSync(PROXY).mtimeMs > statSync(PROXY_SOURCE).mtimeMs;
  if (!fresh) {
    const r = await run(["gcc", "-O2", "-o", PROXY, PROXY_SOURCE], 60_000);
    if (r.code !== 0) throw new Error(`gcc delayproxy.c failed: ${r.stderr.trim()}`);
  }
  return PROXY;
}

/**
 * Starts a delay proxy to 127.0.0.1:`target` adding `rttMs` per round trip; resolves once it listens
 * (its own start line), on a port picked free (retried if another process took it first).
 */
export async function startDelay(
  proxy: string,
  target: number,
  rttMs: number,
): Promise<Proc & { port: number }> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = freePort();
    const p = spawn([proxy, `127.0.0.1:${port}`, `127.0.0.1:${target}`, String(rttMs / 2)]);
    try {
      await p.waitFor(/delayproxy: listening on/, 5000);
      return Object.assign(p, { port });
    } catch (error) {
      lastError = error;
      await p.stop();
    }
  }
  throw lastError;
}

/** Mean of `values` from index `from` to `to` (exclusive). */
function mean(values: number[], from: number, to = values.length): number {
  const slice = values.slice(from, to);
  return slice.length ? slice.reduce((a, b) => a + b, 0) / slice.length : 0;
}

/** Turns a loadgen ramp line into figures. */
export function summarise(dir: "up" | "down", conns: number, mbps: number[]): Ramp {
  const steady = mean(mbps, 10);
  let toFull = mbps.length / 10;
  for (let i = 0; i + 3 <= mbps.length; i++)
    if (mean(mbps, i, i + 3) >= 0.9 * steady) {
      toFull = (i + 3) / 10;
      break;
    }
  return { dir, conns, mbps, steady, firstSecond: mean(mbps, 0, 10), toFull };
}

async function loadgen(args: (string | number)[], timeoutS: number): Promise<Record<string, unknown>> {
  const { loadgen: bin } = await buildNative();
  const r = await run([bin, ...args.map(String)], (timeoutS + 5) * 1000, {
    env: { BENCH_TIMEOUT: String(timeoutS) },
  });
  const line = r.stdout.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    throw new Error(`loadgen ${args[0]} exited ${r.code}: ${r.stderr.trim().slice(0, 200)}`);
  }
}

/** The default `--window` of the sockets code in `root`, from its `--help`. */
async function socketsWindow(root: string): Promise<number | undefined> {
  const r = await run(["bun", join(root, "server.ts"), "--help"], 20_000, { cwd: root });
  const m = r.stdout.match(/--window BYTES.*default (\d+)/);
  return m ? Number(m[1]) : undefined;
}

async function startTunnel(
  provider: LongPathProvider,
  proxy: string,
  rttMs: number,
  servicePort: number,
  socketsRoot: string,
): Promise<Tunnel> {
  const via = (port: number) => startDelay(proxy, port, rttMs);
  if (provider === "ssh") return startSsh(servicePort, via);
  if (provider === "sockets")
    return startSockets(
      ["bun", join(socketsRoot, "server.ts")],
      ["bun", join(socketsRoot, "client.ts")],
      servicePort,
      { cwd: socketsRoot, via },
    );
  const p = await via(servicePort);
  return { port: p.port, processes: () => [], describe: () => "delay proxy only", stop: () => p.stop() };
}

/** Runs the section; resolves with every result (failures recorded, not thrown). */
export async function runLongPath(options: LongPathOptions): Promise<LongPathResult[]> {
  const { log } = options;
  const proxy = await buildDelayProxy();
  if (proxy === null) {
    log(`long path: skipped: ${PROXY_SOURCE} not found (the shared tools sit beside the checkout)`);
    return [];
  }
  const socketsRoot = options.socketsRoot ?? ROOT;
  const results: LongPathResult[] = [];
  for (const rttMs of options.rtts)
    for (const provider of options.providers) {
      const result: LongPathResult = { provider, rttMs, ramps: [] };
      results.push(result);
      const missing = provider === "ssh" ? await sshProvider.prepare() : null;
      if (missing !== null) {
        result.error = `skipped: ${missing}`;
        log(`long path ${provider}: ${result.error}`);
        continue;
      }
      if (provider === "sockets") result.window = await socketsWindow(socketsRoot);
      const servicePort = freePort();
      let tunnel: Tunnel | undefined;
      try {
        tunnel = await startTunnel(provider, proxy, rttMs, servicePort, socketsRoot);
        const ttfb = await loadgen(["ttfb", tunnel.port, servicePort, 10], 60);
        result.ttfbMs = Number(ttfb.p50);
        for (const [dir, conns] of RAMPS) {
          const r = await loadgen(
            ["ramp", tunnel.port, servicePort, dir, conns, options.seconds],
            options.seconds + 30,
          );
          if (Number(r.errors) !== 0)
            throw new Error(`ramp ${dir} ×${conns}: ${r.errors} connections failed`);
          const ramp = summarise(dir, conns, r.mbps as number[]);
          result.ramps.push(ramp);
          log(
            `long path +${rttMs} ms ${provider}: ${conns} ${dir}: ${ramp.steady.toFixed(0)} Mbit/s from 1 s (first second ${ramp.firstSecond.toFixed(0)}), 90% after ${ramp.toFull.toFixed(1)} s`,
          );
        }
        log(`long path +${rttMs} ms ${provider}: first byte after ${result.ttfbMs} ms`);
      } catch (error) {
        result.error = (error as Error).message;
        log(`long path +${rttMs} ms ${provider} FAILED: ${result.error}`);
      } finally {
        await tunnel?.stop();
      }
    }
  return results;
}

const MiB = 1024 * 1024;

/** The markdown table of the section, with its lead-in and notes. */
export function longPathReport(results: LongPathResult[], seconds: number): string {
  if (results.length === 0) return "";
  const fig = (r: LongPathResult, dir: string, conns: number) => {
    const ramp = r.ramps.find((x) => x.dir === dir && x.conns === conns);
    return ramp ? `${ramp.steady.toFixed(0)} (${ramp.firstSecond.toFixed(0)})` : "—";
  };
  const toFull = (r: LongPathResult) => {
    const ramps = r.ramps.filter((x) => x.conns === 1);
    return ramps.length ? ramps.map((x) => x.toFull.toFixed(1)).join(" / ") : "—";
  };
  const rows = results.map((r) => {
    const limit = r.window ? `${((r.window * 8) / (r.rttMs / 1000) / 1e6).toFixed(0)}` : "";
    const name =
      r.provider === "sockets" && r.window ? `sockets (${r.window / MiB} MiB window: ${limit})` : r.provider;
    if (r.error) return `| +${r.rttMs} ms | ${name} | failed: ${r.error.slice(0, 80)} | | | | | |`;
    return `| +${r.rttMs} ms | ${name} | ${fig(r, "up", 1)} | ${fig(r, "down", 1)} | ${fig(r, "down", 4)} | ${fig(r, "down", 16)} | ${toFull(r)} | ${r.ttfbMs?.toFixed(1) ?? "—"} |`;
  });
  return [
    `Long path (delay proxy between the tunnel's ends; Mbit/s from 1 s to ${seconds} s, the first second in brackets; counted where the bytes arrive):`,
    "",
    "| round trip | provider | 1 stream up | 1 stream down | 4 streams down | 16 streams down | s to 90% (1 up / 1 down) | first byte, ms |",
    "| --- | --- | --: | --: | --: | --: | --: | --: |",
    ...rows,
    "",
    "- The proxy ends TCP on both sides: kernel windows and congestion control do not see the delay, so `bare` is a ceiling, and each tunnel is held by its own flow control: sockets by its stream window (its limit, window / round trip, beside its name), ssh by its channel window.",
    "- First byte: a fresh visitor connection until the service's first byte arrives (the service speaks first); the bare path without the TCP handshake's own round trip.",
    "",
  ].join("\n");
}
