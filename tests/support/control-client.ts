/**
 * Test support, control client: a client WebSocket in the test process that speaks the control
 * messages only (hello, expose, unexpose, their answers) and records how the connection closed. For
 * what the server does with a user's requests, independent of client.ts: it never answers a visitor's
 * stream (an OPEN stays unanswered, the visitor stays connected until the server closes it).
 * @module
 */

import { AUTH_HEADER, CONNECT_PATH, RESUME_HEADER, SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import { defer, withTimeout } from "./processes.ts";

/** A parsed control message from the server. */
export type ControlReply = Record<string, unknown> & { type: string };

/** A connected control client. */
export interface ControlClient {
  ws: WebSocket;
  /** The server's hello. */
  hello: ControlReply;
  /** Asks for a tunnel; resolves with the answer (`exposed` or `error`). */
  expose(request: {
    kind: "tcp" | "http" | "tls";
    port?: number;
    subdomain?: string;
    hostname?: string;
  }): Promise<ControlReply>;
  /** Asks to close a tunnel; resolves with the answer (`unexposed` or `error`). */
  unexpose(tunnel: string): Promise<ControlReply>;
  /** Resolves with the close code and reason once the connection closed, or rejects after `timeoutMs`. */
  closed(timeoutMs?: number): Promise<{ code: number; reason: string }>;
}

/** Why an upgrade was refused: its HTTP status. */
export class UpgradeRefused extends Error {
  override name = "UpgradeRefused";
}

/**
 * Connects to `url` (`ws://HOST:PORT`) with `token` as the bearer (none when undefined) and waits for
 * hello. `resume` claims a reserved session. Rejects (an {@link UpgradeRefused}) when the upgrade fails.
 */
export async function connectControl(
  url: string,
  token: string | undefined,
  resume?: { session: string; secret: string },
): Promise<ControlClient> {
  const headers: Record<string, string> = {};
  if (token !== undefined) headers[AUTH_HEADER] = `Bearer ${token}`;
  if (resume !== undefined) headers[RESUME_HEADER] = `${resume.session} ${resume.secret}`;
  const ws = new WebSocket(`${url}${CONNECT_PATH}`, { headers, protocols: [SUBPROTOCOL] } as never);
  defer(() => ws.close());
  const waiting = new Map<number, (reply: ControlReply) => void>();
  let helloSeen: (reply: ControlReply) => void = () => {};
  const hello = new Promise<ControlReply>((resolve) => {
    helloSeen = resolve;
  });
  let closedWith: { code: number; reason: string } | undefined;
  const closeWaiters = new Set<() => void>();
  ws.addEventListener("message", (event) => {
    if (typeof event.data !== "string") return;
    const reply = JSON.parse(event.data) as ControlReply;
    if (reply.type === "hello") helloSeen(reply);
    const id = reply.id;
    if (typeof id === "number") {
      waiting.get(id)?.(reply);
      waiting.delete(id);
    }
  });
  ws.addEventListener("close", (event) => {
    closedWith = { code: event.code, reason: event.reason };
    for (const wake of closeWaiters) wake();
  });
  const opened = new Promise<void>((resolve, reject) => {
    ws.addEventListener("open", () => resolve(), { once: true });
    ws.addEventListener("error", () => reject(new UpgradeRefused(`upgrade to ${url} refused`)), {
      once: true,
    });
    ws.addEventListener("close", () => reject(new UpgradeRefused(`upgrade to ${url} refused`)), {
      once: true,
    });
  });
  await withTimeout(opened, 5000, "control connection did not open");
  let nextId = 1;
  const ask = (message: Record<string, unknown>): Promise<ControlReply> => {
    const id = nextId++;
    const answer = new Promise<ControlReply>((resolve) => waiting.set(id, resolve));
    ws.send(JSON.stringify({ ...message, id }));
    return withTimeout(answer, 5000, `no answer to ${message.type}`);
  };
  return {
    ws,
    hello: await withTimeout(hello, 5000, "no hello"),
    expose: (request) => ask({ type: "expose", ...request }),
    unexpose: (tunnel) => ask({ type: "unexpose", tunnel }),
    closed(timeoutMs = 5000) {
      return withTimeout(
        new Promise((resolve) => {
          const check = () => {
            if (closedWith !== undefined) resolve(closedWith);
          };
          closeWaiters.add(check);
          check();
        }),
        timeoutMs,
        "control connection did not close",
      );
    },
  };
}
