/**
 * Test support, certificates: self-signed certificates made with openssl at test time.
 * @module
 */

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
