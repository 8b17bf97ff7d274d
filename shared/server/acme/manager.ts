/**
 * Automatic HTTPS: orders certificates from an ACME CA (RFC 8555, through the `acme-client` library)
 * for the names live tunnels hold, and renews them.
 *
 * - A name is ordered only once {@link AcmeManager.claim}ed (the server's own domain at start, an HTTP
 *   tunnel's `NAME.DOMAIN` or custom host when its tunnel opens): a visitor naming a host never causes
 *   an order. Orders per hour are limited per owner (user, or client address without users) and for
 *   the whole server; a refusal is logged with the limit's name and tried again when the hour allows,
 *   if the name is still held.
 * - Challenges: HTTP-01 ({@link AcmeManager.http01} answers `/.well-known/acme-challenge/TOKEN` on the
 *   plain HTTP ports) and TLS-ALPN-01 ({@link AcmeManager.alpnCertificate}, served by the HTTPS front to
 *   a ClientHello offering `acme-tls/1`), in the operator's order of preference.
 * - Renewal when a third of the lifetime is left; a failure is retried with exponential backoff (from
 *   `--acme-retry` up to an hour; an hour at least after a rate-limit answer), one log line each. The
 *   certificate in use stays served until a new one is stored.
 * - The account key and certificates live in `--acme-dir` (0700, files 0600) and are reused on restart.
 * @module
 */

import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type * as Acme from "acme-client";
import { withDeadline } from "../../deadline.ts";
import { describeError, type Logger } from "../../log.ts";
import { type CertificateStore, describeCertificate } from "./certificates.ts";
import { type DnsUpdateTarget, updateChallengeRecord } from "./dns-update.ts";
import type { RevocationStats } from "./revocation.ts";

/**
 * acme-client, loaded with the first order: it and its dependencies (axios, asn1, …) cost about 33 MiB
 * of resident memory, which a server without `--acme-email` should never pay.
 */
let acmeLibrary: Promise<typeof Acme> | undefined;
/** The CA trusted besides the system's (`--acme-ca`), applied to acme-client's HTTP when it loads. */
let acmeCa: string | undefined;
const loadAcme = (): Promise<typeof Acme> => {
  // node:https and node:tls too (about 4 MiB of a server's resident memory): only a private CA needs them.
  acmeLibrary ??= import("acme-client").then(async (acme) => {
    const http = (acme as unknown as { axios: AcmeHttp }).axios;
    // acme-client's own HTTP retries wait up to 75 s on a refused connection, and as long as a 429's
    // Retry-After says: the manager retries whole orders with its own backoff instead (and a refused
    // connection then fails in milliseconds, not minutes).
    http.defaults.acmeSettings.retryMaxAttempts = 0;
    // acme-client speaks through axios, which takes a Node https agent for a private CA.
    if (acmeCa !== undefined) {
      const [https, { rootCertificates }] = await Promise.all([import("node:https"), import("node:tls")]);
      http.defaults.httpsAgent = new https.Agent({ ca: [...rootCertificates, acmeCa] });
    }
    return acme;
  });
  return acmeLibrary;
};

/** Challenge types the server can answer. */
export type ChallengeType = "http-01" | "tls-alpn-01";

/** What the operator configured (see the `--acme-*` options). */
export interface AcmeSettings {
  email: string;
  /** The CA's directory URL. */
  directory: string;
  /** PEM of a private CA to trust for the directory's HTTPS (added to the system's). */
  ca?: string;
  /** Folder for the account key and certificates. */
  dir: string;
  /** Challenge types in order of preference. */
  challenges: ChallengeType[];
  /** Most orders one owner's names may cause per hour. */
  userOrdersPerHour: number;
  /** Most orders the server places per hour. */
  serverOrdersPerHour: number;
  /** Seconds before the first retry of a failed order (doubling up to an hour). */
  retrySeconds: number;
  /**
   * DNS-01 (`--acme-dns`): where the TXT records go. Names `*.X` are ordered with `X` through it, and
   * names under {@link AcmeSettings.wildcardDomain} are covered by that wildcard (never ordered alone).
   */
  dns?: DnsUpdateTarget;
  /** The server's domain, when its wildcard is ordered through DNS-01. */
  wildcardDomain?: string;
}

/** Counts for /health, the dashboard and /metrics. */
export interface AcmeStats {
  certificates: number;
  /** Seconds until the soonest expiry (negative once past), or undefined without certificates. */
  soonestExpirySeconds?: number;
  /** Orders by result: issued, failed, refused (limits). */
  orders: { issued: number; failed: number; refused: number };
  /** The last failure, one line, with its time (ISO). */
  lastFailure?: { host: string; message: string; at: string };
  /** Revocation checks (revocation.ts), when on. */
  revocation?: RevocationStats;
}

/**
 * Cluster coordination (see cluster/acme-share.ts): one node orders a name at a time, and every node
 * serves what any of them obtained.
 */
export interface OrderCoordinator {
  /** Takes the lock on ordering `host`; false when another node holds it. */
  lock(host: string): Promise<boolean>;
  unlock(host: string): Promise<void>;
  /** Shares an issued certificate with the other nodes. */
  publish(host: string, cert: string, key: string): Promise<void>;
  /** What the cluster holds for `host` now (another node may have just stored it). */
  current(host: string): Promise<{ cert: string; key: string } | undefined>;
}

/**
 * Cluster: challenges are announced to every node (the CA may reach any of them); `undefined` withdraws
 * one.
 */
export interface ChallengeShare {
  httpToken(token: string, keyAuthorization: string | undefined): Promise<void>;
  alpnCertificate(host: string, certificate: { cert: string; key: string } | undefined): Promise<void>;
}

/** The lock on a name is another node's: its order's result arrives through the cluster. */
class OrderedElsewhere extends Error {}

const HOUR_MS = 3_600_000;
/** Most time one order may take (a CA that never answers must not hold the name for ever). */
const ORDER_TIMEOUT_MS = 180_000;

/** acme-client's axios instance (its HTTP settings are process-wide). */
type AcmeHttp = { defaults: { httpsAgent?: unknown; acmeSettings: { retryMaxAttempts: number } } };

/** One line for a failed order: acme-client reports a connection that failed as a TypeError of its own. */
function orderFailure(error: unknown): string {
  const message = describeError(error).replace(/\s+/g, " ");
  return /response\.config|reading 'config'/.test(message)
    ? "the CA's directory did not answer (connection failed)"
    : message;
}
/** Cluster: how long a node waits before looking again at a name another node is ordering. */
const ELSEWHERE_RETRY_MS = 5000;
/** How long another node's challenge is kept at most (its withdrawal may never come if it died). */
const SHARED_CHALLENGE_MS = 10 * 60_000;
/** How often names are looked at for orders, retries and renewals. */
const CHECK_MS = 1000;
/** Orders placed at once; more names wait for the next check. */
const MAX_CONCURRENT_ORDERS = 4;

/** What is known of one name the server may order. */
interface NameState {
  /** Owners (users or client addresses) holding the name; the server's own domain holds "server". */
  owners: Set<string>;
  /** Not before this time (ms since the epoch): backoff after a failure or a refusal. */
  notBefore: number;
  /** Consecutive failures. */
  failures: number;
  ordering: boolean;
  /** The refusal last logged for it (logged once until something changes). */
  refused?: string;
}

/** Orders, renews and answers challenges; see the module comment. */
export class AcmeManager {
  private readonly names = new Map<string, NameState>();
  private readonly tokens = new Map<string, string>();
  private readonly alpnCertificates = new Map<string, { cert: string; key: string }>();
  /** Other nodes' challenges (cluster), with when they came. */
  private readonly sharedTokens = new Map<string, { keyAuthorization: string; at: number }>();
  private readonly sharedAlpn = new Map<string, { cert: string; key: string; at: number }>();
  private started = false;
  private readonly serverOrders: number[] = [];
  private readonly ownerOrders = new Map<string, number[]>();
  private readonly orders = { issued: 0, failed: 0, refused: 0 };
  private lastFailure?: AcmeStats["lastFailure"];
  private accountReady?: Promise<Acme.Client>;
  private running = 0;
  private timer?: ReturnType<typeof setInterval>;
  /** Cluster coordination, when the server is a node of one. */
  coordinator?: OrderCoordinator;
  /** Cluster: where this node's challenges are announced. */
  challenges?: ChallengeShare;

  constructor(
    readonly settings: AcmeSettings,
    private readonly store: CertificateStore,
    private readonly log: Logger,
  ) {
    mkdirSync(settings.dir, { recursive: true, mode: 0o700 });
    acmeCa = settings.ca;
  }

  /** Loads stored certificates and starts the checks. */
  start(): void {
    const loaded = this.store.load((file, why) => this.log.warn(`acme: skipped ${file}: ${why}`));
    if (loaded.length > 0)
      this.log.info(`acme: ${loaded.length} certificates loaded from ${this.settings.dir}`);
    this.timer = setInterval(() => this.check(), CHECK_MS);
    this.timer.unref?.();
    this.started = true;
    this.check();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /**
   * A live tunnel holds `host` for `owner`: order a certificate unless a valid one exists (or is on
   * its way). Returns the refusal when the order limits say no now.
   */
  claim(host: string, owner: string): void {
    const name = host.toLowerCase();
    if (this.coveredByWildcard(name)) return;
    let state = this.names.get(name);
    if (state === undefined) {
      state = { owners: new Set(), notBefore: 0, failures: 0, ordering: false };
      this.names.set(name, state);
    }
    state.owners.add(owner);
    this.consider(name, state, Date.now());
  }

  /** Whether a name is left to the DNS-01 wildcard of the server's domain (a label under it, or itself). */
  private coveredByWildcard(name: string): boolean {
    const base = this.settings.wildcardDomain;
    if (this.settings.dns === undefined || base === undefined) return false;
    if (name === base) return true;
    const dot = name.indexOf(".");
    return dot > 0 && name.slice(dot + 1) === base && !name.startsWith("*.");
  }

  /** `owner` no longer holds `host`: no order or renewal for it unless another owner does. */
  release(host: string, owner: string): void {
    const name = host.toLowerCase();
    const state = this.names.get(name);
    if (state === undefined) return;
    state.owners.delete(owner);
    if (state.owners.size === 0 && !state.ordering) this.names.delete(name);
  }

  /**
   * The certificate of `host` was found revoked (and is no longer served): ordered again at once if a
   * tunnel still holds the name, as a renewal (no owner's limit). Returns whether it is.
   */
  revoked(host: string): boolean {
    const state = this.names.get(host);
    if (state === undefined || state.owners.size === 0) {
      // Cluster: the node holding the name orders it; what the cluster holds now may be its new one.
      this.coordinator
        ?.current(host)
        .then((shared) => {
          if (shared !== undefined) this.adopt(host, shared.cert, shared.key);
        })
        .catch(() => {});
      return false;
    }
    state.notBefore = 0;
    state.failures = 0;
    this.consider(host, state, Date.now());
    return true;
  }

  /** The key authorization for an HTTP-01 token, while its order runs (here or on another node). */
  http01(token: string): string | undefined {
    return this.tokens.get(token) ?? this.sharedTokens.get(token)?.keyAuthorization;
  }

  /** The TLS-ALPN-01 certificate for `host`, while its order runs (here or on another node). */
  alpnCertificate(host: string): { cert: string; key: string } | undefined {
    return this.alpnCertificates.get(host) ?? this.sharedAlpn.get(host);
  }

  /** Cluster: another node's HTTP-01 token (undefined: withdrawn). */
  shareHttpToken(token: string, keyAuthorization: string | undefined): void {
    if (keyAuthorization === undefined) this.sharedTokens.delete(token);
    else this.sharedTokens.set(token, { keyAuthorization, at: Date.now() });
  }

  /** Cluster: another node's TLS-ALPN-01 certificate (undefined: withdrawn). */
  shareAlpnCertificate(host: string, certificate: { cert: string; key: string } | undefined): void {
    if (certificate === undefined) this.sharedAlpn.delete(host);
    else this.sharedAlpn.set(host, { ...certificate, at: Date.now() });
  }

  stats(now = Date.now()): AcmeStats {
    const soonest = this.store.soonestExpiry();
    return {
      certificates: this.store.size,
      soonestExpirySeconds: soonest === undefined ? undefined : Math.round((soonest - now) / 1000),
      orders: { ...this.orders },
      lastFailure: this.lastFailure,
    };
  }

  /** Every name held: orders those due (missing, a third of their life left) whose backoff passed. */
  private check(): void {
    const now = Date.now();
    for (const [name, state] of this.names) this.consider(name, state, now);
    for (const [token, shared] of this.sharedTokens)
      if (now - shared.at > SHARED_CHALLENGE_MS) this.sharedTokens.delete(token);
    for (const [host, shared] of this.sharedAlpn)
      if (now - shared.at > SHARED_CHALLENGE_MS) this.sharedAlpn.delete(host);
  }

  private due(name: string, now: number): boolean {
    const cert = this.store.get(name);
    if (cert === undefined || cert.revoked !== undefined) return true;
    const lifetime = cert.notAfter - cert.notBefore;
    return now >= cert.notAfter - lifetime / 3;
  }

  private consider(name: string, state: NameState, now: number): void {
    if (!this.started || state.ordering || now < state.notBefore || state.owners.size === 0) return;
    if (!this.due(name, now)) return;
    const renewal = this.store.get(name) !== undefined;
    const refusal = this.limitRefusal(state, now, renewal);
    if (refusal !== undefined) {
      if (state.refused !== refusal) {
        this.orders.refused++;
        this.log.warn(`acme: no certificate ordered for ${name}: ${refusal}`);
        state.refused = refusal;
      }
      return;
    }
    if (this.running >= MAX_CONCURRENT_ORDERS) return; // the next check tries again
    state.refused = undefined;
    this.serverOrders.push(now);
    if (!renewal)
      for (const owner of state.owners) {
        const list = this.ownerOrders.get(owner) ?? [];
        list.push(now);
        this.ownerOrders.set(owner, list);
      }
    state.ordering = true;
    this.running++;
    withDeadline(
      this.order(name, renewal),
      ORDER_TIMEOUT_MS,
      `no answer from the CA within ${ORDER_TIMEOUT_MS / 1000} s`,
    )
      .then(
        () => {
          state.failures = 0;
          state.notBefore = 0;
        },
        (error) => {
          if (error instanceof OrderedElsewhere) {
            // Not a failure: another node orders it, and its certificate arrives through the cluster.
            state.notBefore = Date.now() + ELSEWHERE_RETRY_MS;
            return;
          }
          state.failures++;
          const message = orderFailure(error);
          const rateLimited = /rate.?limit|too many|\b429\b/i.test(message);
          const backoff = Math.min(this.settings.retrySeconds * 1000 * 2 ** (state.failures - 1), HOUR_MS);
          state.notBefore = Date.now() + (rateLimited ? Math.max(backoff, HOUR_MS) : backoff);
          this.orders.failed++;
          this.lastFailure = { host: name, message, at: new Date().toISOString() };
          const when = Math.round((state.notBefore - Date.now()) / 1000);
          this.log.warn(
            `acme: order for ${name} failed${rateLimited ? " (rate limited by the CA)" : ""}: ${message}; next try in ${when} s`,
          );
        },
      )
      .finally(() => {
        state.ordering = false;
        this.running--;
        if (state.owners.size === 0) this.names.delete(name);
      });
  }

  /** Why no order may be placed now for a name, naming the limit; undefined when one may. */
  private limitRefusal(state: NameState, now: number, renewal: boolean): string | undefined {
    const since = now - HOUR_MS;
    prune(this.serverOrders, since);
    if (this.serverOrders.length >= this.settings.serverOrdersPerHour)
      return `the server placed ${this.serverOrders.length} orders in the last hour (acme_server_orders_per_hour = ${this.settings.serverOrdersPerHour})`;
    if (renewal) return undefined;
    for (const owner of state.owners) {
      if (owner === "server") return undefined;
      const list = this.ownerOrders.get(owner) ?? [];
      prune(list, since);
      if (list.length === 0) this.ownerOrders.delete(owner);
      if (list.length < this.settings.userOrdersPerHour) return undefined;
    }
    const owners = [...state.owners].join(", ");
    return `${owners} caused ${this.settings.userOrdersPerHour} orders in the last hour (acme_user_orders_per_hour = ${this.settings.userOrdersPerHour})`;
  }

  /** The account: its key from `--acme-dir` (made once), registered (or found) at the CA. */
  private account(): Promise<Acme.Client> {
    this.accountReady ??= (async () => {
      const acme = await loadAcme();
      const keyFile = join(this.settings.dir, "account.key");
      let accountKey: string;
      if (existsSync(keyFile)) accountKey = readFileSync(keyFile, "utf8");
      else {
        accountKey = (await acme.crypto.createPrivateEcdsaKey()).toString();
        writeFileSync(keyFile, accountKey, { mode: 0o600 });
      }
      const client = new acme.Client({
        directoryUrl: this.settings.directory,
        accountKey,
        backoffAttempts: 8,
        backoffMin: 200,
        backoffMax: 5000,
      });
      await client.createAccount({ termsOfServiceAgreed: true, contact: [`mailto:${this.settings.email}`] });
      return client;
    })();
    // A failure (CA down) is tried again by the next order.
    this.accountReady.catch(() => {
      this.accountReady = undefined;
    });
    return this.accountReady;
  }

  /** One order for `name`, through whichever configured challenge the CA offers first. */
  private async order(name: string, renewal: boolean): Promise<void> {
    const coordinator = this.coordinator;
    if (coordinator !== undefined && !(await coordinator.lock(name))) throw new OrderedElsewhere(name);
    try {
      // The lock may come right after another node's order ended: its certificate is in the cluster
      // already, perhaps before its announcement reached this node.
      if (coordinator !== undefined) {
        const shared = await coordinator.current(name);
        if (shared !== undefined) this.adopt(name, shared.cert, shared.key);
        if (!this.due(name, Date.now())) return;
      }
      const started = performance.now();
      const client = await this.account();
      const acme = await loadAcme();
      const key = await acme.crypto.createPrivateEcdsaKey();
      // A wildcard is ordered with its base name, through DNS-01 (the only challenge a CA takes for it).
      const wildcard = name.startsWith("*.");
      const altNames = wildcard ? [name.slice(2), name] : [name];
      const [, csr] = await acme.crypto.createCsr({ altNames }, key);
      const dns = this.settings.dns;
      let used = "";
      const cert = await client.auto({
        csr,
        email: this.settings.email,
        termsOfServiceAgreed: true,
        challengePriority: wildcard ? ["dns-01"] : this.settings.challenges,
        // Our own check would go through the system's DNS: the CA's validation is the one that counts.
        skipChallengeVerification: true,
        challengeCreateFn: async (authz, challenge, keyAuthorization) => {
          used = challenge.type;
          if (challenge.type === "http-01") {
            this.tokens.set(challenge.token, keyAuthorization);
            await this.challenges?.httpToken(challenge.token, keyAuthorization);
          } else if ((challenge.type as string) === "tls-alpn-01") {
            const [alpnKey, alpnCert] = await acme.crypto.createAlpnCertificate(authz, keyAuthorization);
            const answer = { cert: alpnCert.toString(), key: alpnKey.toString() };
            this.alpnCertificates.set(authz.identifier.value, answer);
            await this.challenges?.alpnCertificate(authz.identifier.value, answer);
          } else if (challenge.type === "dns-01" && dns !== undefined) {
            await updateChallengeRecord(dns, "add", authz.identifier.value, keyAuthorization);
          } else throw new Error(`challenge ${challenge.type} is not supported`);
        },
        challengeRemoveFn: async (authz, challenge, keyAuthorization) => {
          if (challenge.type === "http-01") {
            this.tokens.delete(challenge.token);
            await this.challenges?.httpToken(challenge.token, undefined);
          } else if (challenge.type === "dns-01" && dns !== undefined) {
            await updateChallengeRecord(dns, "delete", authz.identifier.value, keyAuthorization);
          } else {
            this.alpnCertificates.delete(authz.identifier.value);
            await this.challenges?.alpnCertificate(authz.identifier.value, undefined);
          }
        },
      });
      this.store.put(name, cert, key.toString());
      this.orders.issued++;
      const stored = this.store.get(name);
      const until = stored ? new Date(stored.notAfter).toISOString() : "?";
      const ms = Math.round(performance.now() - started);
      this.log.info(
        `acme: certificate ${renewal ? "renewed" : "issued"} for ${name} through ${used || "an authorization the CA still held"} in ${ms} ms (valid until ${until})`,
      );
      await coordinator?.publish(name, cert, key.toString());
    } finally {
      await coordinator?.unlock(name);
    }
  }

  /** A certificate another node obtained: served here too (unless the one here is newer and not revoked). */
  adopt(host: string, cert: string, key: string): void {
    const current = this.store.get(host);
    if (current !== undefined && current.cert === cert) return;
    const incoming = describeCertificate(cert, key, "acme");
    // A late announcement of an older certificate never replaces a newer one; the same second (pebble's
    // short orders) counts as newer: the announcement is what the cluster ordered last.
    if (current !== undefined && current.revoked === undefined && current.notBefore > incoming.notBefore)
      return;
    this.store.put(host, cert, key);
    this.log.info(
      `acme: certificate for ${host} from the cluster (valid until ${new Date(incoming.notAfter).toISOString()})`,
    );
  }
}

/** Drops the times before `since` from a sorted list. */
function prune(times: number[], since: number): void {
  let n = 0;
  while (n < times.length && (times[n] as number) < since) n++;
  if (n > 0) times.splice(0, n);
}
