/**
 * `bun bench/many-clients.ts [--clients N] [--seconds S] [--root DIR]`: what an idle client costs the
 * server (issue 30). A server, then a fleet process holding N control WebSockets, each with one TCP
 * tunnel and nothing else (what `client.ts --expose` holds between visitors, without N runtimes);
 * prints the server's RSS before and with them, KiB per client, and its CPU while they idle (% of one
 * core over S seconds: heartbeats, timers). `--fleet URL N` is the fleet itself (run by the bench).
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { CONNECT_PATH, SUBPROTOCOL } from "../shared/wire/protocol.ts";
import { CLK_TCK, cpuSample, killAll, type Proc, rssKiB, spawn } from "./procs.ts";

/** What one run measured. */
export interface ManyClientsResult {
  clients: number;
  idleKiB: number;
  withKiB: number;
  kibPerClient: number;
  /** % of one core the server used while the clients idled. */
  cpuPct: number;
  seconds: number;
}

/**
 * Each of the fleet's WebSockets pings the server at `client.ts`'s default `--heartbeat` (10 s) when
 * it heard nothing from it in the last interval, as `client.ts` does.
 */
const CLIENT_HEARTBEAT_MS = 10_000;

/**
 * The fleet: N WebSockets, each greeted and holding one TCP tunnel and pinging the server every
 * {@link CLIENT_HEARTBEAT_MS} as `client.ts` does (when it heard nothing in between); prints `ready N` then idles.
 */
async function fleet(url: string, count: number): Promise<void> {
  const sockets: WebSocket[] = [];
  let ready = 0;
  // A few at a time: a burst of upgrades is another measurement (the connection rate).
  const inFlight = 50;
  let next = 0;
  await new Promise<void>((resolve, reject) => {
    const open = () => {
      const ws = new WebSocket(`${url}${CONNECT_PATH}`, { protocols: [SUBPROTOCOL] } as never);
      sockets.push(ws);
      ws.addEventListener("message", (event) => {
        if (typeof event.data !== "string") return;
        const m = JSON.parse(event.data) as { type: string };
        if (m.type === "hello") ws.send(JSON.stringify({ type: "expose", id: 1, kind: "tcp" }));
        else if (m.type === "exposed") {
          ready++;
          let heard = false;
          const hear = () => {
            heard = true;
          };
          ws.addEventListener("ping" as never, hear);
          ws.addEventListener("pong" as never, hear);
          setInterval(() => {
            if (!heard) ws.ping();
            heard = false;
          }, CLIENT_HEARTBEAT_MS);
          if (next < count) open();
          if (ready === count) resolve();
        } else if (m.type === "error") reject(new Error(`expose refused: ${event.data}`));
      });
      ws.addEventListener("close", (event) => reject(new Error(`closed ${event.code} ${event.reason}`)));
      next++;
    };
    for (let i = 0; i < Math.min(inFlight, count); i++) open();
  });
  process.stdout.write(`ready ${ready}\n`);
  setInterval(() => {}, 1 << 30);
}

/** One run: server, fleet, measures, stops both. */
export async function runManyClients({
  clients = 2000,
  seconds = 20,
  root = join(import.meta.dir, ".."),
  serverCommand,
  log = (line: string) => process.stderr.write(`${line}\n`),
}: {
  clients?: number;
  seconds?: number;
  root?: string;
  /** The server's command instead of `bun server.ts` (compiled, `--smol`). */
  serverCommand?: string[];
  log?: (line: string) => void;
} = {}): Promise<ManyClientsResult> {
  const procs: Proc[] = [];
  try {
    const env = { SOCKETS_SINGLE_API_KEY: "", SOCKETS_API_KEY: "", SOCKETS_SERVER: "" };
    const server = spawn([...(serverCommand ?? ["bun", "server.ts"]), "--host", "127.0.0.1", "--port", "0"], {
      cwd: root,
      env,
    });
    procs.push(server);
    const [, url] = await server.waitFor(/listening on (ws:\/\/\S+)/, 20_000);
    await Bun.sleep(2000);
    const idleKiB = rssKiB(server.pid);
    const crowd = spawn(
      ["bun", join(import.meta.dir, "many-clients.ts"), "--fleet", url as string, String(clients)],
      {
        env,
      },
    );
    procs.push(crowd);
    await crowd.waitFor(/ready \d+/, 120_000);
    // Settled: the upgrades' garbage collected, as it would be on a server that runs for hours.
    await Bun.sleep(3000);
    const before = cpuSample(server.pid).total;
    const started = performance.now();
    await Bun.sleep(seconds * 1000);
    const elapsed = (performance.now() - started) / 1000;
    const cpuPct = ((cpuSample(server.pid).total - before) / CLK_TCK / elapsed) * 100;
    const withKiB = rssKiB(server.pid);
    const result = {
      clients,
      idleKiB,
      withKiB,
      kibPerClient: (withKiB - idleKiB) / clients,
      cpuPct,
      seconds: elapsed,
    };
    log(
      `many clients: server ${(idleKiB / 1024).toFixed(1)} MiB idle, ${(withKiB / 1024).toFixed(1)} MiB with ${clients} clients (${result.kibPerClient.toFixed(1)} KiB each), ${cpuPct.toFixed(2)}% of a core idling`,
    );
    return result;
  } finally {
    for (const p of procs.reverse()) await p.stop();
  }
}

/** The report's table. */
export function manyClientsReport(rows: [string, ManyClientsResult][]): string {
  const lines = [
    "| server | clients | idle MiB | with them MiB | KiB per client (target ≤ 20) | CPU idling, % of a core (target < 1) |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const [label, r] of rows)
    lines.push(
      `| ${label} | ${r.clients} | ${(r.idleKiB / 1024).toFixed(1)} | ${(r.withKiB / 1024).toFixed(1)} | ${r.kibPerClient.toFixed(1)} | ${r.cpuPct.toFixed(2)} |`,
    );
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      clients: { type: "string" },
      seconds: { type: "string" },
      root: { type: "string" },
      fleet: { type: "string" },
    },
    allowPositionals: true,
    strict: false,
  });
  if (typeof values.fleet === "string") {
    await fleet(values.fleet, Number(process.argv.at(-1)));
  } else {
    try {
      const result = await runManyClients({
        clients: typeof values.clients === "string" ? Number(values.clients) : undefined,
        seconds: typeof values.seconds === "string" ? Number(values.seconds) : undefined,
        root: typeof values.root === "string" ? values.root : undefined,
      });
      process.stdout.write(`${manyClientsReport([[String(values.root ?? "this checkout"), result]])}\n`);
    } catch (error) {
      process.stderr.write(`error: ${(error as Error).message}\n`);
      process.exitCode = 1;
    } finally {
      killAll();
    }
  }
}
