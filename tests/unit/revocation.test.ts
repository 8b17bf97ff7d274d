/**
 * Revocation checks (shared/server/acme/revocation.ts) against real answers made by OpenSSL: a CA
 * made with `openssl req`, a leaf naming an OCSP responder (`openssl ocsp`, reading the CA's index) or
 * a CRL (`openssl ca -gencrl`, served over HTTP); good, revoked (with its reason), an answer signed by
 * another CA, a responder that never answers.
 */

import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkRevocation } from "../../shared/server/acme/revocation.ts";
import { freePorts, ocspIndexLine, writeOcspIndex } from "../support/pebble.ts";
import { runToExit, setupFile, spawnRole } from "../support/processes.ts";

setupFile();

const OPENSSL_INSTALLED = Bun.which("openssl") !== null;

async function openssl(args: string[], cwd: string): Promise<void> {
  const result = await runToExit(["sh", "-c", `cd '${cwd}' && openssl ${args.join(" ")}`]);
  if (result.code !== 0) throw new Error(`openssl ${args[0]} failed: ${result.stderr}`);
}

/** A CA (`NAME.pem`, `NAME.key`) in `dir`. */
async function makeCa(dir: string, name: string): Promise<void> {
  await openssl(
    [
      "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2",
      `-subj /CN=${name} -keyout ${name}.key -out ${name}.pem`,
      "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
    ],
    dir,
  );
}

/** A leaf for a.test signed by `ca` with `extensions` (an openssl extension section's lines); its chain file. */
async function makeLeaf(dir: string, ca: string, name: string, extensions: string): Promise<string> {
  writeFileSync(join(dir, `${name}.cnf`), `[v3]\nsubjectAltName = DNS:a.test\n${extensions}\n`);
  await openssl(
    [
      `req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=a.test -keyout ${name}.key -out ${name}.csr`,
    ],
    dir,
  );
  await openssl(
    [
      `x509 -req -in ${name}.csr -CA ${ca}.pem -CAkey ${ca}.key -days 1 -set_serial 0x${Math.floor(Math.random() * 2 ** 40).toString(16)}`,
      `-extfile ${name}.cnf -extensions v3 -out ${name}.pem`,
    ],
    dir,
  );
  const chain =
    (await Bun.file(join(dir, `${name}.pem`)).text()) + (await Bun.file(join(dir, `${ca}.pem`)).text());
  return chain;
}

const LIMITS = { timeoutMs: 2000, crlCacheMs: 0 };

describe.skipIf(!OPENSSL_INSTALLED)("revocation checks", () => {
  test("OCSP (openssl ocsp): good, then revoked with its reason; a responder that never answers fails in time", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sockets-revocation-"));
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const [port] = freePorts(1) as [number];
      await makeCa(dir, "ca");
      const chain = await makeLeaf(
        dir,
        "ca",
        "leaf",
        `authorityInfoAccess = OCSP;URI:http://127.0.0.1:${port}/`,
      );
      const leafPem = await Bun.file(join(dir, "leaf.pem")).text();
      const index = join(dir, "index.txt");
      writeOcspIndex(index, ocspIndexLine(leafPem, false));
      const responder = spawnRole(
        [
          "openssl",
          "ocsp",
          "-index",
          index,
          "-CA",
          "ca.pem",
          "-rsigner",
          "ca.pem",
          "-rkey",
          "ca.key",
          "-port",
          String(port),
          "-nmin",
          "5",
        ].map((arg) => (arg.endsWith(".pem") || arg.endsWith(".key") ? join(dir, arg) : arg)),
      );
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
      const silentChain = await makeLeaf(
        dir,
        "ca",
        "silent",
        `authorityInfoAccess = OCSP;URI:http://127.0.0.1:${silent.port}/`,
      );
      const started = performance.now();
      await expect(checkRevocation(silentChain, { ...LIMITS, timeoutMs: 500 })).rejects.toThrow(
        "no answer within 0.5 s",
      );
      expect(performance.now() - started).toBeLessThan(3000);
      // A certificate naming no responder or CRL, or without its issuer in the chain: nothing to ask.
      expect(await checkRevocation(leafPem, LIMITS)).toBeUndefined();
      expect(await checkRevocation(await makeLeaf(dir, "ca", "plain", ""), LIMITS)).toBeUndefined();
    } finally {
      silent.stop(true);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("CRL (openssl ca -gencrl) over HTTP: good, then revoked; a CRL signed by another CA is refused", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sockets-revocation-"));
    let crl = new Uint8Array(0);
    const server = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response(crl) });
    try {
      await makeCa(dir, "ca");
      await makeCa(dir, "other");
      const chain = await makeLeaf(
        dir,
        "ca",
        "leaf",
        `crlDistributionPoints = URI:http://127.0.0.1:${server.port}/ca.crl`,
      );
      const leafPem = await Bun.file(join(dir, "leaf.pem")).text();
      writeFileSync(
        join(dir, "ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n",
      );
      writeFileSync(join(dir, "crlnumber"), "01\n");
      const generate = async (issuer: string, revoked: boolean) => {
        writeFileSync(join(dir, "index.txt"), ocspIndexLine(leafPem, revoked));
        await openssl(
          [
            `ca -config ca.cnf -gencrl -cert ${issuer}.pem -keyfile ${issuer}.key -outform DER -out ${issuer}.crl`,
          ],
          dir,
        ).catch(async () =>
          // openssl 3.0's ca has no -outform: PEM, converted to DER.
          openssl(
            [
              `ca -config ca.cnf -gencrl -cert ${issuer}.pem -keyfile ${issuer}.key -out ${issuer}.crl.pem &&`,
              `openssl crl -in ${issuer}.crl.pem -outform DER -out ${issuer}.crl`,
            ],
            dir,
          ),
        );
        crl = new Uint8Array(await Bun.file(join(dir, `${issuer}.crl`)).arrayBuffer());
      };
      await generate("ca", false);
      const good = await checkRevocation(chain, LIMITS);
      expect(good).toMatchObject({ status: "good", source: `CRL at http://127.0.0.1:${server.port}/ca.crl` });
      expect((good?.nextUpdate as number) - Date.now()).toBeGreaterThan(23 * 3_600_000);
      await generate("ca", true);
      expect(await checkRevocation(chain, LIMITS)).toMatchObject({
        status: "revoked",
        reason: "keyCompromise",
      });
      await generate("other", true);
      await expect(checkRevocation(chain, LIMITS)).rejects.toThrow("the CRL's signature is not the issuer's");
    } finally {
      server.stop(true);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
