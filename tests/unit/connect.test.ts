/**
 * The client's control connection against small in-process servers: the greeting (hello, and sync on a
 * resume), the headers it presents, and how each failure is classified: fatal or worth retrying, and
 * the one line that says why (the server's refusal, something that is no sockets server, a proxy, the
 * wrong scheme, nothing listening, no answer).
 */

import { afterEach, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { ConnectError, connectControl } from "../../shared/client/connect.ts";
import { AUTH_HEADER, CONNECT_PATH, RESUME_HEADER, SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import { testHello } from "../support/hello.ts";
import { cleanup, defer } from "../support/processes.ts";
import { freePort } from "../support/sockets.ts";

afterEach(cleanup);

const hello = testHello;

/** A WebSocket server that sends `messages` on open, and records each upgrade request's headers. */
function wsServer(messages: (string | Uint8Array)[]): { url: URL; requests: Headers[] } {
  const requests: Headers[] = [];
  const server: Server<undefined> = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req, srv) {
      requests.push(req.headers);
      if (
        new URL(req.url).pathname === CONNECT_PATH &&
        srv.upgrade(req, { headers: { "Sec-WebSocket-Protocol": SUBPROTOCOL } })
      )
        return undefined;
      return new Response("not here\n", { status: 404 });
    },
    websocket: {
      open(ws) {
        for (const m of messages) ws.send(m);
      },
      message() {},
    },
  });
  defer(() => server.stop(true));
  return { url: new URL(`ws://127.0.0.1:${server.port}`), requests };
}

/** An HTTP server that answers every request with `status`, `body` and `type`. */
function httpServer(
  status: number,
  body: string,
  type = "text/plain; charset=utf-8",
  extra: Record<string, string> = {},
): URL {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => new Response(body, { status, headers: { "content-type": type, ...extra } }),
  });
  defer(() => server.stop(true));
  return new URL(`ws://127.0.0.1:${server.port}`);
}

/** The ConnectError connecting fails with. */
async function failure(options: Parameters<typeof connectControl>[0]): Promise<ConnectError> {
  try {
    const connection = await connectControl(options);
    connection.ws.close();
  } catch (error) {
    expect(error).toBeInstanceOf(ConnectError);
    return error as ConnectError;
  }
  throw new Error("connected where it should have failed");
}

describe("greeting", () => {
  test("a new session: resolves with the hello; the subprotocol and the API key go with the upgrade", async () => {
    const server = wsServer([JSON.stringify(hello())]);
    const connection = await connectControl({ url: server.url, apiKey: "k3y" });
    defer(() => connection.ws.close());
    expect(connection.hello).toEqual(hello());
    expect(connection.sync).toBeUndefined();
    const request = server.requests[0] as Headers;
    expect(request.get(AUTH_HEADER)).toBe("Bearer k3y");
    expect(request.get("sec-websocket-protocol")).toBe(SUBPROTOCOL);
    expect(request.get(RESUME_HEADER)).toBeNull();
  });

  test("a resume: presents session and secret, and waits for the server's sync after a resumed hello", async () => {
    const sync = { type: "sync", streams: [], finished: [], accepted: 0 };
    const server = wsServer([JSON.stringify(hello(true)), JSON.stringify(sync)]);
    const connection = await connectControl({ url: server.url, resume: { session: "s1", secret: "secret" } });
    defer(() => connection.ws.close());
    expect(connection.hello.resumed).toBe(true);
    expect(connection.sync).toEqual(sync as never);
    expect(server.requests[0]?.get(RESUME_HEADER)).toBe("s1 secret");
    expect(server.requests[0]?.get(AUTH_HEADER)).toBeNull();
  });

  test("anything but a hello first (a binary frame, another message, not JSON): fatal, names the protocol", async () => {
    for (const first of [
      new Uint8Array([1, 2, 3]),
      JSON.stringify({ type: "going-away", drain: 1 }),
      "{nope",
    ]) {
      const error = await failure({ url: wsServer([first]).url });
      expect(error.fatal).toBe(true);
      expect(error.message).toStartWith(`server at ws://127.0.0.1:`);
      expect(error.message).toContain(`does not speak ${SUBPROTOCOL}`);
    }
  });
});

describe("a refused upgrade: the server's own one line, fatal only where retrying cannot help", () => {
  const cases: [number, boolean, RegExp][] = [
    [401, true, /^server ws:\/\/127\.0\.0\.1:\d+ wants an API key and none was sent: set SOCKETS_API_KEY$/],
    [426, true, /^server ws:\/\/127\.0\.0\.1:\d+ refused the connection: 426 why not$/],
    [403, true, /refused the connection: 403 why not$/],
    [429, false, /refused the connection: 429 why not$/],
    [503, false, /refused the connection: 503 why not$/],
    [400, false, /refused the connection: 400 why not$/],
  ];
  for (const [status, fatal, message] of cases)
    test(`${status}: ${fatal ? "fatal" : "retry"}`, async () => {
      const error = await failure({ url: httpServer(status, "why not\nsecond line\n") });
      expect(error.message).toMatch(message);
      expect(error.fatal).toBe(fatal);
    });
  test("401 with a key sent: the key was rejected, in the server's words", async () => {
    const error = await failure({ url: httpServer(401, "why not\n"), apiKey: "typo" });
    expect(error.message).toMatch(/^server ws:\/\/127\.0\.0\.1:\d+ rejected the API key: why not$/);
    expect(error.fatal).toBe(true);
  });
});

describe("something else on the port", () => {
  test("a web page: not a sockets server, with its status and type", async () => {
    const error = await failure({ url: httpServer(200, "<html></html>", "text/html") });
    expect(error.message).toMatch(
      /^ws:\/\/127\.0\.0\.1:\d+ is not a sockets server \(it answered HTTP 200 OK, text\/html instead of a WebSocket upgrade\); check the host and port in --server$/,
    );
    expect(error.fatal).toBe(false);
  });

  test("a redirect names where it points", async () => {
    const error = await failure({
      url: httpServer(301, "", "text/html", { location: "https://example.com/" }),
    });
    expect(error.message).toContain(
      "answered HTTP 301 Moved Permanently, text/html, to https://example.com/",
    );
  });

  test("a refusal status, but not text/plain: also not a sockets server", async () => {
    const error = await failure({ url: httpServer(401, "<h1>login</h1>", "text/html") });
    expect(error.message).toContain("is not a sockets server (it answered HTTP 401 Unauthorized, text/html");
  });

  test("502, 503 or 504 as a page: a proxy that cannot reach the server behind it", async () => {
    for (const status of [502, 503, 504]) {
      const error = await failure({ url: httpServer(status, "<h1>Bad gateway</h1>", "text/html") });
      expect(error.message).toMatch(
        /^ws:\/\/127\.0\.0\.1:\d+ answered HTTP 50[234] .*: a proxy there cannot reach the sockets server behind it$/,
      );
      expect(error.fatal).toBe(false);
    }
  });
});

describe("no answer", () => {
  test("nothing listening: connection refused, not fatal", async () => {
    const port = freePort();
    const error = await failure({ url: new URL(`ws://127.0.0.1:${port}`) });
    expect(error.message).toBe(`cannot reach server ws://127.0.0.1:${port}: connection refused`);
    expect(error.fatal).toBe(false);
  });

  test("wss:// to a plain server: says it speaks ws://, with the URL to use", async () => {
    const url = wsServer([JSON.stringify(hello())]).url;
    const error = await failure({ url: new URL(`wss://127.0.0.1:${url.port}`) });
    expect(error.message).toBe(
      `server wss://127.0.0.1:${url.port} speaks plain ws://, not TLS (wss://): use --server ws://127.0.0.1:${url.port}`,
    );
  });

  test("a port that accepts and never answers: gives up after the timeout", async () => {
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    defer(() => silent.stop(true));
    const started = performance.now();
    const error = await failure({ url: new URL(`ws://127.0.0.1:${silent.port}`), timeout: 300 });
    expect(error.message).toBe(`no answer from ws://127.0.0.1:${silent.port}/ within 0.3 s`);
    expect(performance.now() - started).toBeLessThan(3000);
  });
});
