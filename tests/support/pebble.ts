/**
 * Test support, pebble: Let's Encrypt's test CA (Debian's `pebble` and `pebble-challtestsrv`) started on
 * free loopback ports with a config of its own: its DNS (challtestsrv) answers every name with
 * 127.0.0.1, its validations go to the ports the test names (the server under test), and the root
 * that signs what it issues is read from its management API for curl's `--cacert`. With `ocsp`, the
 * certificates it issues name an OCSP responder on a port of the test's, which
 * {@link startOcspResponder} runs with `openssl ocsp` signing as pebble's intermediate.
 * @module
 */

import { X509Certificate } from "node:crypto";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { makeCertificate } from "./certificates.ts";
import { defer, type RoleProcess, spawnRole } from "./processes.ts";
import { configFolder } from "./server-config.ts";

/** A running pebble. */
export interface Pebble {
  /** `https://127.0.0.1:PORT/dir`. */
  directory: string;
  /** PEM file to trust pebble's own listener (the server's `--acme-ca`). */
  listenerCa: string;
  /** PEM file holding the root (and intermediate) that sign issued certificates (curl's `--cacert`). */
  issuerCa: string;
  /** PEM file holding the root alone (what a browser's trust store takes). */
  rootCa: string;
  /** The pebble process (its log names each validation). */
  process: RoleProcess;
  /** Folder of its config and certificates. */
  dir: string;
  /** With `ocsp`: the responder's port and URL named in issued certificates, and its signer's files. */
  ocsp?: { port: number; url: string; intermediate: string; intermediateKey: string };
}

/** How pebble is started. */
export interface PebbleSetup {
  /** Port pebble's HTTP-01 validations connect to (the server's plain HTTP port). */
  httpPort: number;
  /** Port pebble's TLS-ALPN-01 validations connect to (the server's HTTPS port). */
  tlsPort: number;
  /** Lifetime of issued certificates in seconds (pebble's default: about 5 years). */
  validitySeconds?: number;
  /** A DNS server of the test's own (bind9 for DNS-01) in place of pebble-challtestsrv: `HOST:PORT`. */
  dnsServer?: string;
  /** Ports the test took for other uses (more servers): pebble's own ports are never among them. */
  avoid?: number[];
  /** Extra environment (e.g. `PEBBLE_VA_ALWAYS_VALID`). */
  env?: Record<string, string>;
  /** Issued certificates name an OCSP responder (its port taken here; see {@link startOcspResponder}). */
  ocsp?: boolean;
}

/**
 * `n` distinct free TCP ports on 127.0.0.1 for processes that must be told their ports before they
 * start (pebble validates on fixed ports). They are drawn below Linux's ephemeral range (32768+), where
 * neither outgoing connections nor port-0 listeners take ports, so a port released here stays free
 * for its user; each is checked by binding it, all held until all are chosen (at most 200 tries).
 */
export function freePorts(n: number): number[] {
  const held: { port: number; stop(closeActive: boolean): void }[] = [];
  try {
    for (let attempt = 0; held.length < n && attempt < 200; attempt++) {
      const port = 20_000 + Math.floor(Math.random() * 12_000);
      if (held.some((h) => h.port === port)) continue;
      try {
        held.push(Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } }));
      } catch {}
    }
    if (held.length < n) throw new Error(`no ${n} free ports in 20000-31999`);
    return held.map((h) => h.port);
  } finally {
    for (const h of held) h.stop(true);
  }
}

/** Whether Debian's pebble is installed (`apt-get install pebble`). */
export const PEBBLE_INSTALLED = Bun.which("pebble") !== null && Bun.which("pebble-challtestsrv") !== null;

/** Starts pebble-challtestsrv (DNS only) and pebble; resolves once pebble's directory answers. */
export async function startPebble(setup: PebbleSetup): Promise<Pebble> {
  const dir = configFolder();
  const [cert, key] = await makeCertificate(dir, "pebble-listener", "DNS:localhost,IP:127.0.0.1");
  // Distinct from each other and from the ports the test gave (taken before this call).
  const taken = [setup.httpPort, setup.tlsPort, ...(setup.avoid ?? [])];
  const [dnsPort, dnsManagementPort, acmePort, managementPort, ocspPort] = freePorts(5 + taken.length)
    .filter((p) => !taken.includes(p))
    .slice(0, 5) as number[];
  if (ocspPort === undefined) throw new Error("no five free ports distinct from the server's");
  const ocspUrl = `http://127.0.0.1:${ocspPort}/`;
  const dns =
    setup.dnsServer !== undefined
      ? undefined
      : spawnRole([
          "pebble-challtestsrv",
          "-defaultIPv4",
          "127.0.0.1",
          "-defaultIPv6",
          "",
          "-dns01",
          `127.0.0.1:${dnsPort}`,
          "-http01",
          "",
          "-https01",
          "",
          "-tlsalpn01",
          "",
          "-management",
          `127.0.0.1:${dnsManagementPort}`,
        ]);
  await dns?.waitFor(/Starting challenge servers|Answering A questions|dnsOne/i, 10_000).catch(() => {});
  const config = {
    pebble: {
      listenAddress: `127.0.0.1:${acmePort}`,
      managementListenAddress: `127.0.0.1:${managementPort}`,
      certificate: cert,
      privateKey: key,
      httpPort: setup.httpPort,
      tlsPort: setup.tlsPort,
      ocspResponderURL: setup.ocsp ? ocspUrl : "",
      externalAccountBindingRequired: false,
      ...(setup.validitySeconds ? { certificateValidityPeriod: setup.validitySeconds } : {}),
    },
  };
  const configFile = join(dir, "pebble.json");
  writeFileSync(configFile, JSON.stringify(config));
  const pebble = spawnRole(
    [
      "pebble",
      "-config",
      configFile,
      "-dnsserver",
      setup.dnsServer ?? `127.0.0.1:${dnsPort}`,
      "-strict=false",
    ],
    {
      PEBBLE_VA_NOSLEEP: "1",
      PEBBLE_WFE_NONCEREJECT: "0",
      PEBBLE_AUTHZREUSE: "0",
      ...setup.env,
    },
  );
  await pebble.waitFor(/ACME directory available|Listening on/, 10_000);
  // The root and intermediate are made at every start: read them once the management API answers.
  const ca = { ca: await Bun.file(cert).text() };
  const get = async (path: string) => {
    for (let attempt = 0; attempt < 50; attempt++) {
      try {
        const response = await fetch(`https://127.0.0.1:${managementPort}${path}`, {
          tls: ca,
        } as RequestInit);
        if (response.ok) return await response.text();
      } catch {}
      await Bun.sleep(100);
    }
    throw new Error(`pebble management ${path} did not answer`);
  };
  const issuerCa = join(dir, "pebble-issuer.pem");
  const rootCa = join(dir, "pebble-root.pem");
  const root = await get("/roots/0");
  writeFileSync(rootCa, root);
  writeFileSync(issuerCa, `${root}\n${await get("/intermediates/0")}\n`);
  let ocsp: Pebble["ocsp"];
  if (setup.ocsp) {
    const intermediate = join(dir, "pebble-intermediate.pem");
    const intermediateKey = join(dir, "pebble-intermediate.key");
    writeFileSync(intermediate, await get("/intermediates/0"));
    writeFileSync(intermediateKey, await get("/intermediate-keys/0"), { mode: 0o600 });
    ocsp = { port: ocspPort, url: ocspUrl, intermediate, intermediateKey };
  }
  defer(() => {
    pebble.kill("SIGKILL");
    dns?.kill("SIGKILL");
  });
  return {
    ocsp,
    directory: `https://127.0.0.1:${acmePort}/dir`,
    listenerCa: cert,
    issuerCa,
    rootCa,
    process: pebble,
    dir,
  };
}

/** An OpenSSL CA index line (`openssl ca`'s index.txt) for a PEM certificate: valid, or revoked now. */
export function ocspIndexLine(pem: string, revoked: boolean): string {
  const leaf = new X509Certificate(pem);
  const asn1Time = (ms: number) => `${new Date(ms).toISOString().replace(/[-:T]/g, "").slice(2, 14)}Z`;
  const status = revoked
    ? `R\t${asn1Time(Date.parse(leaf.validTo))}\t${asn1Time(Date.now())},keyCompromise`
    : `V\t${asn1Time(Date.parse(leaf.validTo))}\t`;
  return `${status}\t${leaf.serialNumber}\tunknown\t/CN=${leaf.subject.replace(/^CN=/, "")}\n`;
}

/**
 * Writes an OCSP responder's index (lines of {@link ocspIndexLine}) aside and renames it over the
 * old one: `openssl ocsp` rereads its index when its mtime (whole seconds) or inode changed, so an
 * index rewritten within the same second must be a new file. It rereads it before waiting for its
 * next connection: a request already waiting is still answered from the old index.
 */
export function writeOcspIndex(file: string, lines: string): void {
  writeFileSync(`${file}.tmp`, lines);
  renameSync(`${file}.tmp`, file);
}

/**
 * Runs `openssl ocsp` as pebble's OCSP responder on the port its certificates name, answering from
 * `indexFile` (an OpenSSL CA index written by {@link writeOcspIndex}), signed
 * by pebble's intermediate. Resolves once it listens; stopped (by PID) at cleanup.
 */
export async function startOcspResponder(pebble: Pebble, indexFile: string): Promise<RoleProcess> {
  const ocsp = pebble.ocsp;
  if (ocsp === undefined) throw new Error("pebble was started without ocsp");
  const responder = spawnRole([
    "openssl",
    "ocsp",
    "-index",
    indexFile,
    "-CA",
    ocsp.intermediate,
    "-rsigner",
    ocsp.intermediate,
    "-rkey",
    ocsp.intermediateKey,
    "-port",
    String(ocsp.port),
  ]);
  await responder.waitFor(/waiting for OCSP client connections/, 10_000);
  return responder;
}
