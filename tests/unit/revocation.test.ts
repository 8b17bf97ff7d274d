/**
 * Revocation checks (shared/server/acme/revocation.ts) against real answers made by OpenSSL: a CA of
 * the test's own, a leaf naming an OCSP responder (`openssl ocsp`, reading the CA's index) or a CRL
 * (`openssl ca -gencrl`, served over HTTP); good, revoked (with its reason), a CRL signed by another
 * CA, a responder that never answers, a certificate naming neither.
 */

import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkRevocation } from "../../shared/server/acme/revocation.ts";
import { makeCa, makeCrl, makeIssuedCertificate } from "../support/certificates.ts";
import { freePorts, ocspIndexLine, writeOcspIndex } from "../support/pebble.ts";
import { setupFile, spawnRole } from "../support/processes.ts";

setupFile();

const OPENSSL_INSTALLED = Bun.which("openssl") !== null;
const LIMITS = { timeoutMs: 2000, crlCacheMs: 0 };

describe.skipIf(!OPENSSL_INSTALLED)("revocation checks", () => {
  test("OCSP (openssl ocsp): good, then revoked with its reason; a responder that never answers fails in time", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sockets-revocation-"));
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const [port] = freePorts(1) as [number];
      await makeCa(dir, "ca");
      const chain = await makeIssuedCertificate(
        dir,
        "ca",
        "leaf",
        "DNS:a.test",
        `authorityInfoAccess = OCSP;URI:http://127.0.0.1:${port}/`,
      );
      const leafPem = await Bun.file(join(dir, "leaf.pem")).text();
      const index = join(dir, "index.txt");
      writeOcspIndex(index, ocspIndexLine(leafPem, false));
      const file = (name: string) => join(dir, name);
      const responder = spawnRole([
        ...["openssl", "ocsp", "-index", index, "-CA", file("ca.pem")],
        ...["-rsigner", file("ca.pem"), "-rkey", file("ca.key"), "-port", String(port), "-nmin", "5"],
      ]);
      await responder.waitFor(/waiting for OCSP client connections/);
      const good = await checkRevocation(chain, LIMITS);
      expect(good).toMatchObject({ status: "good", source: `OCSP at http://127.0.0.1:${port}/` });
      // -nmin 5: the answer's nextUpdate, five minutes on.
      expect((good?.nextUpdate as number) - Date.now()).toBeGreaterThan(4 * 60_000);
      writeOcspIndex(index, ocspIndexLine(leafPem, true));
      // openssl rereads a changed index before it waits for its next connection: the request already
      // waiting is answered from the old one.
      let answer = await checkRevocation(chain, LIMITS);
      for (let i = 0; i < 3 && answer?.status === "good"; i++) answer = await checkRevocation(chain, LIMITS);
      expect(answer).toMatchObject({ status: "revoked", reason: "keyCompromise" });
      expect(Math.abs((answer?.revokedAt as number) - Date.now())).toBeLessThan(60_000);
      // A responder that accepts and never answers: a failure within the timeout, not a hang.
      const silentChain = await makeIssuedCertificate(
        dir,
        "ca",
        "silent",
        "DNS:a.test",
        `authorityInfoAccess = OCSP;URI:http://127.0.0.1:${silent.port}/`,
      );
      const started = performance.now();
      await expect(checkRevocation(silentChain, { ...LIMITS, timeoutMs: 500 })).rejects.toThrow(
        "no answer within 0.5 s",
      );
      expect(performance.now() - started).toBeLessThan(3000);
      // Without its issuer in the chain, or naming no responder or CRL: nothing to ask.
      expect(await checkRevocation(leafPem, LIMITS)).toBeUndefined();
      expect(
        await checkRevocation(await makeIssuedCertificate(dir, "ca", "plain", "DNS:a.test"), LIMITS),
      ).toBeUndefined();
    } finally {
      silent.stop(true);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("CRL (openssl ca -gencrl) over HTTP: good, then revoked; a CRL signed by another CA is refused", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sockets-revocation-"));
    let crl: Uint8Array<ArrayBuffer> = new Uint8Array(0);
    const server = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response(crl) });
    try {
      await makeCa(dir, "ca");
      await makeCa(dir, "other");
      const url = `http://127.0.0.1:${server.port}/ca.crl`;
      const chain = await makeIssuedCertificate(
        dir,
        "ca",
        "leaf",
        "DNS:a.test",
        `crlDistributionPoints = URI:${url}`,
      );
      const leafPem = await Bun.file(join(dir, "leaf.pem")).text();
      crl = await makeCrl(dir, "ca", ocspIndexLine(leafPem, false));
      const good = await checkRevocation(chain, LIMITS);
      expect(good).toMatchObject({ status: "good", source: `CRL at ${url}` });
      expect((good?.nextUpdate as number) - Date.now()).toBeGreaterThan(23 * 3_600_000);
      crl = await makeCrl(dir, "ca", ocspIndexLine(leafPem, true));
      expect(await checkRevocation(chain, LIMITS)).toMatchObject({
        status: "revoked",
        reason: "keyCompromise",
      });
      crl = await makeCrl(dir, "other", ocspIndexLine(leafPem, true));
      await expect(checkRevocation(chain, LIMITS)).rejects.toThrow("the CRL's signature is not the issuer's");
    } finally {
      server.stop(true);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
