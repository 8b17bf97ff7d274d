/**
 * Inspector web app (Hono): the page, a live stream of changes (Server-Sent Events) and the JSON API,
 * shaped after ngrok's agent API so existing habits carry over.
 *
 * ```text
 * GET    /                           the page (HTML, CSS and a small script, no build step, no CDN)
 * GET    /api/events                 SSE: request, connection, clear, status (changes batched per 50 ms)
 * GET    /api/requests/http          ?limit=50&tunnel_name=NAME&summary=1   newest first
 * GET    /api/requests/http/:id      one exchange (404 when unknown)
 * POST   /api/requests/http          {"id", "method"?, "path"?, "headers"?, "body"?|"body_base64"?} replay
 * DELETE /api/requests/http          clear
 * GET    /api/connections/tcp        open and recent TCP connections
 * GET    /api/tunnels                the client's tunnels
 * GET    /api/status                 the client's figures: tunnels, connections, bytes each way
 * GET    /api/history                requests per second and latency p50/p90/p99, per second, last 5 min
 * ```
 * @module
 */

import { Hono } from "hono";
import type { HostPort } from "../../args.ts";
import type { HeaderList } from "../../http1/framer.ts";
import type { ProxyVersion } from "../../wire/proxy-protocol.ts";
import { PAGE_HTML, PAGE_SCRIPT, PAGE_STYLE } from "./page.ts";
import { type ReplayEdits, ReplayError, replay } from "./replay.ts";
import type { InspectorStore, StoreEvent } from "./store.ts";
import { connectionView, exchangeDetail, exchangeSummary } from "./view.ts";

/** A tunnel as the inspector shows it. */
export interface InspectedTunnel {
  /** The tunnel's name in the client's set (`http-1`, a config file's name). */
  name: string;
  kind: "tcp" | "http" | "udp" | "tls";
  /** Its public URL (`udp://HOST:PORT` for UDP tunnels). */
  url: string;
  /** The local service, and the PROXY protocol header it wants first (replays send one too). */
  local: HostPort & { proxyProtocol?: ProxyVersion };
}

/** What the app reads from the client. */
export interface InspectorSource {
  store: InspectorStore;
  /** The client's tunnels now. */
  tunnels: () => InspectedTunnel[];
  /** How long a replay may wait for the local service, in ms (default 30 s). */
  replayTimeoutMs?: number;
}

/** A live-stream subscriber that fell this far behind (bytes queued) is dropped; its page reconnects. */
const MAX_QUEUED_EVENT_BYTES = 4 * 1024 * 1024;

/** Live-stream changes are gathered this long (ms) and sent together. */
const EVENT_BATCH_MS = 50;

/** An SSE comment this often keeps proxies and idle timers from closing the stream. */
const KEEPALIVE_MS = 15_000;

/** Thrown for a replay body that is not what the API takes (400). */
class BadRequest extends Error {}

/** The replay request's body as edits; throws {@link BadRequest} for anything malformed. */
function parseReplay(body: unknown): { id: string; tunnelName?: string; edits: ReplayEdits } {
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw new BadRequest('expected a JSON object like {"id": "req_1"}');
  const given = body as Record<string, unknown>;
  const { id, method, path, headers, body: text, body_base64: base64, tunnel_name: tunnelName } = given;
  if (typeof id !== "string" || id === "") throw new BadRequest('"id" must be a request id (a string)');
  const edits: ReplayEdits = {};
  if (method !== undefined) {
    if (typeof method !== "string" || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(method))
      throw new BadRequest('"method" must be an HTTP method');
    edits.method = method;
  }
  if (path !== undefined) {
    if (typeof path !== "string" || !/^[\x21-\x7e]+$/.test(path))
      throw new BadRequest('"path" must be a request target without spaces, like /a?b=1');
    edits.path = path;
  }
  if (headers !== undefined) edits.headers = parseHeaders(headers);
  if (text !== undefined && base64 !== undefined)
    throw new BadRequest('give "body" or "body_base64", not both');
  if (text !== undefined) {
    if (typeof text !== "string") throw new BadRequest('"body" must be a string');
    edits.body = new TextEncoder().encode(text);
  }
  if (base64 !== undefined) {
    if (typeof base64 !== "string") throw new BadRequest('"body_base64" must be a string');
    edits.body = new Uint8Array(Buffer.from(base64, "base64"));
  }
  return { id, tunnelName: typeof tunnelName === "string" ? tunnelName : undefined, edits };
}

/** Headers as `[[name, value], …]` or ngrok's `{name: [values]}` / `{name: value}`. */
function parseHeaders(headers: unknown): HeaderList {
  const out: HeaderList = [];
  const add = (name: unknown, value: unknown) => {
    if (typeof name !== "string" || typeof value !== "string")
      throw new BadRequest('"headers" must be [[name, value], …] or {name: value | [values]}');
    out.push([name, value]);
  };
  if (Array.isArray(headers)) {
    for (const pair of headers) {
      if (!Array.isArray(pair) || pair.length !== 2)
        throw new BadRequest('"headers" must be [[name, value], …] or {name: value | [values]}');
      add(pair[0], pair[1]);
    }
  } else if (typeof headers === "object" && headers !== null) {
    for (const [name, value] of Object.entries(headers))
      if (Array.isArray(value)) for (const one of value) add(name, one);
      else add(name, value);
  } else throw new BadRequest('"headers" must be [[name, value], …] or {name: value | [values]}');
  return out;
}

/** The inspector's figures: tunnels, connections, bytes each way, what the store holds. */
function statusOf(source: InspectorSource) {
  const { store } = source;
  const { stats } = store;
  return {
    tunnels: source.tunnels().length,
    connections_open: stats.connectionsOpen,
    connections_total: stats.connectionsTotal,
    bytes_in: stats.bytesIn,
    bytes_out: stats.bytesOut,
    requests_total: stats.requestsTotal,
    requests_kept: store.size,
    capacity: store.capacity,
    body_cap: store.bodyCap,
    body_bytes_kept: store.keptBodyBytes,
    rss: process.memoryUsage.rss(),
  };
}

/** One SSE event's bytes. */
function sseEvent(event: StoreEvent | { type: "status"; status: unknown }): string {
  let data: unknown;
  if (event.type === "request") data = exchangeSummary(event.exchange);
  else if (event.type === "connection") data = connectionView(event.connection);
  else if (event.type === "status") data = event.status;
  else data = {};
  return `event: ${event.type}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** The inspector's Hono app over `source` (see the module header for its routes). */
export function inspectorApp(source: InspectorSource): Hono {
  const { store } = source;
  const app = new Hono();
  const encoder = new TextEncoder();

  app.get("/", (c) => c.html(PAGE_HTML));
  app.get("/inspector.css", (c) => c.body(PAGE_STYLE, 200, { "content-type": "text/css; charset=utf-8" }));
  app.get("/inspector.js", (c) =>
    c.body(PAGE_SCRIPT, 200, { "content-type": "text/javascript; charset=utf-8" }),
  );

  app.get("/api/events", () => {
    let stop = () => {};
    const stream = new ReadableStream<Uint8Array>(
      {
        start(controller) {
          const send = (text: string) => {
            if ((controller.desiredSize ?? 0) < -MAX_QUEUED_EVENT_BYTES) {
              stop();
              controller.close(); // too far behind: the page reconnects and reads the list again
              return;
            }
            controller.enqueue(encoder.encode(text));
          };
          send(`retry: 1000\n${sseEvent({ type: "status", status: statusOf(source) })}`);
          // Changes go out in batches: an exchange that changed twice meanwhile is sent once, as it is then.
          let queued: StoreEvent[] = [];
          const queuedRecords = new Set<object>();
          let timer: ReturnType<typeof setTimeout> | undefined;
          // Queued exchanges are read at the flush: the store reuses no slab meanwhile (see slabs.ts).
          const flush = () => {
            timer = undefined;
            const events = queued;
            queued = [];
            queuedRecords.clear();
            store.slabs.release(); // before the read below: nothing reuses a slab while it runs
            send(events.map(sseEvent).join(""));
          };
          const unsubscribe = store.subscribe((event) => {
            const record =
              event.type === "request"
                ? event.exchange
                : event.type === "connection"
                  ? event.connection
                  : null;
            if (record !== null) {
              if (queuedRecords.has(record)) return;
              queuedRecords.add(record);
            }
            queued.push(event);
            if (timer === undefined) {
              store.slabs.hold();
              timer = setTimeout(flush, EVENT_BATCH_MS);
            }
          });
          const keepalive = setInterval(() => send(": keepalive\n\n"), KEEPALIVE_MS);
          stop = () => {
            unsubscribe();
            clearInterval(keepalive);
            if (timer !== undefined) store.slabs.release();
            clearTimeout(timer);
            timer = undefined;
          };
        },
        cancel() {
          stop();
        },
      },
      { highWaterMark: 0, size: (chunk) => chunk?.length ?? 0 },
    );
    return new Response(stream, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  });

  app.get("/api/requests/http", (c) => {
    const limitText = c.req.query("limit");
    const limit = limitText === undefined ? 50 : Number(limitText);
    if (!(Number.isInteger(limit) && limit >= 1))
      return c.json({ error: "limit must be a positive integer" }, 400);
    const summary = c.req.query("summary") === "1";
    const requests = store
      .list(limit, c.req.query("tunnel_name"))
      .map((exchange) => (summary ? exchangeSummary(exchange) : exchangeDetail(exchange)));
    return c.json({ uri: "/api/requests/http", requests });
  });

  app.get("/api/requests/http/:id", (c) => {
    const exchange = store.get(c.req.param("id"));
    if (exchange === undefined) return c.json({ error: `no request ${c.req.param("id")}` }, 404);
    return c.json(exchangeDetail(exchange));
  });

  app.post("/api/requests/http", async (c) => {
    let asked: ReturnType<typeof parseReplay>;
    try {
      asked = parseReplay(await c.req.json());
    } catch (error) {
      const message = error instanceof BadRequest ? error.message : "the body must be JSON";
      return c.json({ error: message }, 400);
    }
    const original = store.get(asked.id);
    if (original === undefined) return c.json({ error: `no request ${asked.id}` }, 404);
    const tunnelName = asked.tunnelName ?? original.tunnelName;
    const tunnel = source.tunnels().find((t) => t.name === tunnelName);
    if (tunnel === undefined)
      return c.json({ error: `no tunnel ${tunnelName} to replay to (closed since?)` }, 404);
    try {
      const exchange = await replay(store, original, tunnel.local, asked.edits, source.replayTimeoutMs);
      return c.json(exchangeDetail(exchange));
    } catch (error) {
      if (error instanceof ReplayError) return c.json({ error: error.message }, error.status);
      throw error;
    }
  });

  app.delete("/api/requests/http", (c) => {
    store.clear();
    return c.body(null, 204);
  });

  app.get("/api/connections/tcp", (c) =>
    c.json({ uri: "/api/connections/tcp", connections: store.connections().map(connectionView) }),
  );

  app.get("/api/tunnels", (c) =>
    c.json({
      uri: "/api/tunnels",
      tunnels: source.tunnels().map((tunnel) => ({
        name: tunnel.name,
        uri: `/api/tunnels/${encodeURIComponent(tunnel.name)}`,
        public_url: tunnel.url,
        proto:
          tunnel.kind === "http"
            ? tunnel.url.startsWith("https:")
              ? "https"
              : "http"
            : (tunnel.kind ?? "tcp"),
        config: { addr: `${tunnel.local.host}:${tunnel.local.port}` },
      })),
    }),
  );

  app.get("/api/status", (c) => c.json(statusOf(source)));
  app.get("/api/history", (c) => c.json(source.store.history.view()));

  app.notFound((c) => c.json({ error: `no such path ${c.req.path}` }, 404));
  return app;
}
