/**
 * Automatic HTTPS end to end against a real ACME CA (Debian's pebble): a server with --acme-email
 * orders certificates for the names live HTTP tunnels hold, through HTTP-01 and TLS-ALPN-01, and serves
 * each by SNI on --https-port; curl trusts pebble's root (no insecure flag) and reaches the names
 * through `--resolve`. Renewal, refusals by pebble, the order limits and a restart that reuses the
 * disk are covered too.
 */

import { describe, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { BIND9_INSTALLED, startBind9 } from "../support/bind9.ts";
import { openBrowserPage } from "../support/browser.ts";
import { makeCertificate } from "../support/certificates.ts";
import { connectControl } from "../support/control-client.ts";
import { MiB, sha256 } from "../support/hashing.ts";
import {
  freePorts,
  ocspIndexLine,
  PEBBLE_INSTALLED,
  type Pebble,
  startOcspResponder,
  startPebble,
  writeOcspIndex,
} from "../support/pebble.ts";
import {
  count,
  eventually,
  runToExit,
  type ServerProcess,
  setupFile,
  startClientProcess,
  startServerProcess,
  withTimeout,
} from "../support/processes.ts";
import { startRedis } from "../support/redis.ts";
import { configFolder, testUser, usersToml, writeConfig } from "../support/server-config.ts";

setupFile();

const DOMAIN = "tunnel.test";

/** A local web app: its name on `/`, and `n` deterministic bytes on `/bytes?n=`. */
function startApp(label: string) {
  const app = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const url = new URL(req.url);
      if (url.pathname === "/bytes") return new Response(deterministic(Number(url.searchParams.get("n"))));
      if (url.pathname === "/headers") return Response.json(Object.fromEntries(req.headers));
      return new Response(`hello from ${label}`);
    },
  });
  return app;
}

/** `size` bytes of a fixed pattern (hashable on both ends). */
function deterministic(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + (i >>> 11)) & 0xff;
  return bytes;
}

interface AcmeSetup {
  pebble: Pebble;
  server: ServerProcess;
  httpPort: number;
  httpsPort: number;
  acmeDir: string;
}

/**
 * pebble and a server with ACME: the server's plain HTTP and HTTPS ports are taken free first and
 * given to both (pebble validates HTTP-01 and TLS-ALPN-01 on fixed ports of its config).
 */
async function startAcme(
  serverArgs: string[] = [],
  pebble: { validitySeconds?: number; env?: Record<string, string>; ocsp?: boolean } = {},
  ports?: { httpPort: number; httpsPort: number; acmeDir: string; pebble: Pebble },
): Promise<AcmeSetup> {
  const [httpPort, httpsPort] = ports
    ? [ports.httpPort, ports.httpsPort]
    : (freePorts(2) as [number, number]);
  const ca = ports?.pebble ?? (await startPebble({ httpPort, tlsPort: httpsPort, ...pebble }));
  const acmeDir = ports?.acmeDir ?? join(configFolder(), "acme");
  const server = await startServerProcess([
    "--domain",
    DOMAIN,
    "--http-port",
    String(httpPort),
    "--https-port",
    String(httpsPort),
    "--acme-email",
    "ops@tunnel.test",
    "--acme-directory",
    ca.directory,
    "--acme-ca",
    ca.listenerCa,
    "--acme-dir",
    acmeDir,
    ...serverArgs,
  ]);
  return { pebble: ca, server, httpPort, httpsPort, acmeDir };
}

/**
 * Two cluster nodes, `a` and `b`, over one redis-server, ordering from one pebble that validates on
 * a's ports only: b's orders are answered by a (challenges are shared through the cluster). `node`
 * starts another member.
 */
async function startAcmeCluster(
  challenge: "http-01" | "tls-alpn-01",
  options: { ocsp?: boolean; nodeArgs?: string[] } = {},
) {
  const redis = await startRedis();
  const [httpA, httpsA, httpB, httpsB] = freePorts(4) as [number, number, number, number];
  const pebble = await startPebble({
    httpPort: httpA,
    tlsPort: httpsA,
    avoid: [httpB, httpsB],
    ...(options.ocsp ? { ocsp: true } : {}),
  });
  const dir = configFolder();
  const node = (name: string, http: number, https: number) =>
    startServerProcess([
      ...["--domain", DOMAIN, "--http-port", String(http), "--https-port", String(https)],
      ...["--acme-email", "ops@tunnel.test", "--acme-directory", pebble.directory],
      ...["--acme-ca", pebble.listenerCa, "--acme-dir", join(dir, name), "--acme-challenge", challenge],
      ...["--cluster", redis.url, "--node-name", name, ...(options.nodeArgs ?? [])],
    ]);
  const a = await node("a", httpA, httpsA);
  const b = await node("b", httpB, httpsB);
  /** A client at b publishing `name` (to the app on `appPort`): once b has its certificate and a got it from the cluster. */
  const publishAtB = async (name: string, appPort: number) => {
    const client = await startClientProcess(
      b.url,
      [],
      ["--http", `127.0.0.1:${appPort}`, "--subdomain", name],
    );
    await client.waitFor(/exposed with tunnel id/);
    await b.waitFor(
      new RegExp(`certificate issued for ${name}\\.tunnel\\.test through ${challenge}`),
      20_000,
    );
    await a.waitFor(new RegExp(`certificate for ${name}\\.tunnel\\.test from the cluster`), 10_000);
    return client;
  };
  return { redis, pebble, dir, node, a, b, httpsA, httpsB, publishAtB };
}

/** curl over HTTPS to `host` on the server's HTTPS port, trusting pebble's root only. */
async function curl(setup: AcmeSetup, host: string, path = "/", extra: string[] = []) {
  return runToExit(
    [
      "curl",
      "-sS",
      "--max-time",
      "10",
      "--resolve",
      `${host}:${setup.httpsPort}:127.0.0.1`,
      "--cacert",
      setup.pebble.issuerCa,
      ...extra,
      `https://${host}:${setup.httpsPort}${path}`,
    ],
    {},
  );
}

/** Starts a client publishing `app` as `name`; resolves once exposed. */
async function publish(setup: AcmeSetup, port: number, name: string, args: string[] = []) {
  const client = await startClientProcess(
    setup.server.url,
    [],
    ["--http", `127.0.0.1:${port}`, "--subdomain", name, ...args],
  );
  await client.waitFor(
    new RegExp(`exposed with tunnel id \\S+, url: https://${name}\\.${DOMAIN}:${setup.httpsPort}\\n`),
  );
  return client;
}

describe.skipIf(!PEBBLE_INSTALLED)("automatic HTTPS with pebble", () => {
  test("HTTP-01: the domain at start and a tunnel's name once claimed; served by SNI with pebble's chain", async () => {
    const setup = await startAcme(["--acme-challenge", "http-01", "--admin", "127.0.0.1:0"]);
    const { server } = setup;
    await server.waitFor(new RegExp(`certificate issued for ${DOMAIN} through http-01`), 20_000);
    const admin = (await server.waitFor(/admin on (http:\/\/\S+)\//))[1] as string;
    const app = startApp("one");
    try {
      await publish(setup, app.port as number, "one");
      await server.waitFor(/certificate issued for one\.tunnel\.test through http-01/, 20_000);
      const result = await curl(setup, `one.${DOMAIN}`);
      expect(result.stderr).toBe("");
      expect(result.stdout).toBe("hello from one");
      // The visitor's address, not the loopback hop, reaches the app.
      const headers = JSON.parse((await curl(setup, `one.${DOMAIN}`, "/headers")).stdout);
      expect(headers["x-forwarded-for"]).toBe("127.0.0.1");
      expect(headers["x-forwarded-proto"]).toBe("https");
      // Stored privately, for a restart.
      expect(statSync(setup.acmeDir).mode & 0o777).toBe(0o700);
      expect(statSync(join(setup.acmeDir, "certificates", `one.${DOMAIN}.key`)).mode & 0o777).toBe(0o600);
      expect(statSync(join(setup.acmeDir, "account.key")).mode & 0o777).toBe(0o600);
      // /health and /metrics count them: two certificates valid for years (pebble's default), two orders issued.
      const health = (await server.health()) as unknown as { certificates: Record<string, unknown> };
      expect(health.certificates).toMatchObject({
        certificates: 2,
        orders: { issued: 2, failed: 0, refused: 0 },
      });
      expect(health.certificates.soonestExpirySeconds as number).toBeGreaterThan(86_400);
      const metrics = await (await fetch(`${admin}/metrics`)).text();
      expect(metrics).toContain("sockets_certificates 2\n");
      expect(metrics).toContain('sockets_acme_orders_total{result="issued"} 2\n');
      expect(Number(/^sockets_certificate_expiry_seconds (\S+)$/m.exec(metrics)?.[1])).toBeGreaterThan(
        86_400,
      );
      if (Bun.which("promtool")) {
        const check = Bun.spawn(["promtool", "check", "metrics"], {
          stdin: new Blob([metrics]),
          stderr: "pipe",
          stdout: "pipe",
        });
        expect(await check.exited).toBe(0);
      }
    } finally {
      app.stop(true);
    }
  });

  test("TLS-ALPN-01: answered on the HTTPS port; the next name is issued while a visitor of the first streams 64 MiB", async () => {
    const setup = await startAcme(["--acme-challenge", "tls-alpn-01"]);
    const { server } = setup;
    await server.waitFor(new RegExp(`certificate issued for ${DOMAIN} through tls-alpn-01`), 20_000);
    const [first, second] = [startApp("first"), startApp("second")];
    try {
      await publish(setup, first.port as number, "first");
      await server.waitFor(/certificate issued for first\.tunnel\.test through tls-alpn-01/, 20_000);
      expect((await curl(setup, `first.${DOMAIN}`)).stdout).toBe("hello from first");
      // A slow 64 MiB download through the first name while the second is ordered and served.
      const size = 64 * MiB;
      const out = join(setup.pebble.dir, "download");
      const download = runToExit(
        [
          "curl",
          "-sS",
          "--max-time",
          "60",
          "--limit-rate",
          "24M",
          "--resolve",
          `first.${DOMAIN}:${setup.httpsPort}:127.0.0.1`,
          "--cacert",
          setup.pebble.issuerCa,
          "-o",
          out,
          `https://first.${DOMAIN}:${setup.httpsPort}/bytes?n=${size}`,
        ],
        {},
        70_000,
      );
      await publish(setup, second.port as number, "second");
      await server.waitFor(/certificate issued for second\.tunnel\.test through tls-alpn-01/, 20_000);
      expect((await curl(setup, `second.${DOMAIN}`)).stdout).toBe("hello from second");
      const done = await download;
      expect(done.stderr).toBe("");
      expect(sha256(new Uint8Array(await Bun.file(out).arrayBuffer()))).toBe(sha256(deterministic(size)));
    } finally {
      first.stop(true);
      second.stop(true);
    }
  });

  test("headless Chromium trusting only pebble's root opens https://NAME.DOMAIN (no insecure flag)", async () => {
    const setup = await startAcme(["--acme-challenge", "tls-alpn-01"]);
    const app = startApp("browser");
    try {
      await publish(setup, app.port as number, "browser");
      await setup.server.waitFor(/certificate issued for browser\.tunnel\.test/, 20_000);
      const { page, problems } = await openBrowserPage({ width: 800, height: 600 }, true, {
        trust: setup.pebble.rootCa,
        args: [`--host-resolver-rules=MAP *.${DOMAIN} 127.0.0.1`],
      });
      const response = await page.goto(`https://browser.${DOMAIN}:${setup.httpsPort}/`);
      expect(response?.status()).toBe(200);
      expect(await page.textContent("body")).toBe("hello from browser");
      const security = await response?.securityDetails();
      expect(security?.subjectName).toBe(`browser.${DOMAIN}`);
      expect(problems).toEqual([]);
    } finally {
      app.stop(true);
    }
  });

  test("renewal at a third of the lifetime left: the next connection gets the new certificate, an open one goes on", async () => {
    // pebble issues 9-second certificates: renewed 6 s after issue.
    const setup = await startAcme(["--acme-challenge", "http-01"], { validitySeconds: 9 });
    const { server } = setup;
    const app = startApp("renewed");
    try {
      await publish(setup, app.port as number, "renewed");
      await server.waitFor(/certificate issued for renewed\.tunnel\.test/, 20_000);
      const host = `renewed.${DOMAIN}`;
      const serial = async () => {
        const result = await curl(setup, host, "/", ["-v"]);
        return /expire date: (.+)/.exec(result.stderr)?.[1] ?? "";
      };
      const before = await serial();
      expect(before).not.toBe("");
      // An open keep-alive connection before the renewal.
      const open = await openTls(setup, host);
      expect(await open.get("/")).toContain("hello from renewed");
      await server.waitFor(/certificate renewed for renewed\.tunnel\.test/, 20_000);
      const after = await serial();
      expect(after).not.toBe(before);
      // The connection opened on the old certificate still works.
      expect(await open.get("/")).toContain("hello from renewed");
      open.close();
    } finally {
      app.stop(true);
    }
  });

  test("revocation (OCSP): a silent responder leaves the certificate served (one line); 'good' keeps it; 'revoked' drops it and a new one is ordered and served", async () => {
    const setup = await startAcme(
      ["--acme-challenge", "http-01", "--revocation-interval", "1", "--admin", "127.0.0.1:0"],
      { ocsp: true },
    );
    const { server, pebble } = setup;
    const ocsp = pebble.ocsp as NonNullable<Pebble["ocsp"]>;
    const admin = (await server.waitFor(/admin on (http:\/\/\S+)\//))[1] as string;
    // First the responder's port accepts and never answers: each check times out (1 s here).
    const silent = Bun.listen({ hostname: "127.0.0.1", port: ocsp.port, socket: { data() {} } });
    const app = startApp("revoked");
    const host = `revoked.${DOMAIN}`;
    try {
      await server.waitFor(new RegExp(`certificate issued for ${DOMAIN}`), 20_000);
      await publish(setup, app.port as number, "revoked");
      await server.waitFor(/certificate issued for revoked\.tunnel\.test through http-01/, 20_000);
      const softFailure =
        /revocation check of certificate for revoked\.tunnel\.test \(serial \w+\) failed: no answer within 1 s; still served/g;
      await server.waitFor(softFailure, 10_000);
      expect((await curl(setup, host)).stdout).toBe("hello from revoked");
      // The responder answers "good" for both certificates from its index.
      silent.stop(true);
      const certificateFile = (name: string) => join(setup.acmeDir, "certificates", `${name}.crt`);
      const index = join(pebble.dir, "index.txt");
      const domainLine = ocspIndexLine(readFileSync(certificateFile(DOMAIN), "utf8"), false);
      const namePem = readFileSync(certificateFile(host), "utf8");
      writeOcspIndex(index, domainLine + ocspIndexLine(namePem, false));
      await startOcspResponder(pebble, index);
      const checks = async (result: string) => {
        const metrics = await (await fetch(`${admin}/metrics`)).text();
        const found = new RegExp(
          `^sockets_certificate_revocation_checks_total\\{result="${result}"\\} (\\d+)$`,
          "m",
        );
        return Number(found.exec(metrics)?.[1] ?? -1);
      };
      await eventually(async () => (await checks("good")) >= 4, 10_000, "four good answers");
      const before = await fingerprint(setup, host);
      expect(before).toBe(new X509Certificate(namePem).fingerprint256);
      // The timeouts were logged once, not once per check.
      const log = () => server.stdout() + server.stderr();
      expect(count(log(), softFailure)).toBe(1);
      expect(log()).not.toMatch(/certificate renewed|is revoked/);
      // Revoked: dropped at once, ordered again (a renewal), and the new certificate served.
      writeOcspIndex(index, domainLine + ocspIndexLine(namePem, true));
      await server.waitFor(
        new RegExp(
          `certificate for revoked\\.tunnel\\.test \\(serial \\w+\\) is revoked \\(OCSP at ${ocsp.url.replace(/\./g, "\\.")} since \\S+, keyCompromise\\): no longer served; a new one is ordered`,
        ),
        10_000,
      );
      // (pebble may take the name's authorization from the first order: no new challenge then.)
      await server.waitFor(/certificate renewed for revoked\.tunnel\.test through /, 20_000);
      const after = await fingerprint(setup, host);
      expect(after).not.toBe(before);
      expect(after).toBe(new X509Certificate(readFileSync(certificateFile(host), "utf8")).fingerprint256);
      const result = await curl(setup, host);
      expect(result.stderr).toBe("");
      expect(result.stdout).toBe("hello from revoked");
      expect(await checks("revoked")).toBe(1);
      const metrics = await (await fetch(`${admin}/metrics`)).text();
      // The revoked certificate was replaced: none held revoked now.
      expect(metrics).toContain("sockets_certificates_revoked 0\n");
      expect(count(log(), /is revoked/g)).toBe(1);
    } finally {
      silent.stop(true);
      app.stop(true);
    }
  });

  test("the CA refusing (no valid answer): the server stays up, retries with backoff, logs one line per failure, serves what it has", async () => {
    // pebble validates HTTP-01 on a port where nothing answers: every order fails.
    const [httpPort, httpsPort, silentPort] = freePorts(3) as [number, number, number];
    const pebble = await startPebble({ httpPort: silentPort, tlsPort: httpsPort, avoid: [httpPort] });
    const dir = configFolder();
    const [cert, key] = await makeCertificate(dir, "wildcard", `DNS:*.${DOMAIN},DNS:${DOMAIN},IP:127.0.0.1`);
    const setup = await startAcme(
      ["--acme-challenge", "http-01", "--acme-retry", "0.5", "--tls-cert", cert, "--tls-key", key],
      {},
      { httpPort, httpsPort, acmeDir: join(dir, "acme"), pebble },
    );
    const { server } = setup;
    const app = startApp("fallback");
    try {
      await publish(setup, app.port as number, "fallback", ["--ca", cert]);
      await server.waitFor(/order for fallback\.tunnel\.test failed: /, 30_000);
      // Meanwhile the operator's wildcard serves the name (trusted here by its own file).
      const result = await runToExit([
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--resolve",
        `fallback.${DOMAIN}:${httpsPort}:127.0.0.1`,
        "--cacert",
        cert,
        `https://fallback.${DOMAIN}:${httpsPort}/`,
      ]);
      expect(result.stdout).toBe("hello from fallback");
      // One line per failure, with waits that grow (0.5, 1, 2, 4 s ... from --acme-retry 0.5).
      const failed = /order for fallback\.tunnel\.test failed: .*; next try in (\d+) s/g;
      await eventually(() => count(server.stderr() + server.stdout(), failed) >= 4, 20_000, "four failures");
      const waits = [...(server.stderr() + server.stdout()).matchAll(failed)].map((m) => Number(m[1]));
      for (let i = 1; i < waits.length; i++)
        expect(waits[i] as number).toBeGreaterThanOrEqual(waits[i - 1] as number);
      expect(waits[3] as number).toBeGreaterThanOrEqual(4);
      expect((await server.health()).status).toBe("ok");
    } finally {
      app.stop(true);
    }
  });

  test("a name no tunnel holds never causes an order; 100 random names from one client hit the order limit, named", async () => {
    const setup = await startAcme(["--acme-challenge", "http-01", "--acme-user-orders", "3"]);
    const { server } = setup;
    await server.waitFor(new RegExp(`certificate issued for ${DOMAIN}`), 20_000);
    // A visitor naming a host no tunnel holds: a TLS alert, one log line, no order.
    const stranger = await curl(setup, `nobody.${DOMAIN}`);
    expect(stranger.code).not.toBe(0);
    await server.waitFor(/no tunnel or certificate for nobody\.tunnel\.test/);
    const control = await connectControl(server.url, undefined);
    await control.hello;
    for (let i = 0; i < 100; i++) {
      const reply = await control.expose({ kind: "http" });
      expect(reply.type).toBe("exposed");
      expect((await control.unexpose(reply.tunnel as string)).type).toBe("unexposed");
    }
    const refusal =
      /no certificate ordered for [a-z0-9]{10}\.tunnel\.test: client 127\.0\.0\.1 caused 3 orders in the last hour \(acme_user_orders_per_hour = 3\)/g;
    // Every name past the third is refused, each named once (the log is read as the server writes it).
    await eventually(() => count(server.stderr() + server.stdout(), refusal) >= 97, 10_000, "97 refusals");
    const log = server.stderr() + server.stdout();
    expect(count(log, refusal)).toBe(97);
    expect(log).not.toMatch(/order for nobody|certificate issued for nobody/);
    const placed = count(
      log,
      /certificate issued for [a-z0-9]{10}\.tunnel\.test|order for [a-z0-9]{10}\.tunnel\.test failed/g,
    );
    expect(placed).toBeLessThanOrEqual(3);
  });

  test("a custom domain: allowed for one user (its certificate issued once claimed), refused with the rule named for another", async () => {
    const alice = testUser("alice", ['hostnames = ["*.alice.example"]']);
    const bob = testUser("bob");
    const config = writeConfig(configFolder(), "server.toml", usersToml([alice, bob]));
    const setup = await startAcme(["--acme-challenge", "http-01", "--config", config]);
    const { server } = setup;
    const app = startApp("alice's api");
    try {
      const client = await startClientProcess(
        server.url,
        [],
        ["--http", `127.0.0.1:${app.port}`, "--hostname", "api.alice.example"],
        { SOCKETS_API_KEY: alice.token },
      );
      await client.waitFor(new RegExp(`url: https://api\\.alice\\.example:${setup.httpsPort}`));
      await server.waitFor(/certificate issued for api\.alice\.example through http-01/, 20_000);
      const result = await curl(setup, "api.alice.example");
      expect(result.stderr).toBe("");
      expect(result.stdout).toBe("hello from alice's api");
      // Plain http on --http-port routes the same host too.
      const plain = await runToExit([
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--resolve",
        `api.alice.example:${setup.httpPort}:127.0.0.1`,
        `http://api.alice.example:${setup.httpPort}/`,
      ]);
      expect(plain.stdout).toBe("hello from alice's api");
      // Bob may hold no custom domain; alice none outside her pattern.
      const b = await connectControl(server.url, bob.token);
      const refused = await b.expose({ kind: "http", hostname: "www.alice.example" });
      expect(refused).toMatchObject({ type: "error", code: "not_allowed" });
      expect(refused.message).toBe(
        "custom domain 'www.alice.example' is not allowed for user bob (no hostnames in its [[users]] entry)",
      );
      const a = await connectControl(server.url, alice.token);
      const outside = await a.expose({ kind: "http", hostname: "evil.example.com" });
      expect(outside.message).toBe(
        "custom domain 'evil.example.com' is not allowed for user alice (allowed: *.alice.example)",
      );
      expect(server.stderr() + server.stdout()).not.toMatch(
        /order for (www\.alice|evil)|issued for (www\.alice|evil)/,
      );
    } finally {
      app.stop(true);
    }
  });

  test("two cluster nodes: one order per name, both serve it; the CA's validation reaches the node that did not order", async () => {
    const { redis, pebble, dir, node, a, b, httpsA, httpsB, publishAtB } = await startAcmeCluster("http-01");
    const logs = () => a.stdout() + a.stderr() + b.stdout() + b.stderr();
    // Both claim the domain at start; one orders it, the other gets it through the cluster.
    await eventually(
      () => count(logs(), /certificate for tunnel\.test from the cluster/g) === 1,
      20_000,
      "the domain shared",
    );
    expect(count(logs(), /certificate issued for tunnel\.test /g)).toBe(1);
    const app = startApp("clustered");
    try {
      await publishAtB("clustered", app.port as number);
      for (const httpsPort of [httpsA, httpsB]) {
        const result = await curl({ pebble, httpsPort } as AcmeSetup, `clustered.${DOMAIN}`);
        expect(result.stderr).toBe("");
        expect(result.stdout).toBe("hello from clustered");
      }
      expect(count(logs(), /certificate issued for clustered\.tunnel\.test/g)).toBe(1);
      // An end-to-end TLS tunnel held on node b is reached through node a's HTTPS port, still undecrypted.
      const [serviceCert, serviceKey] = await makeCertificate(dir, "service", `DNS:secure.${DOMAIN}`);
      const service = Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        tls: { cert: await Bun.file(serviceCert).text(), key: await Bun.file(serviceKey).text() },
        fetch: () => new Response("hello from the TLS service"),
      });
      try {
        const tlsClient = await startClientProcess(
          b.url,
          [],
          ["--tls-passthrough", `127.0.0.1:${service.port}`, "--subdomain", "secure"],
        );
        await tlsClient.waitFor(/url: tls:\/\/secure\.tunnel\.test/);
        const through = await runToExit([
          "curl",
          "-sS",
          "--max-time",
          "10",
          "--resolve",
          `secure.${DOMAIN}:${httpsA}:127.0.0.1`,
          "--cacert",
          serviceCert,
          `https://secure.${DOMAIN}:${httpsA}/`,
        ]);
        expect(through.stderr).toBe("");
        expect(through.stdout).toBe("hello from the TLS service");
      } finally {
        service.stop(true);
      }
      // A node that joins later serves what the cluster holds without ordering.
      const [httpC, httpsC] = freePorts(2) as [number, number];
      const c = await node("c", httpC, httpsC);
      await c.waitFor(/acme: 2 certificates loaded from the cluster/, 10_000);
      // (Its link to node b comes up within moments: until then b's tunnel is "unreachable", a 502.)
      let late = "";
      await eventually(
        async () => {
          late = (await curl({ pebble, httpsPort: httpsC } as AcmeSetup, `clustered.${DOMAIN}`)).stdout;
          return late === "hello from clustered";
        },
        10_000,
        `node c serving clustered.${DOMAIN} (last: ${late})`,
      );
      expect(c.stdout() + c.stderr()).not.toMatch(/certificate issued/);
      // The keys in Redis are sealed: no PEM private key in the stored record.
      const stored = await runToExit([
        "redis-cli",
        "-u",
        redis.url,
        "GET",
        `sockets:acme:cert:clustered.${DOMAIN}`,
      ]);
      expect(stored.stdout).toContain("BEGIN CERTIFICATE");
      expect(stored.stdout).not.toContain("PRIVATE KEY");
    } finally {
      app.stop(true);
    }
  });

  test("two cluster nodes, revocation (OCSP): both stop serving the revoked certificate; the node holding the tunnel orders a new one, both serve it", async () => {
    const { pebble, dir, a, b, httpsA, httpsB, publishAtB } = await startAcmeCluster("http-01", {
      ocsp: true,
      nodeArgs: ["--revocation-interval", "1"],
    });
    const app = startApp("both");
    const host = `both.${DOMAIN}`;
    try {
      await publishAtB("both", app.port as number);
      const namePem = readFileSync(join(dir, "b", "certificates", `${host}.crt`), "utf8");
      const index = join(pebble.dir, "index.txt");
      writeOcspIndex(index, ocspIndexLine(namePem, true));
      await startOcspResponder(pebble, index);
      const revoked =
        /certificate for both\.tunnel\.test \(serial \w+\) is revoked \(OCSP at \S+ since \S+, keyCompromise\): no longer served/;
      // Node b holds the tunnel: it orders a new one. (Node a, holding no tunnel for the name, drops
      // the certificate if its own check comes first, else it takes the new one from the cluster first.)
      await b.waitFor(new RegExp(`${revoked.source}; a new one is ordered`), 10_000);
      await b.waitFor(/certificate renewed for both\.tunnel\.test through /, 20_000);
      const renewed = new X509Certificate(
        readFileSync(join(dir, "b", "certificates", `${host}.crt`), "utf8"),
      );
      expect(renewed.fingerprint256).not.toBe(new X509Certificate(namePem).fingerprint256);
      // Node a serves it too, once the cluster's announcement came (its second certificate for the name).
      await a.waitFor(
        /certificate for both\.tunnel\.test from the cluster[\s\S]*certificate for both\.tunnel\.test from the cluster/,
        10_000,
      );
      for (const httpsPort of [httpsA, httpsB]) {
        const setup = { pebble, httpsPort } as AcmeSetup;
        expect(await fingerprint(setup, host)).toBe(renewed.fingerprint256);
        expect((await curl(setup, host)).stdout).toBe("hello from both");
      }
      // One order for the new certificate, on node b.
      expect(count(a.stdout() + a.stderr(), /certificate (issued|renewed) for both/g)).toBe(0);
      expect(count(b.stdout() + b.stderr(), /certificate renewed for both/g)).toBe(1);
    } finally {
      app.stop(true);
    }
  });

  test("two cluster nodes, TLS-ALPN-01: node b's order is validated on node a's HTTPS port (the challenge certificate shared)", async () => {
    const { pebble, httpsA, publishAtB } = await startAcmeCluster("tls-alpn-01");
    const app = startApp("alpn");
    try {
      await publishAtB("alpn", app.port as number);
      const result = await curl({ pebble, httpsPort: httpsA } as AcmeSetup, `alpn.${DOMAIN}`);
      expect(result.stderr).toBe("");
      expect(result.stdout).toBe("hello from alpn");
    } finally {
      app.stop(true);
    }
  });

  test.skipIf(!BIND9_INSTALLED)(
    "DNS-01 with bind9 and a TSIG key: a wildcard for the domain, and no order per tunnel name under it",
    async () => {
      const bind = await startBind9(DOMAIN);
      const [httpPort, httpsPort] = freePorts(2) as [number, number];
      // pebble asks bind9 for every name: the _acme-challenge TXT records and the A records.
      const pebble = await startPebble({ httpPort, tlsPort: httpsPort, dnsServer: bind.address });
      const setup = await startAcme(
        ["--acme-challenge", "http-01", "--acme-dns", bind.address, "--acme-dns-key", bind.keyFile],
        {},
        { httpPort, httpsPort, acmeDir: join(configFolder(), "acme"), pebble },
      );
      const { server } = setup;
      await server.waitFor(/certificate issued for \*\.tunnel\.test through dns-01/, 30_000);
      const app = startApp("wild");
      try {
        await publish(setup, app.port as number, "wild");
        const result = await curl(setup, `wild.${DOMAIN}`);
        expect(result.stderr).toBe("");
        expect(result.stdout).toBe("hello from wild");
        // The domain itself is covered by the same certificate.
        const apex = await curl(setup, DOMAIN, "/health");
        expect(apex.stderr).toBe("");
        const log = server.stdout() + server.stderr();
        expect(count(log, /certificate issued for/g)).toBe(1);
        // The challenge records were removed once validated.
        const txt = await runToExit([
          "dig",
          "+short",
          "-p",
          String(bind.port),
          "@127.0.0.1",
          "TXT",
          `_acme-challenge.${DOMAIN}`,
        ]);
        expect(txt.stdout.trim()).toBe("");
      } finally {
        app.stop(true);
      }
    },
  );

  test("a restart reuses the account and certificates on disk: no new order", async () => {
    const setup = await startAcme(["--acme-challenge", "http-01"]);
    await setup.server.waitFor(new RegExp(`certificate issued for ${DOMAIN}`), 20_000);
    setup.server.kill("SIGTERM");
    await setup.server.exited();
    const again = await startAcme(["--acme-challenge", "http-01"], {}, setup);
    await again.server.waitFor(/acme: 1 certificates loaded/);
    const result = await curl(again, DOMAIN, "/health");
    expect(result.stderr).toBe("");
    // Give a wrong order a chance to show: the health answer came over the stored certificate.
    expect(again.server.stderr() + again.server.stdout()).not.toMatch(/certificate issued/);
  });
});

/** The SHA-256 fingerprint (node's form) of the certificate the HTTPS port serves for `host`. */
async function fingerprint(setup: AcmeSetup, host: string): Promise<string> {
  const tls = await import("node:tls");
  const socket = tls.connect({
    host: "127.0.0.1",
    port: setup.httpsPort,
    servername: host,
    ca: await Bun.file(setup.pebble.issuerCa).text(),
  });
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        socket.once("secureConnect", resolve);
        socket.once("error", reject);
      }),
      5000,
      "TLS handshake",
    );
    return socket.getPeerCertificate().fingerprint256;
  } finally {
    socket.destroy();
  }
}

/** A keep-alive TLS connection to the HTTPS port naming `host`, trusting pebble's root. */
async function openTls(setup: AcmeSetup, host: string) {
  const tls = await import("node:tls");
  const socket = tls.connect({
    host: "127.0.0.1",
    port: setup.httpsPort,
    servername: host,
    ca: await Bun.file(setup.pebble.issuerCa).text(),
  });
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", resolve);
      socket.once("error", reject);
    }),
    5000,
    "TLS handshake",
  );
  let received = "";
  socket.on("data", (chunk) => {
    received += chunk.toString();
  });
  return {
    async get(path: string): Promise<string> {
      received = "";
      socket.write(`GET ${path} HTTP/1.1\r\nhost: ${host}\r\n\r\n`);
      await eventually(() => /\r\n\r\n[\s\S]*hello/.test(received), 5000, "response");
      return received;
    },
    close: () => socket.destroy(),
  };
}
