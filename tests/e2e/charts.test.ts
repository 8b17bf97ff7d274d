/**
 * The charts, in Chromium at desktop and phone width: the dashboard's bytes per second and visitors
 * open (in all and per tunnel) and the inspector's requests per second and latency percentiles. Every
 * point drawn is read back from the SVG and compared with the JSON API the page drew it from; the
 * API's rates are checked against the bytes that went through. Screenshots go to a temporary folder,
 * or to docs/ with `UPDATE_SCREENSHOTS=1` (so that a test run leaves the checkout as it was).
 */

import { expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openBrowserPage } from "../support/browser.ts";
import { drawnCharts, expectDrawn } from "../support/charts.ts";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  eventually,
  ROOT,
  setupFile,
  spawnRole,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { connectVisitor, echoThrough } from "../support/sockets.ts";

setupFile();

const DOCS = process.env.UPDATE_SCREENSHOTS
  ? join(ROOT, "docs")
  : mkdtempSync(join(tmpdir(), "sockets-charts-"));

/** `/api/history` of the admin listener. */
interface History {
  intervalSeconds: number;
  windowSeconds: number;
  times: number[];
  total: Record<"in" | "out" | "visitors", (number | null)[]>;
  tunnels: Record<string, Record<"in" | "out" | "visitors", (number | null)[]>>;
}

/** Bytes a series of rates adds up to: each rate times the time since the previous sample. */
function bytesOf(times: number[], rates: (number | null)[]): number {
  let bytes = 0;
  for (let i = 1; i < times.length; i++)
    bytes += ((rates[i] ?? 0) * ((times[i] as number) - (times[i - 1] as number))) / 1000;
  return bytes;
}

test("dashboard: traffic and visitors charts, in all and per tunnel, drawn from /api/history; desktop and phone", async () => {
  const service = startEchoService();
  const server = await startServerProcess(["--admin", "127.0.0.1:0"]);
  const admin = (await server.waitFor(/admin on (http:\/\/\S+)\//))[1] as string;
  const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
  const tunnel = client.tunnels[0] as { id: string; port: number };
  const api = async <T>(path: string) => (await (await fetch(`${admin}${path}`)).json()) as T;
  const samples = async () => (await api<History>("/api/history")).times.length;

  // Traffic once the history has a sample to measure from, in three bursts, each in a sample of its
  // own (the next waits for a new sample); one visitor stays open meanwhile.
  await eventually(async () => (await samples()) >= 1, 5000, "a first sample");
  const open = await connectVisitor(tunnel.port);
  const sizes = [1 * MiB, 3 * MiB, 2 * MiB];
  for (const size of sizes) {
    const before = await samples();
    const data = randomData(size);
    expect(await echoThrough(tunnel.port, data)).toBe(sha256(data));
    await eventually(async () => (await samples()) > before, 5000, "a new sample");
  }
  const sent = sizes.reduce((a, b) => a + b, 0);
  // The rates add up to the bytes /api/tunnels counted (each rate was rounded to a byte per second).
  const tunnels = await api<{ tunnels: { id: string; bytes: { in: number; out: number } }[] }>(
    "/api/tunnels",
  );
  const counted = tunnels.tunnels.find((t) => t.id === tunnel.id)?.bytes as { in: number; out: number };
  expect(counted.in).toBe(sent);
  await eventually(
    async () => {
      const h = await api<History>("/api/history");
      const mine = h.tunnels[tunnel.id];
      return mine !== undefined && Math.abs(bytesOf(h.times, mine.in) - sent) <= h.times.length;
    },
    5000,
    "the history's rates adding up to the bytes sent",
  );

  const { page, problems } = await openBrowserPage({ width: 1280, height: 900 });
  for (const [width, height, shot] of [
    [1280, 900, "dashboard-charts.png"],
    [390, 844, "dashboard-charts-phone.png"],
  ] as const) {
    await page.setViewportSize({ width, height });
    await page.goto(`${admin}/`);
    await page.locator(`#tunnels tr[data-tunnel="${tunnel.id}"] figure.chart`).first().waitFor();
    // The page has drawn a sample taken after the last burst, then stops polling.
    const wanted = await samples();
    await eventually(
      async () =>
        Number(await page.evaluate(`document.querySelector('[data-chart="traffic"] svg').dataset.t1`)) >=
        ((await api<History>("/api/history")).times[wanted - 1] as number),
      5000,
      "the page drawing the latest sample",
    );
    await page.click("#pause");
    const history = await api<History>("/api/history");
    const charts = await drawnCharts(page);
    const mine = history.tunnels[tunnel.id] as History["tunnels"][string];
    let compared = 0;
    compared += expectDrawn(charts.get("traffic"), "in", history.times, history.total.in);
    compared += expectDrawn(charts.get("traffic"), "out", history.times, history.total.out);
    compared += expectDrawn(charts.get("visitors"), "visitors", history.times, history.total.visitors);
    compared += expectDrawn(charts.get(`traffic-${tunnel.id}`), "in", history.times, mine.in);
    compared += expectDrawn(charts.get(`traffic-${tunnel.id}`), "out", history.times, mine.out);
    compared += expectDrawn(charts.get(`visitors-${tunnel.id}`), "visitors", history.times, mine.visitors);
    expect(compared).toBeGreaterThan(6 * 3);
    // What was drawn shows the bursts and the open visitor.
    const peak = Math.max(...(charts.get("traffic")?.series[0]?.points.map((p) => p.value) ?? [0]));
    expect(peak).toBeGreaterThan(MiB / 2);
    expect(charts.get("visitors")?.series[0]?.points.at(-1)?.value).toBeCloseTo(1, 5);
    expect(Number(await page.evaluate("document.documentElement.scrollWidth"))).toBeLessThanOrEqual(width);
    await page.screenshot({ path: join(DOCS, shot), fullPage: true });
  }
  expect(problems).toEqual([]);
  open.destroy();
});

/** `/api/history` of the inspector. */
interface RequestHistory {
  interval_seconds: number;
  times: number[];
  requests: number[];
  errors: number[];
  rps: number[];
  p50_ms: (number | null)[];
  p90_ms: (number | null)[];
  p99_ms: (number | null)[];
}

test("inspector: requests per second and latency percentiles drawn from /api/history; desktop and phone", async () => {
  // A local service that answers after the delay its path names.
  const app = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const ms = Number(new URL(request.url).searchParams.get("ms") ?? 0);
      if (ms > 0) await Bun.sleep(ms);
      return new Response("ok");
    },
  });
  const server = await startServerProcess();
  const client = spawnRole(
    ["bun", "client.ts", "--server", server.url, "--http", `127.0.0.1:${app.port}`, "--subdomain", "charts"],
    { SOCKETS_INSPECT: "127.0.0.1:0" },
  );
  const exposed = await client.waitFor(/url: (http:\/\/charts\.localhost:\d+)/);
  const inspector = (await client.waitFor(/inspector: (http:\/\/\S+)/))[1] as string;
  const api = async <T>(path: string) => (await (await fetch(`${inspector}${path}`)).json()) as T;
  const port = Number(new URL(exposed[1] as string).port);
  const visit = (ms: number) =>
    fetch(`http://127.0.0.1:${port}/?ms=${ms}`, { headers: { host: "charts.localhost" } }).then((r) =>
      r.text(),
    );

  // Three seconds of traffic with different latencies: 20 fast, then 10 slower, then 5 slow requests.
  let total = 0;
  for (const [count, ms] of [
    [20, 1],
    [10, 30],
    [5, 80],
  ] as const) {
    await Promise.all(Array.from({ length: count }, () => visit(ms)));
    total += count;
    // The next batch goes in the next second; the history shows whole seconds only.
    const second = Math.floor(Date.now() / 1000);
    await eventually(async () => Math.floor(Date.now() / 1000) > second, 3000, "the next second");
  }
  const history = await api<RequestHistory>("/api/history");
  expect(history.requests.reduce((a, b) => a + b, 0)).toBe(total);
  const slowest = Math.max(...history.p99_ms.filter((v): v is number => v !== null));
  expect(slowest).toBeGreaterThanOrEqual(70);

  const { page, problems } = await openBrowserPage({ width: 1280, height: 900 });
  for (const [width, height, shot] of [
    [1280, 900, "inspector-charts.png"],
    [390, 844, "inspector-charts-phone.png"],
  ] as const) {
    await page.setViewportSize({ width, height });
    await page.goto(`${inspector}/`);
    await page.locator('[data-chart="latency"] polyline').first().waitFor();
    await page.locator("#list .row").first().waitFor();
    const charts = await drawnCharts(page);
    // What the page drew came from a /api/history at least as old as this one (no request since).
    const now = await api<RequestHistory>("/api/history");
    let compared = 0;
    const from = now.times[0];
    compared += expectDrawn(charts.get("requests"), "rps", now.times, now.rps, from);
    compared += expectDrawn(charts.get("requests"), "errors", now.times, now.errors, from);
    for (const q of ["p50_ms", "p90_ms", "p99_ms"] as const)
      compared += expectDrawn(charts.get("latency"), q, now.times, now[q], from);
    expect(compared).toBeGreaterThanOrEqual(3 * 4);
    expect(Number(await page.evaluate("document.documentElement.scrollWidth"))).toBeLessThanOrEqual(width);
    await page.screenshot({ path: join(DOCS, shot), fullPage: width < 800 });
  }
  expect(problems).toEqual([]);
  app.stop(true);
});
