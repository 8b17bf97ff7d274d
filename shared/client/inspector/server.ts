/**
 * Inspector listener: serves the inspector app with Bun.serve, on 127.0.0.1:4040 by default (the next
 * free port when that one is taken, up to {@link PORT_TRIES} ports), or where `--inspect ADDR` says.
 * Only requests naming the inspector by an IP address or `localhost` are answered (a web page
 * elsewhere cannot reach it through DNS rebinding), and replays must be sent as JSON (no cross-site
 * form can send one).
 * @module
 */

import type { Server } from "bun";
import { formatHost, type HostPort, trustedHost } from "../../args.ts";
import { describeError, type Logger } from "../../log.ts";
import type { ProxyVersion } from "../../wire/proxy-protocol.ts";
import { type InspectorSource, inspectorApp } from "./app.ts";
import { DEFAULT_INSPECT } from "./settings.ts";
import type { InspectorStore } from "./store.ts";

/** How many ports from 4040 up the default address tries before giving up. */
export const PORT_TRIES = 20;

/** A running inspector. */
export interface InspectorListener {
  /** `http://HOST:PORT` */
  url: string;
  port: number;
  /** Stops listening (open pages lose their live stream). */
  stop(): void;
}

/**
 * Starts the inspector at `address` (default {@link DEFAULT_INSPECT}: the next free port when taken).
 * @throws {Error} with one line when an address given explicitly cannot be bound, or no default port is free.
 */
export function startInspector(
  source: InspectorSource,
  address: HostPort = DEFAULT_INSPECT,
  explicit = false,
): InspectorListener {
  const app = inspectorApp(source);
  const fetch = (request: Request): Response | Promise<Response> => {
    if (!trustedHost(request.headers.get("host")))
      return Response.json(
        { error: "the inspector answers only to an IP address or localhost" },
        { status: 403 },
      );
    if (
      request.method === "POST" &&
      !(request.headers.get("content-type") ?? "").toLowerCase().startsWith("application/json")
    )
      return Response.json({ error: "send the replay as application/json" }, { status: 415 });
    return app.fetch(request);
  };
  const tries = explicit || address.port === 0 ? 1 : PORT_TRIES;
  let lastError: unknown;
  for (let i = 0; i < tries; i++) {
    const port = address.port === 0 ? 0 : address.port + i;
    let server: Server<undefined>;
    try {
      server = Bun.serve({ hostname: address.host, port, fetch, idleTimeout: 0 });
    } catch (error) {
      lastError = error;
      continue;
    }
    const bound = server.port as number;
    return {
      url: `http://${formatHost(address.host === "0.0.0.0" || address.host === "::" ? "127.0.0.1" : address.host)}:${bound}`,
      port: bound,
      stop: () => void server.stop(true),
    };
  }
  const where = `${formatHost(address.host)}:${address.port}${tries > 1 ? `-${address.port + tries - 1}` : ""}`;
  throw new Error(`inspector: cannot listen on ${where}: ${describeError(lastError)}`);
}

/** A tunnel as the client holds it (the fields the inspector reads). */
interface HeldTunnel {
  url: string;
  local: {
    name: string;
    kind?: "tcp" | "http" | "udp" | "tls";
    host: string;
    port: number;
    proxyProtocol?: ProxyVersion;
  };
}

/**
 * Starts the inspector for a client: at `setting` (`default`: 127.0.0.1:4040 or the next free port;
 * when none is free, a warning and no inspector), showing `tunnels()` and what `store` captured.
 * @throws {Error} with one line when an address given explicitly cannot be bound.
 */
export function serveInspector(
  store: InspectorStore,
  setting: HostPort | "default",
  tunnels: () => HeldTunnel[],
  log: Logger,
): InspectorListener | undefined {
  const source = {
    store,
    tunnels: () =>
      tunnels().map((tunnel) => ({
        name: tunnel.local.name,
        kind: tunnel.local.kind ?? "tcp",
        url: tunnel.url,
        local: {
          host: tunnel.local.host,
          port: tunnel.local.port,
          proxyProtocol: tunnel.local.proxyProtocol,
        },
      })),
  };
  if (setting !== "default") return startInspector(source, setting, true);
  try {
    return startInspector(source);
  } catch (error) {
    log.warn(`${describeError(error)}; running without it (--inspect ADDR puts it elsewhere)`);
    return undefined;
  }
}
