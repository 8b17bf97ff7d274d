/**
 * Test support, certificates: self-signed certificates made with openssl at test time, and a small CA
 * of its own (certificates it signs, with the extensions a test gives, and its CRL).
 * @module
 */

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { runToExit } from "./processes.ts";

/**
 * Makes a self-signed EC certificate with openssl into `dir` (`NAME.pem`, `NAME.key`) for the
 * given subjectAltName (e.g. `DNS:localhost,IP:127.0.0.1`); resolves with [certFile, keyFile].
 */
export async function makeCertificate(
  dir: string,
  name: string,
  subjectAltName: string,
): Promise<[string, string]> {
  if (!Bun.which("openssl")) throw new Error("openssl is not installed (apt-get install openssl)");
  const [certFile, keyFile] = [join(dir, `${name}.pem`), join(dir, `${name}.key`)];
  const result = await runToExit([
    "openssl",
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=localhost",
    "-addext",
    `subjectAltName=${subjectAltName}`,
    "-keyout",
    keyFile,
    "-out",
    certFile,
  ]);
  if (result.code !== 0) throw new Error(`openssl failed: ${result.stderr}`);
  return [certFile, keyFile];
}

/** Runs openssl in `dir` (arguments split on spaces); throws with its stderr on a failure. */
async function openssl(dir: string, args: string): Promise<void> {
  const result = await runToExit(["sh", "-c", `cd '${dir}' && openssl ${args}`]);
  if (result.code !== 0) throw new Error(`openssl ${args.split(" ")[0]} failed: ${result.stderr}`);
}

/** A CA of the test's own: `NAME.pem` and `NAME.key` in `dir` (EC P-256, two days). */
export async function makeCa(dir: string, name: string): Promise<void> {
  await openssl(
    dir,
    `req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=${name} -keyout ${name}.key -out ${name}.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign`,
  );
}

/**
 * A certificate `NAME.pem` (key `NAME.key`) for `subjectAltName`, signed by the CA `ca` of
 * {@link makeCa}, with more extension lines (openssl's config syntax, e.g.
 * `authorityInfoAccess = OCSP;URI:http://...`); resolves with the chain (leaf, then the CA), PEM.
 */
export async function makeIssuedCertificate(
  dir: string,
  ca: string,
  name: string,
  subjectAltName: string,
  extensions = "",
): Promise<string> {
  writeFileSync(join(dir, `${name}.cnf`), `[v3]\nsubjectAltName = ${subjectAltName}\n${extensions}\n`);
  await openssl(
    dir,
    `req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=${name} -keyout ${name}.key -out ${name}.csr`,
  );
  const serial = Math.floor(Math.random() * 2 ** 40).toString(16);
  await openssl(
    dir,
    `x509 -req -in ${name}.csr -CA ${ca}.pem -CAkey ${ca}.key -days 1 -set_serial 0x${serial} -extfile ${name}.cnf -extensions v3 -out ${name}.pem`,
  );
  return (await Bun.file(join(dir, `${name}.pem`)).text()) + (await Bun.file(join(dir, `${ca}.pem`)).text());
}

/**
 * A CRL (DER) signed by the CA `ca` of {@link makeCa} from an OpenSSL CA index (`index` lines, as
 * tests/support/pebble.ts's `ocspIndexLine` writes them), valid for a day.
 */
export async function makeCrl(dir: string, ca: string, index: string): Promise<Uint8Array<ArrayBuffer>> {
  writeFileSync(join(dir, "crl-index.txt"), index);
  writeFileSync(join(dir, "crlnumber"), "01\n");
  writeFileSync(
    join(dir, "crl.cnf"),
    "[ca]\ndefault_ca = d\n[d]\ndatabase = crl-index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n",
  );
  await openssl(
    dir,
    `ca -config crl.cnf -gencrl -cert ${ca}.pem -keyfile ${ca}.key -out ${ca}.crl.pem && openssl crl -in ${ca}.crl.pem -outform DER -out ${ca}.crl`,
  );
  return new Uint8Array(await Bun.file(join(dir, `${ca}.crl`)).arrayBuffer());
}
