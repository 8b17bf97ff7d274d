/**
 * The control port's own requests, as a Hono app: `GET /health`, and the clients' upgrade with its
 * refusal ladder (503 shutting down, 429 too many failures, 401 wrong key, 426 wrong protocol
 * version, 403 wrong resume secret), each a one-line text answer and a log line. A plain request to the
 * upgrade path (a client asking why its upgrade was refused) is told the last refusal of its address
 * and is never authenticated itself: an explanation never counts as a second failure. Visitors of HTTP
 * tunnels never reach it: the control port routes `NAME.DOMAIN` before (control-port.ts).
 * @module
 */

import { Hono } from "hono";
import { formatHost } from "../args.ts";
import type { Logger } from "../log.ts";
import {
  AUTH_HEADER,
  CONNECT_PATH,
  NODE_HEADER,
  NODE_LINK_PATH,
  NODE_NAME,
  RESUME_HEADER,
  STANDBY_PATH,
  SUBPROTOCOL,
} from "../wire/protocol.ts";
import { bearerKey, keyMatches } from "./auth.ts";
import { secretHash } from "./cluster/node.ts";
import type { ControlEnv } from "./control-port.ts";
import { FailureLimiter, RecentRefusals, type Refusal } from "./rate-limit.ts";
import type { SessionRegistry } from "./registry.ts";
import type { SessionSocketData } from "./session.ts";

/** What the app needs from the server. */
export interface ControlAppOptions {
  /** The sessions, and who may connect (its users: the config file's and the single API key). */
  registry: SessionRegistry;
  /** Failed keys or resume secrets per address per minute before 429. */
  authFailLimit: number;
  log: Logger;
  /** Counts refused credentials (`sockets_auth_failures_total`), when the admin listener is on. */
  metrics?: { authFailures: number };
}

/** Builds the control port's app (see the module comment). */
export function controlApp({ registry, authFailLimit, log, metrics }: ControlAppOptions) {
  const authFailures = new FailureLimiter(authFailLimit);
  const refusals = new RecentRefusals();
  const app = new Hono<{ Bindings: ControlEnv<SessionSocketData> }>();
  app.get("/health", (c) => c.json(registry.stats()));
  // Another node of the cluster opens its link: the cluster's secret, the same protocol version.
  app.get(NODE_LINK_PATH, (c) => {
    const address = c.env.requestIP(c.req.raw);
    const ip = address?.address ?? "?";
    const remote = address ? `${formatHost(ip)}:${address.port}` : "?";
    const cluster = registry.cluster;
    if (cluster === undefined) return c.text("this server is not in a cluster\n", 404);
    if (authFailures.blocked(ip)) return c.text("too many failed attempts; try again in a minute\n", 429);
    if (!keyMatches(bearerKey(c.req.header(AUTH_HEADER)), cluster.secret)) {
      authFailures.fail(ip);
      log.warn(`cluster: refused a node link from ${remote}: wrong cluster secret`);
      return c.text("authentication failed: not this cluster's secret\n", 401);
    }
    const offered = (c.req.header("sec-websocket-protocol") ?? "").split(",").map((p) => p.trim());
    if (!offered.includes(SUBPROTOCOL)) return c.text(`this node speaks ${SUBPROTOCOL}\n`, 426);
    const peer = c.req.header(NODE_HEADER) ?? "";
    if (!NODE_NAME.test(peer)) return c.text(`a node link names its node in ${NODE_HEADER}\n`, 400);
    const link = cluster.inbound(remote, peer);
    const data: SessionSocketData = { peer: null, resume: null, remote, link };
    if (c.env.upgrade(c.req.raw, { data, headers: { "Sec-WebSocket-Protocol": SUBPROTOCOL } }))
      return new Response(null);
    link.close();
    return c.text("expected a WebSocket upgrade\n", 400);
  });
  // A client of another node keeps a standby connection here (cluster/standby.ts): its key, its node.
  app.get(STANDBY_PATH, (c) => {
    const address = c.env.requestIP(c.req.raw);
    const ip = address?.address ?? "?";
    const remote = address ? `${formatHost(ip)}:${address.port}` : "?";
    const cluster = registry.cluster;
    if (cluster === undefined) return c.text("this server is not in a cluster\n", 404);
    if (registry.draining) return c.text("server is shutting down\n", 503);
    if (authFailures.blocked(ip)) return c.text("too many failed attempts; try again in a minute\n", 429);
    if (registry.authenticate(bearerKey(c.req.header(AUTH_HEADER))) === null) {
      authFailures.fail(ip);
      return c.text("authentication failed: missing or wrong API key\n", 401);
    }
    const watched = c.req.header(NODE_HEADER) ?? "";
    if (!NODE_NAME.test(watched))
      return c.text(`a standby connection names its node in ${NODE_HEADER}\n`, 400);
    const link = cluster.standby(`client ${remote} (standby, watching node ${watched})`, watched);
    const data: SessionSocketData = { peer: null, resume: null, remote, link };
    if (c.env.upgrade(c.req.raw, { data, headers: { "Sec-WebSocket-Protocol": SUBPROTOCOL } })) {
      // Its node is gone already (it froze while the client dialled here): move at once.
      if (!cluster.alive(watched) && cluster.directory.redisUp && cluster.directory.settlingMs === 0)
        link.moveHere();
      return new Response(null);
    }
    link.close();
    return c.text("expected a WebSocket upgrade\n", 400);
  });
  // Accept: authenticate, agree the version, find the session a reconnecting client resumes.
  app.get(CONNECT_PATH, (c) => {
    const address = c.env.requestIP(c.req.raw);
    const ip = address?.address ?? "?";
    const remote = address ? `${formatHost(ip)}:${address.port}` : "?";
    // Explain: a plain request is told why this address's last upgrade was refused (see the module comment).
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
      const last: Refusal | undefined = registry.draining
        ? { status: 503, message: "server is shutting down" }
        : refusals.take(ip);
      return last === undefined
        ? c.text("expected a WebSocket upgrade\n", 400)
        : c.text(`${last.message}\n`, last.status);
    }
    const refuse = (status: Refusal["status"], message: string) => {
      log.info(`refused ${remote}: ${status} ${message}`);
      if (metrics && (status === 401 || status === 403)) metrics.authFailures++;
      refusals.remember(ip, { status, message });
      return c.text(`${message}\n`, status);
    };
    if (registry.draining) return refuse(503, "server is shutting down");
    if (authFailures.blocked(ip)) return refuse(429, "too many failed attempts; try again in a minute");
    // The token names the user (compared in constant time with every user's hash); never logged.
    const key = bearerKey(c.req.header(AUTH_HEADER));
    const account = registry.authenticate(key);
    if (account === null) {
      authFailures.fail(ip);
      return refuse(
        401,
        key === undefined
          ? "authentication failed: no API key was sent"
          : "authentication failed: wrong API key",
      );
    }
    const offered = (c.req.header("sec-websocket-protocol") ?? "").split(",").map((p) => p.trim());
    if (!offered.includes(SUBPROTOCOL))
      return refuse(
        426,
        `unsupported protocol version: client offered '${offered.join(",") || "none"}', this server speaks ${SUBPROTOCOL}`,
      );
    const [sessionId, secret] = (c.req.header(RESUME_HEADER) ?? "").split(" ");
    const resume = sessionId ? registry.sessions.get(sessionId) : undefined;
    if (resume && !resume.secretMatches(secret ?? "")) {
      authFailures.fail(ip);
      return refuse(403, "resume refused: the session's secret does not match");
    }
    // A session is its user's: another user's token cannot carry it on, even with its secret.
    if (resume && resume.account !== account) {
      authFailures.fail(ip);
      return refuse(403, "resume refused: the session belongs to another user");
    }
    const data: SessionSocketData = { peer: null, resume: resume ?? null, remote };
    if (account !== undefined) data.account = account;
    // A session another node of the cluster knew: its secret is the client's proof that the names and
    // ports leased for it are its own (only a hash of it is compared, in Redis).
    if (resume === undefined && sessionId && secret && registry.cluster) data.claim = secretHash(secret);
    if (c.env.upgrade(c.req.raw, { data, headers: { "Sec-WebSocket-Protocol": SUBPROTOCOL } }))
      return new Response(null);
    return c.text("expected a WebSocket upgrade\n", 400);
  });
  return app;
}
