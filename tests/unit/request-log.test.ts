/**
 * The client's request log: one line per response, read off the relayed bytes however they are split;
 * trouble (a malformed message, an upgrade) switches it off for the connection without throwing. The
 * same cases run against both producers of the lines: the request log's own tap (the inspector off)
 * and the inspector's capture (on).
 */

import { describe, expect, test } from "bun:test";
import { InspectorTap } from "../../shared/client/inspector/capture.ts";
import { InspectorStore } from "../../shared/client/inspector/store.ts";
import { batchedLines, RequestLogTap } from "../../shared/client/request-log.ts";
import type { StreamTap } from "../../shared/relay/stream.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

/** The two taps that print request lines, by name. */
const producers: Record<string, (print: (line: string) => void) => StreamTap> = {
  "request log tap": (print) => new RequestLogTap(print),
  "inspector capture": (print) =>
    new InspectorTap({
      store: new InspectorStore(),
      tunnelName: "web",
      remote: "192.0.2.1:5000",
      kind: "http",
      logRequest: print,
    }),
};

/** Feeds `text` in pieces of `size` bytes. */
function feed(into: (b: Uint8Array) => void, text: string, size = Number.POSITIVE_INFINITY): void {
  const all = bytes(text);
  for (let at = 0; at < all.length; at += size) into(all.subarray(at, Math.min(all.length, at + size)));
}

const line = (method: string, target: string, status: number, size: number) =>
  new RegExp(`^\\d\\d:\\d\\d:\\d\\d ${method} ${target.replace(/[?]/g, "\\?")} ${status} \\d+ ms ${size} B$`);

for (const [name, make] of Object.entries(producers))
  describe(name, () => {
    /** A tap and the lines it printed. */
    function tap(): { tap: StreamTap; lines: string[] } {
      const lines: string[] = [];
      return { tap: make((line) => lines.push(line)), lines };
    }

    test("one line per exchange: time, method, target, status, duration and body bytes", () => {
      const { tap: t, lines } = tap();
      feed((b) => t.toSocket(b), "GET /index.html?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
      expect(lines).toEqual([]);
      feed((b) => t.fromSocket(b), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(line("GET", "/index.html?x=1", 200, 5));
    });

    test("pipelined requests and responses split byte by byte: lines in order, each with its own size", () => {
      const { tap: t, lines } = tap();
      feed(
        (b) => t.toSocket(b),
        "GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyzHEAD /c HTTP/1.1\r\nHost: a\r\n\r\n",
        1,
      );
      feed(
        (b) => t.fromSocket(b),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        1,
      );
      expect(lines).toHaveLength(3);
      expect(lines[0]).toMatch(line("GET", "/a", 200, 2));
      expect(lines[1]).toMatch(line("POST", "/b", 201, 22)); // the body as relayed: chunk framing included
      expect(lines[2]).toMatch(line("HEAD", "/c", 200, 0)); // a HEAD response has no body whatever it says
    });

    test("an interim 100 Continue is not the status logged; the final answer is", () => {
      const { tap: t, lines } = tap();
      feed(
        (b) => t.toSocket(b),
        "PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
      );
      feed((b) => t.fromSocket(b), "HTTP/1.1 100 Continue\r\n\r\n");
      expect(lines).toEqual([]);
      feed((b) => t.toSocket(b), "hi");
      feed((b) => t.fromSocket(b), "HTTP/1.1 204 No Content\r\n\r\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(line("PUT", "/up", 204, 0));
    });

    test("a 101 logs the upgrade and stops: what follows is not HTTP and prints nothing", () => {
      const { tap: t, lines } = tap();
      feed(
        (b) => t.toSocket(b),
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
      );
      feed(
        (b) => t.fromSocket(b),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
      );
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(line("GET", "/ws", 101, 0));
      expect(() => {
        feed((b) => t.fromSocket(b), "\x82\x7e\xff\xffHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        feed((b) => t.toSocket(b), "GET /after HTTP/1.1\r\nHost: a\r\n\r\n");
      }).not.toThrow();
      expect(lines).toHaveLength(1);
    });

    test("an upgrade refused: the requests held behind it are logged too (answers in separate reads)", () => {
      const { tap: t, lines } = tap();
      feed(
        (b) => t.toSocket(b),
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
      );
      feed((b) => t.fromSocket(b), "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop");
      feed((b) => t.fromSocket(b), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(line("GET", "/ws", 404, 3));
      expect(lines[1]).toMatch(line("GET", "/next", 200, 2));
    });

    test("a malformed response switches the log off for the connection, without throwing into the relay", () => {
      const { tap: t, lines } = tap();
      feed((b) => t.toSocket(b), "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n");
      expect(() => feed((b) => t.fromSocket(b), "NOT HTTP AT ALL\r\n\r\n")).not.toThrow();
      feed((b) => t.fromSocket(b), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
      expect(lines).toEqual([]);
    });

    test("a malformed request switches it off too", () => {
      const { tap: t, lines } = tap();
      expect(() => feed((b) => t.toSocket(b), "GET /a HTTP/1.1\r\nContent-Length: x\r\n\r\n")).not.toThrow();
      feed((b) => t.fromSocket(b), "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
      expect(lines).toEqual([]);
    });
  });

test("batchedLines: a turn's lines go out in one write, the next turn's in another; 256 held are written at once", async () => {
  const writes: string[] = [];
  const print = batchedLines((text) => writes.push(text));
  const nextTurn = () => new Promise((resolve) => setImmediate(resolve));
  print("a");
  print("b");
  expect(writes).toEqual([]);
  await nextTurn();
  expect(writes).toEqual(["a\nb\n"]);
  for (let i = 0; i < 256; i++) print(`line ${i}`);
  expect(writes).toHaveLength(2);
  expect((writes[1] as string).split("\n")).toHaveLength(257);
  print("c");
  await nextTurn();
  expect(writes).toEqual(["a\nb\n", writes[1] as string, "c\n"]);
});
