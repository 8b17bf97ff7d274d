/**
 * The UDP section of `bun run bench` (`--measures udp`, issue 27), also runnable alone
 * (`bun bench/udp.ts [--quick] [--repeat N] [--json FILE]`). One server and one client exposing, on
 * the same client: a UDP echo service (bench/native/udpping.c), iperf3's port as a UDP tunnel and a TCP
 * tunnel on the same public port number (iperf3's control connection is TCP), and the C service of
 * the TCP section as a TCP tunnel. Figures:
 *
 * 1. **Request/response.** 64-byte UDP request/response, one at a time from one socket: p50/p99
 *    through the UDP tunnel beside direct, and the TCP tunnel's 64-byte round trip (the C load
 *    generator) beside it.
 * 2. **Offered rates.** `iperf3 -u -l 1400` at 10, 100 and 500 Mbit/s for a few seconds: loss and
 *    jitter through the tunnel beside direct, runs alternated.
 * 3. **A TCP stream beside a UDP flow.** The TCP tunnel's bulk download (one connection) and 64-byte
 *    round trip alone, then while `iperf3 -u` sends 100 Mbit/s, then 2 Gbit/s (saturating), through the
 *    UDP tunnel of the same client.
 *
 * Needs iperf3 (`apt-get install iperf3`; without it the iperf3 figures are skipped with a note). All
 * traffic on loopback; ports bound as 0 and read back; every process in its own group, stopped by PID.
 * @module
 */

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { bulk, FULL, latency, type Params, QUICK, type Target } from "./measure.ts";
import { buildNative, ROOT } from "./native.ts";
import { atExit, freePort, killAll, type Proc, run, spawn } from "./procs.ts";

/** Sizes and counts of the section. */
export interface UdpParams {
  /** Request/response rounds (after the warm-up). */
  rounds: number;
  warmup: number;
  /** Seconds of each iperf3 run. */
  seconds: number;
  /** Offered rates, Mbit/s. */
  rates: number[];
  /** Runs per figure (the median is reported). */
  repeat: number;
  /** Bytes of the TCP bulk download beside the UDP flood. */
  bulkBytes: number;
}

/** Full run. */
export const UDP_FULL: UdpParams = {
  rounds: 20_000,
  warmup: 2_000,
  seconds: 5,
  rates: [10, 100, 500],
  repeat: 3,
  bulkBytes: 512 * 1024 ** 2,
};

/** `--quick`. */
export const UDP_QUICK: UdpParams = {
  rounds: 5_000,
  warmup: 500,
  seconds: 3,
  rates: [10, 100, 500],
  repeat: 1,
  bulkBytes: 256 * 1024 ** 2,
};

/** One iperf3 UDP run's result. */
export interface RateRun {
  /** Offered, Mbit/s. */
  offered: number;
  /** Received by the server, Mbit/s. */
  received: number;
  lossPct: number;
  jitterMs: number;
}

/** Everything the section measured. */
export interface UdpResult {
  params: UdpParams;
  /** 64 B request/response, µs. */
  rr: { udpDirect: RoundTrip; udpTunnel: RoundTrip; tcpTunnel: RoundTrip; tcpDirect: RoundTrip };
  /** Per offered rate: the median run (by loss) direct and through the tunnel; absent without iperf3. */
  rates?: {
    offered: number;
    direct: RateRun;
    tunnel: RateRun;
    directRuns: number[];
    tunnelRuns: number[];
    /** CPU (user + system) per datagram offered during the tunnel runs, µs: the server's and the client's. */
    cpuUs?: { server: number; client: number };
  }[];
  /**
   * A TCP stream (bulk down, Mbit/s; 64 B RTT, µs) alone (`offered` 0) and beside a UDP flow of
   * `offered` Mbit/s on the same client, with what that flow sent meanwhile (iperf3 interrupted
   * reports its sender side only).
   */
  contention?: {
    offered: number;
    mbps: number;
    p50: number;
    p99: number;
    flood?: RateRun;
    /** The median over runs of the throughput lost beside the flood, each run against a run alone just before it (%). */
    costPct?: number;
    /** How the flood went: through the tunnel (default), through it with `--udp-rate-limit`, or to iperf3 direct. */
    via?: "tunnel" | "limited" | "direct";
  }[];
  notes: string[];
}

/** p50 and p99 in µs, and losses (UDP). */
export interface RoundTrip {
  p50: number;
  p99: number;
  lost?: number;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;

/** User + system CPU of process `pid` so far, in ticks (10 ms), from /proc (0 where there is none). */
function cpuTicks(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0;
  }
}

/**
 * Runs `udpping ping` (bench/native/udpping.c) against `port`: C, as the TCP round trip's load
 * generator and service are, so that the two tunnels' round trips compare like with like.
 */
async function ping(udpping: string, port: number, params: UdpParams, size = 64): Promise<RoundTrip> {
  const args = [udpping, "ping", port, params.rounds, params.warmup, size].map(String);
  const result = await run(args, 300_000);
  const line = result.stdout.trim().split("\n").pop() ?? "";
  if (result.code !== 0) throw new Error(`udp ping exited ${result.code}: ${result.stderr.slice(0, 200)}`);
  return JSON.parse(line) as RoundTrip;
}

/** `iperf3 -u` against 127.0.0.1:port at `mbps` for `seconds`: the process (SIGINT ends it early). */
function startIperf(port: number, mbps: number, seconds: number): Proc {
  // -w: 4 MiB socket buffers at both iperf3 ends (the kernel caps them at rmem_max/wmem_max), so that
  // iperf3's own receive buffer is not what loses datagrams, direct or through the tunnel.
  const args = [
    "iperf3",
    "-c",
    "127.0.0.1",
    "-p",
    String(port),
    "-u",
    "-b",
    `${mbps}M`,
    "-l",
    "1400",
    "-w",
    "4M",
  ];
  return spawn([...args, "-t", String(seconds), "--json"]);
}

/** What an iperf3 run printed (its JSON), as a {@link RateRun}. */
function iperfResult(stdout: string, mbps: number): RateRun {
  const json = JSON.parse(stdout) as {
    error?: string;
    end?: { sum?: { bits_per_second: number; lost_percent: number; jitter_ms: number } };
  };
  const sum = json.end?.sum;
  // A run ended by SIGINT says "interrupt" in `error` and still has its sums.
  if (sum === undefined) throw new Error(`iperf3: ${json.error ?? "no result"}`);
  return {
    offered: mbps,
    received: Math.round((sum.bits_per_second / 1e6) * (1 - sum.lost_percent / 100) * 10) / 10,
    lossPct: Math.round(sum.lost_percent * 100) / 100,
    jitterMs: Math.round(sum.jitter_ms * 1000) / 1000,
  };
}

/** One `iperf3 -u` run to its end. */
async function iperf(port: number, mbps: number, seconds: number): Promise<RateRun> {
  const p = startIperf(port, mbps, seconds);
  const timer = setTimeout(() => void p.stop(0), (seconds + 30) * 1000);
  await p.proc.exited;
  clearTimeout(timer);
  await p.stop();
  return iperfResult(p.stdout(), mbps);
}

/** A free port number on 127.0.0.1 for both TCP and UDP (iperf3 listens on both). */
async function freeDualPort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = freePort();
    try {
      const udp = await Bun.udpSocket({ hostname: "127.0.0.1", port });
      udp.close();
      return port;
    } catch {}
  }
  throw new Error("no port free for both TCP and UDP");
}

/** Runs the section; `log` gets one line per step. */
export async function runUdp(options: {
  params: UdpParams;
  log: (line: string) => void;
}): Promise<UdpResult> {
  const { params, log } = options;
  const notes: string[] = [];
  const native = await buildNative();
  const procs: Proc[] = [];
  const track = (p: Proc) => {
    procs.push(p);
    return p;
  };
  const hasIperf = Bun.which("iperf3") !== null;
  if (!hasIperf)
    notes.push("iperf3 not found (apt-get install iperf3): the offered-rate and flood figures are skipped");
  try {
    const echo = track(spawn([native.udpping, "echo"]));
    const echoPort = Number((await echo.waitFor(/port (\d+)/, 10_000))[1]);
    const service = track(spawn([native.service, "2"], { stdin: true }));
    const servicePort = Number((await service.waitFor(/port (\d+)/, 10_000))[1]);
    const iperfPort = await freeDualPort();
    const iperfServer = hasIperf ? track(spawn(["iperf3", "-s", "-p", String(iperfPort)])) : undefined;
    // The server's config file: empty, then `udp_rate_limit` for one flood (SIGHUP reloads it).
    const folder = mkdtempSync(join(tmpdir(), "sockets-bench-udp-"));
    atExit(() => rmSync(folder, { recursive: true, force: true }));
    const serverConfig = join(folder, "server.toml");
    writeFileSync(serverConfig, "# bench/udp.ts\n");
    const server = track(
      spawn(["bun", `${ROOT}/server.ts`, "--host", "127.0.0.1", "--port", "0", "--config", serverConfig]),
    );
    const controlPort = Number((await server.waitFor(/listening on ws:\/\/\S+:(\d+) /, 15_000))[1]);
    const publicIperf = await freeDualPort();
    // A config file: iperf3's TCP and UDP tunnels both ask for one public port number.
    const config = join(folder, "client.toml");
    const entry = (name: string, type: string, local: number, port?: number) =>
      `[[tunnels]]\nname = "${name}"\ntype = "${type}"\nlocal = "127.0.0.1:${local}"\n${port ? `port = ${port}\n` : ""}`;
    writeFileSync(
      config,
      [
        `server = "ws://127.0.0.1:${controlPort}"\ninspect = "off"\n`,
        entry("service", "tcp", servicePort),
        entry("iperf-control", "tcp", iperfPort, publicIperf),
        entry("echo", "udp", echoPort),
        entry("iperf", "udp", iperfPort, publicIperf),
      ].join("\n"),
    );
    const client = track(spawn(["bun", `${ROOT}/client.ts`, "--config", config]));
    await client.waitFor(/(?:exposed with tunnel id \S+, url: \S+\n[\s\S]*){4}/, 20_000);
    const urls = [...client.stdout().matchAll(/url: (\S+)/g)].map((m) => m[1] as string);
    const portOf = (url: string) => Number(url.slice(url.lastIndexOf(":") + 1));
    const tcpTunnel = portOf(urls[0] as string);
    const udpEchoTunnel = portOf(urls[2] as string);
    const roles = [
      { role: "sockets-server", pid: server.pid },
      { role: "sockets-client", pid: client.pid },
    ];
    const target = (port: number): Target => ({
      loadgen: native.loadgen,
      service: { role: "service", pid: service.pid },
      tunnel: { port, processes: () => roles, describe: () => "sockets", stop: async () => {} },
    });
    const tcpParams: Params = {
      ...(params === UDP_QUICK ? QUICK : FULL),
      latencyRounds: params.rounds,
      latencyWarmup: params.warmup,
    };

    log("udp: 64 B request/response (direct, UDP tunnel, TCP tunnel)");
    const udpDirect = await ping(native.udpping, echoPort, params);
    const udpTunnel = await ping(native.udpping, udpEchoTunnel, params);
    const rtt = (s: { result: Record<string, unknown> }) => ({
      p50: Math.round(Number(s.result.p50)),
      p99: Math.round(Number(s.result.p99)),
    });
    const tcpRtt = rtt(await latency(target(tcpTunnel), tcpParams));
    const tcpDirect = rtt(await latency(target(servicePort), tcpParams));
    const result: UdpResult = { params, rr: { udpDirect, udpTunnel, tcpTunnel: tcpRtt, tcpDirect }, notes };

    if (hasIperf && iperfServer) {
      result.rates = [];
      for (const mbps of params.rates) {
        const direct: RateRun[] = [];
        const tunnel: RateRun[] = [];
        const ticks = { server: 0, client: 0 };
        for (let i = 0; i < params.repeat; i++) {
          log(`udp: iperf3 -u ${mbps} Mbit/s, run ${i + 1}/${params.repeat} (direct, then tunnel)`);
          direct.push(await iperf(iperfPort, mbps, params.seconds));
          const before = { server: cpuTicks(server.pid), client: cpuTicks(client.pid) };
          tunnel.push(await iperf(publicIperf, mbps, params.seconds));
          ticks.server += cpuTicks(server.pid) - before.server;
          ticks.client += cpuTicks(client.pid) - before.client;
        }
        // Datagrams offered over the tunnel runs; a tick is 10 ms (USER_HZ 100).
        const offeredDatagrams = (mbps * 1e6 * params.seconds * params.repeat) / 8 / 1400;
        const perDatagram = (n: number) => Math.round(((n * 10_000) / offeredDatagrams) * 10) / 10;
        const pick = (runs: RateRun[]) =>
          [...runs].sort((a, b) => a.lossPct - b.lossPct)[Math.floor(runs.length / 2)] as RateRun;
        result.rates.push({
          offered: mbps,
          direct: pick(direct),
          tunnel: pick(tunnel),
          directRuns: direct.map((r) => r.lossPct),
          tunnelRuns: tunnel.map((r) => r.lossPct),
          cpuUs: { server: perDatagram(ticks.server), client: perDatagram(ticks.client) },
        });
      }

      log(
        "udp: a TCP stream alone, then beside a UDP flow on the same client (100 Mbit/s, then 2 Gbit/s offered)",
      );
      const bulkParams = { ...tcpParams, bulkBytes: params.bulkBytes };
      const mbpsOf = (s: { result: Record<string, unknown> }) => Number(s.result.gbps) * 1000;
      const mid = (list: { p50: number; p99: number }[]) => ({
        p50: median(list.map((r) => r.p50)),
        p99: median(list.map((r) => r.p99)),
      });
      /** The TCP stream's figures, runs alternated with the flood's, beside a flood of `offered` (0: none). */
      const stream = async (offered: number, via: "tunnel" | "limited" | "direct" = "tunnel") => {
        const mbps: number[] = [];
        const costs: number[] = [];
        const rtts: { p50: number; p99: number }[] = [];
        let flood: RateRun | undefined;
        for (let i = 0; i < params.repeat; i++) {
          // The machine's load moves the stream's throughput by 2-3x between minutes: each flood run is
          // paired with a run alone just before it, and the cost is the median of the pairs'.
          const alone = offered > 0 ? mbpsOf(await bulk(target(tcpTunnel), bulkParams, false, 1)) : 0;
          const floodPort = via === "direct" ? iperfPort : publicIperf;
          const flooding = offered > 0 ? startIperf(floodPort, offered, 600) : undefined;
          if (flooding) await Bun.sleep(1000);
          const beside = mbpsOf(await bulk(target(tcpTunnel), bulkParams, false, 1));
          mbps.push(beside);
          if (alone > 0) costs.push(1 - beside / alone);
          rtts.push(rtt(await latency(target(tcpTunnel), tcpParams)));
          if (flooding === undefined) continue;
          // iperf3 ends its run on SIGINT and still prints its JSON; the server keeps listening.
          flooding.proc.kill("SIGINT");
          const timer = setTimeout(() => void flooding.stop(0), 10_000);
          await flooding.proc.exited;
          clearTimeout(timer);
          await flooding.stop();
          try {
            flood = iperfResult(flooding.stdout(), offered);
          } catch {}
        }
        const costPct = costs.length > 0 ? Math.round(median(costs) * 1000) / 10 : undefined;
        return { offered, mbps: median(mbps), costPct, ...mid(rtts), flood, via };
      };
      result.contention = [await stream(0), await stream(100), await stream(2000)];
      // What the flood costs the machine by itself: the same iperf3 sending to iperf3, not through the tunnel.
      log("udp: the TCP stream beside the 2 Gbit/s flood sent to iperf3 directly (the flood's own cost)");
      result.contention.push(await stream(2000, "direct"));
      // The operator's bound: --udp-rate-limit 100 (a reload of the server's config file).
      log("udp: the TCP stream beside the 2 Gbit/s flood with --udp-rate-limit 100");
      writeFileSync(serverConfig, "udp_rate_limit = 100\n");
      process.kill(server.pid, "SIGHUP");
      await server.waitFor(/reloading .*server\.toml/, 10_000);
      result.contention.push(await stream(2000, "limited"));
    }
    return result;
  } finally {
    for (const p of procs.reverse()) await p.stop();
  }
}

const fmt = (n: number, digits = 0) =>
  n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

/** The section's markdown. */
export function udpReport(result: UdpResult): string {
  const { rr } = result;
  const lines = [
    "### UDP tunnels",
    "",
    "64-byte request/response, one at a time (µs):",
    "",
    "| path | p50 | p99 | lost |",
    "| --- | ---: | ---: | ---: |",
    `| UDP direct | ${fmt(rr.udpDirect.p50)} | ${fmt(rr.udpDirect.p99)} | ${rr.udpDirect.lost ?? 0} |`,
    `| UDP tunnel | ${fmt(rr.udpTunnel.p50)} | ${fmt(rr.udpTunnel.p99)} | ${rr.udpTunnel.lost ?? 0} |`,
    `| TCP tunnel (64 B ping-pong) | ${fmt(rr.tcpTunnel.p50)} | ${fmt(rr.tcpTunnel.p99)} | – |`,
    `| TCP direct | ${fmt(rr.tcpDirect.p50)} | ${fmt(rr.tcpDirect.p99)} | – |`,
    "",
    `UDP tunnel p50 ÷ TCP tunnel p50: ${(rr.udpTunnel.p50 / Math.max(1, rr.tcpTunnel.p50)).toFixed(2)} (target ≤ 1.2)`,
  ];
  if (result.rates) {
    lines.push(
      "",
      `iperf3 -u, 1,400-byte datagrams, ${result.params.seconds} s per run (median run by loss; every run's loss in brackets):`,
      "",
      "| offered Mbit/s | direct: received, loss, jitter | tunnel: received, loss, jitter | tunnel CPU per datagram, server / client |",
      "| ---: | --- | --- | --- |",
      ...result.rates.map(
        (r) =>
          `| ${r.offered} | ${fmt(r.direct.received, 1)} Mbit/s, ${r.direct.lossPct}% [${r.directRuns.join(", ")}], ${r.direct.jitterMs} ms | ${fmt(r.tunnel.received, 1)} Mbit/s, ${r.tunnel.lossPct}% [${r.tunnelRuns.join(", ")}], ${r.tunnel.jitterMs} ms | ${r.cpuUs ? `${r.cpuUs.server} / ${r.cpuUs.client} µs` : "–"} |`,
      ),
    );
  }
  const c = result.contention;
  const alone = c?.[0];
  if (c && alone) {
    lines.push(
      "",
      "A TCP stream through the same client (bulk down on one connection; 64 B round trip), alone and beside an `iperf3 -u` flow on its UDP tunnel (cost: the median over runs of each flood run against a run alone just before it):",
      "",
      "| UDP flow offered | TCP bulk down, Mbit/s | cost | 64 B RTT p50 / p99, µs | the UDP flow sent (iperf3 is interrupted: sender side) |",
      "| ---: | ---: | ---: | ---: | --- |",
      ...c.map((row) => {
        const cost =
          row.offered === 0
            ? "–"
            : row.costPct !== undefined
              ? `${row.costPct.toFixed(1)}%`
              : `${((1 - row.mbps / Math.max(1, alone.mbps)) * 100).toFixed(1)}%`;
        const flood = row.flood ? `${fmt(row.flood.received, 1)} Mbit/s` : "–";
        const how =
          row.via === "direct"
            ? " to iperf3 direct (not the tunnel)"
            : row.via === "limited"
              ? " with --udp-rate-limit 100"
              : "";
        return `| ${row.offered === 0 ? "none" : `${row.offered} Mbit/s${how}`} | ${fmt(row.mbps)} | ${cost} | ${fmt(row.p50)} / ${fmt(row.p99)} | ${flood} |`;
      }),
      "",
      "Target: a saturating UDP flow costs the TCP stream less than 20% of its throughput.",
    );
  }
  for (const note of result.notes) lines.push("", `Note: ${note}`);
  return `${lines.join("\n")}\n`;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { quick: { type: "boolean" }, repeat: { type: "string" }, json: { type: "string" } },
  });
  atExit(killAll);
  for (const signal of ["SIGINT", "SIGTERM"] as const)
    process.once(signal, () => {
      killAll();
      process.exit(130);
    });
  const params = { ...(values.quick ? UDP_QUICK : UDP_FULL) };
  if (values.repeat !== undefined) params.repeat = Number(values.repeat);
  const result = await runUdp({ params, log: (line) => process.stderr.write(`${line}\n`) });
  process.stdout.write(udpReport(result));
  if (values.json) writeFileSync(values.json, `${JSON.stringify(result, null, 2)}\n`);
  process.exit(0);
}
