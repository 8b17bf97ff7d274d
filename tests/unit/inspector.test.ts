/**
 * The inspector's pieces in-process: the ring and the store (capacity, body budget, subscribers,
 * clear), the capture tap fed real HTTP/1.1 bytes split anywhere (bodies, caps, chunked, pipelining,
 * 100 Continue, upgrades, close-delimited responses, resets, TCP records), the body views (JSON and
 * forms pretty-printed, gzip undone, binary as hex) and the replay's request bytes.
 */

import { describe, expect, test } from "bun:test";
import { gzipSync } from "node:zlib";
import {
  type CapturedBody,
  decodedBody,
  type HttpExchange,
  InspectorTap,
} from "../../shared/client/inspector/capture.ts";
import { ReplayError, replayRequest } from "../../shared/client/inspector/replay.ts";
import { parseInspect } from "../../shared/client/inspector/settings.ts";
import { InspectorStore, Ring, type StoreEvent } from "../../shared/client/inspector/store.ts";
import { bodyView, exchangeDetail, hexDump } from "../../shared/client/inspector/view.ts";
import { ResetCode } from "../../shared/wire/protocol.ts";

const text = (s: string) => new TextEncoder().encode(s);

/** Feeds `bytes` in pieces of `size` (1 = byte by byte). */
function feed(into: (b: Uint8Array) => void, bytes: Uint8Array, size: number): void {
  for (let at = 0; at < bytes.length; at += size) into(bytes.subarray(at, at + size));
}

function httpTap(store = new InspectorStore(), remote = "192.0.2.7:5555") {
  return { store, tap: new InspectorTap({ store, tunnelName: "web", remote, kind: "http" }) };
}

describe("Ring", () => {
  test("keeps the last N, newest first; shift and clear", () => {
    const ring = new Ring<number>(3);
    expect(ring.push(1)).toBeUndefined();
    ring.push(2);
    ring.push(3);
    expect(ring.push(4)).toBe(1);
    expect(ring.newest()).toEqual([4, 3, 2]);
    expect(ring.newest(2)).toEqual([4, 3]);
    expect(ring.shift()).toBe(2);
    expect(ring.length).toBe(2);
    ring.push(5);
    ring.push(6);
    expect(ring.newest()).toEqual([6, 5, 4]);
    ring.clear();
    expect(ring.newest()).toEqual([]);
    expect(() => new Ring(0)).toThrow(RangeError);
  });

  test("a thousand pushes through a ring of 7 keep exactly the last 7", () => {
    const ring = new Ring<number>(7);
    for (let i = 0; i < 1000; i++) ring.push(i);
    expect(ring.newest()).toEqual([999, 998, 997, 996, 995, 994, 993]);
  });
});

describe("InspectorStore", () => {
  test("capacity: the oldest exchanges go, ids of those gone are unknown; subscribers hear every change; clear", () => {
    const store = new InspectorStore({ capacity: 2 });
    const heard: StoreEvent["type"][] = [];
    const stop = store.subscribe((event) => heard.push(event.type));
    for (const path of ["/1", "/2", "/3"]) {
      const { tap } = httpTap(store);
      tap.toSocket(text(`GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`));
      tap.fromSocket(text("HTTP/1.1 204 No Content\r\n\r\n"));
    }
    expect(store.list().map((e) => e.request.target)).toEqual(["/3", "/2"]);
    expect(store.get("req_1")).toBeUndefined();
    expect(store.get("req_3")?.state).toBe("complete");
    expect(store.list(1, "web").map((e) => e.id)).toEqual(["req_3"]);
    expect(store.list(5, "other")).toEqual([]);
    expect(heard).toEqual(["request", "request", "request", "request", "request", "request"]);
    expect(store.stats.requestsTotal).toBe(3);
    store.clear();
    expect(store.size).toBe(0);
    expect(heard.at(-1)).toBe("clear");
    stop();
    store.clear();
    expect(heard.length).toBe(7);
  });

  test("body budget: past it, the oldest exchanges go until the kept bodies fit", () => {
    const store = new InspectorStore({ capacity: 100, bodyBudget: 25_000 });
    for (let i = 0; i < 5; i++) {
      const { tap } = httpTap(store);
      tap.toSocket(text("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
      tap.fromSocket(text(`HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n${"x".repeat(10_000)}`));
    }
    expect(store.size).toBe(2);
    expect(store.keptBodyBytes).toBe(20_000);
    store.clear();
    expect(store.keptBodyBytes).toBe(0);
  });
});

describe("slabs", () => {
  /** One small exchange on a tap of its own: `path` and a body naming it, `size` bytes long. */
  function exchange(store: InspectorStore, path: string, size: number, chunked = false): void {
    const { tap } = httpTap(store);
    const body = `${path}:`.padEnd(size, "z");
    tap.toSocket(text(`GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`));
    tap.fromSocket(
      text(
        chunked
          ? `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${size.toString(16)}\r\n${body}\r\n0\r\n\r\n`
          : `HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\n\r\n${body}`,
      ),
    );
    tap.closed();
  }

  test("reused once their exchanges left the store: what is kept always reads its own bytes", () => {
    const store = new InspectorStore({ capacity: 5 });
    let gone: HttpExchange | undefined;
    for (let i = 1; i <= 3000; i++) {
      exchange(store, `/${i}`, 500 + (i % 7) * 300, i % 3 === 0);
      if (i === 10) gone = store.get("req_10");
      if (i % 100 !== 0) continue;
      for (const kept of store.list()) {
        const path = kept.request.target;
        expect(kept.id).toBe(`req_${path.slice(1)}`);
        expect(decodedBody(kept.response?.body as CapturedBody)?.subarray(0, path.length + 1)).toEqual(
          text(`${path}:`),
        );
        expect(kept.response?.headers[0]?.[0]).toMatch(/^(Content-Length|Transfer-Encoding)$/);
      }
    }
    // An exchange held long after the store let it go was reused for a later one, records and all.
    expect(store.get("req_10")).toBeUndefined();
    expect(gone?.seq).toBeGreaterThan(10);
    expect(gone?.request.target).toBe(`/${gone?.seq}`);
  });

  test("a replay's exchange is never reused; one still pending is not either", () => {
    const store = new InspectorStore({ capacity: 2 });
    const replayed = new InspectorTap({
      store,
      tunnelName: "web",
      remote: "replay",
      kind: "http",
      replayOf: "req_1",
    });
    replayed.toSocket(text("GET /replay HTTP/1.1\r\nHost: a\r\n\r\n"));
    replayed.fromSocket(text("HTTP/1.1 204 No Content\r\n\r\n"));
    const replay = replayed.lastExchange;
    const { tap: slow } = httpTap(store);
    slow.toSocket(text("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"));
    const pending = store.get("req_2");
    for (let i = 0; i < 50; i++) exchange(store, `/${i}`, 100);
    expect(replay?.request.target).toBe("/replay");
    expect(pending?.request.target).toBe("/slow");
    slow.fromSocket(text("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    expect(pending?.state).toBe("complete");
    expect(pending?.response?.status).toBe(200);
  });

  test("a holder (the live stream between batches) keeps every slab from reuse", () => {
    const store = new InspectorStore({ capacity: 2 });
    exchange(store, "/first", 1000);
    const first = store.get("req_1");
    store.slabs.hold();
    for (let i = 0; i < 500; i++) exchange(store, `/${i}`, 1000);
    expect(store.get("req_1")).toBeUndefined();
    expect(first?.request.target).toBe("/first");
    store.slabs.release();
  });

  test("ids: only req_ and the number as written", () => {
    const store = new InspectorStore();
    exchange(store, "/a", 10);
    expect(store.get("req_1")?.request.target).toBe("/a");
    for (const id of ["req_01", "req_1x", "req_", "1", "req_0", "req_-1", "req_1.0"])
      expect(store.get(id)).toBeUndefined();
  });
});

describe("InspectorTap on HTTP", () => {
  for (const size of [1, 7, 100_000])
    test(`a POST with a JSON body and its answer, fed in pieces of ${size}`, () => {
      const { store, tap } = httpTap();
      const body = JSON.stringify({ a: 1, list: [1, 2] });
      feed(
        (b) => tap.toSocket(b),
        text(
          `POST /api?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
        ),
        size,
      );
      const [pending] = store.list();
      expect(pending?.state).toBe("pending");
      feed((b) => tap.fromSocket(b), text("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"), size);
      const exchange = store.get("req_1");
      expect(exchange?.state).toBe("complete");
      expect(exchange?.remote).toBe("192.0.2.7:5555");
      expect(exchange?.request.method).toBe("POST");
      expect(exchange?.request.target).toBe("/api?x=1");
      expect(new TextDecoder().decode(exchange?.request.body.bytes)).toBe(body);
      expect(exchange?.response?.status).toBe(201);
      expect(exchange?.response?.body.size).toBe(2);
      expect(exchange?.durationMs).toBeGreaterThanOrEqual(0);
      const detail = exchangeDetail(exchange as never);
      expect(detail.request.body.pretty).toBe(JSON.stringify({ a: 1, list: [1, 2] }, null, 2));
      expect(Buffer.from(detail.response?.raw as string, "base64").toString()).toBe(
        "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
      );
      tap.closed();
      expect(store.stats).toMatchObject({ connectionsOpen: 0, connectionsTotal: 1 });
    });

  test("bodies are kept up to the cap and counted past it", () => {
    const store = new InspectorStore({ bodyCap: 1000 });
    const { tap } = httpTap(store);
    tap.toSocket(text("GET /big HTTP/1.1\r\nHost: a\r\n\r\n"));
    tap.fromSocket(text("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"));
    for (let i = 0; i < 5; i++) tap.fromSocket(new Uint8Array(1000).fill(65 + i));
    const body = store.get("req_1")?.response?.body;
    expect(body).toMatchObject({ size: 5000, truncated: true });
    expect(body?.bytes.length).toBe(1000);
    expect(body?.bytes.every((b) => b === 65)).toBe(true);
  });

  test("pipelined requests, a chunked body (decoded for display), 100 Continue, HEAD", () => {
    const { store, tap } = httpTap();
    tap.toSocket(
      text(
        "POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n" +
          "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n" +
          "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n",
      ),
    );
    tap.fromSocket(text("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"));
    tap.fromSocket(text("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"));
    const [head, post] = store.list();
    expect(post?.response?.status).toBe(200);
    expect(decodedBody(post?.request.body as never)).toEqual(text("hello world"));
    expect(bodyView(post?.request.body as never, []).text).toBe("hello world");
    expect(head?.request.method).toBe("HEAD");
    expect(head?.state).toBe("complete");
    expect(head?.response?.body.size).toBe(0);
  });

  test("a 101 answer ends the exchange as upgraded; bytes after it are not parsed", () => {
    const { store, tap } = httpTap();
    tap.toSocket(text("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"));
    tap.fromSocket(
      text("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
    );
    tap.fromSocket(new Uint8Array([0x81, 0x02, 0x68, 0x69]));
    tap.toSocket(new Uint8Array([0x88, 0x80, 0, 0, 0, 0]));
    expect(store.list()).toHaveLength(1);
    expect(store.get("req_1")).toMatchObject({ state: "complete", upgraded: true });
    expect(store.stats.bytesOut).toBeGreaterThan(4);
  });

  test("a close-delimited response ends when the stream closes; a reset fails what was pending", () => {
    const { store, tap } = httpTap();
    tap.toSocket(text("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    tap.fromSocket(text("HTTP/1.1 200 OK\r\n\r\nuntil close"));
    expect(store.get("req_1")?.state).toBe("pending");
    tap.closed();
    expect(store.get("req_1")?.state).toBe("complete");
    expect(new TextDecoder().decode(store.get("req_1")?.response?.body.bytes)).toBe("until close");

    const second = httpTap(store).tap;
    second.toSocket(text("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"));
    second.closed({ by: "peer", code: ResetCode.Aborted, reason: "visitor went away" });
    expect(store.get("req_2")).toMatchObject({
      state: "error",
      error: "reset from the visitor's side: visitor went away",
    });
  });

  test("an upgrade refused: the requests sent after it are captured once the answer came", () => {
    const { store, tap } = httpTap();
    tap.toSocket(
      text(
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
      ),
    );
    expect(store.size).toBe(1);
    tap.fromSocket(text("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"));
    tap.fromSocket(text("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!"));
    const [next, ws] = store.list();
    expect(ws).toMatchObject({ state: "complete", upgraded: undefined });
    expect(ws?.response?.status).toBe(400);
    expect(next?.request.target).toBe("/next");
    expect(next?.state).toBe("complete");
  });

  test("heads kept as they came and read when asked; kept bytes are copies, never views of the stream's", () => {
    const { store, tap } = httpTap();
    expect(tap.keepsViews).toBe(false);
    const request = text(
      "DELETE /x?y=1 HTTP/1.0\r\nHost:  a \r\nX-List: 1, 2\r\nContent-Length: 3, 3\r\n\r\nabc",
    );
    tap.toSocket(request);
    const response = text("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip\r\n\r\nuntil close");
    tap.fromSocket(response);
    request.fill(0);
    response.fill(0);
    tap.closed();
    const exchange = store.get("req_1");
    expect(exchange?.request).toMatchObject({ method: "DELETE", target: "/x?y=1", version: "HTTP/1.0" });
    expect(exchange?.request.headers).toEqual([
      ["Host", "a"],
      ["X-List", "1, 2"],
      ["Content-Length", "3, 3"],
    ]);
    expect(new TextDecoder().decode(exchange?.request.body.bytes)).toBe("abc");
    expect(exchange?.response).toMatchObject({ status: 404, reason: "Not Found", version: "HTTP/1.1" });
    expect(new TextDecoder().decode(exchange?.response?.body.bytes)).toBe("until close");
    const detail = exchangeDetail(exchange as never);
    expect(Buffer.from(detail.request.raw, "base64").toString()).toStartWith(
      "DELETE /x?y=1 HTTP/1.0\r\nHost:  a \r\n",
    );
    expect(detail.response?.status).toBe("404 Not Found");
  });

  test("framing fields that do not add up stop the capture of that connection", () => {
    for (const bad of [
      "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
      "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
      "GET / SPDY/3\r\nHost: a\r\n\r\n",
    ]) {
      const { store, tap } = httpTap();
      tap.toSocket(text(bad));
      tap.toSocket(text("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
      expect(store.size).toBe(0);
    }
  });

  test("bytes that are not HTTP stop the capture, never throw", () => {
    const { store, tap } = httpTap();
    expect(() => tap.toSocket(text("\x16\x03\x01 not http at all\r\n\r\n"))).not.toThrow();
    expect(() => tap.fromSocket(text("garbage"))).not.toThrow();
    expect(store.size).toBe(0);
    expect(store.stats.bytesIn).toBeGreaterThan(0);
  });
});

describe("InspectorTap on TCP", () => {
  test("one record per connection: bytes each way, and FIN, RST or error at the end", () => {
    const store = new InspectorStore();
    const ends: [Parameters<InspectorTap["closed"]>[0], string][] = [
      [undefined, "fin"],
      [{ by: "peer", code: ResetCode.Aborted, reason: "reset by visitor" }, "rst"],
      [{ by: "local", code: ResetCode.Aborted, reason: "connection aborted: ECONNRESET" }, "rst"],
      [{ by: "local", code: ResetCode.ConnectFailed, reason: "refused" }, "error"],
      [{ by: "gone", code: ResetCode.Shutdown, reason: "session ended" }, "error"],
    ];
    for (const [reset] of ends) {
      const tap = new InspectorTap({ store, tunnelName: "db", remote: "198.51.100.1:1", kind: "tcp" });
      expect(store.connections()[0]?.end).toBeUndefined();
      tap.toSocket(new Uint8Array(10));
      tap.fromSocket(new Uint8Array(32));
      tap.closed(reset);
      tap.closed(reset); // once only
    }
    const records = store.connections().reverse();
    expect(records.map((c) => c.end)).toEqual(ends.map(([, end]) => end) as never);
    expect(records.every((c) => c.bytesIn === 10 && c.bytesOut === 32)).toBe(true);
    expect(records[1]?.reason).toBe("reset from the visitor's side: reset by visitor");
    expect(store.stats).toMatchObject({
      connectionsOpen: 0,
      connectionsTotal: 5,
      bytesIn: 50,
      bytesOut: 160,
    });
  });
});

describe("body views", () => {
  const body = (bytes: Uint8Array) => ({ bytes, size: bytes.length, truncated: false, chunked: false });

  test("JSON and forms pretty-printed, gzip undone, binary as a hex dump, empty as empty", () => {
    expect(bodyView(body(text('{"a":[1]}')), [["Content-Type", "application/json"]])).toMatchObject({
      kind: "text",
      format: "json",
      pretty: '{\n  "a": [\n    1\n  ]\n}',
    });
    expect(
      bodyView(body(text("q=a+b&n=%C3%A9")), [["content-type", "application/x-www-form-urlencoded"]]),
    ).toMatchObject({ format: "form", pretty: "q = a b\nn = é" });
    const gz = bodyView(body(new Uint8Array(gzipSync('{"zipped":true}'))), [
      ["Content-Encoding", "gzip"],
      ["Content-Type", "application/json"],
    ]);
    expect(gz).toMatchObject({ decoded_from: "gzip", pretty: '{\n  "zipped": true\n}' });
    const binary = bodyView(body(new Uint8Array([0, 1, 2, 0xff, 0x41])), [["Content-Type", "image/png"]]);
    expect(binary.kind).toBe("binary");
    expect(binary.hex).toBe(`00000000  00 01 02 ff 41${" ".repeat(33)}  ....A`);
    expect(bodyView(body(new Uint8Array(0)), []).kind).toBe("empty");
    expect(hexDump(new Uint8Array(40), 16)).toEndWith("… 24 more bytes");
  });
});

describe("replay request", () => {
  function captured(request: string) {
    const { store, tap } = httpTap();
    tap.toSocket(text(request));
    tap.fromSocket(text("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    return store.get("req_1") as never;
  }

  test("the captured request with its own framing (Content-Length, Connection: close); a chunked body sent whole", () => {
    const original = captured(
      "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    expect(new TextDecoder().decode(replayRequest(original))).toBe(
      "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
  });

  test("edits replace method, path, headers and body; a bad edit is a 400, a cut body without a new one a 409", () => {
    const original = captured("GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    expect(
      new TextDecoder().decode(
        replayRequest(original, {
          method: "PUT",
          path: "/b?c=1",
          headers: [["Host", "x"]],
          body: text("{}"),
        }),
      ),
    ).toBe("PUT /b?c=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
    expect(() => replayRequest(original, { headers: [["Bad Name", "v"]] })).toThrow(ReplayError);
    const store = new InspectorStore({ bodyCap: 4 });
    const { tap } = httpTap(store);
    tap.toSocket(text("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"));
    const cut = store.get("req_1") as never;
    try {
      replayRequest(cut);
      throw new Error("no error");
    } catch (error) {
      expect((error as ReplayError).status).toBe(409);
    }
    expect(new TextDecoder().decode(replayRequest(cut, { body: text("new") }))).toEndWith("\r\n\r\nnew");
  });
});

describe("--inspect", () => {
  test("off, HOST:PORT, PORT, port 0; anything else one line", () => {
    expect(parseInspect("off", "--inspect")).toBe("off");
    expect(parseInspect("127.0.0.1:4041", "--inspect")).toEqual({ host: "127.0.0.1", port: 4041 });
    expect(parseInspect("[::1]:0", "--inspect")).toEqual({ host: "::1", port: 0 });
    expect(parseInspect("5000", "--inspect")).toEqual({ host: "127.0.0.1", port: 5000 });
    expect(parseInspect("0", "--inspect")).toEqual({ host: "127.0.0.1", port: 0 });
    expect(() => parseInspect("nope", "--inspect")).toThrow(
      "--inspect: 'nope' is not HOST:PORT, PORT or off",
    );
  });
});
