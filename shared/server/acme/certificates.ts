/**
 * The server's certificates by host name: the operator's own (`--tls-cert`, often a wildcard) and the
 * ones ACME issued, kept on disk in `--acme-dir` (private permissions) so that a restart serves them
 * again. {@link CertificateStore.select} picks what a ClientHello's name gets: a valid certificate of
 * its own, else a valid wildcard or the operator's certificate if it covers the name; an expired or
 * revoked certificate is never chosen (revocation.ts finds the revoked ones).
 * @module
 */

import { X509Certificate } from "node:crypto";
import { chmodSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** A certificate chain and its key, with what the server needs to know of it. */
export interface Certificate {
  /** PEM chain, leaf first. */
  cert: string;
  /** PEM private key. */
  key: string;
  /** Names it covers (subjectAltName DNS entries, lower case; may start with `*.`). */
  names: string[];
  /** Validity, in ms since the epoch. */
  notBefore: number;
  notAfter: number;
  /** Where it came from: "acme" (renewed by the server) or "operator" (`--tls-cert`). */
  source: "acme" | "operator";
  /** Set once its CA said it is revoked (where that was learned): never served again. */
  revoked?: string;
}

/** Reads the names and validity of a PEM chain's leaf; throws on a PEM that is not a certificate. */
export function describeCertificate(cert: string, key: string, source: Certificate["source"]): Certificate {
  const leaf = new X509Certificate(cert);
  const names = (leaf.subjectAltName ?? "")
    .split(/,\s*/)
    .filter((entry) => entry.startsWith("DNS:"))
    .map((entry) => entry.slice(4).toLowerCase());
  return {
    cert,
    key,
    names,
    notBefore: Date.parse(leaf.validFrom),
    notAfter: Date.parse(leaf.validTo),
    source,
  };
}

/** Whether a certificate name (`host` or `*.parent`) covers a host name. */
export function covers(pattern: string, host: string): boolean {
  if (pattern === host) return true;
  if (!pattern.startsWith("*.")) return false;
  const dot = host.indexOf(".");
  return dot > 0 && host.slice(dot + 1) === pattern.slice(2);
}

/** File-safe form of a host name (`*` becomes `_wildcard_`). */
function fileName(host: string): string {
  return host.replace(/^\*\./, "_wildcard_.");
}

/** Certificates by the host they were ordered for, with the operator's certificate as a fallback. */
export class CertificateStore {
  private readonly byHost = new Map<string, Certificate>();
  private readonly operator: Certificate[] = [];
  /** Bumped at every change: the TLS front keys its terminators on it. */
  version = 0;

  /** @param dir folder for ACME certificates (created 0700), or undefined to keep them in memory. */
  constructor(private readonly dir?: string) {
    if (dir !== undefined) {
      mkdirSync(join(dir, "certificates"), { recursive: true, mode: 0o700 });
      chmodSync(dir, 0o700);
    }
  }

  /** Adds the operator's certificate (`--tls-cert`): served where no ACME certificate fits. */
  addOperator(cert: string, key: string): Certificate {
    const described = describeCertificate(cert, key, "operator");
    this.operator.push(described);
    this.version++;
    return described;
  }

  /** Loads what earlier runs stored; returns the hosts loaded. Unreadable files are skipped (and named). */
  load(onError: (file: string, why: string) => void): string[] {
    if (this.dir === undefined) return [];
    const folder = join(this.dir, "certificates");
    const loaded: string[] = [];
    for (const file of readdirSync(folder)) {
      if (!file.endsWith(".crt")) continue;
      const base = file.slice(0, -4);
      try {
        const cert = readFileSync(join(folder, file), "utf8");
        const key = readFileSync(join(folder, `${base}.key`), "utf8");
        const host = base.replace(/^_wildcard_\./, "*.");
        this.byHost.set(host, describeCertificate(cert, key, "acme"));
        loaded.push(host);
      } catch (error) {
        onError(file, (error as Error).message);
      }
    }
    this.version++;
    return loaded;
  }

  /** Stores an issued certificate for `host` (on disk first, key 0600, then served). */
  put(host: string, cert: string, key: string): Certificate {
    const described = describeCertificate(cert, key, "acme");
    if (this.dir !== undefined) {
      const folder = join(this.dir, "certificates");
      const base = join(folder, fileName(host));
      // Written aside and renamed: a crash never leaves half a certificate to load.
      writeFileSync(`${base}.key.tmp`, key, { mode: 0o600 });
      writeFileSync(`${base}.crt.tmp`, cert, { mode: 0o600 });
      renameSync(`${base}.key.tmp`, `${base}.key`);
      renameSync(`${base}.crt.tmp`, `${base}.crt`);
    }
    this.byHost.set(host, described);
    this.version++;
    return described;
  }

  /** The ACME certificate ordered for exactly `host`, valid or not. */
  get(host: string): Certificate | undefined {
    return this.byHost.get(host);
  }

  /** Whether a certificate is still one the store serves (not replaced by a renewal, not revoked). */
  isCurrent(certificate: Certificate): boolean {
    if (certificate.revoked !== undefined) return false;
    return this.operator.includes(certificate) || [...this.byHost.values()].includes(certificate);
  }

  /** Marks a certificate revoked (`source`: where that was learned): it is served no more. */
  revoke(certificate: Certificate, source: string): void {
    certificate.revoked = source;
    this.version++;
  }

  /** The operator's certificates (`--tls-cert`). */
  operatorCertificates(): readonly Certificate[] {
    return this.operator;
  }

  /** Every certificate held, ACME's and the operator's. */
  all(): Certificate[] {
    return [...this.byHost.values(), ...this.operator];
  }

  /** Every ACME certificate, by host. */
  entries(): IterableIterator<[string, Certificate]> {
    return this.byHost.entries();
  }

  /** How many certificates the server holds (ACME and the operator's). */
  get size(): number {
    return this.byHost.size + this.operator.length;
  }

  /**
   * What a visitor naming `host` is served: its own valid certificate, else a valid one that covers it
   * (a wildcard, the operator's); never an expired or revoked one (the visitor gets an alert instead). Without a
   * name, the operator's certificate.
   */
  select(host: string | undefined, now = Date.now()): Certificate | undefined {
    const valid = (c: Certificate) => c.notBefore <= now && now < c.notAfter && c.revoked === undefined;
    if (host === undefined) return this.operator.find(valid);
    const own = this.byHost.get(host);
    if (own !== undefined && valid(own)) return own;
    // A wildcard ordered with its base name (DNS-01) covers the base name too.
    const withBase = this.byHost.get(`*.${host}`);
    if (withBase !== undefined && valid(withBase) && withBase.names.includes(host)) return withBase;
    const dot = host.indexOf(".");
    if (dot > 0) {
      const wildcard = this.byHost.get(`*.${host.slice(dot + 1)}`);
      if (wildcard !== undefined && valid(wildcard)) return wildcard;
    }
    return this.operator.find((c) => valid(c) && c.names.some((name) => covers(name, host)));
  }

  /** The soonest `notAfter` among the certificates not revoked, or undefined without any. */
  soonestExpiry(): number | undefined {
    let soonest: number | undefined;
    for (const c of [...this.byHost.values(), ...this.operator])
      if (c.revoked === undefined && (soonest === undefined || c.notAfter < soonest)) soonest = c.notAfter;
    return soonest;
  }
}
