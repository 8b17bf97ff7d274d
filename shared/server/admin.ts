/**
 * The server's admin listener (`--admin ADDR`, off by default): `GET /metrics` in Prometheus text
 * format, the dashboard page (`GET /`) and its JSON API (`/api/clients`, `/api/tunnels`,
 * `/api/server`, `/api/history` for the charts), on an address of its own, never on the control port.
 *
 * With an admin token (`SOCKETS_ADMIN_TOKEN`, `admin_token` in `--config`, or `--admin-token`) every
 * request must carry it, as `Authorization: Bearer TOKEN` or `?token=TOKEN` (compared in constant
 * time), or gets 401; the page passes the token it was opened with on to its API calls. Without a
 * token the listener must be on loopback (refused at start otherwise), and it answers only requests
 * that name it by an IP address or `localhost`, so a web page cannot reach it through DNS rebinding.
 * @module
 */

import type { Server } from "bun";
import { Hono } from "hono";
import { formatHost, type HostPort, parsePort, trustedHost, UsageError } from "../args.ts";
import { keyMatches } from "./auth.ts";
import { DASHBOARD_HTML } from "./dashboard.ts";
import { TrafficHistory } from "./history.ts";
import type { ServerMetrics } from "./metrics.ts";

/** The Prometheus text format's content type. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Parses `--admin`: `HOST:PORT`, `[IPv6]:PORT` or `PORT` (on 127.0.0.1); port 0 = any free port. */
export function parseAdminAddress(value: string, flag: string): HostPort {
  if (/^\d+$/.test(value)) return { host: "127.0.0.1", port: parsePort(value, flag, true) };
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):([^:]*)$/.exec(value);
  if (!match) throw new UsageError(`${flag}: '${value}' is not HOST:PORT (e.g. 127.0.0.1:9090)`);
  return { host: (match[1] ?? match[2]) as string, port: parsePort(match[3] as string, flag, true) };
}

/** Whether a bind address is loopback only (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  const name = host.toLowerCase().replace(/^\[|\]$/g, "");
  return (
    name === "localhost" ||
    name === "::1" ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name) ||
    /^::ffff:127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name)
  );
}

/**
 * The one-line refusal for an admin listener beyond loopback without a token, or undefined when the
 * pair is fine.
 */
export function adminProblem(address: HostPort | undefined, token: string | undefined): string | undefined {
  if (address === undefined || token || isLoopback(address.host)) return undefined;
  return `--admin ${formatHost(address.host)}:${address.port} is beyond loopback: set an admin token (env SOCKETS_ADMIN_TOKEN, or admin_token in --config), or bind 127.0.0.1`;
}

/** What the admin app reads. */
export interface AdminSource {
  metrics: ServerMetrics;
  /** The charts' history (`/api/history`); none: an empty one. */
  history?: TrafficHistory;
  /** What `/health` says (counts, status), for `/api/server`. */
  stats(): object;
}

/** The admin app (see the module comment); `token` undefined: no token asked for. */
export function adminApp(source: AdminSource, token?: string): Hono {
  const app = new Hono();
  app.use(async (c, next) => {
    if (token === undefined) {
      if (!trustedHost(c.req.header("host") ?? null))
        return c.text("the admin listener answers only to an IP address or localhost\n", 403);
    } else {
      const header = c.req.header("authorization");
      const bearer = header ? /^Bearer\s+(.+)$/i.exec(header.trim())?.[1] : undefined;
      if (!keyMatches(bearer ?? c.req.query("token"), token)) {
        c.header("WWW-Authenticate", 'Bearer realm="sockets admin"');
        return c.text("admin token required: Authorization: Bearer TOKEN, or ?token=TOKEN\n", 401);
      }
    }
    await next();
    c.header("Cache-Control", "no-store");
    c.header("Referrer-Policy", "no-referrer");
    c.header("X-Content-Type-Options", "nosniff");
  });
  app.get("/", (c) => {
    c.header(
      "Content-Security-Policy",
      "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    return c.html(DASHBOARD_HTML);
  });
  app.get("/metrics", (c) => c.body(source.metrics.render(), 200, { "Content-Type": METRICS_CONTENT_TYPE }));
  app.get("/api/clients", (c) => c.json({ clients: source.metrics.clients() }));
  app.get("/api/tunnels", (c) => c.json({ tunnels: source.metrics.tunnels() }));
  // `?since=MS`: only the samples taken after that time (the page asks for what it has not seen).
  app.get("/api/history", (c) => {
    const since = Number(c.req.query("since") ?? 0);
    const history = source.history ?? new TrafficHistory(() => source.metrics.counts());
    return c.json(history.view(Number.isFinite(since) ? since : 0));
  });
  app.get("/api/server", (c) =>
    c.json({
      ...source.stats(),
      version: source.metrics.version,
      startedAt: new Date(source.metrics.startedAt).toISOString(),
      authFailures: source.metrics.authFailures,
      resumes: source.metrics.resumes,
      heartbeatMisses: source.metrics.heartbeatMisses,
      visitorsRefused: Object.fromEntries(source.metrics.refused),
    }),
  );
  app.notFound((c) =>
    c.json(
      { error: `no ${c.req.path} here: try /, /metrics, /api/clients, /api/tunnels or /api/history` },
      404,
    ),
  );
  return app;
}

/** A running admin listener. */
export interface AdminListener {
  /** `http://HOST:PORT` */
  url: string;
  port: number;
  stop(): void;
}

/**
 * Starts the admin listener.
 * @throws {Error} with one line when it is beyond loopback without a token, or cannot be bound.
 */
export function startAdmin(source: AdminSource, address: HostPort, token?: string): AdminListener {
  const problem = adminProblem(address, token);
  if (problem !== undefined) throw new Error(problem);
  // Sampled once a second while the listener is up, for the dashboard's charts.
  const history = source.history ?? new TrafficHistory(() => source.metrics.counts());
  const app = adminApp({ ...source, history }, token || undefined);
  let server: Server<undefined>;
  try {
    server = Bun.serve({ hostname: address.host, port: address.port, fetch: app.fetch });
  } catch (error) {
    throw new Error(
      `--admin ${formatHost(address.host)}:${address.port}: ${(error as { code?: string }).code ?? (error as Error).message}`,
    );
  }
  const port = server.port as number;
  history.start();
  return {
    url: `http://${formatHost(address.host)}:${port}`,
    port,
    stop: () => {
      history.stop();
      void server.stop(true);
    },
  };
}
