/**
 * The server's own listeners, opened together: the control port (clients' upgrades, `/health`, HTTP
 * tunnels), `--http-port`, `--https-port` (acme/https.ts), and the admin listener. Either all open or none stays open: one that fails
 * closes those before it, and the error names the option.
 * @module
 */

import { describeError, type Logger } from "../log.ts";
import type { HttpsSide } from "./acme/https.ts";
import { type AdminListener, startAdmin } from "./admin.ts";
import { listenControl } from "./control-port.ts";
import { HeadBudget, type HttpIngress, listenHttp } from "./http-ingress.ts";
import type { ServerMetrics } from "./metrics.ts";
import type { HttpRoute } from "./namespace/holding.ts";
import type { ServerOptions } from "./options.ts";
import type { ServerStats } from "./registry.ts";
import type { SessionSocketData } from "./session.ts";
import type { WebSocketHandlers } from "./ws-server.ts";

/** Limits of a client's WebSocket: tunnel frames stay far below them (the codec bounds frames). */
const CLIENT_WEBSOCKET = { maxPayloadLength: 16 * 1024 * 1024, backpressureLimit: 64 * 1024 * 1024 };

/** What the listeners serve. */
export interface ListenerParts {
  options: ServerOptions;
  host: string;
  domain: string;
  /** The control port's own requests (a Hono app). */
  app: Parameters<typeof listenControl<SessionSocketData>>[0]["app"];
  /** Events of the control port's WebSockets. */
  websocket: WebSocketHandlers<SessionSocketData>;
  /** The route behind an HTTP tunnel's name. */
  route(name: string): HttpRoute | undefined;
  stats(): ServerStats;
  metrics?: ServerMetrics;
  /** Certificates, ACME and the HTTPS front (`--https-port`). */
  https: HttpsSide;
  log: Logger;
}

/** The open listeners. */
export interface Listeners {
  control: HttpIngress;
  http?: HttpIngress;
  /** The bound `--https-port`. */
  httpsPort?: number;
  admin?: AdminListener;
  /** Every port above: never a tunnel's. */
  ownPorts: number[];
  /** Stops accepting on all of them; with `closeActive`, closes their connections too. */
  stop(closeActive: boolean): void;
}

/** Opens every listener the options ask for (see the module comment). */
export function openListeners(parts: ListenerParts): Listeners {
  const { options, metrics, log } = parts;
  // HTTP tunnels are routed by Host (NAME.DOMAIN) by the same code on the control port and --http-port.
  const http = {
    host: parts.host,
    domain: parts.domain,
    route: parts.route,
    requestTimeoutSeconds: options.requestTimeoutSeconds,
    heads: new HeadBudget(),
    tls: options.tls,
    metrics,
    // ACME's HTTP-01 validations are answered on the plain HTTP ports.
    acmeChallenge: parts.https.acmeChallenge,
    log,
  };
  const opened: { stop(closeActive: boolean): void }[] = [];
  const stop = (closeActive: boolean) => {
    for (const listener of opened.toReversed()) listener.stop(closeActive);
  };
  try {
    const port = options.port ?? 7070;
    const control = listenControl({
      ...http,
      port,
      app: parts.app,
      limits: CLIENT_WEBSOCKET,
      websocket: parts.websocket,
    });
    opened.push(control);
    let httpPort: HttpIngress | undefined;
    if (options.httpPort !== undefined)
      try {
        // With --https-port, --http-port stays plain http (HTTP-01 validations, http:// visitors).
        const plain = options.httpsPort !== undefined ? { tls: undefined } : {};
        httpPort = listenHttp({ ...http, ...plain, port: options.httpPort });
        opened.push(httpPort);
      } catch (error) {
        throw new Error(`--http-port ${options.httpPort}: ${describeError(error)}`);
      }
    let httpsPort: number | undefined;
    try {
      const { tls: _, host: __, ...terminated } = http;
      httpsPort = parts.https.listen(parts.host, parts.domain, terminated, parts.route);
      opened.push(parts.https);
    } catch (error) {
      throw new Error(`--https-port ${options.httpsPort}: ${describeError(error)}`);
    }
    let admin: AdminListener | undefined;
    if (metrics !== undefined && options.admin !== undefined) {
      admin = startAdmin({ metrics, stats: parts.stats }, options.admin, options.adminToken);
      opened.push({ stop: () => admin?.stop() });
    }
    const ownPorts = [control.port, httpPort?.port, httpsPort, admin?.port].filter(
      (port): port is number => port !== undefined,
    );
    return { control, http: httpPort, httpsPort, admin, ownPorts, stop };
  } catch (error) {
    stop(true);
    throw error;
  }
}
