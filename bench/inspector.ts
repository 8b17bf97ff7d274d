/**
 * `bun bench/inspector.ts`: what the client's request inspector costs (issue 19). One server, one local
 * web service (Bun.serve in its own process: a 1,400-byte answer to GET), and the client twice:
 * `--inspect off` and `--inspect 127.0.0.1:0`. For each, alternating, `wrk -t2 -c32` small GETs with
 * keep-alive through the HTTP tunnel (median of the runs, with the client's CPU per request from /proc),
 * then the client's RSS; with the inspector on,
 * also the RSS once it holds 500 exchanges of 64 KiB JSON bodies each way.
 *
 * `--tap` measures the capture alone instead, in this process: microseconds of CPU per small exchange
 * (the request and answer the wrk runs relay, fed to one `InspectorTap`), with the request log's tap
 * beside it for scale.
 *
 * ```sh
 * bun bench/inspector.ts [--runs 3] [--seconds 5]
 * bun bench/inspector.ts --tap [--exchanges 200000]
 * ```
 * @module
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { InspectorTap } from "../shared/client/inspector/capture.ts";
import { InspectorStore } from "../shared/client/inspector/store.ts";
import { RequestLogTap } from "../shared/client/request-log.ts";
import type { StreamTap } from "../shared/relay/stream.ts";
import { killAll, rssKiB, spawn } from "./procs.ts";

const { values } = parseArgs({
  options: {
    runs: { type: "string" },
    seconds: { type: "string" },
    tap: { type: "boolean" },
    exchanges: { type: "string" },
  },
  strict: true,
});
const RUNS = Number(values.runs ?? 3);
const SECONDS = Number(values.seconds ?? 5);
const ROOT = join(import.meta.dir, "..");
const env = { SOCKETS_SINGLE_API_KEY: "", SOCKETS_API_KEY: "", SOCKETS_SERVER: "", SOCKETS_INSPECT: "" };

process.on("SIGINT", () => {
  killAll();
  process.exit(130);
});

/** A web service on a free port answering GETs with 1,400 bytes and echoing POST bodies' sizes. */
async function startService() {
  const service = spawn(
    [
      "bun",
      "-e",
      `const body = "x".repeat(1400);
       const s = Bun.serve({ hostname: "127.0.0.1", port: 0, async fetch(r) {
         if (r.method === "POST") return new Response(await r.text(), { headers: { "content-type": "application/json" } });
         return new Response(body);
       } });
       console.log("port " + s.port);`,
    ],
    { env },
  );
  const port = Number((await service.waitFor(/port (\d+)/, 10_000))[1]);
  return { service, port };
}

/** CPU seconds (user + system) a process has used, from /proc (Linux). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** wrk against an HTTP tunnel's URL, connecting to 127.0.0.1 with its Host (wrk resolves no *.localhost). */
async function wrk(url: string): Promise<number> {
  const { host, port } = new URL(url);
  const cmd = ["wrk", "-t2", "-c32", `-d${SECONDS}s`, "-H", `Host: ${host}`, `http://127.0.0.1:${port}/`];
  const proc = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe" });
  const out = await new Response(proc.stdout).text();
  await proc.exited;
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out)?.[1];
  if (rps === undefined || /Non-2xx|Socket errors/.test(out)) throw new Error(`wrk: ${out}`);
  return Number(rps);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main() {
  const { port } = await startService();
  const server = spawn(["bun", join(ROOT, "server.ts"), "--port", "0", "--domain", "localhost"], {
    cwd: ROOT,
    env,
  });
  const controlPort = Number(
    (await server.waitFor(/http tunnels on http:\/\/\*\.localhost:(\d+)/, 10_000))[1],
  );
  const clients = new Map<string, { pid: number; url: string; inspector?: string }>();
  for (const mode of ["off", "on"]) {
    const client = spawn(
      [
        "bun",
        join(ROOT, "client.ts"),
        "--server",
        `ws://127.0.0.1:${controlPort}`,
        "--http",
        `127.0.0.1:${port}`,
        "--subdomain",
        `bench-${mode}`,
        "--inspect",
        mode === "on" ? "127.0.0.1:0" : "off",
      ],
      { cwd: ROOT, env },
    );
    const url = (await client.waitFor(/url: (http:\S+)/, 10_000))[1] as string;
    const inspector =
      mode === "on" ? ((await client.waitFor(/inspector: (\S+)/, 10_000))[1] as string) : undefined;
    clients.set(mode, { pid: client.pid, url, inspector });
  }
  const rates: Record<string, number[]> = { off: [], on: [] };
  /** The client's CPU per request relayed (µs), each run: steadier than rates on a shared machine. */
  const cpu: Record<string, number[]> = { off: [], on: [] };
  await wrk(`${clients.get("off")?.url}/`); // warm-up
  await wrk(`${clients.get("on")?.url}/`);
  for (let run = 0; run < RUNS; run++)
    for (const mode of run % 2 === 0 ? ["off", "on"] : ["on", "off"]) {
      const client = clients.get(mode) as { pid: number; url: string };
      const before = cpuSeconds(client.pid);
      const rate = await wrk(`${client.url}/`);
      rates[mode]?.push(rate);
      cpu[mode]?.push(((cpuSeconds(client.pid) - before) * 1e6) / (rate * SECONDS));
    }
  const rss: Record<string, number> = {};
  for (const [mode, c] of clients) rss[mode] = rssKiB(c.pid);

  // 500 exchanges of 64 KiB JSON each way, kept by the inspector.
  const on = clients.get("on") as { pid: number; url: string; inspector: string };
  const json = JSON.stringify({ data: "y".repeat(64 * 1024 - 12) });
  for (let i = 0; i < 500; i++) {
    const response = await fetch(`${on.url}/big`, {
      method: "POST",
      body: json,
      headers: { "content-type": "application/json" },
    });
    await response.arrayBuffer();
  }
  const status = (await (await fetch(`${on.inspector}/api/status`)).json()) as Record<string, number>;
  Bun.gc(true);
  const rssBig = rssKiB(on.pid);

  const off = median(rates.off as number[]);
  const onRate = median(rates.on as number[]);
  console.log(`small GET through an HTTP tunnel, wrk -t2 -c32 -d${SECONDS}s, median of ${RUNS}:`);
  console.log(
    `  inspector off: ${off.toFixed(0)} req/s  (runs: ${rates.off?.map((r) => r.toFixed(0)).join(", ")})`,
  );
  console.log(
    `  inspector on:  ${onRate.toFixed(0)} req/s  (runs: ${rates.on?.map((r) => r.toFixed(0)).join(", ")})  = ${(onRate / off).toFixed(3)}x`,
  );
  const cpuOff = median(cpu.off as number[]);
  const cpuOn = median(cpu.on as number[]);
  console.log(
    `client CPU per request (median): off ${cpuOff.toFixed(1)} µs, on ${cpuOn.toFixed(1)} µs (+${(cpuOn - cpuOff).toFixed(1)} µs, ${(cpuOn / cpuOff).toFixed(3)}x)`,
  );
  console.log(
    `client RSS after the runs: off ${(rss.off as number) / 1024} MiB, on ${(rss.on as number) / 1024} MiB`,
  );
  console.log(
    `client RSS holding ${status.requests_kept} exchanges (64 KiB JSON each way, ${(status.body_bytes_kept as number) / 1048576} MiB of bodies kept): ${(rssBig / 1024).toFixed(1)} MiB`,
  );
  killAll();
}

/** Microseconds per small exchange through one tap, best of 5 rounds of `exchanges` GET/200 pairs. */
function tapCost(tap: StreamTap, exchanges: number): number {
  const encoder = new TextEncoder();
  const request = encoder.encode(
    "GET / HTTP/1.1\r\nHost: bench-on.localhost:40000\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n",
  );
  const response = encoder.encode(
    `HTTP/1.1 200 OK\r\ncontent-type: text/plain;charset=utf-8\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 1400\r\n\r\n${"x".repeat(1400)}`,
  );
  let best = Number.POSITIVE_INFINITY;
  for (let round = 0; round < 5; round++) {
    const started = performance.now();
    for (let i = 0; i < exchanges; i++) {
      tap.toSocket(request);
      tap.fromSocket(response);
    }
    best = Math.min(best, ((performance.now() - started) * 1000) / exchanges);
  }
  return best;
}

function tapOnly() {
  const exchanges = Number(values.exchanges ?? 200_000);
  const store = new InspectorStore();
  const inspector = tapCost(
    new InspectorTap({ store, tunnelName: "web", remote: "127.0.0.1:1", kind: "http" }),
    exchanges,
  );
  const log = tapCost(new RequestLogTap(() => {}), exchanges);
  console.log(`one connection, ${exchanges} small GET/200 exchanges, best of 5 rounds:`);
  console.log(`  InspectorTap:  ${inspector.toFixed(2)} µs per exchange`);
  console.log(`  RequestLogTap: ${log.toFixed(2)} µs per exchange (for scale)`);
}

try {
  if (values.tap) tapOnly();
  else await main();
} catch (error) {
  console.error(error);
  killAll();
  process.exit(1);
}
