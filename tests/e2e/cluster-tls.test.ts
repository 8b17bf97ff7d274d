/**
 * A cluster over TLS with a private CA and a Redis password (issue 20), as real processes: a CA and
 * its certificates made with openssl, a redis-server serving TLS only (`--tls-port`) with
 * `--requirepass`, and two nodes serving wss/https themselves, so that their node URLs, and the link
 * between them, are wss://. Both nodes reach Redis as `rediss://:PASSWORD@…` and trust the CA through
 * `--cluster-ca`. A client on node 1 publishes a web app; an HTTPS visitor through node 2 reaches it
 * over the wss link, its bytes checked by sha256 both ways. A wrong password, or no --cluster-ca, stops
 * a node at start with one line naming the problem and never the password.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RedisClient } from "bun";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import {
  defer,
  eventually,
  expectOneLineError,
  runToExit,
  type ServerProcess,
  setupFile,
  spawnRole,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { type RedisProcess, startRedis } from "../support/redis.ts";

setupFile();

/** The password Redis wants: it must show in no log line, error or /health. */
const PASSWORD = "c1uster-Pa55word-e2e";
/** A wrong one, as distinctive (it must not show either). */
const WRONG = "not-the-Pa55word-9f1c";
/** HTTP tunnels are NAME.DOMAIN: a wildcard certificate needs two labels after its `*`. */
const DOMAIN = "tunnel.localhost";

/** Runs openssl; rejects with its stderr when it fails. */
async function openssl(args: string[]): Promise<void> {
  if (!Bun.which("openssl")) throw new Error("openssl is not installed (apt-get install openssl)");
  const result = await runToExit(["openssl", ...args]);
  if (result.code !== 0) throw new Error(`openssl ${args[0]} failed: ${result.stderr}`);
}

/** A private CA in `dir` (`ca.pem`, `ca.key`). */
async function makeCa(dir: string): Promise<{ cert: string; key: string }> {
  const [cert, key] = [join(dir, "ca.pem"), join(dir, "ca.key")];
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl([
    "req",
    "-x509",
    ...ec,
    "-days",
    "2",
    "-subj",
    "/CN=sockets test CA",
    "-keyout",
    key,
    "-out",
    cert,
  ]);
  return { cert, key };
}

/** A certificate for `subjectAltName` signed by `ca`, in `dir` (`NAME.pem`, `NAME.key`). */
async function issue(
  dir: string,
  ca: { cert: string; key: string },
  name: string,
  subjectAltName: string,
): Promise<{ cert: string; key: string }> {
  const [cert, key, csr, ext] = ["pem", "key", "csr", "ext"].map((suffix) =>
    join(dir, `${name}.${suffix}`),
  ) as [string, string, string, string];
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl(["req", "-new", ...ec, "-subj", `/CN=${name}`, "-keyout", key, "-out", csr]);
  await Bun.write(ext, `subjectAltName=${subjectAltName}\n`);
  const serial = `0x${Buffer.from(randomData(8)).toString("hex")}`;
  await openssl([
    ...["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", serial],
    ...["-days", "2", "-extfile", ext, "-out", cert],
  ]);
  return { cert, key };
}

/** A node of the test cluster (serving wss and https). */
interface Node extends ServerProcess {
  name: string;
  httpPort: number;
}

/** A web app: POST answers the sha256 of its body, GET /blob sends `blob`. */
function startApp(blob: Uint8Array): number {
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: async (req) => {
      if (req.method === "GET") return new Response(blob);
      return new Response(sha256(new Uint8Array(await req.arrayBuffer())));
    },
  });
  defer(() => server.stop(true));
  return server.port as number;
}

describe("a cluster over TLS: rediss:// with a password, wss node links, a private CA", () => {
  let dir: string;
  let ca: string;
  let caPem: string;
  let nodeCert: { cert: string; key: string };
  let redis: RedisProcess;
  let nodes: Node[];
  const blob = randomData(4 * MiB);

  async function startNode(name: string): Promise<Node> {
    const server = await startServerProcess([
      ...["--http-port", "0", "--domain", DOMAIN, "--tls-cert", nodeCert.cert, "--tls-key", nodeCert.key],
      ...["--cluster", redis.url, "--cluster-ca", ca, "--node-name", name],
      ...["--cluster-lease", "2", "--heartbeat", "1"],
    ]);
    const httpPort = Number(
      (await server.waitFor(/http tunnels on https:\/\/\*\.tunnel\.localhost:(\d+)\n/))[1],
    );
    await server.waitFor(/cluster: node \S+ joined/);
    return { ...server, name, httpPort };
  }

  /** GET /health of a node over https, trusting the CA: its text (to search) and its JSON. */
  async function health(node: Node): Promise<{ text: string; json: { cluster: Record<string, unknown> } }> {
    const response = await fetch(`https://127.0.0.1:${node.port}/health`, {
      tls: { ca: caPem },
      signal: AbortSignal.timeout(3000),
    } as RequestInit);
    const text = await response.text();
    return { text, json: JSON.parse(text) };
  }

  /** A request to `name`.DOMAIN through a node's https port (trusting only the CA): status and body. */
  function visit(node: Node, name: string, method: "GET" | "POST", body?: Uint8Array) {
    const host = `${name}.${DOMAIN}`;
    return withTimeout(
      new Promise<{ status: number; body: Uint8Array }>((resolve, reject) => {
        const req = request(
          {
            host: "127.0.0.1",
            port: node.httpPort,
            servername: host,
            ca: caPem,
            method,
            path: "/blob",
            headers: { host, "content-length": String(body?.length ?? 0) },
            agent: false,
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (chunk: Buffer) => chunks.push(chunk));
            res.on("end", () =>
              resolve({ status: res.statusCode ?? 0, body: new Uint8Array(Buffer.concat(chunks)) }),
            );
            res.on("error", reject);
          },
        );
        req.on("error", reject);
        req.end(body);
      }),
      20_000,
      `${method} ${host} through ${node.name}`,
    );
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "sockets-cluster-tls-"));
    defer(() => rmSync(dir, { recursive: true, force: true }));
    const authority = await makeCa(dir);
    ca = authority.cert;
    caPem = await Bun.file(ca).text();
    const redisCert = await issue(dir, authority, "redis", "IP:127.0.0.1,DNS:localhost");
    nodeCert = await issue(dir, authority, "node", `DNS:localhost,DNS:*.${DOMAIN},IP:127.0.0.1`);
    redis = await startRedis({ password: PASSWORD, tls: { ...redisCert, ca } });
    expect(redis.url).toBe(`rediss://:${PASSWORD}@127.0.0.1:${redis.port}`);
    nodes = [await startNode("n1"), await startNode("n2")];
  });

  test("each node registered a wss:// node URL in Redis, reached over TLS with the password", async () => {
    const raw = new RedisClient(redis.url, { tls: { ca: caPem }, connectionTimeout: 3000 });
    defer(() => raw.close());
    await raw.connect();
    for (const node of nodes) {
      const info = JSON.parse((await raw.get(`sockets:node:${node.name}`)) as string) as { url: string };
      expect(info.url).toBe(`wss://127.0.0.1:${node.port}`);
    }
  });

  test("an HTTPS visitor through node 2 reaches node 1's client over the wss link, bytes intact", async () => {
    const app = startApp(blob);
    const [n1, n2] = nodes as [Node, Node];
    const client = spawnRole([
      ...["bun", "client.ts", "--server", n1.url, "--ca", ca, "--heartbeat", "1"],
      ...["--http", `127.0.0.1:${app}`, "--subdomain", "app"],
    ]);
    await Promise.race([
      client.waitFor(/exposed with tunnel id \S+, url: https:\/\/app\.tunnel\.localhost:\d+\n/, 20_000),
      client.proc.exited.then((code) => {
        throw new Error(`client exited (${code}): ${client.stderr()}`);
      }),
    ]);
    // Node 2 learns the lease within a resync (1 s) and has its link to node 1 up.
    await eventually(
      async () => {
        const cluster = (await health(n2)).json.cluster as {
          links: Record<string, { up: boolean }>;
          elsewhere: number;
        };
        return cluster.links.n1?.up === true && cluster.elsewhere >= 1;
      },
      10_000,
      "node 2 sees app on node 1 with its link up",
    );

    const upload = randomData(4 * MiB);
    const posted = await visit(n2, "app", "POST", upload);
    expect(posted.status).toBe(200);
    expect(new TextDecoder().decode(posted.body)).toBe(sha256(upload));
    const fetched = await visit(n2, "app", "GET");
    expect(fetched.status).toBe(200);
    expect(sha256(fetched.body)).toBe(sha256(blob));
    // The link carried it: node 2's link to node 1 is the one that is up, and node 1 holds the name.
    expect(((await health(n1)).json.cluster as { held: number }).held).toBe(1);

    // The password is in no log line of either node, nor in their /health.
    for (const node of nodes) {
      expect(node.stdout() + node.stderr()).not.toContain(PASSWORD);
      expect((await health(node)).text).not.toContain(PASSWORD);
      expect(node.stderr()).toContain("rediss://:***@127.0.0.1:");
    }
  });

  test("a wrong password: the node exits 1 at once, one line naming it, no password shown", async () => {
    const url = `rediss://:${WRONG}@127.0.0.1:${redis.port}`;
    const result = await runToExit([
      ...["bun", "server.ts", "--host", "127.0.0.1", "--port", "0"],
      ...["--cluster", url, "--cluster-ca", ca],
    ]);
    expect(result.code).toBe(1);
    expectOneLineError(
      result,
      /cannot use redis at rediss:\/\/:\*\*\*@127\.0\.0\.1:\d+: authentication failed \(wrong password\?\)$/,
    );
    expect(result.stderr).not.toContain(WRONG);
    expect(result.stderr).not.toContain(PASSWORD);
  });

  test("rediss:// without --cluster-ca: one line saying the certificate is not trusted, and how to trust it", async () => {
    const result = await runToExit([
      ...["bun", "server.ts", "--host", "127.0.0.1", "--port", "0"],
      ...["--cluster", redis.url],
    ]);
    expect(result.code).toBe(1);
    expectOneLineError(
      result,
      /TLS: Redis' certificate was refused: .*; trust its CA with --cluster-ca FILE$/,
    );
    expect(result.stderr).not.toContain(PASSWORD);
  });

  test("no password: one line saying Redis wants one", async () => {
    const result = await runToExit([
      ...["bun", "server.ts", "--host", "127.0.0.1", "--port", "0"],
      ...["--cluster", `rediss://127.0.0.1:${redis.port}`, "--cluster-ca", ca],
    ]);
    expect(result.code).toBe(1);
    expectOneLineError(result, /authentication required: give the password in the URL/);
  });
});
