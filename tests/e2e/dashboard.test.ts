/**
 * The server's admin listener (issue 19) with real server and client processes: `GET /metrics` parsed
 * by a Prometheus text-format parser written here (and checked by `promtool check metrics`, from
 * Debian's prometheus package) with its counters held to what the test sent (visitors, bytes each
 * way, HTTP responses by code and their durations, an auth failure, a dead client and its resume);
 * the JSON API against the client's own lines; the admin token (401 without it, a one-line refusal to
 * listen beyond loopback without one); and the dashboard in headless Chromium: a live client and
 * tunnel listed, counters moving while a visitor streams, screenshots at desktop and phone width in
 * tests/artifacts/ (gitignored), whose paths the test prints.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { openBrowserPage } from "../support/browser.ts";
import { rawStatus, upgradeHeaders } from "../support/faults.ts";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  type ClientProcess,
  defer,
  deferContinue,
  eventually,
  expectOneLineError,
  type HttpServerProcess,
  ROOT,
  runToExit,
  setupFile,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { configFolder, testUser, usersToml, writeConfig } from "../support/server-config.ts";
import { startEchoService } from "../support/services.ts";
import { echoThrough, streamEcho } from "../support/sockets.ts";

setupFile();

/** Where screenshots go (gitignored). */
const ARTIFACTS = join(ROOT, "tests", "artifacts");
const TOKEN = "admin-test-token-1234";
const API_KEY = "client-key-5678";

/** One sample of the exposition: its name, labels and value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A parsed exposition: its families' types and every sample. */
interface Exposition {
  types: Map<string, string>;
  help: Map<string, string>;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;

/**
 * Parses the Prometheus text format (0.0.4) strictly: HELP and TYPE at most once per family and before
 * its samples, every sample of a declared family (histograms through their _bucket/_sum/_count),
 * well-formed names, labels (escapes `\\`, `\"`, `\n`) and values, no series twice, and histograms
 * with `le` buckets that never decrease and end in `+Inf` equal to `_count`.
 * @throws {Error} naming the line at the first problem.
 */
function parseExposition(text: string): Exposition {
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  const samples: Sample[] = [];
  const seen = new Set<string>();
  const withSamples = new Set<string>();
  if (!text.endsWith("\n")) throw new Error("the exposition does not end with a line feed");
  const lines = text.slice(0, -1).split("\n");
  for (const [index, line] of lines.entries()) {
    const fail = (why: string) => new Error(`line ${index + 1}: ${why}: ${line}`);
    if (line.startsWith("#")) {
      const match = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      if (!match) continue; // a plain comment
      const [, kind, name, rest] = match as unknown as [string, string, string, string];
      if (!NAME.test(name)) throw fail("bad metric name");
      if (withSamples.has(name)) throw fail(`${kind} after the family's samples`);
      if (kind === "TYPE") {
        if (types.has(name)) throw fail("TYPE twice");
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(rest))
          throw fail("unknown type");
        types.set(name, rest);
      } else {
        if (help.has(name)) throw fail("HELP twice");
        help.set(name, rest);
      }
      continue;
    }
    if (line.trim() === "") continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$/.exec(line);
    if (!match) throw fail("not a sample");
    const [, name, , body = ""] = match as unknown as [
      string,
      string,
      string | undefined,
      string | undefined,
    ];
    const labels: Record<string, string> = {};
    let rest = body;
    while (rest.length > 0) {
      const label = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/.exec(rest);
      if (!label) throw fail("bad labels");
      const [all, key, raw] = label as unknown as [string, string, string];
      if (key in labels) throw fail(`label ${key} twice`);
      labels[key] = raw.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
      rest = rest.slice(all.length);
    }
    const rawValue = match[4] as string;
    const value = /^[+-]?Inf$/.test(rawValue)
      ? Number(rawValue.replace("Inf", "Infinity"))
      : Number(rawValue);
    if (Number.isNaN(value) && rawValue !== "NaN") throw fail("bad value");
    const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, "");
    const type = types.get(family);
    if (type === undefined) throw fail("sample of an undeclared family");
    if (family !== name && type !== "histogram" && type !== "summary")
      throw fail("suffix of a non-histogram");
    if (type === "counter" && !(value >= 0)) throw fail("negative counter");
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (seen.has(key)) throw fail("series twice");
    seen.add(key);
    withSamples.add(family);
    samples.push({ name, labels, value });
  }
  for (const [family, type] of types) {
    if (type !== "histogram") continue;
    const buckets = samples.filter((s) => s.name === `${family}_bucket`);
    const bounds = buckets.map((s) => Number((s.labels.le ?? "").replace("+Inf", "Infinity")));
    for (let i = 1; i < buckets.length; i++) {
      if (!((bounds[i] as number) > (bounds[i - 1] as number)))
        throw new Error(`${family}: le not increasing`);
      if ((buckets[i] as Sample).value < (buckets[i - 1] as Sample).value)
        throw new Error(`${family}: buckets decrease`);
    }
    const count = samples.find((s) => s.name === `${family}_count`)?.value;
    if (bounds.at(-1) !== Number.POSITIVE_INFINITY || buckets.at(-1)?.value !== count)
      throw new Error(`${family}: +Inf bucket missing or not equal to _count`);
    if (samples.find((s) => s.name === `${family}_sum`) === undefined) throw new Error(`${family}: no _sum`);
  }
  return { types, help, samples };
}

/** The value of the one sample of `name` whose labels include `labels` (undefined when none). */
function sampleValue(
  exposition: Exposition,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found = exposition.samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (found.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${found.length} series`);
  return found[0]?.value;
}

/** `promtool check metrics` on the exposition: exit 0 and no complaint, or the reason. */
async function promtool(text: string): Promise<string> {
  const tool = Bun.which("promtool");
  if (!tool)
    throw new Error("promtool is not installed: `apt-get install prometheus` (.ci/run does) provides it");
  const proc = Bun.spawn([tool, "check", "metrics"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  proc.stdin.write(text);
  await proc.stdin.end();
  const [code, out, err] = await Promise.all([
    withTimeout(proc.exited, 10_000, "promtool did not exit"),
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
  ]);
  return code === 0 && out.trim() === "" && err.trim() === "" ? "ok" : `exit ${code}: ${out}${err}`;
}

/** The local web app: 200 on most paths, 404 on /missing, 500 on /boom. */
function startApp() {
  const app = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      const path = new URL(request.url).pathname;
      if (path === "/missing") return new Response("nothing here", { status: 404 });
      if (path === "/boom") return new Response("it broke", { status: 500 });
      return new Response(`hello ${path}`);
    },
  });
  defer(() => app.stop(true));
  return app;
}

let server: HttpServerProcess;
let client: ClientProcess;
let admin: string;
let tcp: { id: string; port: number };
let http: { id: string; url: string };

/** A request to the admin listener with the token (Bearer), unless `auth` says otherwise. */
function adminFetch(path: string, auth: "bearer" | "query" | "none" | "wrong" = "bearer") {
  const headers: Record<string, string> = {};
  if (auth === "bearer") headers.Authorization = `Bearer ${TOKEN}`;
  if (auth === "wrong") headers.Authorization = "Bearer not-the-token";
  const query = auth === "query" ? `${path.includes("?") ? "&" : "?"}token=${TOKEN}` : "";
  return fetch(`${admin}${path}${query}`, { headers, signal: AbortSignal.timeout(10_000) });
}

async function scrape(): Promise<{ text: string; exposition: Exposition }> {
  const response = await adminFetch("/metrics");
  expect(response.status).toBe(200);
  expect(response.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
  const text = await response.text();
  return { text, exposition: parseExposition(text) };
}

beforeAll(async () => {
  const app = startApp();
  const echo = startEchoService();
  defer(() => echo.stop());
  const started = await startServerProcess(
    ["--http-port", "0", "--domain", "localhost", "--admin", "127.0.0.1:0", "--metrics-per-tunnel"],
    { SOCKETS_ADMIN_TOKEN: TOKEN, SOCKETS_SINGLE_API_KEY: API_KEY },
  );
  const httpPort = Number((await started.waitFor(/http tunnels on http:\/\/\*\.localhost:(\d+)/))[1]);
  server = { ...started, httpPort };
  admin = (await server.waitFor(/admin on (http:\/\/127\.0\.0\.1:\d+)\//))[1] as string;
  client = await startClientProcess(
    server.url,
    [`127.0.0.1:${echo.port}`],
    ["--http", `127.0.0.1:${app.port}`, "--subdomain", "dash"],
    { SOCKETS_API_KEY: API_KEY },
  );
  await client.waitFor(/exposed with tunnel id \S+, url: http\S*\n/);
  tcp = client.tunnels[0] as { id: string; port: number };
  const line = /exposed with tunnel id (\S+), url: (http:\/\/\S+)/.exec(client.stdout()) as RegExpExecArray;
  http = { id: line[1] as string, url: line[2] as string };
});

describe("admin token", () => {
  test("every page of the admin listener is 401 without the token or with a wrong one; Bearer and ?token= open it", async () => {
    for (const path of ["/", "/metrics", "/api/clients", "/api/tunnels", "/api/server"]) {
      for (const auth of ["none", "wrong"] as const) {
        const response = await adminFetch(path, auth);
        expect(response.status, `${path} ${auth}`).toBe(401);
        expect(response.headers.get("www-authenticate")).toBe('Bearer realm="sockets admin"');
        expect(await response.text()).not.toContain(TOKEN);
      }
      for (const auth of ["bearer", "query"] as const)
        expect((await adminFetch(path, auth)).status, `${path} ${auth}`).toBe(200);
    }
  });

  test("an admin listener beyond loopback without a token is a one-line error, exit 2; with one it starts", async () => {
    const refused = await runToExit(["bun", "server.ts", "--port", "0", "--admin", "0.0.0.0:0"], {
      SOCKETS_ADMIN_TOKEN: "",
    });
    expectOneLineError(refused, /--admin 0\.0\.0\.0:0 is beyond loopback: set an admin token/);
    expect(refused.code).toBe(2);
    const open = await startServerProcess(["--admin", "0.0.0.0:0"], { SOCKETS_ADMIN_TOKEN: TOKEN });
    const url = (await open.waitFor(/admin on (http:\/\/\S+:\d+)\//))[1] as string;
    const port = new URL(url).port;
    expect((await fetch(`http://127.0.0.1:${port}/metrics`)).status).toBe(401);
    expect(
      (await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { Authorization: `Bearer ${TOKEN}` } }))
        .status,
    ).toBe(200);
    open.kill("SIGKILL");
  });
});

describe("/metrics", () => {
  test("counters match what was sent: visitors, bytes each way, HTTP responses by code and their durations, an auth failure", async () => {
    const before = (await scrape()).exposition;
    expect(await promtool((await scrape()).text)).toBe("ok");
    expect(sampleValue(before, "sockets_clients")).toBe(1);
    expect(sampleValue(before, "sockets_tunnels", { type: "tcp" })).toBe(1);
    expect(sampleValue(before, "sockets_tunnels", { type: "http" })).toBe(1);
    expect(sampleValue(before, "sockets_visitor_connections_total", { type: "tcp" })).toBe(0);
    expect(sampleValue(before, "sockets_auth_failures_total")).toBe(0);
    expect(before.samples.find((s) => s.name === "sockets_build_info")?.labels.version).toBe(
      (await Bun.file(join(ROOT, "package.json")).json()).version,
    );

    // TCP: three visitors through the echo, 600,000 bytes each way in all.
    const sizes = [100_000, 200_000, 300_000];
    for (const size of sizes) {
      const data = randomData(size);
      expect(await echoThrough(tcp.port, data)).toBe(sha256(data));
    }
    // HTTP: 4 × 200, 2 × 404 and 1 × 500 from the local service, 1 × 404 page from the server.
    const visit = async (url: string) => {
      const response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
      await response.text();
      return response.status;
    };
    const statuses: number[] = [];
    for (const path of ["/a", "/b", "/c", "/d", "/missing", "/missing", "/boom"])
      statuses.push(await visit(`${http.url}${path}`));
    statuses.push(await visit(`http://nobody.localhost:${server.httpPort}/`));
    expect(statuses).toEqual([200, 200, 200, 200, 404, 404, 500, 404]);
    // One client with a wrong key (an upgrade: a plain request is never authenticated).
    const refused = await rawStatus(
      server.port,
      "/_sockets/connect",
      upgradeHeaders({ Authorization: "Bearer wrong-key" }),
    );
    expect(refused).toBe(401);

    // The streams close on the server a moment after the visitors saw their ends.
    let after = before;
    await eventually(
      async () => {
        after = (await scrape()).exposition;
        return (
          sampleValue(after, "sockets_visitor_connections", { type: "tcp" }) === 0 &&
          sampleValue(after, "sockets_visitor_connections_total", { type: "tcp" }) === 3
        );
      },
      10_000,
      "three TCP visitors counted and closed",
    );
    const total = sizes.reduce((a, b) => a + b, 0);
    expect(sampleValue(after, "sockets_bytes_total", { type: "tcp", direction: "in" })).toBe(total);
    expect(sampleValue(after, "sockets_bytes_total", { type: "tcp", direction: "out" })).toBe(total);
    expect(sampleValue(after, "sockets_http_requests_total", { code: "200" })).toBe(4);
    expect(sampleValue(after, "sockets_http_requests_total", { code: "404" })).toBe(3);
    expect(sampleValue(after, "sockets_http_requests_total", { code: "500" })).toBe(1);
    expect(sampleValue(after, "sockets_http_request_duration_seconds_count")).toBe(7);
    const sum = sampleValue(after, "sockets_http_request_duration_seconds_sum") as number;
    expect(sum).toBeGreaterThan(0);
    expect(sum).toBeLessThan(7 * 10);
    expect(sampleValue(after, "sockets_auth_failures_total")).toBe(1);
    // HTTP bytes: every request head went in, every response came out (bodies alone are 63 bytes).
    expect(sampleValue(after, "sockets_bytes_total", { type: "http", direction: "in" })).toBeGreaterThan(
      7 * 40,
    );
    expect(sampleValue(after, "sockets_bytes_total", { type: "http", direction: "out" })).toBeGreaterThan(
      7 * 60 + 63,
    );
    const httpVisitors = sampleValue(after, "sockets_visitor_connections_total", { type: "http" }) as number;
    expect(httpVisitors).toBeGreaterThanOrEqual(1);
    expect(httpVisitors).toBeLessThanOrEqual(7);
    // --metrics-per-tunnel: the TCP tunnel's own series.
    const labels = { tunnel: tcp.id, type: "tcp", name: String(tcp.port) };
    expect(sampleValue(after, "sockets_tunnel_visitor_connections_total", labels)).toBe(3);
    expect(sampleValue(after, "sockets_tunnel_bytes_total", { ...labels, direction: "in" })).toBe(total);
    expect(sampleValue(after, "sockets_tunnel_bytes_total", { ...labels, direction: "out" })).toBe(total);
    // Every family has its HELP; promtool agrees with the format.
    for (const family of after.types.keys()) expect(after.help.get(family)?.length ?? 0).toBeGreaterThan(5);
    expect(await promtool((await scrape()).text)).toBe("ok");
  });

  test("a client declared dead after missed heartbeats, and its resume, are counted", async () => {
    const echo = startEchoService();
    defer(() => echo.stop());
    const watched = await startServerProcess(["--admin", "127.0.0.1:0", "--heartbeat", "0.3"]);
    const url = (await watched.waitFor(/admin on (http:\/\/127\.0\.0\.1:\d+)\//))[1] as string;
    const metrics = async () => parseExposition(await (await fetch(`${url}/metrics`)).text());
    const stopped = await startClientProcess(watched.url, [`127.0.0.1:${echo.port}`]);
    deferContinue(stopped);
    stopped.kill("SIGSTOP");
    await eventually(
      async () => sampleValue(await metrics(), "sockets_heartbeat_misses_total") === 1,
      10_000,
      "heartbeat miss counted",
    );
    const reserved = await metrics();
    expect(sampleValue(reserved, "sockets_reserved_sessions")).toBe(1);
    expect(sampleValue(reserved, "sockets_clients")).toBe(0);
    stopped.kill("SIGCONT");
    await stopped.waitFor(/resumed: tunnel/, 15_000);
    await eventually(
      async () => sampleValue(await metrics(), "sockets_resumes_total") === 1,
      10_000,
      "resume counted",
    );
    const clients = (await (await fetch(`${url}/api/clients`)).json()) as {
      clients: { resumes: number; state: string }[];
    };
    expect(clients.clients).toHaveLength(1);
    expect(clients.clients[0]?.resumes).toBe(1);
    expect(clients.clients[0]?.state).toBe("live");
    // The tunnel still carries bytes after the resume.
    const data = randomData(10_000);
    expect(await echoThrough(stopped.tunnels[0]?.port as number, data)).toBe(sha256(data));
    watched.kill("SIGKILL");
  });
});

describe("users", () => {
  test("with users (and the admin settings in the config file), clients and tunnels name their user", async () => {
    const echo = startEchoService();
    defer(() => echo.stop());
    const alice = testUser("alice");
    const dir = configFolder();
    const file = writeConfig(
      dir,
      "server.toml",
      `admin = "127.0.0.1:0"\nadmin_token = "${TOKEN}"\n\n${usersToml([alice])}`,
    );
    const withUsers = await startServerProcess(["--config", file]);
    const url = (await withUsers.waitFor(/admin on (http:\/\/127\.0\.0\.1:\d+)\//))[1] as string;
    await startClientProcess(withUsers.url, [`127.0.0.1:${echo.port}`], [], { SOCKETS_API_KEY: alice.token });
    const get = async (path: string, token?: string) =>
      fetch(`${url}${path}`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    expect((await get("/api/clients")).status).toBe(401);
    const { clients } = (await (await get("/api/clients", TOKEN)).json()) as { clients: { user?: string }[] };
    expect(clients.map((c) => c.user)).toEqual(["alice"]);
    const { tunnels } = (await (await get("/api/tunnels", TOKEN)).json()) as { tunnels: { user?: string }[] };
    expect(tunnels.map((t) => t.user)).toEqual(["alice"]);
    withUsers.kill("SIGKILL");
  });
});

/** What `/api/tunnels` lists for each tunnel. */
interface TunnelInfo {
  id: string;
  type: string;
  url: string;
  name: string;
  client: string;
  visitors: number;
  visitorsTotal: number;
  bytes: { in: number; out: number };
  rate: { in: number; out: number };
}

describe("JSON API", () => {
  test("clients and tunnels as the client printed them, with the same figures /metrics has", async () => {
    const { clients } = (await (await adminFetch("/api/clients")).json()) as {
      clients: {
        id: string;
        address: string;
        state: string;
        since: string;
        resumes: number;
        tunnels: number;
      }[];
    };
    expect(clients).toHaveLength(1);
    const [one] = clients as [(typeof clients)[number]];
    expect(one.state).toBe("live");
    expect(one.address).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(one.tunnels).toBe(2);
    expect(one.resumes).toBe(0);
    expect(Date.now() - Date.parse(one.since)).toBeGreaterThanOrEqual(0);
    expect(Date.now() - Date.parse(one.since)).toBeLessThan(120_000);

    const { tunnels } = (await (await adminFetch("/api/tunnels", "query")).json()) as {
      tunnels: TunnelInfo[];
    };
    const byId = new Map(tunnels.map((t) => [t.id, t]));
    expect([...byId.keys()].sort()).toEqual([tcp.id, http.id].sort());
    const tcpInfo = byId.get(tcp.id) as TunnelInfo;
    expect(tcpInfo).toMatchObject({ type: "tcp", url: `localhost:${tcp.port}`, name: String(tcp.port) });
    expect(tcpInfo.client).toBe(one.id);
    expect(byId.get(http.id)).toMatchObject({ type: "http", url: http.url, name: "dash", client: one.id });
    const exposition = (await scrape()).exposition;
    for (const t of tunnels) {
      const labels = { tunnel: t.id, type: t.type };
      expect(t.visitorsTotal).toBe(
        sampleValue(exposition, "sockets_tunnel_visitor_connections_total", labels) as number,
      );
      expect(t.bytes.in).toBe(
        sampleValue(exposition, "sockets_tunnel_bytes_total", { ...labels, direction: "in" }) as number,
      );
      expect(t.bytes.out).toBe(
        sampleValue(exposition, "sockets_tunnel_bytes_total", { ...labels, direction: "out" }) as number,
      );
    }
    // Round trip: what the API says parses back to the same JSON.
    const again = (await (await adminFetch("/api/tunnels")).json()) as { tunnels: TunnelInfo[] };
    expect(again.tunnels.map(({ rate: _, ...rest }) => rest)).toEqual(
      tunnels.map(({ rate: _, ...rest }) => rest),
    );
    const status = (await (await adminFetch("/api/server")).json()) as Record<string, unknown>;
    expect(status).toMatchObject({ status: "ok", clients: 1, tunnels: 2, authFailures: 1 });
    expect((await adminFetch("/api/nothing")).status).toBe(404);
  });
});

describe("dashboard in a real browser", () => {
  test("lists the live client and tunnels, counters move while a visitor streams; 401 without the token; screenshots", async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    const { browser, page, problems } = await openBrowserPage({ width: 1280, height: 800 }, false);
    try {
      expect((await page.goto(`${admin}/`))?.status()).toBe(401);
      expect((await page.goto(`${admin}/?token=${TOKEN}`))?.status()).toBe(200);
      const tcpRow = page.locator(`#tunnels tr[data-tunnel="${tcp.id}"]`);
      await tcpRow.waitFor();
      await page.locator(`#tunnels tr[data-tunnel="${http.id}"]`).waitFor();
      await page.locator("#clients tr[data-client]").waitFor();
      expect(await page.locator("#clients tr[data-client]").count()).toBe(1);
      expect(await page.locator("#clients tr[data-client]").textContent()).toContain("live");
      expect(await tcpRow.textContent()).toContain(`localhost:${tcp.port}`);

      // A visitor streams slowly (a paced gate, 64 KiB at a time): the page's byte counts move.
      let fast = false;
      const size = 16 * MiB;
      const visitor = streamEcho(tcp.port, size, {
        chunk: 64 * 1024,
        gate: () => (fast ? Promise.resolve() : Bun.sleep(40)),
      });
      const cell = tcpRow.locator("td.bytes-in");
      const seen = new Set<string>([(await cell.textContent()) ?? ""]);
      await eventually(
        async () => {
          seen.add((await cell.textContent()) ?? "");
          return seen.size >= 3;
        },
        10_000,
        "the dashboard's byte count moving twice",
      );
      await eventually(
        async () => (await tcpRow.locator("td.visitors").textContent()) === "1",
        5000,
        "one visitor open on the page",
      );
      const rateIn = await tcpRow.locator("td").nth(7).textContent();
      expect(rateIn).not.toBe("0 B/s");

      const desktop = join(ARTIFACTS, "dashboard-desktop.png");
      // The page's content, without the empty window below it (README shows this one).
      const bottom = Number(
        await page.evaluate("document.querySelector('main').getBoundingClientRect().bottom"),
      );
      await page.screenshot({
        path: desktop,
        clip: { x: 0, y: 0, width: 1280, height: Math.min(800, bottom + 8) },
      });
      await page.setViewportSize({ width: 390, height: 844 });
      await page.locator(`#tunnels tr[data-tunnel="${tcp.id}"]`).waitFor();
      const phone = join(ARTIFACTS, "dashboard-phone.png");
      await page.screenshot({ path: phone, fullPage: true });
      expect(await page.evaluate("document.documentElement.scrollWidth")).toBeLessThanOrEqual(390);
      console.log(`dashboard screenshots: ${desktop} ${phone}`);

      // Keyboard: "/" focuses the filter; typing narrows the tunnels to the HTTP one.
      await page.keyboard.press("/");
      await page.keyboard.type("dash");
      await eventually(
        async () => (await page.locator("#tunnels tr[data-tunnel]").count()) === 1,
        3000,
        "the filter narrowing the tunnels",
      );
      expect(await page.locator(`#tunnels tr[data-tunnel="${http.id}"]`).count()).toBe(1);

      fast = true;
      const done = await withTimeout(visitor.done, 30_000, "the streaming visitor did not finish");
      expect(done.received).toBe(done.sent);
      expect(done.bytes).toBe(size);
      expect(problems).toEqual([]);
    } finally {
      await withTimeout(browser.close(), 10_000, "browser did not close");
    }
  });
});
