/**
 * The HTTPS port faces the internet like the HTTP port: 300 visitors that go away at any point of a
 * TLS connection (before the ClientHello, inside it, after an alert, in a terminated or a
 * passed-through session) leave the server's descriptors and resident memory where they were, and the
 * port goes on serving both kinds of tunnel.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect as tcpConnect } from "node:net";
import tls from "node:tls";
import { HTTPS_DOMAIN, startHttpsFront } from "../support/https-front.ts";
import {
  type ClientProcess,
  eventually,
  openDescriptors,
  rssKiB,
  type ServerProcess,
  setupFile,
  withTimeout,
} from "../support/processes.ts";

setupFile();

const DOMAIN = HTTPS_DOMAIN;
const VISITORS = 300;
const AT_ONCE = 50;

/** The start of a TLS 1.2+ ClientHello record (its header and the handshake header), cut short. */
const PARTIAL_HELLO = Uint8Array.from([
  0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 1, 2, 3,
]);

let server: ServerProcess;
let client: ClientProcess;
let httpsPort: number;
let wildcard: string;

beforeAll(async () => {
  const hello = () => new Response("hello\n");
  ({ server, client, httpsPort, wildcard } = await startHttpsFront(hello, hello));
});
afterAll(() => client.kill());

/** A TLS visitor for `name` that sends a request and, at its first answer bytes (or an error), resets. */
function tlsVisit(name: string, done: () => void): void {
  const socket = tls.connect({
    host: "127.0.0.1",
    port: httpsPort,
    servername: name,
    rejectUnauthorized: false,
  });
  socket.on("secureConnect", () => socket.write(`GET / HTTP/1.1\r\nHost: ${name}\r\n\r\n`));
  socket.on("data", () => socket.destroy());
  socket.on("error", done);
  socket.on("close", done);
  setTimeout(() => socket.destroy(), 5000).unref();
}

/** A plain TCP visitor of the HTTPS port that does `visit` once connected and gives up after `giveUpMs`. */
function rawVisit(
  visit: (socket: import("node:net").Socket) => void,
  done: () => void,
  giveUpMs = 5000,
): void {
  const socket = tcpConnect(httpsPort, "127.0.0.1", () => visit(socket));
  socket.on("data", () => {});
  socket.on("error", done);
  socket.on("close", done);
  const giveUp = setTimeout(() => socket.destroy(), giveUpMs);
  socket.on("close", () => clearTimeout(giveUp));
}

/** A request through the HTTPS port to `name`, trusting the server's wildcard: the body. */
async function fetchThrough(name: string): Promise<string> {
  const proc = Bun.spawn(
    [
      "curl",
      "-sS",
      "--max-time",
      "10",
      "--resolve",
      `${name}:${httpsPort}:127.0.0.1`,
      "--cacert",
      wildcard,
      "--insecure", // the passthrough service's own certificate is not the wildcard's
      `https://${name}:${httpsPort}/`,
    ],
    { stdout: "pipe", stderr: "pipe" },
  );
  await proc.exited;
  return await new Response(proc.stdout).text();
}

describe("visitors of the HTTPS port that go away at any point leave nothing behind", () => {
  const patterns: [string, (done: () => void) => void][] = [
    ["nothing sent, then FIN", (done) => rawVisit((s) => s.end(), done)],
    ["a ClientHello cut short, then FIN", (done) => rawVisit((s) => s.end(PARTIAL_HELLO), done)],
    [
      "a ClientHello cut short, then a reset",
      (done) => rawVisit((s) => s.write(PARTIAL_HELLO, () => s.resetAndDestroy()), done),
    ],
    ["a ClientHello for a name nobody holds", (done) => tlsVisit(`nobody.${DOMAIN}`, done)],
    ["a terminated session reset at the answer", (done) => tlsVisit(`plain.${DOMAIN}`, done)],
    ["a passed-through session reset at the answer", (done) => tlsVisit(`secure.${DOMAIN}`, done)],
  ];

  for (const [name, visit] of patterns)
    test(`${VISITORS} visitors: ${name}; descriptors and RSS return, both tunnels still serve`, async () => {
      const pid = server.proc.pid;
      const before = openDescriptors(pid);
      const rssBefore = await rssKiB(pid);
      for (let batch = 0; batch < VISITORS; batch += AT_ONCE)
        await Promise.all(
          Array.from({ length: AT_ONCE }, () => new Promise<void>((resolve) => visit(resolve))),
        );
      await eventually(async () => openDescriptors(pid) <= before + 2, 8000, `descriptors back to ${before}`);
      expect((await rssKiB(pid)) - rssBefore).toBeLessThan(64 * 1024);
      expect(await fetchThrough(`plain.${DOMAIN}`)).toBe("hello\n");
      expect(await fetchThrough(`secure.${DOMAIN}`)).toBe("hello\n");
      await eventually(async () => (await server.health()).streams === 0, 5000, "no stream left");
    });

  test(`${VISITORS} ClientHellos that stall half-way are closed by the head timeout`, async () => {
    const pid = server.proc.pid;
    const before = openDescriptors(pid);
    const closed: Promise<void>[] = [];
    for (let i = 0; i < VISITORS; i++)
      closed.push(new Promise<void>((resolve) => rawVisit((s) => s.write(PARTIAL_HELLO), resolve, 60_000)));
    await eventually(
      async () => openDescriptors(pid) >= before + VISITORS / 2,
      5000,
      "the stalled visitors held",
    );
    // --request-timeout 2: the server closes every one; the visitors themselves wait a minute.
    await withTimeout(Promise.all(closed), 15_000, "the server closed the stalled ClientHellos");
    await eventually(async () => openDescriptors(pid) <= before + 2, 5000, `descriptors back to ${before}`);
    expect(await fetchThrough(`plain.${DOMAIN}`)).toBe("hello\n");
  });
});
