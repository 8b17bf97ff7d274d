/**
 * UDP tunnels (issue 27) with real server and client processes and real programs: dnsmasq behind a
 * tunnel answers `dig` and 1,000 queries whose ids are checked, and an EDNS answer over 1,232 bytes
 * arrives whole; 1,000 flows from distinct source ports each get their own content back, the service
 * sees one peer per flow, and once they idle out the sockets and memory they held are freed;
 * datagrams of 0 to 65,507 bytes pass whole (65,508 is refused by the sender's own stack); flows idle
 * out and give way at the most-flows limit; a blip keeps the flow's client-side socket; a taken UDP
 * port, a name that does not resolve and an older server get one line.
 */

import { expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import { startProxy } from "../support/faults.ts";
import { testHello } from "../support/hello.ts";
import {
  defer,
  eventually,
  expectOneLineError,
  openDescriptors,
  rssKiB,
  runToExit,
  setupFile,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { echoThrough } from "../support/sockets.ts";
import {
  ask,
  dig,
  dnsAnswer,
  dnsQuery,
  startClientWith,
  startDnsmasq,
  startUdpEcho,
  udpPeer,
} from "../support/udp.ts";

setupFile();

const sha = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

interface UdpHealth {
  open: number;
  flows: number;
  idled: number;
  evicted: number;
  datagramsIn: number;
  datagramsOut: number;
  bytesIn: number;
  bytesOut: number;
  drops: Record<string, number>;
}
const udpHealth = async (server: { health(): Promise<unknown> }) =>
  ((await server.health()) as { udp: UdpHealth }).udp;

test("DNS: dnsmasq behind a UDP tunnel answers dig, 1,000 queries with their ids, and a 2 KiB EDNS answer whole", async () => {
  const dns = await startDnsmasq();
  const server = await startServerProcess(["--admin", "127.0.0.1:0"]);
  const admin = (await server.waitFor(/admin on (http:\/\/127\.0\.0\.1:\d+)\//))[1] as string;
  const client = await startClientWith(server.url, [
    "--expose-udp",
    `127.0.0.1:${dns.port}`,
    "--inspect",
    "127.0.0.1:0",
  ]);
  expect(client.urls[0]).toMatch(/^udp:\/\/localhost:\d+$/);
  // The client's inspector lists it as a UDP tunnel with its udp:// URL.
  const inspector = (await client.waitFor(/inspector: (http:\/\/\S+)/))[1] as string;
  const listed = (await (await fetch(`${inspector}/api/tunnels`)).json()) as {
    tunnels: { proto: string; public_url: string }[];
  };
  expect(listed.tunnels).toEqual([expect.objectContaining({ proto: "udp", public_url: client.urls[0] })]);
  const port = client.ports[0] as number;

  expect(
    (await dig(["+short", "+tries=3", "+time=2", "-p", String(port), "@127.0.0.1", "h.test"])).trim(),
  ).toBe("10.0.0.7");
  // Larger than 1,232 bytes: the EDNS answer must cross whole, not truncated (no tc flag, 10 records).
  const big = await dig([
    "+bufsize=4096",
    "+ignore",
    "+tries=3",
    "+time=2",
    "-p",
    String(port),
    "@127.0.0.1",
    "big.test",
    "TXT",
  ]);
  expect(big).toMatch(/flags: qr aa rd ra;/);
  expect(big).toMatch(/ANSWER: 10,/);
  const size = Number(big.match(/MSG SIZE\s+rcvd: (\d+)/)?.[1]);
  expect(size).toBeGreaterThan(1232);

  // 1,000 queries, 10 sockets (flows) × 100 in turn, each id checked against its answer.
  const seen = new Set<number>();
  await Promise.all(
    Array.from({ length: 10 }, async (_, flow) => {
      const peer = await udpPeer();
      for (let i = 0; i < 100; i++) {
        const id = flow * 100 + i + 1;
        const answer = dnsAnswer(await ask(peer, port, dnsQuery(id, "a.test")));
        expect(answer).toEqual({ id, rcode: 0, answers: 1, last4: "10.1.2.3" });
        seen.add(answer.id);
      }
      peer.close();
    }),
  );
  expect(seen.size).toBe(1000);
  const udp = await udpHealth(server);
  expect(udp.datagramsIn).toBeGreaterThanOrEqual(1002);
  expect(udp.datagramsOut).toBeGreaterThanOrEqual(1002);
  const metrics = await (await fetch(`${admin}/metrics`)).text();
  expect(metrics).toMatch(/^sockets_udp_flows \d+$/m);
  expect(metrics).toMatch(/^sockets_udp_datagrams_total\{direction="in"\} (\d{4,})$/m);
  expect(metrics).toMatch(/^sockets_udp_bytes_total\{direction="out"\} \d+$/m);
  expect(metrics).toMatch(/^sockets_udp_drops_total\{reason="backpressure"\} \d+$/m);
  expect(metrics).toMatch(/^sockets_tunnels\{type="udp"\} 1$/m);
  const tunnels = (await (await fetch(`${admin}/api/tunnels`)).json()) as {
    tunnels: { type: string; url: string }[];
  };
  expect(tunnels.tunnels).toEqual([expect.objectContaining({ type: "udp", url: client.urls[0] })]);
});

test("1,000 flows from distinct source ports: each gets its own content back, the service sees 1,000 peers; once they idle out, descriptors and RSS return", async () => {
  const echo = await startUdpEcho();
  const server = await startServerProcess(["--udp-idle-timeout", "3"]);
  const client = await startClientWith(server.url, ["--expose-udp", `127.0.0.1:${echo.port}`]);
  const port = client.ports[0] as number;
  const serverRss = await rssKiB(server.proc.pid);
  const serverFds = openDescriptors(server.proc.pid);
  const clientFds = openDescriptors(client.proc.pid);
  const peers = await Promise.all(Array.from({ length: 1000 }, () => udpPeer()));
  expect(new Set(peers.map((p) => p.port)).size).toBe(1000);
  // In waves of 100, so that a burst does not overrun the kernel's socket buffers on a busy machine.
  for (let wave = 0; wave < 10; wave++)
    await Promise.all(
      peers.slice(wave * 100, wave * 100 + 100).map(async (peer, i) => {
        const payload = new TextEncoder().encode(
          `flow ${wave * 100 + i} from port ${peer.port} ${crypto.randomUUID()}`,
        );
        const back = await ask(peer, port, payload, 5);
        expect(sha(back)).toBe(sha(payload));
      }),
    );
  // One client-side socket per visitor address: the service saw 1,000 distinct peers.
  expect(echo.peers.size).toBe(1000);
  const udp = await udpHealth(server);
  expect(udp.open).toBe(1000);
  expect(udp.flows).toBe(1000);
  // A flow holds no descriptor on the server, and one socket on the client (toward the service).
  expect(openDescriptors(server.proc.pid)).toBeLessThanOrEqual(serverFds + 2);
  expect(openDescriptors(client.proc.pid)).toBeGreaterThanOrEqual(clientFds + 1000);
  for (const peer of peers) peer.close();
  // Quiet for the idle timeout: the flows end on both sides and take their sockets and memory along.
  await eventually(async () => (await udpHealth(server)).open === 0, 10_000, "the flows idled out");
  await eventually(
    async () => openDescriptors(client.proc.pid) <= clientFds + 2,
    10_000,
    `the client's descriptors back to ${clientFds}`,
  );
  expect((await rssKiB(server.proc.pid)) - serverRss).toBeLessThan(64 * 1024);
});

test("datagrams of 0, 1, 1,400, 9,000 and 65,507 bytes pass whole both ways; 65,508 is refused by the sender's stack", async () => {
  const echo = await startUdpEcho();
  const server = await startServerProcess();
  const client = await startClientWith(server.url, ["--expose-udp", String(echo.port)]);
  const port = client.ports[0] as number;
  const peer = await udpPeer();
  for (const size of [0, 1, 1400, 9000, 65_507]) {
    const payload = crypto.getRandomValues(new Uint8Array(size));
    const back = await ask(peer, port, payload);
    expect(back.length).toBe(size);
    expect(sha(back)).toBe(sha(payload));
  }
  expect(() => peer.socket.send(new Uint8Array(65_508), port, "127.0.0.1")).toThrow(/EMSGSIZE/);
  // The path is unharmed.
  const after = crypto.getRandomValues(new Uint8Array(1400));
  expect(sha(await ask(peer, port, after))).toBe(sha(after));
  // A burst from one visitor: its datagrams share WebSocket messages (BATCH) and leave the client in
  // one sendmmsg per message; each comes back whole, empty ones included.
  const burst = Array.from({ length: 40 }, (_, i) =>
    crypto.getRandomValues(new Uint8Array([0, 1, 100, 1400, 9000][i % 5] as number)),
  );
  for (const datagram of burst) peer.socket.send(datagram, port, "127.0.0.1");
  const back: string[] = [];
  for (let i = 0; i < burst.length; i++) back.push(sha(await peer.next(5000)));
  expect(back.sort()).toEqual(burst.map(sha).sort());
  const udp = await udpHealth(server);
  expect(Object.values(udp.drops).reduce((a, b) => a + b, 0)).toBe(0);
});

test("flows idle out after --udp-idle-timeout, and past --udp-max-flows the least recently active gives way", async () => {
  const echo = await startUdpEcho();
  const server = await startServerProcess(["--udp-idle-timeout", "0.6", "--udp-max-flows", "4"]);
  const client = await startClientWith(server.url, ["--expose-udp", `127.0.0.1:${echo.port}`]);
  const port = client.ports[0] as number;
  const peers = await Promise.all(Array.from({ length: 5 }, () => udpPeer()));
  for (const peer of peers.slice(0, 4)) await ask(peer, port, new Uint8Array([1]));
  expect((await udpHealth(server)).open).toBe(4);
  // A fifth visitor: the oldest flow gives way; it still gets its answer.
  await ask(peers[4] as (typeof peers)[number], port, new Uint8Array([5]));
  let udp = await udpHealth(server);
  expect(udp).toMatchObject({ open: 4, flows: 5, evicted: 1 });
  // Quiet for the idle timeout: every flow is forgotten, on both sides.
  await eventually(async () => (await udpHealth(server)).open === 0, 5000, "flows idled out");
  udp = await udpHealth(server);
  expect(udp.idled).toBe(4);
  // The first visitor comes back: a new flow, so a new client-side socket (a new peer for the service).
  const before = echo.peers.size;
  await ask(peers[0] as (typeof peers)[number], port, new Uint8Array([6]));
  expect(echo.peers.size).toBe(before + 1);
});

test("--udp-rate-limit: a burst past the tunnel's rate is dropped at once and counted; the flow passes again afterwards", async () => {
  const echo = await startUdpEcho();
  // 1 Mbit/s: 125,000 bytes a second, a bucket of 64 KiB.
  const server = await startServerProcess(["--udp-rate-limit", "1"]);
  const client = await startClientWith(server.url, ["--expose-udp", `127.0.0.1:${echo.port}`]);
  const port = client.ports[0] as number;
  const peer = await udpPeer();
  const datagram = new Uint8Array(1000);
  // 200 KB at once: about 64 datagrams fit the bucket, the rest is over the rate.
  for (let i = 0; i < 200; i += 20)
    peer.socket.sendMany(Array(20).fill([datagram, port, "127.0.0.1"]).flat());
  await eventually(
    async () => {
      const udp = await udpHealth(server);
      return udp.datagramsIn + (udp.drops.rate_limited ?? 0) === 200;
    },
    5000,
    "every datagram of the burst passed or was counted",
  );
  const udp = (await server.health()) as unknown as { udp: UdpHealth & { rateLimit: number } };
  expect(udp.udp.rateLimit).toBe(1);
  expect(udp.udp.drops.rate_limited).toBeGreaterThanOrEqual(50);
  expect(udp.udp.datagramsIn).toBeGreaterThanOrEqual(1);
  expect(udp.udp.datagramsIn).toBeLessThanOrEqual(150);
  // Every datagram that passed came back; then the bucket fills again (1,000 bytes take 8 ms).
  const passed = udp.udp.datagramsIn;
  await eventually(async () => peer.inbox.length === passed, 5000, "the passed datagrams echoed");
  peer.inbox.length = 0;
  const later = new Uint8Array([7, 7, 7]);
  expect([...(await ask(peer, port, later))]).toEqual([7, 7, 7]);
});

test("the client's --udp-idle-timeout closes its socket for a quiet flow and tells the server", async () => {
  const echo = await startUdpEcho();
  const server = await startServerProcess();
  const client = await startClientWith(server.url, [
    "--expose-udp",
    `127.0.0.1:${echo.port}`,
    "--udp-idle-timeout",
    "0.5",
  ]);
  const port = client.ports[0] as number;
  const peer = await udpPeer();
  await ask(peer, port, new Uint8Array([1]));
  expect((await udpHealth(server)).open).toBe(1);
  // The server's own timeout is 60 s: only the client's FLOW_CLOSE can end the flow this soon.
  await eventually(async () => (await udpHealth(server)).open === 0, 5000, "the client closed the flow");
  expect((await udpHealth(server)).idled).toBe(0);
  await ask(peer, port, new Uint8Array([2]));
  expect(echo.peers.size).toBe(2);
});

test("a blip mid-flow: the flow goes on afterwards from the same client-side socket", async () => {
  const echo = await startUdpEcho();
  const server = await startServerProcess();
  const proxy = startProxy(server.port);
  const client = await startClientWith(`ws://127.0.0.1:${proxy.port}`, [
    "--expose-udp",
    `127.0.0.1:${echo.port}`,
    "--max-backoff",
    "1",
  ]);
  const port = client.ports[0] as number;
  const peer = await udpPeer();
  for (let i = 0; i < 20; i++) await ask(peer, port, new TextEncoder().encode(`before ${i}`));
  expect(echo.peers.size).toBe(1);
  const servicePeer = [...echo.peers][0] as string;
  proxy.cut();
  await client.waitFor(/resumed: tunnel/, 15_000);
  // Datagrams sent during the gap may be lost; afterwards they flow again through the same socket.
  for (let i = 0; i < 20; i++) {
    const payload = new TextEncoder().encode(`after ${i}`);
    expect(sha(await ask(peer, port, payload, 5))).toBe(sha(payload));
  }
  expect([...echo.peers]).toEqual([servicePeer]);
  expect(((await server.health()) as { reserved: number }).reserved).toBe(0);
});

test("bad input: a UDP port already taken and a name that does not resolve get one line each; the server carries on", async () => {
  const server = await startServerProcess();
  const taken = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
  defer(() => taken.close());
  const refused = await runToExit([
    "bun",
    "client.ts",
    "--server",
    server.url,
    "--expose-udp",
    "127.0.0.1:9",
    "--port",
    String(taken.port),
  ]);
  expectOneLineError(
    refused,
    new RegExp(`^error: server refused the tunnel: port ${taken.port}/udp is already in use on the server$`),
  );
  const privileged = await runToExit([
    "bun",
    "client.ts",
    "--server",
    server.url,
    "--expose-udp",
    "9",
    "--port",
    "53",
  ]);
  expectOneLineError(privileged, /^error: server refused the tunnel: port 53 is privileged \(below 1024\)/);
  const unresolved = await runToExit([
    "bun",
    "client.ts",
    "--server",
    server.url,
    "--expose-udp",
    "no-such-host.invalid:53",
  ]);
  expectOneLineError(unresolved, /^error: --expose-udp: cannot resolve host 'no-such-host\.invalid'$/);
  // Nothing else was affected: a TCP tunnel on the same server works.
  const echo = startEchoService();
  const client = await startClientWith(server.url, ["--expose", `127.0.0.1:${echo.port}`]);
  const data = crypto.getRandomValues(new Uint8Array(64 * 1024));
  expect(await echoThrough(client.ports[0] as number, data, 10_000)).toBe(sha(data));
});

test("an older server (no udp in its hello): --expose-udp is refused with one line, before any expose is sent", async () => {
  const received: string[] = [];
  const old = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req, srv) {
      if (srv.upgrade(req, { headers: { "Sec-WebSocket-Protocol": SUBPROTOCOL } })) return undefined;
      return new Response("not here\n", { status: 404 });
    },
    websocket: {
      open: (ws) => void ws.send(JSON.stringify(testHello())),
      message: (_ws, message) => void received.push(String(message)),
    },
  });
  defer(() => old.stop(true));
  const result = await withTimeout(
    runToExit(["bun", "client.ts", "--server", `ws://127.0.0.1:${old.port}`, "--expose-udp", "127.0.0.1:53"]),
    15_000,
    "client did not exit",
  );
  expectOneLineError(
    result,
    /^error: server ws:\/\/127\.0\.0\.1:\d+ does not serve UDP tunnels \(an older sockets server\)/,
  );
  expect(received.filter((m) => m.includes('"expose"'))).toEqual([]);
});
