/**
 * The visitor's address for the local service (PROXY protocol, issue 26), as real processes: Debian's
 * nginx (tests/support/nginx.ts) listening with `proxy_protocol` behind a TCP tunnel and an HTTP tunnel
 * of a real server and client. Its access log must show each visitor's own address and port (visitors
 * come from 127.0.0.2 and 127.0.0.3, while the tunnel's client connects from 127.0.0.1, so the log
 * cannot show the client's by accident) and the public address the visitor connected to, for v1 and
 * v2, for an IPv6 visitor (::1) of a server bound to `::`, and for a visitor that reached another node
 * of a cluster. Without `--proxy-protocol` nginx refuses the connection: the header is what it reads.
 */

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect } from "node:net";
import { NGINX_BODY, type NginxProcess, type ProxyLogLine, startNginx } from "../support/nginx.ts";
import {
  eventually,
  type RoleProcess,
  setupFile,
  spawnRole,
  startClientProcess,
  startHttpClient,
  startHttpServer,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { type RedisProcess, startRedis } from "../support/redis.ts";

setupFile();

let nginx: NginxProcess;

beforeAll(async () => {
  nginx = await startNginx();
});

/** What a visitor saw: nginx's answer, and its own end of the connection. */
interface Visit {
  reply: string;
  localAddress: string;
  localPort: number;
}

/**
 * One visitor connection from `from` to `host:port` with one HTTP request (`Host: hostHeader`,
 * `Connection: close`), read to its end.
 */
function visit(host: string, port: number, from: string, hostHeader = "nginx.test"): Promise<Visit> {
  return withTimeout(
    new Promise<Visit>((resolve, reject) => {
      const socket = connect({ host, port, localAddress: from });
      let reply = "";
      let localAddress = "";
      let localPort = 0;
      socket.once("connect", () => {
        localAddress = socket.localAddress ?? "";
        localPort = socket.localPort ?? 0;
        socket.write(`GET /visit HTTP/1.1\r\nHost: ${hostHeader}\r\nConnection: close\r\n\r\n`);
      });
      socket.setEncoding("latin1");
      socket.on("data", (text: string) => {
        reply += text;
      });
      socket.once("end", () => {
        socket.destroy();
        resolve({ reply, localAddress, localPort });
      });
      socket.once("error", reject);
    }),
    10_000,
    `visit ${host}:${port} from ${from}`,
  );
}

/** The access-log line nginx wrote for the visitor that came from `port` (waits for it). */
async function logged(port: number, from: string): Promise<ProxyLogLine> {
  let line: ProxyLogLine | undefined;
  await eventually(
    () => {
      // By address and port: an earlier visitor of the other family may have had the same port.
      line = nginx.accessLog().find((entry) => entry.port === port && entry.addr === from);
      return line !== undefined;
    },
    5000,
    `nginx logs the visitor from port ${port}\n${nginx.errorLog()}`,
  );
  return line as ProxyLogLine;
}

/** Visits and checks what nginx logged: the visitor's own address and port, and where it connected. */
async function expectVisitorSeen(
  host: string,
  port: number,
  from: string,
  hostHeader?: string,
): Promise<void> {
  const seen = await visit(host, port, from, hostHeader);
  expect(seen.reply).toStartWith("HTTP/1.1 200 OK\r\n");
  expect(seen.reply).toEndWith(NGINX_BODY);
  expect(await logged(seen.localPort, from)).toMatchObject({
    addr: from,
    port: seen.localPort,
    serverAddr: host,
    serverPort: port,
    // nginx's own peer is the tunnel's client, on 127.0.0.1: not what it reports as the visitor.
    remoteAddr: "127.0.0.1",
    request: "GET /visit HTTP/1.1",
  });
}

describe("a TCP tunnel in front of nginx", () => {
  for (const version of ["v1", "v2"] as const)
    test(`--proxy-protocol ${version}: nginx sees each visitor's own address and port`, async () => {
      const server = await startServerProcess();
      const client = await startClientProcess(
        server.url,
        [`127.0.0.1:${nginx.port}`],
        ["--proxy-protocol", version],
      );
      const port = (client.tunnels[0] as { port: number }).port;
      for (const from of ["127.0.0.2", "127.0.0.3", "127.0.0.2"])
        await expectVisitorSeen("127.0.0.1", port, from);
    });

  test("a server bound to :: : an IPv6 visitor (::1) is logged as ::1, an IPv4 one as IPv4", async () => {
    const server = await startServerProcess(["--host", "::"]);
    await server.waitFor(/listening on ws:\/\/\[::\]:\d+ /);
    const client = await startClientProcess(
      server.url,
      [`127.0.0.1:${nginx.port}`],
      ["--proxy-protocol", "v2"],
    );
    const port = (client.tunnels[0] as { port: number }).port;
    await expectVisitorSeen("::1", port, "::1");
    await expectVisitorSeen("127.0.0.1", port, "127.0.0.3");
    const v1 = await startClientProcess(server.url, [`127.0.0.1:${nginx.port}`], ["--proxy-protocol", "v1"]);
    await expectVisitorSeen("::1", (v1.tunnels[0] as { port: number }).port, "::1");
  });

  test("without --proxy-protocol nginx refuses the visitor (the header is what it reads)", async () => {
    const server = await startServerProcess();
    const client = await startClientProcess(server.url, [`127.0.0.1:${nginx.port}`]);
    const seen = await visit("127.0.0.1", (client.tunnels[0] as { port: number }).port, "127.0.0.2");
    expect(seen.reply).not.toContain(NGINX_BODY);
    await eventually(() => /broken header/.test(nginx.errorLog()), 5000, "nginx logs a broken header");
    expect(nginx.accessLog().some((line) => line.port === seen.localPort)).toBe(false);
  });
});

describe("an HTTP tunnel in front of nginx", () => {
  for (const version of ["v1", "v2"] as const)
    test(`--proxy-protocol ${version}: a header on each connection to the service, each with its visitor`, async () => {
      const server = await startHttpServer();
      await startHttpClient(server.url, nginx.port, `pp${version}`, ["--proxy-protocol", version]);
      for (const from of ["127.0.0.2", "127.0.0.3"])
        await expectVisitorSeen("127.0.0.1", server.httpPort, from, `pp${version}.localhost`);
    });
});

test("an inspector replay to a PROXY-protocol service sends a header too (UNKNOWN: a replay is no visitor)", async () => {
  const server = await startHttpServer();
  const client = await startHttpClient(server.url, nginx.port, "replayed", [
    "--proxy-protocol",
    "v1",
    "--inspect",
    "127.0.0.1:0",
  ]);
  const inspector = (await client.waitFor(/inspector: (http:\/\/127\.0\.0\.1:\d+)\n/))[1] as string;
  await expectVisitorSeen("127.0.0.1", server.httpPort, "127.0.0.2", "replayed.localhost");
  const api = (path: string, init?: RequestInit) =>
    fetch(`${inspector}${path}`, { ...init, signal: AbortSignal.timeout(10_000) }).then(async (response) => ({
      status: response.status,
      body: (await response.json()) as Record<string, unknown>,
    }));
  let id = "";
  await eventually(
    async () => {
      const list = (await api("/api/requests/http?summary=1")).body.requests as {
        id: string;
        state: string;
      }[];
      id = list[0]?.state === "complete" ? list[0].id : "";
      return id !== "";
    },
    10_000,
    "the visit is in the inspector",
  );
  const before = nginx.accessLog().length;
  const replayed = await api("/api/requests/http", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ id }),
  });
  expect(replayed.status).toBe(200);
  expect((replayed.body.response as { status: string }).status).toBe("200 OK");
  await eventually(() => nginx.accessLog().length > before, 5000, "nginx logs the replay");
  // UNKNOWN: nginx has no PROXY address for it ("-"), and took the request all the same.
  expect(nginx.accessLog().at(-1)).toMatchObject({
    addr: "-",
    remoteAddr: "127.0.0.1",
    request: "GET /visit HTTP/1.1",
  });
});

describe("a visitor through another node of a cluster", () => {
  let redis: RedisProcess;
  const nodes: { role: RoleProcess; ip: string; url: string; httpPort: number }[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    for (const [name, ip] of [
      ["n1", "127.0.0.1"],
      ["n2", "127.0.0.2"],
    ] as const) {
      const role = spawnRole(
        ["bun", "server.ts", "--host", ip, "--port", "0", "--http-port", "0", "--domain", "localhost"].concat(
          ["--cluster", redis.url, "--node-name", name, "--cluster-lease", "2", "--heartbeat", "1"],
        ),
      );
      const port = Number((await role.waitFor(/listening on ws:\/\/\S+:(\d+) /, 15_000))[1]);
      const httpPort = Number((await role.waitFor(/http tunnels on http:\/\/\*\.localhost:(\d+)\n/))[1]);
      await role.waitFor(/cluster: node \S+ joined/);
      nodes.push({ role, ip, url: `ws://${ip}:${port}`, httpPort });
    }
  }, 60_000);

  afterAll(() => {
    if (process.env.CLUSTER_DEBUG) for (const node of nodes) console.log(node.role.stderr());
  });

  test("nginx sees the visitor's address and the public address at the node it reached, never the hop", async () => {
    const [n1, n2] = nodes as [(typeof nodes)[0], (typeof nodes)[0]];
    const client = await startClientProcess(
      n1.url,
      [`127.0.0.1:${nginx.port}`],
      ["--http", `127.0.0.1:${nginx.port}`, "--subdomain", "hop", "--proxy-protocol", "v1"],
    );
    await client.waitFor(/exposed with tunnel id \S+, url: http:\/\/hop\.localhost/);
    const port = (client.tunnels[0] as { port: number }).port;
    // The second node opens the port too once it heard of the lease (pub/sub, or its resync).
    await eventually(
      // Refused until the second node has opened the port: asked again, not failed.
      () =>
        visit(n2.ip, port, "127.0.0.3").then(
          (seen) => seen.reply.startsWith("HTTP/1.1 200"),
          () => false,
        ),
      10_000,
      "the second node carries visitors of the first node's tunnel",
    );
    await expectVisitorSeen(n2.ip, port, "127.0.0.3");
    await expectVisitorSeen(n1.ip, port, "127.0.0.2");
    await expectVisitorSeen(n2.ip, n2.httpPort, "127.0.0.3", "hop.localhost");
  });
});
