/**
 * Revocation checks for the certificates the server holds (ACME's and `--tls-cert`'s): a certificate
 * its CA says is revoked is dropped from serving at once, and an ACME name still held is ordered again.
 *
 * - How: OCSP (RFC 6960) to the responder named in the certificate's Authority Information Access;
 *   without one, the CRL (RFC 5280) named in its CRL Distribution Points (Let's Encrypt ended OCSP in
 *   2025 and publishes CRLs instead). The answer must be signed by the certificate's issuer (or, for
 *   OCSP, by a responder certificate the issuer made for that), so the issuer must follow the leaf in
 *   the PEM chain; a certificate naming neither, or without its issuer, is not checked.
 * - When: once a certificate is held (at load, after an order), then every `--revocation-interval`
 *   (12 h by default), sooner when the answer's nextUpdate says so; never on the serving path.
 * - A check that fails (no answer within its timeout, a refusal, a bad signature, "unknown") is a soft
 *   failure, as in browsers: the certificate stays served, one log line until a check succeeds again,
 *   and it is tried again within {@link FAILED_RETRY_MS}.
 *
 * The ASN.1 is `@peculiar/asn1-ocsp` and `@peculiar/asn1-x509` (acme-client already brings in that
 * family), loaded with the first check; signatures are verified with node:crypto.
 * @module
 */

import { createHash, type KeyObject, verify, X509Certificate } from "node:crypto";
import { describeError, type Logger } from "../../log.ts";
import type { Certificate, CertificateStore } from "./certificates.ts";

/** What a CA said of one certificate. */
export interface RevocationAnswer {
  status: "good" | "revoked" | "unknown";
  /** Where it was asked: `OCSP at URL` or `CRL at URL`. */
  source: string;
  /** The answer's nextUpdate (ms since the epoch): ask again by then. */
  nextUpdate?: number;
  /** When revoked: since when (ms), and the reason's name if given. */
  revokedAt?: number;
  reason?: string;
}

/** Largest OCSP answer read (real ones are 1–4 KiB). */
const MAX_OCSP_BYTES = 64 * 1024;
/** Largest CRL read (Let's Encrypt shards its CRLs to well under this). */
const MAX_CRL_BYTES = 16 * 1024 * 1024;
/** Clock skew allowed on an answer's thisUpdate and nextUpdate. */
const SKEW_MS = 5 * 60_000;
const SHA1 = "1.3.14.3.2.26";
const OCSP_BASIC = "1.3.6.1.5.5.7.48.1.1";
const OCSP_SIGNING = "1.3.6.1.5.5.7.3.9";
const CRL_DISTRIBUTION_POINTS = "2.5.29.31";
/** The same OID as DER (06 03 55 1d 1f), looked for in a certificate before parsing it. */
const CRL_DISTRIBUTION_POINTS_DER = Buffer.from([0x06, 0x03, 0x55, 0x1d, 0x1f]);
const CRL_REASONS = [
  "unspecified",
  "keyCompromise",
  "cACompromise",
  "affiliationChanged",
  "superseded",
  "cessationOfOperation",
  "certificateHold",
  "7",
  "removeFromCRL",
  "privilegeWithdrawn",
  "aACompromise",
];

/** Signature algorithms by OID, as node:crypto's verify() takes them (null: the key says). */
const SIGNATURE_HASHES: Record<string, string | null> = {
  "1.2.840.113549.1.1.5": "sha1",
  "1.2.840.113549.1.1.11": "sha256",
  "1.2.840.113549.1.1.12": "sha384",
  "1.2.840.113549.1.1.13": "sha512",
  "1.2.840.10045.4.3.2": "sha256",
  "1.2.840.10045.4.3.3": "sha384",
  "1.2.840.10045.4.3.4": "sha512",
  "1.3.101.112": null,
};

type Libraries = {
  schema: typeof import("@peculiar/asn1-schema");
  x509: typeof import("@peculiar/asn1-x509");
  ocsp: typeof import("@peculiar/asn1-ocsp");
};
let libraries: Promise<Libraries> | undefined;
/** The ASN.1 libraries, loaded with the first check (a server without certificates never pays for them). */
const loadLibraries = (): Promise<Libraries> => {
  libraries ??= Promise.all([
    import("@peculiar/asn1-schema"),
    import("@peculiar/asn1-x509"),
    import("@peculiar/asn1-ocsp"),
  ]).then(([schema, x509, ocsp]) => ({ schema, x509, ocsp }));
  return libraries;
};

/** The certificates of a PEM chain, leaf first. */
function splitChain(pem: string): X509Certificate[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map(
    (block) => new X509Certificate(block),
  );
}

/** Integer bytes without leading zero bytes (the same serial may be written either way). */
function integerHex(bytes: ArrayBuffer): string {
  return Buffer.from(bytes)
    .toString("hex")
    .replace(/^(00)+/, "");
}

/** Verifies `signature` over `data` with `key` for the signature algorithm `oid`. */
function signatureValid(oid: string, data: ArrayBuffer, key: KeyObject, signature: ArrayBuffer): boolean {
  const hash = SIGNATURE_HASHES[oid];
  if (hash === undefined) throw new Error(`unsupported signature algorithm ${oid}`);
  return verify(hash, Buffer.from(data), key, Buffer.from(signature));
}

/** The body of an HTTP answer, refused past `limit` bytes. */
async function readBounded(response: Response, limit: number): Promise<Uint8Array> {
  const declared = Number(response.headers.get("content-length") ?? 0);
  if (declared > limit) throw new Error(`answer of ${declared} bytes (limit ${limit})`);
  const reader = response.body?.getReader();
  if (reader === undefined) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > limit) {
      await reader.cancel();
      throw new Error(`answer over ${limit} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}

/** One HTTP exchange bounded by `timeoutMs` (connection, answer and body together). */
async function exchange(
  url: string,
  init: RequestInit,
  limit: number,
  timeoutMs: number,
): Promise<Uint8Array> {
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    const response = await fetch(url, { ...init, signal, redirect: "error" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return await readBounded(response, limit);
  } catch (error) {
    if (signal.aborted) throw new Error(`no answer within ${timeoutMs / 1000} s`);
    throw error;
  }
}

/**
 * Asks whether the leaf of a PEM chain is revoked: OCSP if it names a responder, else its CRL.
 * Undefined when it names neither (or its issuer is not in the chain); throws when no trustworthy
 * answer came (one line).
 */
export async function checkRevocation(
  chainPem: string,
  limits: { timeoutMs: number /** How long a fetched CRL is reused at most. */; crlCacheMs: number },
  now = Date.now(),
): Promise<RevocationAnswer | undefined> {
  const { timeoutMs, crlCacheMs } = limits;
  const [leaf, ...rest] = splitChain(chainPem);
  if (leaf === undefined) return undefined;
  const issuer = rest.find((c) => leaf.checkIssued(c) && leaf.verify(c.publicKey));
  if (issuer === undefined) return undefined;
  const ocspUrl = /^OCSP - URI:(http:\/\/\S+)$/m.exec(leaf.infoAccess ?? "")?.[1];
  // Neither an OCSP responder nor a CRL extension (node:crypto has no accessor for it: its OID's
  // bytes): nothing to ask, and no ASN.1 library to load.
  if (ocspUrl === undefined && !leaf.raw.includes(CRL_DISTRIBUTION_POINTS_DER)) return undefined;
  const lib = await loadLibraries();
  const leafAsn = lib.schema.AsnConvert.parse(leaf.raw, lib.x509.Certificate);
  if (ocspUrl !== undefined) return askOcsp(lib, ocspUrl, leafAsn, issuer, timeoutMs, now);
  const crlUrl = crlLocation(lib, leafAsn);
  if (crlUrl !== undefined) return askCrl(lib, crlUrl, leafAsn, issuer, { timeoutMs, crlCacheMs }, now);
  return undefined;
}

/** The first http:// URL of the certificate's CRL Distribution Points. */
function crlLocation(lib: Libraries, leaf: import("@peculiar/asn1-x509").Certificate): string | undefined {
  const extension = leaf.tbsCertificate.extensions?.find((e) => e.extnID === CRL_DISTRIBUTION_POINTS);
  if (extension === undefined) return undefined;
  const points = lib.schema.AsnConvert.parse(extension.extnValue.buffer, lib.x509.CRLDistributionPoints);
  for (const point of points)
    for (const name of point.distributionPoint?.fullName ?? [])
      if (name.uniformResourceIdentifier?.startsWith("http://")) return name.uniformResourceIdentifier;
  return undefined;
}

/** An OCSP request for the leaf (SHA-1 CertID, as RFC 6960 and every responder take), and its answer. */
async function askOcsp(
  lib: Libraries,
  url: string,
  leaf: import("@peculiar/asn1-x509").Certificate,
  issuer: X509Certificate,
  timeoutMs: number,
  now: number,
): Promise<RevocationAnswer> {
  const { AsnConvert, OctetString } = lib.schema;
  const source = `OCSP at ${url}`;
  const issuerAsn = AsnConvert.parse(issuer.raw, lib.x509.Certificate);
  const nameHash = createHash("sha1")
    .update(Buffer.from(AsnConvert.serialize(issuerAsn.tbsCertificate.subject)))
    .digest();
  const keyHash = createHash("sha1")
    .update(Buffer.from(issuerAsn.tbsCertificate.subjectPublicKeyInfo.subjectPublicKey))
    .digest();
  const serial = integerHex(leaf.tbsCertificate.serialNumber);
  const request = new lib.ocsp.OCSPRequest({
    tbsRequest: new lib.ocsp.TBSRequest({
      requestList: [
        new lib.ocsp.Request({
          reqCert: new lib.ocsp.CertID({
            hashAlgorithm: new lib.x509.AlgorithmIdentifier({ algorithm: SHA1, parameters: null }),
            issuerNameHash: new OctetString(nameHash),
            issuerKeyHash: new OctetString(keyHash),
            serialNumber: leaf.tbsCertificate.serialNumber,
          }),
        }),
      ],
    }),
  });
  const body = await exchange(
    url,
    {
      method: "POST",
      headers: { "content-type": "application/ocsp-request", accept: "application/ocsp-response" },
      body: Buffer.from(AsnConvert.serialize(request)),
    },
    MAX_OCSP_BYTES,
    timeoutMs,
  );
  const response = AsnConvert.parse(body, lib.ocsp.OCSPResponse);
  if (response.responseStatus !== lib.ocsp.OCSPResponseStatus.successful)
    throw new Error(`the responder answered ${lib.ocsp.OCSPResponseStatus[response.responseStatus]}`);
  if (response.responseBytes?.responseType !== OCSP_BASIC) throw new Error("not a basic OCSP answer");
  const basic = AsnConvert.parse(response.responseBytes.response.buffer, lib.ocsp.BasicOCSPResponse);
  // Signed by the issuer itself, or by a responder certificate the issuer made for OCSP signing.
  const signers = [
    issuer,
    ...(basic.certs ?? [])
      .map((c) => new X509Certificate(Buffer.from(AsnConvert.serialize(c))))
      .filter(
        (c) =>
          c.checkIssued(issuer) &&
          c.verify(issuer.publicKey) &&
          (c.keyUsage ?? []).includes(OCSP_SIGNING) &&
          Date.parse(c.validFrom) <= now &&
          now < Date.parse(c.validTo),
      ),
  ];
  const raw = basic.tbsResponseDataRaw ?? AsnConvert.serialize(basic.tbsResponseData);
  const algorithm = basic.signatureAlgorithm.algorithm;
  if (!signers.some((signer) => signatureValid(algorithm, raw, signer.publicKey, basic.signature)))
    throw new Error("the answer's signature is not the issuer's or its responder's");
  const single = basic.tbsResponseData.responses.find(
    (r) =>
      integerHex(r.certID.serialNumber) === serial &&
      (r.certID.hashAlgorithm.algorithm !== SHA1 ||
        Buffer.from(r.certID.issuerKeyHash.buffer).equals(keyHash)),
  );
  if (single === undefined) throw new Error("the answer is about another certificate");
  if (single.thisUpdate.getTime() > now + SKEW_MS) throw new Error("the answer is from the future");
  const nextUpdate = single.nextUpdate?.getTime();
  if (nextUpdate !== undefined && nextUpdate < now - SKEW_MS) throw new Error("the answer is stale");
  const status = single.certStatus;
  if (status.revoked !== undefined) {
    const reason = status.revoked.revocationReason?.reason;
    return {
      status: "revoked",
      source,
      nextUpdate,
      revokedAt: status.revoked.revocationTime.getTime(),
      reason: reason === undefined ? undefined : CRL_REASONS[reason],
    };
  }
  return { status: status.unknown !== undefined ? "unknown" : "good", source, nextUpdate };
}

/** CRLs by issuer and URL, reused until their nextUpdate or the cache time, whichever comes first. */
const crlCache = new Map<string, { list: import("@peculiar/asn1-x509").CertificateList; until: number }>();
const CRL_CACHE_ENTRIES = 32;

/** Looks the leaf up in its issuer's CRL. */
async function askCrl(
  lib: Libraries,
  url: string,
  leaf: import("@peculiar/asn1-x509").Certificate,
  issuer: X509Certificate,
  limits: { timeoutMs: number; crlCacheMs: number },
  now: number,
): Promise<RevocationAnswer> {
  const source = `CRL at ${url}`;
  const { timeoutMs } = limits;
  // Keyed by issuer too: a CRL verified against one issuer's key says nothing of another's.
  const key = `${issuer.fingerprint256} ${url}`;
  let cached = crlCache.get(key);
  if (cached === undefined || cached.until <= now) {
    let body = await exchange(url, { method: "GET" }, MAX_CRL_BYTES, timeoutMs);
    const text = Buffer.from(body.subarray(0, 64)).toString("latin1");
    if (text.startsWith("-----BEGIN")) {
      const base64 = Buffer.from(body)
        .toString("latin1")
        .replace(/-----[^-]+-----|\s/g, "");
      body = Buffer.from(base64, "base64");
    }
    const list = lib.schema.AsnConvert.parse(body, lib.x509.CertificateList);
    const raw = list.tbsCertListRaw ?? lib.schema.AsnConvert.serialize(list.tbsCertList);
    if (!signatureValid(list.signatureAlgorithm.algorithm, raw, issuer.publicKey, list.signature))
      throw new Error("the CRL's signature is not the issuer's");
    const next = list.tbsCertList.nextUpdate?.getTime().getTime();
    if (next !== undefined && next < now - SKEW_MS) throw new Error("the CRL is stale");
    cached = { list, until: Math.min(next ?? Number.POSITIVE_INFINITY, now + limits.crlCacheMs) };
    if (crlCache.size >= CRL_CACHE_ENTRIES) crlCache.delete(crlCache.keys().next().value as string);
    crlCache.set(key, cached);
  }
  const tbs = cached.list.tbsCertList;
  const nextUpdate = tbs.nextUpdate?.getTime().getTime();
  const serial = integerHex(leaf.tbsCertificate.serialNumber);
  const entry = tbs.revokedCertificates?.find((r) => integerHex(r.userCertificate) === serial);
  if (entry === undefined) return { status: "good", source, nextUpdate };
  const reasonExtension = entry.crlEntryExtensions?.find((e) => e.extnID === "2.5.29.21");
  const reason =
    reasonExtension === undefined
      ? undefined
      : lib.schema.AsnConvert.parse(reasonExtension.extnValue.buffer, lib.x509.CRLReason).reason;
  return {
    status: "revoked",
    source,
    nextUpdate,
    revokedAt: entry.revocationDate.getTime().getTime(),
    reason: reason === undefined ? undefined : CRL_REASONS[reason],
  };
}

/** Counts for /health and /metrics. */
export interface RevocationStats {
  /** Checks by result since start (failed: no trustworthy answer). */
  checks: { good: number; revoked: number; unknown: number; failed: number };
  /** Certificates held that their CA revoked (none of them served). */
  revoked: number;
}

/** After a failed check, the next try comes within this (or the interval, if shorter). */
const FAILED_RETRY_MS = 15 * 60_000;
/** An answer's nextUpdate is honoured, but checks of one certificate come at most this often. */
const MIN_RECHECK_MS = 60_000;
/** A fetched CRL serves the checks of other certificates for this long at most (or the interval). */
const CRL_CACHE_MS = 60 * 60_000;
/** Checks running at once. */
const MAX_CONCURRENT_CHECKS = 4;
/** How often certificates are looked at for checks due. */
const TICK_MS = 1000;

/** What is known of one certificate's checks. */
interface CheckState {
  /** Not before this time (ms since the epoch). */
  next: number;
  running: boolean;
  /** The soft failure logged (logged once until a check succeeds). */
  failing?: string;
}

/** Checks the store's certificates in the background; see the module comment. */
export class RevocationChecker {
  private readonly states = new WeakMap<Certificate, CheckState>();
  private readonly checks = { good: 0, revoked: 0, unknown: 0, failed: 0 };
  private running = 0;
  private timer?: ReturnType<typeof setInterval>;

  /**
   * @param onRevoked called once a certificate is dropped for revocation (`host`: the ACME name it
   * was ordered for; undefined for the operator's); returns whether a new one is being ordered.
   */
  constructor(
    private readonly store: CertificateStore,
    private readonly log: Logger,
    private readonly settings: { intervalMs: number; timeoutMs: number },
    private readonly onRevoked: (host: string | undefined, certificate: Certificate) => boolean,
  ) {}

  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => this.tick(), Math.min(TICK_MS, this.settings.intervalMs));
    this.timer.unref?.();
    this.tick();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  stats(): RevocationStats {
    let revoked = 0;
    for (const certificate of this.store.all()) if (certificate.revoked !== undefined) revoked++;
    return { checks: { ...this.checks }, revoked };
  }

  /** Starts the checks that are due. */
  private tick(now = Date.now()): void {
    for (const [host, certificate] of this.store.entries()) this.consider(host, certificate, now);
    for (const certificate of this.store.operatorCertificates()) this.consider(undefined, certificate, now);
  }

  private consider(host: string | undefined, certificate: Certificate, now: number): void {
    if (certificate.revoked !== undefined || now >= certificate.notAfter) return;
    let state = this.states.get(certificate);
    if (state === undefined) {
      state = { next: 0, running: false };
      this.states.set(certificate, state);
    }
    if (state.running || now < state.next || this.running >= MAX_CONCURRENT_CHECKS) return;
    state.running = true;
    this.running++;
    const { intervalMs, timeoutMs } = this.settings;
    const retryMs = Math.min(intervalMs, FAILED_RETRY_MS);
    checkRevocation(certificate.cert, { timeoutMs, crlCacheMs: Math.min(intervalMs, CRL_CACHE_MS) })
      .then(
        (answer) => {
          const at = Date.now();
          if (answer === undefined) {
            // Names no responder or CRL (or lacks its issuer): nothing to ask, ever.
            state.next = Number.POSITIVE_INFINITY;
            return;
          }
          this.checks[answer.status]++;
          if (answer.status === "unknown") {
            this.softFailure(host, certificate, state, `${answer.source} does not know it`, retryMs);
            return;
          }
          if (answer.status === "revoked") {
            // Replaced meanwhile (a renewal): the new certificate has checks of its own.
            if (this.store.all().includes(certificate)) this.revoke(host, certificate, answer);
            return;
          }
          state.failing = undefined;
          const wanted = answer.nextUpdate === undefined ? Number.POSITIVE_INFINITY : answer.nextUpdate - at;
          state.next = at + Math.max(Math.min(intervalMs, wanted), Math.min(intervalMs, MIN_RECHECK_MS));
        },
        (error) => {
          this.checks.failed++;
          this.softFailure(host, certificate, state, describeError(error).replace(/\s+/g, " "), retryMs);
        },
      )
      .finally(() => {
        state.running = false;
        this.running--;
      });
  }

  /** A check without a trustworthy answer: the certificate stays served; one line until one succeeds. */
  private softFailure(
    host: string | undefined,
    certificate: Certificate,
    state: CheckState,
    why: string,
    retryMs: number,
  ): void {
    state.next = Date.now() + retryMs;
    if (state.failing !== undefined) return;
    state.failing = why;
    this.log.warn(
      `revocation check of ${describeHeld(host, certificate)} failed: ${why}; still served, tried again every ${Math.round(retryMs / 1000)} s (logged once)`,
    );
  }

  private revoke(host: string | undefined, certificate: Certificate, answer: RevocationAnswer): void {
    this.store.revoke(certificate, answer.source);
    const reordering = this.onRevoked(host, certificate);
    const since = answer.revokedAt === undefined ? "" : ` since ${new Date(answer.revokedAt).toISOString()}`;
    const reason = answer.reason === undefined ? "" : `, ${answer.reason}`;
    // The operator's certificate also serves the control port (and a TLS --http-port), whose listeners
    // take one certificate for their lifetime: only the operator can replace it there.
    const next =
      host === undefined
        ? " on the HTTPS port; replace --tls-cert (the control port presents it until then)"
        : reordering
          ? "; a new one is ordered"
          : "";
    this.log.warn(
      `${describeHeld(host, certificate)} is revoked (${answer.source}${since}${reason}): no longer served${next}`,
    );
  }
}

/** "certificate for HOST (serial S)", or the operator's with its first name. */
function describeHeld(host: string | undefined, certificate: Certificate): string {
  const serial = new X509Certificate(certificate.cert).serialNumber;
  return host === undefined
    ? `the --tls-cert certificate for ${certificate.names[0] ?? "?"} (serial ${serial})`
    : `certificate for ${host} (serial ${serial})`;
}
