/**
 * Test support, UDP: a UDP echo service that records its peers, one request and its answer from a
 * fresh socket, a client process with UDP tunnels, and dnsmasq (Debian's dnsmasq-base) answering a
 * local zone on a free port, with DNS queries built and checked by hand.
 * @module
 */

import type { udp } from "bun";
import { defer, type RoleProcess, spawnRole, withTimeout } from "./processes.ts";

/** A UDP echo service in this process: each datagram goes back whole to its sender. */
export interface UdpEcho {
  port: number;
  /** Every `address:port` that sent something, in order of first arrival. */
  peers: Set<string>;
  /** Datagrams echoed. */
  datagrams: number;
  close(): void;
}

/** Starts a {@link UdpEcho} on 127.0.0.1 (a free port). */
export async function startUdpEcho(): Promise<UdpEcho> {
  const peers = new Set<string>();
  const echo: UdpEcho = { port: 0, peers, datagrams: 0, close: () => {} };
  const socket = await Bun.udpSocket({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(s, data, port, address) {
        peers.add(`${address}:${port}`);
        echo.datagrams++;
        s.send(data, port, address);
      },
      error() {},
    },
  });
  echo.port = socket.port;
  echo.close = () => socket.close();
  defer(() => socket.close());
  return echo;
}

/** A UDP socket of this process on 127.0.0.1 that keeps what it receives, for sends and waits. */
export interface UdpPeer {
  socket: udp.Socket<"buffer">;
  port: number;
  /** Datagrams received, oldest first (taken by {@link UdpPeer.next}). */
  inbox: Uint8Array[];
  /** Resolves with the next datagram received, or rejects after `timeoutMs`. */
  next(timeoutMs?: number): Promise<Uint8Array>;
  close(): void;
}

/** Opens a {@link UdpPeer} (closed by the test file's cleanup too). */
export async function udpPeer(): Promise<UdpPeer> {
  const inbox: Uint8Array[] = [];
  let wake: (() => void) | undefined;
  const socket = await Bun.udpSocket({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(_s, data) {
        inbox.push(new Uint8Array(data));
        wake?.();
      },
      error() {},
    },
  });
  defer(() => socket.close());
  return {
    socket,
    port: socket.port,
    inbox,
    async next(timeoutMs = 2000) {
      const deadline = Date.now() + timeoutMs;
      while (inbox.length === 0) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`no datagram within ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
      return inbox.shift() as Uint8Array;
    },
    close: () => socket.close(),
  };
}

/**
 * Sends `payload` to `port` on 127.0.0.1 and waits for one answer; sends again (up to `tries` times,
 * `timeoutMs` each) when none came: UDP may lose a datagram, a test must not hang on it.
 */
export async function ask(peer: UdpPeer, port: number, payload: Uint8Array, tries = 3, timeoutMs = 2000) {
  let last: unknown;
  for (let i = 0; i < tries; i++) {
    peer.socket.send(payload, port, "127.0.0.1");
    try {
      return await peer.next(timeoutMs);
    } catch (error) {
      last = error;
    }
  }
  throw last;
}

/** A client process with its tunnels' URLs (`udp://HOST:PORT` or `HOST:PORT`) and public ports. */
export interface UdpClientProcess extends RoleProcess {
  urls: string[];
  ports: number[];
}

/** Starts `bun client.ts --server URL ...args` and waits for `tunnels` exposed lines. */
export async function startClientWith(
  server: string,
  args: string[],
  tunnels = 1,
): Promise<UdpClientProcess> {
  const role = spawnRole(["bun", "client.ts", "--server", server, ...args]);
  const pattern = new RegExp(`(?:exposed with tunnel id \\S+, url: \\S+\\n[^]*){${tunnels}}`);
  await role.waitFor(pattern, 15_000);
  const urls = [...role.stdout().matchAll(/exposed with tunnel id \S+, url: (\S+)/g)].map(
    (m) => m[1] as string,
  );
  return { ...role, urls, ports: urls.map((url) => Number(url.slice(url.lastIndexOf(":") + 1))) };
}

/** A free UDP port on 127.0.0.1 (bound and released: a small race with other processes). */
export async function freeUdpPort(): Promise<number> {
  const socket = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
  const port = socket.port;
  socket.close();
  return port;
}

/** dnsmasq answering a local zone: `a.test` A 10.1.2.3, `h.test` A 10.0.0.7, `big.test` 10 TXT of 200 bytes. */
export async function startDnsmasq(): Promise<{ port: number; role: RoleProcess }> {
  for (let attempt = 0; ; attempt++) {
    const port = await freeUdpPort();
    const txt = Array.from({ length: 10 }, (_, i) => `--txt-record=big.test,${String(i).repeat(200)}`);
    const role = spawnRole([
      "dnsmasq",
      "--no-daemon",
      `--port=${port}`,
      "--listen-address=127.0.0.1",
      "--bind-interfaces",
      "--no-resolv",
      "--no-hosts",
      // As root, dnsmasq would switch to `nobody`; as another user it stays that user.
      ...(process.getuid?.() === 0 ? ["--user=root"] : []),
      "--pid-file=",
      "--log-facility=-",
      // Answers beyond 1,232 bytes when the query's EDNS allows (dnsmasq caps at 1,232 by default).
      "--edns-packet-max=4096",
      "--address=/a.test/10.1.2.3",
      "--host-record=h.test,10.0.0.7",
      ...txt,
    ]);
    try {
      await Promise.race([
        role.waitFor(/started, version/, 5000),
        role.exited(5000).then((code) => {
          throw new Error(`dnsmasq exited (${code}): ${role.stderr()}`);
        }),
      ]);
      return { port, role };
    } catch (error) {
      role.kill("SIGKILL");
      if (attempt >= 2) throw error;
    }
  }
}

/** A DNS query for `name` type A, id `id` (RFC 1035 §4.1), recursion desired, no EDNS. */
export function dnsQuery(id: number, name: string): Uint8Array {
  const labels = name.split(".").flatMap((label) => [label.length, ...new TextEncoder().encode(label)]);
  return new Uint8Array([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, ...labels, 0, 0, 1, 0, 1]);
}

/** What a DNS answer says: its id, its response code, the number of answers and the last 4 bytes. */
export function dnsAnswer(packet: Uint8Array): { id: number; rcode: number; answers: number; last4: string } {
  return {
    id: ((packet[0] as number) << 8) | (packet[1] as number),
    rcode: (packet[3] as number) & 0x0f,
    answers: ((packet[6] as number) << 8) | (packet[7] as number),
    last4: [...packet.subarray(packet.length - 4)].join("."),
  };
}

/** Runs `dig` with `args` and returns its output (bounded by `timeoutMs`). */
export async function dig(args: string[], timeoutMs = 10_000): Promise<string> {
  const proc = Bun.spawn(["dig", ...args], { stdout: "pipe", stderr: "pipe" });
  defer(() => proc.kill("SIGKILL"));
  await withTimeout(proc.exited, timeoutMs, `dig ${args.join(" ")} did not finish`);
  return await new Response(proc.stdout).text();
}
