/**
 * The streaming HTTP/1.1 codec: heads round-trip, every body kind frames the same however the bytes
 * are split, responses follow the request methods (HEAD, 1xx, 204, 304, 101, close-delimited), the
 * forwarding rules hold, and anything malformed — random bytes, mutated messages — is an HttpParseError
 * and never another exception.
 */

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import {
  type FramerEvent,
  findHeadEnd,
  forwardRequestBytes,
  forwardRequestHead,
  forwardResponseHead,
  HttpParseError,
  MAX_HEAD_BYTES,
  type MessageFramer,
  parseRequestHead,
  parseRequestHeadBytes,
  parseResponseHead,
  parseResponseHeadBytes,
  RequestFramer,
  type RequestHead,
  type RequestHeadLine,
  ResponseFramer,
  type ResponseHead,
  type ResponseHeadLine,
  requestHost,
  ScannedRequestHead,
  scanRequestHead,
  scanResponseHead,
  serializeHead,
} from "../../shared/http1/framer.ts";

const RUNS = { numRuns: 200 };

/** One byte per character (Latin-1). */
function bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

function text(b: Uint8Array): string {
  return String.fromCharCode(...b);
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Splits `b` at the given offsets (taken modulo its length + 1). */
function split(b: Uint8Array, cuts: readonly number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => c % (b.length + 1)))].sort((x, y) => x - y);
  const parts: Uint8Array[] = [];
  let from = 0;
  for (const to of [...at, b.length]) {
    if (to > from) parts.push(b.subarray(from, to));
    from = Math.max(from, to);
  }
  return parts;
}

type AnyHead = RequestHead | ResponseHead;

/** Feeds the chunks (and `end()` if asked) and merges adjacent body/passthrough events. */
function run<H extends AnyHead>(
  framer: MessageFramer<H>,
  chunks: readonly Uint8Array[],
  end = false,
): FramerEvent<H>[] {
  const events: FramerEvent<H>[] = [];
  for (const chunk of chunks) events.push(...framer.feed(chunk));
  if (end) events.push(...framer.end());
  const merged: FramerEvent<H>[] = [];
  for (const e of events) {
    const last = merged[merged.length - 1];
    if ((e.type === "body" || e.type === "passthrough") && last?.type === e.type)
      merged[merged.length - 1] = { type: e.type, bytes: concat([last.bytes, e.bytes]) };
    else if (!((e.type === "body" || e.type === "passthrough") && e.bytes.length === 0)) merged.push(e);
  }
  return merged;
}

/** The event types and body texts, for readable assertions. */
function summary(events: readonly FramerEvent<AnyHead>[]): string[] {
  return events.map((e) => {
    if (e.type === "head") return "method" in e.head ? `head ${e.head.method}` : `head ${e.head.status}`;
    if (e.type === "body" || e.type === "passthrough") return `${e.type} ${text(e.bytes)}`;
    return e.trailers.length ? `end ${JSON.stringify(e.trailers)}` : "end";
  });
}

function errorOf(work: () => unknown): unknown {
  try {
    work();
    return null;
  } catch (error) {
    return error;
  }
}

function expectParseError(work: () => unknown, status: number, pattern?: RegExp): void {
  const error = errorOf(work);
  expect(error).toBeInstanceOf(HttpParseError);
  expect((error as HttpParseError).status).toBe(status);
  if (pattern) expect((error as Error).message).toMatch(pattern);
}

const requestError = (raw: string, status = 400, pattern?: RegExp): void =>
  expectParseError(() => run(new RequestFramer(), [bytes(raw)], true), status, pattern);

function responses(...methods: string[]): ResponseFramer {
  const framer = new ResponseFramer();
  for (const m of methods) framer.expectResponse(m);
  return framer;
}

// ---------------------------------------------------------------------------------------------------
// Generators

const TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".split("");
const token = fc.string({ unit: fc.constantFrom(...TCHARS), minLength: 1, maxLength: 10 });
const fieldValue = fc
  .string({
    unit: fc
      .integer({ min: 0x20, max: 0xff })
      .filter((c) => c !== 0x7f)
      .map((c) => String.fromCharCode(c)),
    maxLength: 24,
  })
  .map((v) => v.replace(/^[ \t]+|[ \t]+$/g, ""));
/** Extension headers that cannot change framing. */
const extraHeaders = fc.array(
  fc.tuple(
    token.map((t) => `X-${t}`),
    fieldValue,
  ),
  { maxLength: 6 },
);
const path = fc.string({ unit: fc.constantFrom(..."abcxyz019-._~%/?=&".split("")), maxLength: 20 });
const body = fc.uint8Array({ minLength: 1, maxLength: 300 });

interface Message {
  raw: Uint8Array;
  /** The body bytes the framer must report (chunked: the encoding itself). */
  body: Uint8Array;
  trailers: [string, string][];
}

/** A chunked encoding of `chunks`, with random size case, leading zeros, extensions and trailers. */
const chunkedBody = fc
  .record({
    chunks: fc.array(fc.tuple(body, fc.boolean(), fc.option(token, { nil: undefined })), { maxLength: 4 }),
    trailers: fc.array(
      fc.tuple(
        token.map((t) => `T-${t}`),
        fieldValue,
      ),
      { maxLength: 3 },
    ),
  })
  .map(({ chunks, trailers }) => {
    const parts: Uint8Array[] = [];
    for (const [data, upper, ext] of chunks) {
      const size = data.length.toString(16);
      parts.push(
        bytes(`${upper ? `0${size.toUpperCase()}` : size}${ext ? `;${ext}=1` : ""}\r\n`),
        data,
        bytes("\r\n"),
      );
    }
    parts.push(bytes(`0\r\n${trailers.map(([n, v]) => `${n}: ${v}\r\n`).join("")}\r\n`));
    const encoded = concat(parts);
    return { encoded, trailers };
  });

const requestMessage: fc.Arbitrary<Message> = fc
  .record({
    method: fc.constantFrom("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND"),
    path,
    headers: extraHeaders,
    kind: fc.constantFrom("none", "length", "chunked"),
    data: body,
    chunked: chunkedBody,
  })
  .map(({ method, path, headers, kind, data, chunked }) => {
    const all: [string, string][] = [["Host", "app.example.com"], ...headers];
    if (kind === "length") all.push(["Content-Length", String(data.length)]);
    if (kind === "chunked") all.push(["Transfer-Encoding", "chunked"]);
    const head = serializeHead({ method, target: `/${path}`, version: "HTTP/1.1", headers: all });
    const content = kind === "length" ? data : kind === "chunked" ? chunked.encoded : new Uint8Array(0);
    return {
      raw: concat([head, content]),
      body: content,
      trailers: kind === "chunked" ? chunked.trailers : [],
    };
  });

// ---------------------------------------------------------------------------------------------------

describe("heads", () => {
  test("a request head keeps order, duplicates and case; flags and framing are read", () => {
    const raw =
      "POST /upload?x=1 HTTP/1.1\r\nHost: a.example\r\nX-Dup: 1\r\nx-dup:  2 \r\nExpect: 100-continue\r\n" +
      "Content-Length: 5\r\n\r\nhello";
    const head = parseRequestHead(bytes(raw));
    expect(head).toMatchObject({
      method: "POST",
      target: "/upload?x=1",
      version: "HTTP/1.1",
      headers: [
        ["Host", "a.example"],
        ["X-Dup", "1"],
        ["x-dup", "2"],
        ["Expect", "100-continue"],
        ["Content-Length", "5"],
      ],
      body: "length",
      contentLength: 5,
      expectContinue: true,
      upgrade: false,
      keepAlive: true,
    });
    expect(head?.headLength).toBe(raw.indexOf("\r\n\r\n") + 4);
  });

  test("incomplete heads are null; HTTP/1.0 and Connection decide keep-alive", () => {
    expect(parseRequestHead(bytes("GET / HTTP/1.1\r\nHost: a\r\n"))).toBeNull();
    expect(parseRequestHead(bytes("GET / HTTP/1.0\r\n\r\n"))?.keepAlive).toBe(false);
    expect(parseRequestHead(bytes("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"))?.keepAlive).toBe(true);
    expect(parseRequestHead(bytes("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))?.keepAlive).toBe(
      false,
    );
    const expect10 = parseRequestHead(bytes("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"));
    expect(expect10?.expectContinue).toBe(false);
  });

  test("a status line without a reason phrase, and obs-text in values, parse", () => {
    const head = parseResponseHead(bytes("HTTP/1.1 200\r\nX-Name: caf\xe9\x80\r\nContent-Length: 0\r\n\r\n"));
    expect(head).toMatchObject({ status: 200, reason: "", body: "length", contentLength: 0 });
    expect(serializeHead(head as ResponseHead)).toEqual(
      bytes("HTTP/1.1 200 \r\nX-Name: caf\xe9\x80\r\nContent-Length: 0\r\n\r\n"),
    );
  });

  test("property: serialize → parse gives the same request head", () => {
    fc.assert(
      fc.property(
        token,
        path,
        extraHeaders,
        fc.constantFrom("HTTP/1.1", "HTTP/1.0"),
        (method, p, extra, version) => {
          const head: RequestHeadLine = {
            method,
            target: `/${p}`,
            version,
            headers: [["host", "h"], ...extra],
          };
          const parsed = parseRequestHead(serializeHead(head));
          expect(parsed).toMatchObject(head);
        },
      ),
      RUNS,
    );
  });

  test("property: serialize → parse gives the same response head", () => {
    fc.assert(
      fc.property(fc.integer({ min: 100, max: 999 }), fieldValue, extraHeaders, (status, reason, headers) => {
        const head: ResponseHeadLine = { version: "HTTP/1.1", status, reason, headers };
        expect(parseResponseHead(serializeHead(head))).toMatchObject(head);
      }),
      RUNS,
    );
  });

  test("serializeHead refuses what would not parse back (header injection)", () => {
    const base = { method: "GET", target: "/", version: "HTTP/1.1" };
    expect(() => serializeHead({ ...base, headers: [["X", "a\r\nEvil: 1"]] })).toThrow(RangeError);
    expect(() => serializeHead({ ...base, headers: [["X Y", "a"]] })).toThrow(RangeError);
    expect(() => serializeHead({ ...base, target: "/ x", headers: [] })).toThrow(RangeError);
    expect(() => serializeHead({ ...base, headers: [["X", "\u0100"]] })).toThrow(RangeError);
  });
});

describe("request framing", () => {
  test("no body, Content-Length, chunked with trailers, pipelined in one chunk", () => {
    const raw =
      "GET /a HTTP/1.1\r\nHost: h\r\n\r\n" +
      "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc" +
      "PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nhi\r\n0\r\nT-Sum: 9\r\n\r\n" +
      "DELETE /d HTTP/1.1\r\nHost: h\r\n\r\n";
    expect(summary(run(new RequestFramer(), [bytes(raw)]))).toEqual([
      "head GET",
      "end",
      "head POST",
      "body abc",
      "end",
      "head PUT",
      "body 2;x=y\r\nhi\r\n0\r\nT-Sum: 9\r\n\r\n",
      'end [["T-Sum","9"]]',
      "head DELETE",
      "end",
    ]);
  });

  test("empty lines before a request line are skipped; a close between requests is fine", () => {
    const framer = new RequestFramer();
    expect(
      summary(run(framer, [bytes("\r\n\r"), bytes("\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")], true)),
    ).toEqual(["head GET", "end"]);
  });

  test("property: any split of pipelined requests gives the same events and body bytes", () => {
    fc.assert(
      fc.property(
        fc.array(requestMessage, { minLength: 1, maxLength: 3 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        (messages, cuts) => {
          const raw = concat(messages.map((m) => m.raw));
          const whole = run(new RequestFramer(), [raw], true);
          const pieces = run(new RequestFramer(), split(raw, cuts), true);
          expect(pieces).toEqual(whole);
          const bodies: Uint8Array[] = [];
          const trailers: [string, string][][] = [];
          for (const e of pieces) {
            if (e.type === "body") bodies.push(e.bytes);
            if (e.type === "end-of-message") trailers.push(e.trailers);
          }
          expect(concat(bodies)).toEqual(concat(messages.map((m) => m.body)));
          expect(trailers).toEqual(messages.map((m) => m.trailers));
          expect(pieces.filter((e) => e.type === "head").length).toBe(messages.length);
        },
      ),
      RUNS,
    );
  });

  test("property: every single split point of a chunked request", () => {
    const raw = bytes(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" +
        'A;ext="q"\r\n0123456789\r\n1\r\nz\r\n0\r\nT: 1\r\nU: 2\r\n\r\n',
    );
    const whole = run(new RequestFramer(), [raw], true);
    for (let i = 0; i <= raw.length; i++)
      for (let j = i; j <= raw.length; j += 7)
        expect(run(new RequestFramer(), split(raw, [i, j]), true)).toEqual(whole);
  });

  test("body chunks are views of the fed chunk, not copies", () => {
    const raw = bytes("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody");
    const events = new RequestFramer().feed(raw);
    const chunk = events.find((e) => e.type === "body") as { bytes: Uint8Array };
    expect(chunk.bytes.buffer).toBe(raw.buffer);
    expect(chunk.bytes.byteOffset).toBe(raw.length - 4);
    const chunked = bytes(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
    );
    const body = new RequestFramer().feed(chunked).find((e) => e.type === "body") as { bytes: Uint8Array };
    expect(body.bytes.buffer).toBe(chunked.buffer);
  });

  test("a body split across feeds comes out piecewise, in order", () => {
    const framer = new RequestFramer();
    expect(summary(framer.feed(bytes("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nab")))).toEqual([
      "head PUT",
      "body ab",
    ]);
    expect(summary(framer.feed(bytes("cdefGET")))).toEqual(["body cdef", "end"]);
    expect(summary(framer.feed(bytes(" / HTTP/1.1\r\nHost: h\r\n\r\n")))).toEqual(["head GET", "end"]);
  });

  test("an upgrade request holds what follows until the answer: 101 → passthrough", () => {
    const framer = new RequestFramer();
    const events = framer.feed(
      bytes(
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
      ),
    );
    expect((events[0] as { head: RequestHead }).head.upgrade).toBe(true);
    expect(summary(events)).toEqual(["head GET", "end"]);
    expect(framer.awaitingUpgrade).toBe(true);
    expect(summary(framer.feed(bytes("more")))).toEqual([]);
    expect(summary(framer.switchToPassthrough())).toEqual(["passthrough \x81\x00", "passthrough more"]);
    expect(summary(framer.feed(bytes("GET / HTTP/1.1\r\n\r\n")))).toEqual([
      "passthrough GET / HTTP/1.1\r\n\r\n",
    ]);
    expect(framer.end()).toEqual([]);
  });

  test("an upgrade refused: held bytes are parsed as the next requests", () => {
    const framer = new RequestFramer();
    framer.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nGET /n"));
    expect(summary(framer.declineUpgrade())).toEqual([]);
    expect(summary(framer.feed(bytes(" HTTP/1.1\r\nHost: h\r\n\r\n")))).toEqual(["head GET", "end"]);
    expect(framer.awaitingUpgrade).toBe(false);
    expect(framer.declineUpgrade()).toEqual([]);
  });

  test("switchToPassthrough at any point: a partial head comes out as passthrough", () => {
    const framer = new RequestFramer();
    expect(summary(framer.feed(bytes("GET / HTTP/1.1\r\nHo")))).toEqual([]);
    expect(summary(framer.switchToPassthrough())).toEqual(["passthrough GET / HTTP/1.1\r\nHo"]);
    expect(summary(framer.feed(bytes("st: h\r\n\r\n")))).toEqual(["passthrough st: h\r\n\r\n"]);
  });

  test("more than 64 KiB while waiting for the upgrade answer is an error", () => {
    const framer = new RequestFramer();
    framer.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"));
    framer.feed(new Uint8Array(MAX_HEAD_BYTES));
    expectParseError(() => framer.feed(new Uint8Array(1)), 400, /upgrade/);
  });

  test("Upgrade without Connection: upgrade, or on HTTP/1.0, is not an upgrade", () => {
    expect(parseRequestHead(bytes("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"))?.upgrade).toBe(
      false,
    );
    const http10 = "GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    expect(parseRequestHead(bytes(http10))?.upgrade).toBe(false);
  });
});

describe("response framing", () => {
  test("HEAD, 204 and 304 have no body whatever their headers say", () => {
    const raw =
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" +
      "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n" +
      "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n" +
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    const framer = responses("HEAD", "GET", "GET", "GET");
    expect(summary(run(framer, [bytes(raw)]))).toEqual([
      "head 200",
      "end",
      "head 204",
      "end",
      "head 304",
      "end",
      "head 200",
      "body ok",
      "end",
    ]);
    expect(framer.pendingRequests).toBe(0);
  });

  test("100 Continue and other 1xx end at their head; the final response follows", () => {
    const framer = responses("POST");
    const raw =
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" +
      "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnew\r\n0\r\n\r\n";
    expect(summary(run(framer, [bytes(raw)]))).toEqual([
      "head 100",
      "end",
      "head 103",
      "end",
      "head 201",
      "body 3\r\nnew\r\n0\r\n\r\n",
      "end",
    ]);
  });

  test("101 switches to passthrough right after the head", () => {
    const framer = responses("GET", "GET");
    const raw =
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
    expect(summary(run(framer, split(bytes(raw), [5, 70])))).toEqual([
      "head 101",
      "end",
      "passthrough \x81\x02hi",
    ]);
    expect(summary(framer.feed(bytes("HTTP/1.1 200 OK\r\n\r\n")))).toEqual([
      "passthrough HTTP/1.1 200 OK\r\n\r\n",
    ]);
  });

  test("a 2xx to CONNECT is passthrough", () => {
    const framer = responses("CONNECT");
    expect(summary(run(framer, [bytes("HTTP/1.1 200 OK\r\n\r\nraw")]))).toEqual([
      "head 200",
      "end",
      "passthrough raw",
    ]);
  });

  test("no length and no chunked: the body runs until end()", () => {
    const framer = responses("GET");
    const events = run(framer, [bytes("HTTP/1.1 200 OK\r\n\r\nsome"), bytes(" more")], true);
    expect(summary(events)).toEqual(["head 200", "body some more", "end"]);
    expect((events[0] as { head: ResponseHead }).head).toMatchObject({ body: "close", keepAlive: false });
    const http10 = "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    expectParseError(() => responses("GET").feed(bytes(http10)), 502, /HTTP\/1.0/);
    const gzip = run(responses("GET"), [bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz")], true);
    expect(summary(gzip)).toEqual(["head 200", "body zz", "end"]);
  });

  test("property: any split of a response sequence gives the same events", () => {
    const response = fc.oneof(
      fc.constant({ method: "GET", raw: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n" }),
      fc.constant({ method: "HEAD", raw: "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" }),
      fc.constant({ method: "GET", raw: "HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n" }),
      body.map((b) => ({
        method: "GET",
        raw: `HTTP/1.1 200 OK\r\nContent-Length: ${b.length}\r\n\r\n${text(b)}`,
      })),
      chunkedBody.map((c) => ({
        method: "POST",
        raw: `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a\r\n\r\n${text(c.encoded)}`,
      })),
    );
    const last = fc.oneof(
      fc.constant({ method: "GET", raw: "" }),
      body.map((b) => ({ method: "GET", raw: `HTTP/1.1 200 OK\r\n\r\n${text(b)}` })),
      body.map((b) => ({ method: "GET", raw: `HTTP/1.1 101 Switching Protocols\r\n\r\n${text(b)}` })),
    );
    fc.assert(
      fc.property(
        fc.array(response, { maxLength: 3 }),
        last,
        fc.array(fc.nat(), { maxLength: 12 }),
        (rs, l, cuts) => {
          const all = l.raw ? [...rs, l] : rs;
          const raw = bytes(all.map((r) => r.raw).join(""));
          const methods = all.map((r) => r.method);
          const whole = run(responses(...methods), [raw], true);
          expect(run(responses(...methods), split(raw, cuts), true)).toEqual(whole);
          expect(
            whole.filter((e) => e.type === "head" && (e.head.status >= 200 || e.head.status === 101)).length,
          ).toBe(all.length);
        },
      ),
      RUNS,
    );
  });
});

describe("malformed input is an HttpParseError with a status", () => {
  test("heads: size, count, tokens, versions, Host, folding, line endings", () => {
    requestError(`GET /${"a".repeat(MAX_HEAD_BYTES)} HTTP/1.1\r\n\r\n`, 431, /64 KiB/);
    const many = Array.from({ length: 201 }, (_, i) => `X-${i}: v\r\n`).join("");
    requestError(`GET / HTTP/1.1\r\nHost: h\r\n${many}\r\n`, 431, /200/);
    requestError("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, /method/);
    requestError("GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n", 400, /name/);
    requestError("GET / HTTP/1.1\r\nHost: h\r\nX : y\r\n\r\n", 400, /name/);
    requestError("GET / HTTP/1.1\r\nHost: h\r\n: y\r\n\r\n", 400, /name/);
    requestError("GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400, /value/);
    requestError("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", 400, /obs-fold/);
    requestError("GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400, /obs-fold/);
    requestError("GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n", 400, /bare/);
    requestError("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505);
    requestError("GET / HTTPS/1.1\r\nHost: h\r\n\r\n", 400, /version/);
    requestError("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    requestError("GET foo HTTP/1.1\r\nHost: h\r\n\r\n", 400, /target/);
    requestError("GET / HTTP/1.1\r\n\r\n", 400, /Host/);
    requestError("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, /Host/);
    requestError("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 501);
    requestError("\n", 400, /bare LF/);
  });

  test("a head over 64 KiB fed in small pieces is a 431 without buffering more", () => {
    const framer = new RequestFramer();
    const piece = bytes(`X-Long: ${"v".repeat(1000)}\r\n`);
    framer.feed(bytes("GET / HTTP/1.1\r\n"));
    expectParseError(() => {
      for (let i = 0; i < 100; i++) framer.feed(piece);
    }, 431);
    expectParseError(() => framer.feed(bytes("\r\n")), 431);
  });

  test("Content-Length and Transfer-Encoding (RFC 9112 §6.3)", () => {
    const req = (fields: string): string => `POST / HTTP/1.1\r\nHost: h\r\n${fields}\r\n`;
    for (const bad of ["abc", "-1", "+1", "1e3", "0x10", "", "1 2", "1234567890123456"])
      requestError(req(`Content-Length: ${bad}\r\n`), 400, /Content-Length/);
    requestError(req("Content-Length: 3\r\nContent-Length: 4\r\n"), 400, /conflicting/);
    requestError(req("Content-Length: 3, 4\r\n"), 400, /conflicting/);
    expect(parseRequestHead(bytes(req("Content-Length: 3\r\nContent-Length: 3, 3\r\n")))?.contentLength).toBe(
      3,
    );
    requestError(req("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"), 400, /both/);
    requestError(req("Transfer-Encoding: chunked, gzip\r\n"), 400, /final/);
    requestError(req("Transfer-Encoding: gzip, chunked\r\n"), 501, /gzip/);
    requestError(req("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), 400, /twice/);
    requestError(req("Transfer-Encoding:\r\n"), 400);
    requestError("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, /HTTP\/1.0/);
    expect(parseRequestHead(bytes(req("Transfer-Encoding: CHUNKED\r\n")))?.body).toBe("chunked");
  });

  test("chunked encoding: sizes, extensions, data length, trailers", () => {
    const te = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    requestError(`${te}-1\r\nx\r\n0\r\n\r\n`, 400, /chunk size/);
    requestError(`${te}zz\r\n`, 400, /chunk size/);
    requestError(`${te}\r\n`, 400, /chunk size/);
    requestError(`${te}${"f".repeat(14)}\r\n`, 400, /overflows/);
    requestError(`${te}3\r\nabcd\r\n0\r\n\r\n`, 400, /chunked/);
    requestError(`${te}3\nabc\r\n0\r\n\r\n`, 400, /chunk size/);
    requestError(`${te}3;a\x01\r\nabc\r\n0\r\n\r\n`, 400, /extension/);
    requestError(`${te}3;${"e".repeat(5000)}\r\n`, 400, /too long/);
    requestError(`${te}0\r\nT: 1\nU: 2\r\n\r\n`, 400, /bare LF/);
    requestError(`${te}0\r\nBad Trailer: 1\r\n\r\n`, 400, /name/);
    requestError(`${te}3\r\nab`, 400, /inside a body/);
    requestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab", 400, /inside a body/);
    requestError("GET / HTTP/1.1\r\nHost:", 400, /inside a head/);
  });

  test("after an error every call throws it again; response errors are 502", () => {
    const framer = new RequestFramer();
    expectParseError(() => framer.feed(bytes("BAD( / HTTP/1.1\r\n\r\n")), 400);
    expectParseError(() => framer.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\n\r\n")), 400, /method/);
    expectParseError(() => framer.end(), 400, /method/);
    expectParseError(() => responses().feed(bytes("HTTP/1.1 200 OK\r\n\r\n")), 502, /without a request/);
    expectParseError(() => responses("GET").feed(bytes("HTTP/1.1 2000 OK\r\n\r\n")), 502, /status/);
    expectParseError(() => responses("GET").feed(bytes("HTTP/1.1 200 OK\r\nX Y: 1\r\n\r\n")), 502, /name/);
    const both = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
    expectParseError(() => responses("GET").feed(bytes(both)), 502, /both/);
    expectParseError(
      () => run(responses("GET"), [bytes("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nx")], true),
      502,
    );
    expectParseError(() => responses("GET").feed(bytes("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")), 502);
  });

  /** Feeds `chunks` to a request and a response framer; only HttpParseError may escape. */
  function onlyParseErrors(chunks: readonly Uint8Array[]): void {
    const requests = new RequestFramer();
    const attempts = [
      () => run(requests, chunks, true),
      () => requests.declineUpgrade(),
      () => requests.switchToPassthrough(),
      () => run(responses("GET", "HEAD", "POST", "GET"), chunks, true),
    ];
    for (const attempt of attempts) {
      const error = errorOf(attempt);
      if (error !== null && !(error instanceof HttpParseError)) throw error;
    }
  }

  test("fuzz: random bytes only ever throw HttpParseError", () => {
    const alphabet = fc.constantFrom(
      ..."GETPOST HTTP/1.\r\n:0123456789abcdef;-".split("").map((c) => c.charCodeAt(0)),
    );
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc.array(alphabet, { maxLength: 300 }).map((a) => Uint8Array.from(a)),
        ),
        fc.array(fc.nat(), { maxLength: 6 }),
        (raw, cuts) => onlyParseErrors(split(raw, cuts)),
      ),
      { numRuns: 500 },
    );
  });

  test("fuzz: mutated valid messages only ever throw HttpParseError", () => {
    const response = bytes(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\nT: 1\r\n\r\n",
    );
    fc.assert(
      fc.property(
        fc.oneof(
          requestMessage.map((m) => m.raw),
          fc.constant(response),
        ),
        fc.array(
          fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom("set", "insert", "delete")),
          {
            minLength: 1,
            maxLength: 4,
          },
        ),
        fc.array(fc.nat(), { maxLength: 4 }),
        (raw, mutations, cuts) => {
          const b = [...raw];
          for (const [at, value, how] of mutations) {
            const i = at % (b.length + 1);
            if (how === "set") b[i] = value;
            else if (how === "insert") b.splice(i, 0, value);
            else b.splice(i, 1);
          }
          onlyParseErrors(split(Uint8Array.from(b), cuts));
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe("forwarding", () => {
  const parse = (raw: string): RequestHead => parseRequestHead(bytes(raw)) as RequestHead;
  const names = (head: RequestHeadLine | ResponseHeadLine): string[] =>
    head.headers.map(([n]) => n.toLowerCase());

  test("hop-by-hop and visitor-supplied forwarding fields go; fresh X-Forwarded-* are appended", () => {
    const head = parse(
      "POST /x HTTP/1.1\r\nHost: app.example.com\r\nConnection: keep-alive, X-Secret, Content-Length\r\n" +
        "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: T\r\nUpgrade: h2c\r\n" +
        "X-Secret: s\r\nX-Forwarded-For: 6.6.6.6\r\nx-forwarded-proto: https\r\nX-Forwarded-Host: evil\r\n" +
        "Forwarded: for=6.6.6.6\r\nContent-Length: 2\r\nAccept: */*\r\n\r\n",
    );
    const out = forwardRequestHead(head, { remoteIp: "203.0.113.7", proto: "http" });
    expect(out).toEqual({
      method: "POST",
      target: "/x",
      version: "HTTP/1.1",
      headers: [
        ["Host", "app.example.com"],
        ["Content-Length", "2"],
        ["Accept", "*/*"],
        ["X-Forwarded-For", "203.0.113.7"],
        ["X-Forwarded-Proto", "http"],
        ["X-Forwarded-Host", "app.example.com"],
      ],
    });
    expect(parseRequestHead(serializeHead(out))).toMatchObject(out);
  });

  test("Host rewrite, explicit X-Forwarded-Host, Connection: close carried on", () => {
    const head = parse("GET / HTTP/1.1\r\nhost: app.tunnel.test\r\nConnection: close\r\n\r\n");
    const out = forwardRequestHead(head, {
      remoteIp: "::1",
      proto: "https",
      host: "app.tunnel.test:443",
      rewriteHost: "localhost:3000",
    });
    expect(out.headers).toEqual([
      ["host", "localhost:3000"],
      ["Connection", "close"],
      ["X-Forwarded-For", "::1"],
      ["X-Forwarded-Proto", "https"],
      ["X-Forwarded-Host", "app.tunnel.test:443"],
    ]);
    const http10 = forwardRequestHead(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), {
      remoteIp: "1.2.3.4",
      proto: "http",
      rewriteHost: "b",
    });
    expect(http10.headers.slice(0, 2)).toEqual([
      ["Host", "b"],
      ["Connection", "keep-alive"],
    ]);
    expect(names(http10)).not.toContain("x-forwarded-host");
  });

  test("an upgrade request keeps Upgrade and Connection: upgrade", () => {
    const head = parse(
      "GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" +
        "Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    const out = forwardRequestHead(head, { remoteIp: "1.2.3.4", proto: "http" });
    expect(out.headers.slice(0, 5)).toEqual([
      ["Host", "h"],
      ["Upgrade", "websocket"],
      ["Sec-WebSocket-Key", "k"],
      ["Sec-WebSocket-Version", "13"],
      ["Connection", "upgrade"],
    ]);
    expect(parseRequestHead(serializeHead(out))?.upgrade).toBe(true);
  });

  test("an absolute-form target must name the Host's authority; it goes on in origin-form", () => {
    // One rule on every port: Host routes (Bun.serve on the control port builds URLs from Host).
    expect(() => parse("GET http://user@App.example:8080?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")).toThrow(
      "the request target names another host than the Host header",
    );
    const head = parse("GET http://user@App.example:8080?q=1 HTTP/1.1\r\nHost: app.example:8080\r\n\r\n");
    expect(requestHost(head)).toBe("app.example:8080");
    const out = forwardRequestHead(head, { remoteIp: "1.2.3.4", proto: "http" });
    expect(out.target).toBe("/?q=1");
    expect(out.headers).toContainEqual(["X-Forwarded-Host", "app.example:8080"]);
    const bare = parse("GET https://a.b HTTP/1.1\r\nHost: a.b\r\n\r\n");
    expect(forwardRequestHead(bare, { remoteIp: "1.2.3.4", proto: "http" }).target).toBe("/");
    const old = parse("GET http://a.b/x HTTP/1.0\r\n\r\n");
    expect(requestHost(old)).toBe("a.b");
  });

  test("X-Real-IP and underscore spellings of forwarding fields go (CGI maps _ to -)", () => {
    const head = parse(
      "GET / HTTP/1.1\r\nHost: a.b\r\nX-Real-IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\n" +
        "x_forwarded_proto: https\r\nX_REAL_IP: 6.6.6.6\r\nX-Custom_Thing: kept\r\n\r\n",
    );
    const out = forwardRequestHead(head, { remoteIp: "203.0.113.7", proto: "http" });
    expect(out.headers).toEqual([
      ["Host", "a.b"],
      ["X-Custom_Thing", "kept"],
      ["X-Forwarded-For", "203.0.113.7"],
      ["X-Forwarded-Proto", "http"],
      ["X-Forwarded-Host", "a.b"],
    ]);
  });

  test("a Content-Length list of one value goes on as that single value", () => {
    const head = parse("POST / HTTP/1.1\r\nHost: a.b\r\nContent-Length: 3, 3\r\ncontent-length: 3\r\n\r\n");
    const out = forwardRequestHead(head, { remoteIp: "1.2.3.4", proto: "http" });
    expect(out.headers.filter(([name]) => name.toLowerCase() === "content-length")).toEqual([
      ["Content-Length", "3"],
    ]);
  });

  test("responses: duplicate Set-Cookie kept in order; hop-by-hop dropped; 101 keeps Upgrade", () => {
    const head = parseResponseHead(
      bytes(
        "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nConnection: X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n" +
          "set-cookie: b=2\r\nContent-Length: 0\r\nSet-Cookie: c=3\r\n\r\n",
      ),
    ) as ResponseHead;
    expect(forwardResponseHead(head).headers).toEqual([
      ["Set-Cookie", "a=1"],
      ["set-cookie", "b=2"],
      ["Content-Length", "0"],
      ["Set-Cookie", "c=3"],
    ]);
    const switching = parseResponseHead(
      bytes(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: z\r\n\r\n",
      ),
    ) as ResponseHead;
    expect(forwardResponseHead(switching).headers).toEqual([
      ["Upgrade", "websocket"],
      ["Sec-WebSocket-Accept", "z"],
      ["Connection", "upgrade"],
    ]);
    const closing = parseResponseHead(bytes("HTTP/1.1 200 OK\r\n\r\n")) as ResponseHead;
    expect(forwardResponseHead(closing).headers).toEqual([["Connection", "close"]]);
  });
});

describe("response framing without the fields (the server's ingress)", () => {
  const cases = [
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil close",
    "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nraw",
  ];

  test("the same events as the full framer, with an empty field list", () => {
    for (const text of cases) {
      const full = new ResponseFramer();
      const lite = new ResponseFramer(false);
      full.expectResponse("GET");
      lite.expectResponse("GET");
      const a = full.feed(bytes(text));
      const b = lite.feed(bytes(text));
      expect(b.map((e) => e.type)).toEqual(a.map((e) => e.type));
      const headA = a[0] as { type: "head"; head: ResponseHead };
      const headB = b[0] as { type: "head"; head: ResponseHead };
      expect({ ...headB.head, headers: [] }).toEqual({ ...headA.head, headers: [] });
      expect(headB.head.headers).toEqual([]);
    }
  });

  test("without bodies: the same events as the full framer but the body ones", () => {
    for (const text of cases) {
      const full = new ResponseFramer();
      const ends = new ResponseFramer(false, false);
      full.expectResponse("GET");
      ends.expectResponse("GET");
      const a = [...full.feed(bytes(text)), ...full.end()].filter((e) => e.type !== "body");
      const b = [...ends.feed(bytes(text)), ...ends.end()];
      expect(b.map((e) => e.type)).toEqual(a.map((e) => e.type));
      expect(b.find((e) => e.type === "passthrough")).toEqual(a.find((e) => e.type === "passthrough"));
    }
  });

  test("framing it depends on is still checked: conflicting lengths, CL with TE, obs-fold, a line without a colon", () => {
    for (const bad of [
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n",
      "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    ]) {
      const lite = new ResponseFramer(false);
      lite.expectResponse("GET");
      expect(() => lite.feed(bytes(bad))).toThrow(HttpParseError);
    }
  });
});

describe("byte-level fast paths agree with the string parsers (the server's ingress)", () => {
  const TRIES = { numRuns: 2000 };
  /** Whatever `work` gives, or the error's class, status and message. */
  function outcome<T>(work: () => T): T | { error: string } {
    try {
      return work();
    } catch (error) {
      if (!(error instanceof HttpParseError) && !(error instanceof RangeError)) throw error;
      return { error: `${error.name} ${(error as HttpParseError).status} ${error.message}` };
    }
  }
  /** A request head's facts as plain data (a ScannedRequestHead builds `headers` when read). */
  function facts(head: RequestHead | { error: string }): unknown {
    if ("error" in head) return head;
    const { method, target, version, headers, headLength, body, contentLength, keepAlive } = head;
    return {
      method,
      target,
      version,
      headers,
      headLength,
      body,
      contentLength,
      keepAlive,
      expectContinue: head.expectContinue,
      upgrade: head.upgrade,
    };
  }

  const lineEnd = fc.oneof(
    { weight: 30, arbitrary: fc.constant("\r\n") },
    { weight: 1, arbitrary: fc.constantFrom("\n", "\r", "\r\r\n") },
  );
  /** One byte to change (at that place modulo the length), one time in eight. */
  const mutation = fc.oneof(
    { weight: 7, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })) },
  );
  /** Mostly `usual`, now and then `rare` (the malformed choices: most heads must parse). */
  const mostly = <T>(usual: fc.Arbitrary<T>, rare: fc.Arbitrary<T>) =>
    fc.oneof({ weight: 15, arbitrary: usual }, { weight: 1, arbitrary: rare });
  const requestName = mostly(
    fc.oneof(
      fc.constantFrom(
        "Content-Length",
        "content_length",
        "Transfer-Encoding",
        "transfer-encoding",
        "Connection",
        "Upgrade",
        "Expect",
        "Authorization",
        "Keep-Alive",
        "keep_alive",
        "TE",
        "Trailer",
        "Proxy-Connection",
        "X-Forwarded-For",
        "X_Forwarded_For",
        "x-forwarded-proto",
        "X-Forwarded-Host",
        "x-real-ip",
        "X_REAL_IP",
        "Forwarded",
        "X-Secret",
        "x_secret",
        "Close",
        "A^",
        "a~",
      ),
      token,
    ),
    fc.constantFrom("Host", "host", " Folded", "\tFolded", "Bad Name", "", "N\xe4me"),
  );
  const requestValue = mostly(
    fc.oneof(
      fc.constantFrom(
        "chunked",
        "5",
        "0",
        "5, 5",
        "close",
        "keep-alive",
        "Keep-Alive, X-Secret",
        "upgrade",
        "Upgrade, x_secret, a~",
        "close, content-length, host",
        "100-continue",
        "",
        "  padded \t ",
        "caf\xe9",
        "a\tb",
        "h",
        "Basic dTpw",
      ),
      fieldValue,
    ),
    fc.constantFrom("gzip, chunked", "chunked, chunked", "5, 6", "-1", "a\rb", "a\nb", "\x7f", "\x00"),
  );
  const separator = mostly(fc.constantFrom(": ", ": ", ":", ":  ", ":\t"), fc.constantFrom(" :", ""));
  const requestText = fc
    .record({
      method: mostly(
        fc.oneof(fc.constantFrom("GET", "POST", "OPTIONS"), token),
        fc.constantFrom("CONNECT", "G T", ""),
      ),
      target: mostly(
        fc.oneof(
          fc.constantFrom("/", "/a?b=1"),
          path.map((p) => `/${p}`),
        ),
        fc.constantFrom("*", "http://h/x", "http://web.localhost/x", "/ x", "/\x7f", "/\xe9", "", "/\t"),
      ),
      version: mostly(
        fc.constantFrom("HTTP/1.1", "HTTP/1.0"),
        fc.constantFrom("HTTP/2.0", "HTTP/1.1 ", "http/1.1", "HTTP/1.10"),
      ),
      startEnd: lineEnd,
      fields: fc.array(fc.tuple(requestName, separator, requestValue, lineEnd), { maxLength: 8 }),
      host: mostly(fc.constantFrom(1, 2, 3), fc.constantFrom(0, 4)),
      tail: mostly(fc.constant("\r\n"), fc.constantFrom("\n", "")),
    })
    .map(({ method, target, version, startEnd, fields, host, tail }) => {
      const all = fields.map(([n, s, v, e]) => `${n}${s}${v}${e}`);
      // 1-3: one Host at that place (or last); 0: none; 4: two.
      if (host > 0) all.splice(host - 1, 0, "Host: web.localhost\r\n");
      if (host === 4) all.push("host: other\r\n");
      return `${method} ${target} ${version}${startEnd}${all.join("")}${tail}`;
    });
  /** A generated head, sometimes with one byte changed. */
  const requestBytes = fc.tuple(requestText, mutation).map(([raw, mutation]) => {
    const b = bytes(raw);
    if (mutation !== null && b.length > 4) b[mutation[0] % (b.length - 4)] = mutation[1];
    return b;
  });

  test("property: scanRequestHead accepts what parseRequestHeadBytes accepts, with the same head, and fails alike", () => {
    let scanned = 0;
    fc.assert(
      // The connection's previous Host: the same, one byte off, another length, or none.
      fc.property(
        requestBytes,
        fc.constantFrom(undefined, "web.localhost", "web.localhosx", "other"),
        (raw, lastHost) => {
          const fast = outcome(() => scanRequestHead(raw, lastHost));
          if (fast instanceof ScannedRequestHead) scanned++;
          expect(facts(fast)).toEqual(facts(outcome(() => parseRequestHeadBytes(raw))));
        },
      ),
      TRIES,
    );
    expect(scanned).toBeGreaterThan(TRIES.numRuns / 4); // the fast path itself was exercised
  });

  test("property: forwardRequestBytes is serializeHead(forwardRequestHead(…)), byte for byte", () => {
    let scanned = 0;
    fc.assert(
      fc.property(
        requestBytes,
        fc.option(fc.constantFrom("127.0.0.1:8000", "localhost", ""), { nil: undefined }),
        fc.option(fc.constantFrom("web.localhost:7070", ""), { nil: undefined }),
        fc.boolean(),
        fc.constantFrom(undefined, "web.localhost", "web.localhosx"),
        (raw, rewriteHost, host, dropAuthorization, lastHost) => {
          const parsed = outcome(() => parseRequestHeadBytes(raw));
          if ("error" in parsed) return;
          const head = scanRequestHead(raw, lastHost);
          if (head instanceof ScannedRequestHead) scanned++;
          const options = { remoteIp: "203.0.113.7", proto: "https", rewriteHost, host, dropAuthorization };
          const expected = outcome(() => {
            const line = forwardRequestHead(parsed, options);
            if (dropAuthorization)
              line.headers = line.headers.filter(([n]) => n.toLowerCase() !== "authorization");
            return text(serializeHead(line, true));
          });
          expect(outcome(() => text(forwardRequestBytes(head, options)))).toEqual(expected);
        },
      ),
      TRIES,
    );
    expect(scanned).toBeGreaterThan(TRIES.numRuns / 4);
  });

  test("a keep-alive request naming the previous Host reuses its string; target and text are read when asked", () => {
    const first = scanRequestHead(
      bytes("GET /a?b=1 HTTP/1.1\r\nHost: web.localhost\r\n\r\n"),
    ) as ScannedRequestHead;
    const host = first.host as string;
    const again = scanRequestHead(bytes("GET /c HTTP/1.1\r\nHost: web.localhost\r\n\r\n"), host);
    expect((again as ScannedRequestHead).host).toBe(host);
    const other = scanRequestHead(bytes("GET /c HTTP/1.1\r\nHost: web.localhosx\r\n\r\n"), host);
    expect((other as ScannedRequestHead).host).toBe("web.localhosx");
    expect(first.target).toBe("/a?b=1");
    expect(first.method).toBe("GET");
    expect(first.text).toBe("GET /a?b=1 HTTP/1.1\r\nHost: web.localhost\r\n\r\n");
    expect(first.headers).toEqual([["Host", "web.localhost"]]);
  });

  test("forwardRequestBytes copies lines through and rebuilds the ones with other spacing", () => {
    const raw =
      "POST /x HTTP/1.1\r\nhost:web.localhost\r\nX-A:  1 \r\nConnection: keep-alive, X-Secret\r\n" +
      "X-Secret: s\r\nAuthorization: Basic dTpw\r\nContent-Length:  02\r\nAccept: */*\r\n\r\n";
    const head = scanRequestHead(bytes(raw));
    expect(head).toBeInstanceOf(ScannedRequestHead);
    const out = forwardRequestBytes(head, {
      remoteIp: "::1",
      proto: "http",
      rewriteHost: "127.0.0.1:8000",
      dropAuthorization: true,
    });
    expect(text(out)).toBe(
      "POST /x HTTP/1.1\r\nhost: 127.0.0.1:8000\r\nX-A: 1\r\nContent-Length: 2\r\nAccept: */*\r\n" +
        "X-Forwarded-For: ::1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: web.localhost\r\n\r\n",
    );
  });

  const responseName = fc.oneof(
    fc.constantFrom(
      "Content-Length",
      "content-length",
      "Content_Length",
      "Transfer-Encoding",
      "TRANSFER-ENCODING",
      "Connection",
      "connection",
      "Set-Cookie",
      "Content Len",
      "Conn(ction",
      " Folded",
      "",
    ),
    token,
  );
  const responseText = fc
    .record({
      version: fc.constantFrom("HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "),
      code: fc.constantFrom("200", "204", "304", "101", "100", "199", "404", "099", "2000", "20", "abc"),
      reason: fc.constantFrom(" OK", "", " ", " Not Found", " caf\xe9", " a\x7f", " a\tb", "  OK"),
      startEnd: lineEnd,
      fields: fc.array(fc.tuple(responseName, separator, requestValue, lineEnd), { maxLength: 6 }),
      tail: fc.constantFrom("\r\n", "\r\n", "\n", ""),
    })
    .map(
      ({ version, code, reason, startEnd, fields, tail }) =>
        `${version} ${code}${reason}${startEnd}${fields.map(([n, s, v, e]) => `${n}${s}${v}${e}`).join("")}${tail}`,
    );
  const responseBytes = fc.tuple(responseText, mutation).map(([raw, mutation]) => {
    const b = bytes(raw);
    if (mutation !== null && b.length > 4) b[mutation[0] % (b.length - 4)] = mutation[1];
    return b;
  });

  test("property: scanResponseHead is parseResponseHeadBytes without the fields, errors included", () => {
    fc.assert(
      fc.property(responseBytes, fc.constantFrom("GET", "HEAD", "CONNECT", "POST"), (raw, method) => {
        expect(outcome(() => scanResponseHead(raw, method))).toEqual(
          outcome(() => parseResponseHeadBytes(raw, method, false)),
        );
      }),
      TRIES,
    );
  });

  test("property: a scanning RequestFramer gives the same events as the plain one, however the bytes are split", () => {
    fc.assert(
      fc.property(
        fc.array(requestMessage, { minLength: 1, maxLength: 3 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        (messages, cuts) => {
          const raw = concat(messages.map((m) => m.raw));
          const plain = run(new RequestFramer(), split(raw, cuts), true);
          const scanned = run(new RequestFramer(true), split(raw, cuts), true);
          const flat = (events: FramerEvent<RequestHead>[]) =>
            events.map((e) => (e.type === "head" ? { type: "head", head: facts(e.head) } : e));
          expect(flat(scanned)).toEqual(flat(plain));
        },
      ),
      RUNS,
    );
  });

  test("a head that came in pieces is copied out of the framer's buffer before the next one reuses it", () => {
    const framer = new RequestFramer(true);
    const first = "GET /one HTTP/1.1\r\nHost: web.localhost\r\n\r\n";
    const events = [
      ...framer.feed(bytes(first.slice(0, 10))),
      ...framer.feed(bytes(`${first.slice(10)}GET /two HTTP/1.1\r\nHost: xx`)),
    ];
    const head = (events[0] as { type: "head"; head: RequestHead }).head;
    expect(head).toBeInstanceOf(ScannedRequestHead);
    expect(text(forwardRequestBytes(head, { remoteIp: "1.2.3.4", proto: "http" }))).toStartWith(
      "GET /one HTTP/1.1\r\nHost: web.localhost\r\n",
    );
  });
});

test("property: findHeadEnd finds the first CRLFCRLF in [from, to), near or far (its loop, then indexOf)", () => {
  // Lines ("AB\r\n") up to ~1,100 bytes long, then CR, LF and letters at random.
  const lines = fc.nat(280).map((n) => "AB\r\n".repeat(n));
  const tail = fc.array(fc.constantFrom(13, 10, 13, 10, 65), { maxLength: 60 });
  fc.assert(
    fc.property(lines, tail, fc.nat(1300), fc.nat(1300), (text, rest, a, b) => {
      const bytes = Uint8Array.from([...Buffer.from(text, "latin1"), ...rest]);
      const from = Math.min(a % 600, bytes.length);
      const to = Math.max(from, Math.min(b, bytes.length));
      let expected = -1;
      for (let i = from; i + 4 <= to; i++)
        if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
          expected = i + 4;
          break;
        }
      expect(findHeadEnd(bytes, from, to)).toBe(expected);
    }),
    { numRuns: 2000 },
  );
});
