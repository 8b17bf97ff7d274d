/**
 * `bun bench/https-hop.ts [--rounds N]`: what the `--https-port` front's loopback hop costs the server
 * in CPU (issue 28). Two servers with the same self-signed wildcard, each with a client exposing one
 * local app that answers 256 MiB: one terminates on `--https-port` (the front reads the ClientHello and
 * pipes into a loopback TLS listener), the other serves TLS on `--http-port` directly. curl downloads
 * through each, alternately (one warm-up each first); per download, the server's CPU (user + system,
 * from /proc) in ms per 256 MiB and the wall time. Needs openssl and curl.
 * @module
 */

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ROOT } from "./native.ts";
import { atExit, CLK_TCK, freePort, killAll, type Proc, run, spawn } from "./procs.ts";

/** Bytes per download: the unit the figures are given in. */
const BYTES = 256 * 1024 ** 2;
const DOMAIN = "tunnel.test";

/** CPU ms a process spent so far (user + system). */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK;
}

/** A server (front or direct TLS) and its client; `port` is where visitors connect. */
interface Setup {
  name: string;
  server: Proc;
  port: number;
}

async function setUp(name: string, front: boolean, dir: string, appPort: number): Promise<Setup> {
  const port = freePort();
  const ports = front ? ["--https-port", String(port), "--http-port", "0"] : ["--http-port", String(port)];
  const server = spawn(
    [
      ...["bun", "server.ts", "--host", "127.0.0.1", "--port", "0", "--domain", DOMAIN],
      ...["--tls-cert", join(dir, "cert.pem"), "--tls-key", join(dir, "key.pem"), ...ports],
    ],
    { cwd: ROOT, env: { SOCKETS_SINGLE_API_KEY: "" } },
  );
  const control = (await server.waitFor(/listening on wss:\/\/\S+:(\d+) /, 15_000))[1] as string;
  const client = spawn(
    [
      ...["bun", "client.ts", "--server", `wss://127.0.0.1:${control}`, "--ca", join(dir, "cert.pem")],
      ...["--http", `127.0.0.1:${appPort}`, "--subdomain", "big"],
    ],
    { cwd: ROOT, env: { SOCKETS_INSPECT: "off", SOCKETS_API_KEY: "" } },
  );
  await client.waitFor(/tunnel \S+ \(http-1\)/, 15_000);
  return { name, server, port };
}

/** One download through `setup`: the server's CPU ms and the wall ms. */
async function download(setup: Setup, dir: string): Promise<{ cpu: number; wall: number }> {
  const before = cpuMs(setup.server.pid);
  const started = performance.now();
  const result = await run(
    [
      ...["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "--cacert", join(dir, "cert.pem")],
      ...["--resolve", `big.${DOMAIN}:${setup.port}:127.0.0.1`, `https://big.${DOMAIN}:${setup.port}/`],
    ],
    120_000,
  );
  if (Number(result.stdout) !== BYTES)
    throw new Error(`${setup.name}: ${result.stdout} bytes, not ${BYTES}: ${result.stderr}`);
  return { cpu: cpuMs(setup.server.pid) - before, wall: performance.now() - started };
}

const median = (values: number[]) =>
  values.toSorted((a, b) => a - b)[Math.floor(values.length / 2)] as number;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: "string", default: "5" } } });
  const rounds = Number(values.rounds);
  const dir = mkdtempSync(join(tmpdir(), "sockets-https-hop-"));
  atExit(() => rmSync(dir, { recursive: true, force: true }));
  const made = await run(
    [
      ...["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
      ...["-days", "2", "-subj", "/CN=localhost", "-addext", `subjectAltName=DNS:*.${DOMAIN},IP:127.0.0.1`],
      ...["-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem")],
    ],
    10_000,
  );
  if (made.code !== 0) throw new Error(`openssl: ${made.stderr}`);
  const body = new Uint8Array(BYTES).fill(97);
  const app = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response(body) });
  atExit(() => app.stop(true));
  const setups = [
    await setUp("--https-port (front + loopback hop)", true, dir, app.port as number),
    await setUp("--http-port with --tls-cert (direct)", false, dir, app.port as number),
  ];
  for (const setup of setups) await download(setup, dir);
  const figures = new Map<Setup, { cpu: number; wall: number }[]>(setups.map((s) => [s, []]));
  for (let round = 0; round < rounds; round++)
    for (const setup of setups) figures.get(setup)?.push(await download(setup, dir));
  console.log(`server CPU (user + system) per ${BYTES / 1024 ** 2} MiB download, ${rounds} alternated runs:`);
  for (const [setup, runs] of figures) {
    const cpu = runs.map((r) => Math.round(r.cpu));
    const wall = runs.map((r) => Math.round(r.wall));
    console.log(
      `${setup.name}: CPU ms ${cpu.join(" ")} (median ${median(cpu)}); wall ms ${wall.join(" ")} (median ${median(wall)})`,
    );
  }
}

try {
  await main();
} finally {
  killAll();
}
