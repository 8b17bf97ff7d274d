/**
 * Memory that the budgets bound (issue 30), against real server and client processes: visitors
 * flooding a local service that never reads fill the client's budget; the server's RSS must follow
 * what it buffers (its peak within idle + budget and a margin, through the resets that end the
 * flood too), and come back near idle once the streams closed. Bounds are loose (RSS is noisy); the
 * figures against the issue's tighter targets are `bun bench/budget-memory.ts`'s.
 */

import { expect, test } from "bun:test";
import { DEFAULT_CLIENT_BUDGET } from "../../shared/relay/budget.ts";
import { MiB, randomData } from "../support/hashing.ts";
import {
  defer,
  eventually,
  rssKiB,
  type ServerProcess,
  setupFile,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { startStalledSink } from "../support/services.ts";
import { floodVisitor } from "../support/sockets.ts";

setupFile();

const PATTERN = randomData(MiB);
/** The default client budget (64 MiB): the case. */
const BUDGET = DEFAULT_CLIENT_BUDGET;
const VISITORS = 40;

interface BufferHealth {
  streams: number;
  buffered: { received: number; sent: number };
}

const health = async (server: ServerProcess) => (await server.health()) as unknown as BufferHealth;

const flood = (port: number, size: number) => floodVisitor(port, size, PATTERN);

test("a never-reading local service: the server's RSS follows its budget up, and comes back down once the streams closed", async () => {
  const sink = startStalledSink();
  const server = await startServerProcess();
  const client = await startClientProcess(server.url, [`127.0.0.1:${sink.port}`]);
  const port = client.tunnels[0]?.port as number;
  const pid = server.proc.pid;
  // Idle after a warm-up transfer: the relay's code compiled, as on any server that carried traffic.
  const warm = await flood(port, 4 * MiB);
  await eventually(() => warm.data.sent === 4 * MiB, 20_000, "warm-up sent");
  warm.terminate();
  await eventually(async () => (await health(server)).streams === 0, 20_000, "warm-up closed");
  await Bun.sleep(500); // RSS settles; not a readiness wait
  const idle = await rssKiB(pid);
  let peak = idle;
  const sampler = setInterval(async () => {
    peak = Math.max(peak, await rssKiB(pid).catch(() => 0));
  }, 20);
  defer(() => clearInterval(sampler));
  const visitors = await Promise.all(Array.from({ length: VISITORS }, () => flood(port, 64 * MiB)));
  await eventually(
    async () => (await health(server)).buffered.sent >= BUDGET * 0.75,
    30_000,
    "budget filled",
  );
  // Everything at once: the resets free the streams while the others read what their kernel queued.
  for (const visitor of visitors) visitor.terminate();
  await eventually(async () => (await health(server)).streams === 0, 20_000, "streams closed");
  // Back near idle: the release after a burst collects within a few seconds.
  let after = 0;
  await eventually(
    async () => {
      after = await rssKiB(pid);
      return after <= idle * 1.3;
    },
    15_000,
    `RSS back near idle (idle ${idle} KiB, last ${after} KiB)`,
  ).catch(() => {});
  clearInterval(sampler);
  const budgetKiB = BUDGET / 1024;
  // Before issue 30 the resets alone allocated several times the budget (a copy of everything held
  // per read of a closing socket): peak at idle + 2.5-3 budgets.
  expect(peak - idle).toBeLessThanOrEqual(budgetKiB * 1.6);
  expect(after).toBeLessThanOrEqual(idle * 1.3);
});
