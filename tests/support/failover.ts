/**
 * Test support, failover (issue 29, item 2): how long a name stays unanswered through a node that stays
 * up when its client's node is killed (SIGKILL), frozen (SIGSTOP) or cut off from Redis (a TCP proxy
 * between that node and Redis stops passing bytes), at the default timings. The same measurement serves
 * tests/e2e/cluster-failover.test.ts (asserted loosely) and bench/failover.ts (the figures README and
 * PERFORMANCE.md give).
 * @module
 */

import {
  type ClusterNodeProcess,
  startClusterClient,
  startClusterNode,
  startNamedApp,
  startTcpProxy,
  visitName,
} from "./cluster.ts";
import { sha256 } from "./hashing.ts";
import { deferContinue, eventually } from "./processes.ts";

/** The faults measured, in the order the table gives them. */
export const FAULTS = ["killed", "frozen", "partitioned"] as const;

/** A fault applied to the client's node. */
export type Fault = (typeof FAULTS)[number];

/** What a visitor through the node that stays up met while the name moved. */
export interface FailoverGap {
  /**
   * The longest time between two answers from the client's app (the fault counting as one), over the
   * probes from the fault until the client moved and was answered through its new node.
   */
  gapMs: number;
  /** Every answer that was not the app's, by status (`no answer`: a reset or a timeout). */
  seen: Record<string, number>;
  /** The client's output (for a report when the figure looks wrong). */
  clientLog: string;
}

/** How often the visitor asks (ms between the end of one request and the next). */
const PROBE_EVERY_MS = 100;
/** Probes stop after this long (ms) even if the client never moved. */
const PROBE_FOR_MS = 20_000;

/**
 * Starts a node on 127.0.0.1 (no timing options), a client of it and `steady` holding the HTTP name
 * `name` (unique per run: a killed client's lease outlives it), waits until `steady` serves it, applies
 * `fault` to the node, and probes through `steady` every 100 ms. The faulted node is continued and
 * killed at the end; the proxy of a partition is healed.
 */
export async function measureFailover(
  steady: ClusterNodeProcess,
  redis: { port: number; url: string },
  fault: Fault,
  name: string = fault,
): Promise<FailoverGap> {
  const proxy = fault === "partitioned" ? startTcpProxy(redis.port) : undefined;
  const node = await startClusterNode(
    "127.0.0.1",
    proxy === undefined ? redis.url : `redis://127.0.0.1:${proxy.port}`,
  );
  deferContinue(node);
  const app = startNamedApp(name);
  const client = await startClusterClient(
    [node, steady],
    ["--http", `127.0.0.1:${app}`, "--subdomain", name],
    1,
    [],
  );
  try {
    const body = new Uint8Array(16);
    const expected = `${name} ${sha256(body)}`;
    await eventually(
      async () => (await visitName(steady, name, body).catch(() => ({ text: "" }))).text === expected,
      10_000,
      `${name} served through the other node`,
    );
    if (fault === "killed") node.kill("SIGKILL");
    else if (fault === "frozen") node.kill("SIGSTOP");
    else proxy?.cut();
    const faultAt = performance.now();
    const seen: Record<string, number> = {};
    let gapMs = 0;
    let lastOk = faultAt;
    let movedAndServed = false;
    while (!movedAndServed && performance.now() - faultAt < PROBE_FOR_MS) {
      const moved = /moved to server/.test(client.stdout() + client.stderr());
      const answer = await visitName(steady, name, body, 2000).catch((error: Error) => ({
        status: 0,
        text: error.message,
      }));
      const now = performance.now();
      if (answer.status === 200 && answer.text === expected) {
        gapMs = Math.max(gapMs, now - lastOk);
        lastOk = now;
        movedAndServed = moved;
      } else {
        const label = answer.status === 0 ? "no answer" : String(answer.status);
        seen[label] = (seen[label] ?? 0) + 1;
      }
      await Bun.sleep(PROBE_EVERY_MS);
    }
    if (!movedAndServed) gapMs = Math.max(gapMs, performance.now() - lastOk);
    return { gapMs, seen, clientLog: client.stdout() + client.stderr() };
  } finally {
    client.kill("SIGKILL");
    node.kill("SIGCONT");
    node.kill("SIGKILL");
    proxy?.heal();
  }
}

/** `0.42 s` and what the visitor met meanwhile, as the test's debug line and the bench print it. */
export function describeGap(gap: FailoverGap): string {
  return `${(gap.gapMs / 1000).toFixed(2)} s ${JSON.stringify(gap.seen)}`;
}
