/**
 * The control port on a real listener (port 0) with a tiny Hono app of its own: the server's own
 * requests keep their connection alive, a refused upgrade ends it, an accepted one continues on the
 * same socket as a WebSocket, and NAME.DOMAIN requests never reach the app.
 */

import { afterEach, expect, test } from "bun:test";
import { Hono } from "hono";
import { type ControlEnv, listenControl } from "../../shared/server/control-port.ts";
import { acceptKey, type RawWebSocket } from "../../shared/server/ws-server.ts";
import { cleanup, defer, eventually } from "../support/processes.ts";
import { RawHttp } from "../support/raw-http.ts";
import { recordingVisitor } from "../support/sockets.ts";
import { clientFrame } from "../support/ws-frames.ts";

afterEach(cleanup);

type Data = { who: string };

/** A control port whose app answers /health and /connect (an upgrade that needs `Bearer right`). */
function start() {
  let served = 0;
  const opened: RawWebSocket<Data>[] = [];
  const messages: (string | Uint8Array)[] = [];
  const app = new Hono<{ Bindings: ControlEnv<Data> }>();
  app.get("/health", (c) => c.json({ status: "ok", served: ++served }));
  app.get("/connect", (c) => {
    served++;
    if (c.req.header("authorization") !== "Bearer right") return c.text("bad key\n", 401);
    if (
      c.env.upgrade(c.req.raw, { data: { who: "alice" }, headers: { "Sec-WebSocket-Protocol": "test.v1" } })
    )
      return new Response(null);
    return c.text("expected a WebSocket upgrade\n", 400);
  });
  const control = listenControl<Data>({
    host: "127.0.0.1",
    port: 0,
    domain: "localhost",
    route: () => undefined,
    log: { info() {}, warn() {}, error() {} },
    app,
    websocket: {
      open: (ws) => opened.push(ws),
      message: (_ws, message) => messages.push(message),
      drain() {},
      close() {},
    },
    limits: { maxPayloadLength: 1024 * 1024, backpressureLimit: 16 * 1024 * 1024 },
  });
  defer(() => control.stop(true));
  return { port: control.port, served: () => served, opened, messages };
}

const KEY = "dGhlIHNhbXBsZSBub25jZQ==";
const upgrade = (authorization: string) =>
  `GET /connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEY}\r\nAuthorization: ${authorization}\r\n\r\n`;

test("GET /health twice on one keep-alive connection: two answers from the app, the connection stays", async () => {
  const control = start();
  const conn = await RawHttp.open(control.port);
  for (const n of [1, 2]) {
    await conn.write("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    const response = await conn.readResponse();
    expect(response.status).toBe(200);
    expect(response.headers.find(([name]) => name === "content-type")?.[1]).toContain("application/json");
    expect(response.headers.find(([name]) => name === "connection")).toBeUndefined();
    expect(JSON.parse(response.body.toString())).toEqual({ status: "ok", served: n });
  }
  await Bun.sleep(100);
  expect(conn.socket.readyState).toBe("open");
  conn.destroy();
});

test("HEAD /health: the Content-Length GET would have, and no body (a GET pipelined behind it comes next)", async () => {
  const control = start();
  const conn = await RawHttp.open(control.port);
  await conn.write(
    "HEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
  );
  // The HEAD answer's head is read alone (no body follows it), then the GET's whole answer.
  const headAnswer = await conn.readHeadOnly();
  expect(headAnswer).toStartWith("HTTP/1.1 200");
  const headLength = Number(/content-length: (\d+)/i.exec(headAnswer)?.[1]);
  const get = await conn.readResponse();
  expect(get.statusLine).toStartWith("HTTP/1.1 200");
  expect(headLength).toBeGreaterThan(0);
  expect(Number(get.headers.find(([name]) => name === "content-length")?.[1])).toBe(get.body.length);
  // The GET ran second (served: 2): the HEAD was answered from the app as a GET, without its body.
  expect(JSON.parse(get.body.toString())).toEqual({ status: "ok", served: 2 });
  expect(headLength).toBe(get.body.length);
  conn.destroy();
});

test("a refused upgrade is answered, then the connection closes: what followed it is not answered", async () => {
  const control = start();
  const visitor = await recordingVisitor(control.port);
  visitor.socket.write(`${upgrade("Bearer wrong")}GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  await eventually(visitor.ended, 3000, "the connection closed");
  const answer = visitor.text();
  expect(answer).toMatch(/^HTTP\/1\.1 401 /);
  expect(answer).toContain("\r\nconnection: close\r\n");
  expect(answer.endsWith("\r\n\r\nbad key\n")).toBe(true);
  expect(answer.match(/HTTP\/1\.1/g)).toHaveLength(1);
  expect(control.served()).toBe(1);
});

test("an accepted upgrade: 101 with the accept key and the app's headers, then WebSocket frames on the same socket", async () => {
  const control = start();
  const visitor = await recordingVisitor(control.port);
  // The first frame in the same write as the upgrade request: held, then given to the WebSocket.
  visitor.socket.write(Buffer.concat([Buffer.from(upgrade("Bearer right")), clientFrame(1, "first")]));
  await eventually(() => visitor.text().includes("\r\n\r\n"), 3000, "the 101");
  const head = visitor.text();
  expect(head).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
  expect(head).toContain(`\r\nSec-WebSocket-Accept: ${acceptKey(KEY)}\r\n`);
  expect(head).toContain("\r\nSec-WebSocket-Protocol: test.v1\r\n");
  await eventually(() => control.messages.length === 1, 3000, "the held frame delivered");
  visitor.socket.write(clientFrame(2, new Uint8Array([1, 2, 3])));
  await eventually(() => control.messages.length === 2, 3000, "a second frame");
  expect(control.opened).toHaveLength(1);
  expect(control.opened[0]?.data).toEqual({ who: "alice" });
  expect(control.messages[0]).toBe("first");
  expect(Array.from(control.messages[1] as Uint8Array)).toEqual([1, 2, 3]);
});

test("a request for NAME.DOMAIN is a tunnel's, never the app's: 404 when no tunnel has that name", async () => {
  const control = start();
  const visitor = await recordingVisitor(control.port);
  visitor.socket.write("GET /health HTTP/1.1\r\nHost: demo.localhost\r\n\r\n");
  await eventually(visitor.ended, 3000, "answered and closed");
  expect(visitor.text()).toMatch(/^HTTP\/1\.1 404 /);
  expect(visitor.text()).toContain("no tunnel at demo.localhost");
  expect(control.served()).toBe(0);
});
