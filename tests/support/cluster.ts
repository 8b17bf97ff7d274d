/**
 * Test support, clusters: server nodes and clients as real processes, each node on a loopback address
 * of its own; web apps that name themselves in every answer; HTTP visits with a Host of the test's
 * choosing; and a TCP proxy the test can cut (a network partition between a node and Redis).
 * @module
 */

import { type Agent, request } from "node:http";
import { sha256 } from "./hashing.ts";
import { type ClientProcess, defer, type RoleProcess, spawnRole, withTimeout } from "./processes.ts";

/** A node of a test cluster. */
export interface ClusterNodeProcess extends RoleProcess {
  /** Its name as it logged it on joining. */
  name: string;
  /** Its loopback address: public ports are opened there. */
  ip: string;
  port: number;
  httpPort: number;
  url: string;
}

/**
 * Starts `bun server.ts --host IP --port PORT --http-port 0 --domain localhost --cluster REDIS ...extra`
 * and waits for it to join; rejects with its output when it exits first.
 */
export async function startClusterNode(
  ip: string,
  redisUrl: string,
  extra: string[] = [],
  port = 0,
): Promise<ClusterNodeProcess> {
  const role = spawnRole([
    "bun",
    "server.ts",
    ...["--host", ip, "--port", String(port), "--http-port", "0", "--domain", "localhost"],
    ...["--cluster", redisUrl, "--auth-fail-limit", "1000"],
    ...extra,
  ]);
  const exited = role.proc.exited.then((code) => {
    throw new Error(`node at ${ip} exited (${code}): ${role.stderr()}`);
  });
  const listening = await Promise.race([role.waitFor(/listening on ws:\/\/\S+:(\d+) /, 20_000), exited]);
  const httpPort = Number((await role.waitFor(/http tunnels on http:\/\/\*\.localhost:(\d+)\n/))[1]);
  const joined = await Promise.race([role.waitFor(/cluster: node (\S+) joined/, 10_000), exited]);
  const controlPort = Number(listening[1]);
  return {
    ...role,
    name: joined[1] as string,
    ip,
    port: controlPort,
    httpPort,
    url: `ws://${ip}:${controlPort}`,
  };
}

/** `GET /health` of a node. */
export async function nodeHealth(
  node: ClusterNodeProcess,
): Promise<Record<string, unknown> & { cluster: Record<string, unknown> }> {
  const response = await fetch(`http://${node.ip}:${node.port}/health`, {
    signal: AbortSignal.timeout(3000),
  });
  return (await response.json()) as Record<string, unknown> & { cluster: Record<string, unknown> };
}

/** A web app that names itself in every answer (`ID sha256-of-body`), stopped at the file's cleanup. */
export function startNamedApp(id: string): number {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: async (req) => new Response(`${id} ${sha256(new Uint8Array(await req.arrayBuffer()))}`),
  });
  defer(() => server.stop(true));
  return server.port as number;
}

/** Starts a client against `servers` (in order) exposing `args`; resolves once `expected` tunnels are up. */
export async function startClusterClient(
  servers: { url: string }[],
  args: string[],
  expected: number,
  extra: string[] = ["--heartbeat", "1"],
): Promise<ClientProcess> {
  const role = spawnRole([
    "bun",
    "client.ts",
    ...servers.flatMap((node) => ["--server", node.url]),
    ...extra,
    ...args,
  ]);
  const pattern = new RegExp(`(?:exposed with tunnel id \\S+, url: \\S+\\n[^]*){${expected}}`);
  await Promise.race([
    role.waitFor(pattern, 30_000),
    role.proc.exited.then((code) => {
      throw new Error(`client exited (${code}): ${role.stderr()}`);
    }),
  ]);
  const tunnels = [...role.stdout().matchAll(/exposed with tunnel id (\S+), url: \S+:(\d+)/g)].map((m) => ({
    id: m[1] as string,
    port: Number(m[2]),
  }));
  return { ...role, tunnels };
}

/** An HTTP answer: status, body, and the Retry-After header if any. */
export interface Visit {
  status: number;
  text: string;
  retryAfter?: string;
  /** The request went on a kept-alive connection that had carried an earlier one (with an `agent`). */
  reused?: boolean;
}

/**
 * POSTs `body` to `NAME.localhost` through a node's HTTP port (node:http: fetch does not send a Host
 * of our choosing). Rejects on a reset or after `timeoutMs`. A new connection each time, unless an
 * `agent` (a keep-alive one) is given.
 */
export function visitName(
  node: { ip: string; httpPort: number },
  name: string,
  body: Uint8Array,
  timeoutMs = 10_000,
  agent: Agent | false = false,
): Promise<Visit> {
  return withTimeout(
    new Promise((resolve, reject) => {
      const req = request(
        {
          host: node.ip,
          port: node.httpPort,
          method: "POST",
          path: "/",
          headers: { host: `${name}.localhost`, "content-length": String(body.length) },
          agent,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (chunk: Buffer) => chunks.push(chunk));
          res.on("end", () => {
            const retryAfter = res.headers["retry-after"];
            resolve({
              status: res.statusCode ?? 0,
              text: Buffer.concat(chunks).toString(),
              ...(retryAfter === undefined ? {} : { retryAfter: String(retryAfter) }),
              ...(agent === false ? {} : { reused: req.reusedSocket }),
            });
          });
          res.on("error", reject);
        },
      );
      req.setTimeout(timeoutMs, () => req.destroy(new Error("timed out")));
      req.on("error", reject);
      req.end(body);
    }),
    timeoutMs + 1000,
    `POST to ${name} through ${node.ip}:${node.httpPort}`,
  );
}

/**
 * A TCP proxy on 127.0.0.1 in front of `target` that the test controls: {@link TcpProxy.cut} drops every
 * connection and refuses new ones without answering (a partition: packets go nowhere), {@link TcpProxy.heal}
 * lets them through again.
 */
export interface TcpProxy {
  port: number;
  cut(): void;
  heal(): void;
}

/** Starts a {@link TcpProxy} to `127.0.0.1:targetPort`; stopped at the file's cleanup. */
export function startTcpProxy(targetPort: number): TcpProxy {
  type Side = { peer: import("bun").Socket<Side> | null; pending: Uint8Array[]; upstream: boolean };
  let cut = false;
  const open = new Set<import("bun").Socket<Side>>();
  const listener = Bun.listen<Side>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(client) {
        client.data = { peer: null, pending: [], upstream: false };
        open.add(client);
        // Cut: the connection is accepted by the kernel but nothing ever comes back (a black hole).
        if (cut) return;
        Bun.connect<Side>({
          hostname: "127.0.0.1",
          port: targetPort,
          data: { peer: client, pending: [], upstream: true },
          socket: {
            open(server) {
              open.add(server);
              if (cut || client.readyState !== 1) {
                server.end();
                return;
              }
              client.data.peer = server;
              for (const chunk of client.data.pending) server.write(chunk);
              client.data.pending = [];
            },
            data(server, data) {
              if (!cut) server.data.peer?.write(data);
            },
            close(server) {
              open.delete(server);
              if (!cut) server.data.peer?.end();
            },
            error() {},
          },
        }).catch(() => client.end());
      },
      data(client, data) {
        if (cut) return;
        if (client.data.peer) client.data.peer.write(data);
        else client.data.pending.push(new Uint8Array(data));
      },
      close(client) {
        open.delete(client);
        if (!cut) client.data.peer?.end();
      },
      error() {},
    },
  });
  defer(() => {
    for (const socket of open) socket.terminate();
    listener.stop(true);
  });
  return {
    port: listener.port,
    cut() {
      cut = true;
    },
    heal() {
      cut = false;
      // Connections that lived through the cut are dead to both ends by now: drop them.
      for (const socket of open) socket.terminate();
      open.clear();
    },
  };
}
