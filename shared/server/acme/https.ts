/**
 * The server's HTTPS side put together from its options: the certificate store (`--tls-cert` and
 * what ACME issued), the ACME manager (`--acme-email`) and the HTTPS front (`--https-port`), with the
 * hooks the rest of the server calls: HTTP-01 answers for the plain HTTP ingress, name claims from
 * sessions, and counts for /health and /metrics.
 * @module
 */

import { homedir } from "node:os";
import { join } from "node:path";
import type { Logger } from "../../log.ts";
import { describeError } from "../../log.ts";
import type { HttpIngressOptions, HttpRoute } from "../http-ingress.ts";
import type { RouteAnswer } from "../namespace/holding.ts";
import type { ServerOptions } from "../options.ts";
import { SERVER_OPTIONS } from "../options.ts";
import { CertificateStore } from "./certificates.ts";
import { AcmeClusterShare } from "./cluster-share.ts";
import type { NameHooks } from "./hostnames.ts";
import { AcmeManager, type AcmeStats } from "./manager.ts";
import { RevocationChecker } from "./revocation.ts";
import { listenTlsFront, type TlsFront } from "./tls-front.ts";

/** The default `--acme-dir`: under the user's state directory (XDG). */
export function defaultAcmeDir(env: Record<string, string | undefined> = process.env): string {
  const state = env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  return join(state, "sockets", "acme");
}

/** The HTTPS side of a server (absent pieces when their options are absent). */
export class HttpsSide {
  readonly certificates: CertificateStore;
  readonly acme?: AcmeManager;
  /** Revocation checks of the certificates held (off with `--revocation-interval 0`). */
  readonly revocation?: RevocationChecker;
  private front?: TlsFront;
  private share?: AcmeClusterShare;

  constructor(
    private readonly options: ServerOptions,
    private readonly log: Logger,
  ) {
    const acmeDir = options.acmeDir ?? defaultAcmeDir();
    this.certificates = new CertificateStore(options.acmeEmail !== undefined ? acmeDir : undefined);
    if (options.tls !== undefined) this.certificates.addOperator(options.tls.cert, options.tls.key);
    if (options.acmeEmail !== undefined)
      this.acme = new AcmeManager(
        {
          email: options.acmeEmail,
          directory: options.acmeDirectory ?? SERVER_OPTIONS["acme-directory"].default,
          ca: options.acmeCa,
          dir: acmeDir,
          // Without a plain HTTP port, HTTP-01 cannot be answered: TLS-ALPN-01 alone then.
          challenges: (options.acmeChallenges ?? SERVER_OPTIONS["acme-challenge"].default).filter(
            (type) => type !== "http-01" || options.httpPort !== undefined,
          ),
          userOrdersPerHour: options.acmeUserOrders ?? SERVER_OPTIONS["acme-user-orders"].default,
          serverOrdersPerHour: options.acmeServerOrders ?? SERVER_OPTIONS["acme-server-orders"].default,
          retrySeconds: options.acmeRetrySeconds ?? SERVER_OPTIONS["acme-retry"].default,
          dns:
            options.acmeDns !== undefined && options.acmeDnsKey !== undefined
              ? { ...options.acmeDns, keyFile: options.acmeDnsKey }
              : undefined,
          wildcardDomain:
            options.acmeDns !== undefined ? (options.domain ?? SERVER_OPTIONS.domain.default) : undefined,
        },
        this.certificates,
        log,
      );
    const interval = options.revocationIntervalSeconds ?? SERVER_OPTIONS["revocation-interval"].default;
    if (interval > 0 && (this.acme !== undefined || this.certificates.size > 0))
      this.revocation = new RevocationChecker(
        this.certificates,
        log,
        // A slow responder must not hold a check for long: 10 s, or less with a short interval.
        { intervalMs: interval * 1000, timeoutMs: Math.min(10, interval) * 1000 },
        (host) => host !== undefined && this.acme?.revoked(host) === true,
      );
  }

  /** HTTP-01 answers for the plain HTTP ingresses (undefined without ACME). */
  get acmeChallenge(): ((token: string) => string | undefined) | undefined {
    const acme = this.acme;
    return acme === undefined ? undefined : (token) => acme.http01(token);
  }

  /** What sessions tell when a tunnel holds a name (undefined without ACME). */
  get names(): NameHooks | undefined {
    const acme = this.acme;
    if (acme === undefined) return undefined;
    return {
      claimed: (host, owner) => acme.claim(host, owner),
      released: (host, owner) => acme.release(host, owner),
    };
  }

  /**
   * Opens `--https-port` (if given) and starts ACME: the server's own domain is ordered at once.
   * @param http the HTTP ingress options terminated connections are served with.
   * @param route the HTTP route behind a route key (a tunnel name, or a custom domain's host).
   */
  listen(
    host: string,
    domain: string,
    http: Omit<HttpIngressOptions, "host" | "port" | "tls" | "log">,
    route: (key: string) => HttpRoute | undefined,
  ): number | undefined {
    const port = this.options.httpsPort;
    if (port !== undefined) {
      const suffix = `.${domain}`;
      const keyOf = (name: string) =>
        name.endsWith(suffix) && !name.slice(0, -suffix.length).includes(".")
          ? name.slice(0, -suffix.length)
          : name;
      this.front = listenTlsFront({
        host,
        port,
        headTimeoutSeconds: this.options.requestTimeoutSeconds ?? SERVER_OPTIONS["request-timeout"].default,
        certificates: this.certificates,
        passthrough: (name) => {
          const target = route(keyOf(name));
          if (target === undefined || !target.passthrough) return undefined;
          return {
            open: (socket) => {
              const answer = (opened: RouteAnswer) => ("id" in opened ? opened : opened.message);
              const opened = target.open(socket as never);
              return opened instanceof Promise ? opened.then(answer) : answer(opened);
            },
          };
        },
        alpnCertificate: (name) => this.acme?.alpnCertificate(name),
        http,
        log: this.log,
      });
    }
    // Checks what the store holds at each tick: certificates loaded or issued later are checked then.
    this.revocation?.start();
    if (this.acme !== undefined) {
      // In a cluster, ACME starts once the cluster's certificates are loaded (see joinCluster).
      if (this.options.cluster === undefined) this.acme.start();
      // With DNS-01, one wildcard (and the domain) covers every NAME.DOMAIN.
      this.acme.claim(this.options.acmeDns !== undefined ? `*.${domain}` : domain, "server");
    }
    return this.front?.port;
  }

  /** Counts for /health, the dashboard and /metrics (undefined without certificates or ACME). */
  stats(): AcmeStats | undefined {
    const revocation = this.revocation?.stats();
    if (this.acme !== undefined) return { ...this.acme.stats(), revocation };
    if (this.certificates.size === 0) return undefined;
    const soonest = this.certificates.soonestExpiry();
    return {
      certificates: this.certificates.size,
      soonestExpirySeconds: soonest === undefined ? undefined : Math.round((soonest - Date.now()) / 1000),
      orders: { issued: 0, failed: 0, refused: 0 },
      revocation,
    };
  }

  /**
   * Cluster: loads the certificates other nodes obtained, shares this node's orders and challenges
   * through the cluster's Redis (cluster-share.ts), then starts ACME. A failure to reach Redis for this
   * leaves ACME running alone on this node (logged).
   */
  async joinCluster(node: { secret: string; name: string }): Promise<void> {
    const acme = this.acme;
    if (acme === undefined || this.options.cluster === undefined) return;
    try {
      this.share = await AcmeClusterShare.open({
        url: this.options.cluster,
        ca: this.options.clusterCa,
        secret: node.secret,
        node: node.name,
        log: this.log,
      });
      await this.share.attach(acme);
    } catch (error) {
      this.log.warn(
        `acme: cannot share certificates through the cluster (${describeError(error)}): ordering alone`,
      );
      acme.coordinator = undefined;
      acme.challenges = undefined;
    }
    acme.start();
  }

  stop(closeActive = false): void {
    this.front?.stop(closeActive);
    if (closeActive) {
      this.acme?.stop();
      this.revocation?.stop();
      this.share?.close();
    }
  }
}
