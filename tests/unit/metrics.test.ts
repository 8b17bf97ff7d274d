/**
 * The server's metrics and admin listener, in-process: the exposition's histogram buckets (inclusive
 * upper bounds, cumulative), label escaping, responses by code, and the admin address rules
 * (`--admin` parsing, what counts as loopback, the refusal without a token beyond it), plus the admin
 * app's token check and Host check answered by Hono without a listener.
 */

import { describe, expect, test } from "bun:test";
import { adminApp, adminProblem, isLoopback, parseAdminAddress } from "../../shared/server/admin.ts";
import { DURATION_BUCKETS, escapeLabel, ServerMetrics } from "../../shared/server/metrics.ts";
import type { Session } from "../../shared/server/session.ts";

const noSessions = new Map<string, Session>();

describe("ServerMetrics", () => {
  test("an idle server: zero gauges and counters, every family with HELP and TYPE", () => {
    const text = new ServerMetrics(noSessions).render();
    expect(text.endsWith("\n")).toBe(true);
    expect(text).toContain("sockets_clients 0\n");
    expect(text).toContain('sockets_tunnels{type="tcp"} 0\n');
    expect(text).toContain('sockets_bytes_total{direction="out",type="http"} 0\n');
    expect(text).toContain('sockets_http_request_duration_seconds_bucket{le="+Inf"} 0\n');
    expect(text).toMatch(/^sockets_build_info\{version="[^"]+",protocol="\d+",bun="[^"]+"\} 1$/m);
    const families = [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]);
    const helps = [...text.matchAll(/^# HELP (\S+) /gm)].map((m) => m[1]);
    expect(helps).toEqual(families);
    expect(text).not.toContain("sockets_tunnel_bytes_total"); // per-tunnel series only when asked for
  });

  test("durations fall in the first bucket whose bound they do not exceed; buckets are cumulative", () => {
    const metrics = new ServerMetrics(noSessions);
    metrics.httpResponse(200, 0.005); // exactly on a bound: that bucket
    metrics.httpResponse(200, 0.0051);
    metrics.httpResponse(404, 31); // past the last bound: +Inf only
    metrics.httpResponse(502); // the server's own page: counted, not timed
    const text = metrics.render();
    const bucket = (le: string) =>
      Number(
        new RegExp(
          `sockets_http_request_duration_seconds_bucket\\{le="${le.replace("+", "\\+")}"\\} (\\d+)`,
        ).exec(text)?.[1],
      );
    expect(bucket("0.005")).toBe(1);
    expect(bucket("0.01")).toBe(2);
    expect(bucket(String(DURATION_BUCKETS.at(-1)))).toBe(2);
    expect(bucket("+Inf")).toBe(3);
    expect(text).toContain("sockets_http_request_duration_seconds_count 3\n");
    expect(text).toContain("sockets_http_request_duration_seconds_sum 31.0101\n");
    expect(text).toContain('sockets_http_requests_total{code="200"} 2\n');
    expect(text).toContain('sockets_http_requests_total{code="404"} 1\n');
    expect(text).toContain('sockets_http_requests_total{code="502"} 1\n');
  });

  test("label values escape backslash, double quote and line feed", () => {
    expect(escapeLabel('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    expect(escapeLabel("plain")).toBe("plain");
  });
});

describe("--admin", () => {
  test("HOST:PORT, [IPv6]:PORT or PORT alone (127.0.0.1); 0 for any free port; anything else is one line", () => {
    expect(parseAdminAddress("127.0.0.1:9090", "--admin")).toEqual({ host: "127.0.0.1", port: 9090 });
    expect(parseAdminAddress("[::1]:0", "--admin")).toEqual({ host: "::1", port: 0 });
    expect(parseAdminAddress("9090", "--admin")).toEqual({ host: "127.0.0.1", port: 9090 });
    expect(() => parseAdminAddress("localhost", "--admin")).toThrow("--admin: 'localhost' is not HOST:PORT");
    expect(() => parseAdminAddress("h:99999", "--admin")).toThrow("is not a port");
  });

  test("loopback is 127.0.0.0/8, ::1 and localhost; beyond it a token is required", () => {
    for (const host of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"])
      expect(isLoopback(host), host).toBe(true);
    for (const host of ["0.0.0.0", "::", "10.0.0.1", "example.com", "128.0.0.1"])
      expect(isLoopback(host), host).toBe(false);
    expect(adminProblem({ host: "0.0.0.0", port: 9090 }, undefined)).toBe(
      "--admin 0.0.0.0:9090 is beyond loopback: set an admin token (env SOCKETS_ADMIN_TOKEN, or admin_token in --config), or bind 127.0.0.1",
    );
    expect(adminProblem({ host: "0.0.0.0", port: 9090 }, "t")).toBeUndefined();
    expect(adminProblem({ host: "127.0.0.1", port: 9090 }, undefined)).toBeUndefined();
    expect(adminProblem(undefined, undefined)).toBeUndefined();
  });

  test("the app: 401 without the token, Bearer or ?token= let in; without a token only IP or localhost Hosts", async () => {
    const source = { metrics: new ServerMetrics(noSessions), stats: () => ({ status: "ok" }) };
    const locked = adminApp(source, "s3cret");
    const get = (app: ReturnType<typeof adminApp>, url: string, headers: Record<string, string> = {}) =>
      app.request(url, { headers });
    expect((await get(locked, "http://x/metrics")).status).toBe(401);
    expect((await get(locked, "http://x/metrics", { Authorization: "Bearer nope" })).status).toBe(401);
    expect((await get(locked, "http://x/metrics", { Authorization: "Bearer s3cret" })).status).toBe(200);
    expect((await get(locked, "http://x/api/tunnels?token=s3cret")).status).toBe(200);
    const open = adminApp(source);
    expect((await get(open, "http://127.0.0.1:9090/api/clients", { Host: "127.0.0.1:9090" })).status).toBe(
      200,
    );
    expect((await get(open, "http://localhost:9090/", { Host: "localhost:9090" })).status).toBe(200);
    expect((await get(open, "http://evil.example/", { Host: "evil.example" })).status).toBe(403);
    const page = await get(open, "http://127.0.0.1/", { Host: "127.0.0.1" });
    expect(page.headers.get("content-security-policy")).toContain("default-src 'none'");
    expect(await page.text()).toContain("<title>sockets server</title>");
  });
});
