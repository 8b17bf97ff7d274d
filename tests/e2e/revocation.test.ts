/**
 * Revocation of the operator's certificate (`--tls-cert`) end to end: a wildcard signed by a CA of the
 * test's own names its CRL (made by `openssl ca -gencrl`, served over HTTP); while the CRL says good it
 * is served on the HTTPS port, and once the CRL lists it the server drops it from that port at once (a
 * TLS alert for its names, no other certificate covering them), with one log line and the metrics.
 * (ACME's certificates and OCSP are covered against pebble in acme.test.ts.)
 */

import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { makeCa, makeCrl, makeIssuedCertificate } from "../support/certificates.ts";
import { freePorts, ocspIndexLine } from "../support/pebble.ts";
import {
  count,
  eventually,
  runToExit,
  setupFile,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { configFolder } from "../support/server-config.ts";

setupFile();

const DOMAIN = "tunnel.test";

describe.skipIf(Bun.which("openssl") === null)("revocation of --tls-cert", () => {
  test("CRL: served while good; revoked, it is no longer served on the HTTPS port (TLS alert), one line, counted", async () => {
    const dir = configFolder();
    let crl: Uint8Array<ArrayBuffer> = new Uint8Array(0);
    const crlServer = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response(crl) });
    const app = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("hello from plain") });
    try {
      await makeCa(dir, "ca");
      const crlUrl = `http://127.0.0.1:${crlServer.port}/ca.crl`;
      const chain = await makeIssuedCertificate(
        dir,
        "ca",
        "wildcard",
        `DNS:*.${DOMAIN},IP:127.0.0.1`,
        `crlDistributionPoints = URI:${crlUrl}`,
      );
      const chainFile = join(dir, "wildcard-chain.pem");
      writeFileSync(chainFile, chain);
      const leafPem = await Bun.file(join(dir, "wildcard.pem")).text();
      crl = await makeCrl(dir, "ca", ocspIndexLine(leafPem, false));
      const [httpsPort] = freePorts(1) as [number];
      const server = await startServerProcess([
        ...["--domain", DOMAIN, "--https-port", String(httpsPort), "--http-port", "0"],
        ...["--tls-cert", chainFile, "--tls-key", join(dir, "wildcard.key")],
        ...["--revocation-interval", "1", "--admin", "127.0.0.1:0"],
      ]);
      const admin = (await server.waitFor(/admin on (http:\/\/\S+)\//))[1] as string;
      const client = await startClientProcess(
        server.url,
        [],
        ["--http", `127.0.0.1:${app.port}`, "--subdomain", "plain", "--ca", join(dir, "ca.pem")],
      );
      await client.waitFor(/exposed with tunnel id/);
      const visit = () =>
        runToExit([
          ...["curl", "-sS", "--max-time", "10", "--cacert", join(dir, "ca.pem")],
          ...["--resolve", `plain.${DOMAIN}:${httpsPort}:127.0.0.1`, `https://plain.${DOMAIN}:${httpsPort}/`],
        ]);
      const metric = async (name: string) => {
        const metrics = await (await fetch(`${admin}/metrics`)).text();
        return Number(new RegExp(`^${name.replace(/[{}]/g, "\\$&")} (\\d+)$`, "m").exec(metrics)?.[1] ?? -1);
      };
      await eventually(
        async () => (await metric('sockets_certificate_revocation_checks_total{result="good"}')) >= 2,
        10_000,
        "two good answers from the CRL",
      );
      expect((await visit()).stdout).toBe("hello from plain");
      crl = await makeCrl(dir, "ca", ocspIndexLine(leafPem, true));
      await server.waitFor(
        new RegExp(
          `the --tls-cert certificate for \\*\\.tunnel\\.test \\(serial \\w+\\) is revoked \\(CRL at ${crlUrl.replace(/\./g, "\\.")} since \\S+, keyCompromise\\): no longer served on the HTTPS port; replace --tls-cert`,
        ),
        10_000,
      );
      const refused = await visit();
      expect(refused.code).not.toBe(0);
      expect(refused.stdout).toBe("");
      expect(refused.stderr).toMatch(/alert|unrecognized name/i);
      await server.waitFor(/no tunnel or certificate for plain\.tunnel\.test/);
      expect(await metric("sockets_certificates_revoked")).toBe(1);
      expect(await metric('sockets_certificate_revocation_checks_total{result="revoked"}')).toBe(1);
      const health = (await server.health()) as unknown as {
        certificates: { revocation: { revoked: number } };
      };
      expect(health.certificates.revocation.revoked).toBe(1);
      // One line for the revocation (a revoked certificate is not checked again).
      expect(count(server.stdout() + server.stderr(), /is revoked/g)).toBe(1);
    } finally {
      app.stop(true);
      crlServer.stop(true);
    }
  });
});
