/**
 * `bun bench/inspector.ts`: what the client's request inspector costs (issue 19). One server, one local
 * web service (Bun.serve in its own process: a 1,400-byte answer to GET), and the client twice:
 * `--inspect off` and `--inspect 127.0.0.1:0`. For each, alternating, `wrk -t2 -c32` small GETs with
 * keep-alive through the HTTP tunnel (median of the runs), then the client's RSS; with the inspector on,
 * also the RSS once it holds 500 exchanges of 64 KiB JSON bodies each way.
 *
 * ```sh
 * bun bench/inspector.ts [--runs 3] [--seconds 5]
 * ```
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { killAll, rssKiB, spawn } from "./procs.ts";

const { values } = parseArgs({
  options: { runs: { type: "string" }, seconds: { type: "string" } },
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
  await wrk(`${clients.get("off")?.url}/`); // warm-up
  await wrk(`${clients.get("on")?.url}/`);
  for (let run = 0; run < RUNS; run++)
    for (const mode of run % 2 === 0 ? ["off", "on"] : ["on", "off"])
      rates[mode]?.push(await wrk(`${clients.get(mode)?.url}/`));
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
  console.log(
    `client RSS after the runs: off ${(rss.off as number) / 1024} MiB, on ${(rss.on as number) / 1024} MiB`,
  );
  console.log(
    `client RSS holding ${status.requests_kept} exchanges (64 KiB JSON each way, ${(status.body_bytes_kept as number) / 1048576} MiB of bodies kept): ${(rssBig / 1024).toFixed(1)} MiB`,
  );
  killAll();
}

try {
  await main();
} catch (error) {
  console.error(error);
  killAll();
  process.exit(1);
}
