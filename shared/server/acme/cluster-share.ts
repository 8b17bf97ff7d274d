/**
 * Automatic HTTPS across a cluster (`--cluster` with `--acme-email`), through the cluster's Redis:
 * - one node orders a given name at a time: a lock per name (`SET NX PX`, renewed while the order runs,
 *   given back by its holder only), so N nodes whose tunnels or start-up claim the same name place one
 *   order; the others wait for its result;
 * - every node serves what any node obtained: certificates are stored in Redis with their private keys
 *   encrypted (AES-256-GCM, the key derived with HKDF from the cluster's secret, the host name bound as
 *   associated data) and announced on a channel; a node loads them all when it joins, so one that joins
 *   later serves them without ordering again;
 * - challenges are answered by every node: an HTTP-01 token or TLS-ALPN-01 certificate is announced to
 *   all before the CA is told to validate, because the CA may reach any node behind the name.
 *
 * What the encryption protects: a copy of the certificate records alone (a dump of those keys, a
 * replica's log) does not give the private keys; someone who can read all of Redis can read the
 * cluster's secret too. Use a Redis with a password and TLS (`rediss://`) as for the rest of the cluster.
 * @module
 */

import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { RedisClient } from "bun";
import { describeError, type Logger } from "../../log.ts";
import type { AcmeManager, ChallengeShare, OrderCoordinator } from "./manager.ts";

const PREFIX = "sockets:acme:";
const LOCK_PREFIX = `${PREFIX}lock:`;
const CERT_PREFIX = `${PREFIX}cert:`;
/** Channel: `{"type":"cert","host":…}` or a challenge to answer (see {@link ChallengeMessage}). */
const CHANNEL = `${PREFIX}events`;
/** How long a lock lasts without renewal: a node that dies while ordering frees the name after this. */
const LOCK_MS = 30_000;

/** Gives a lock back only if this node still holds it. */
const UNLOCK = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;
/** Extends a lock only if this node still holds it. */
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`;

/** A message on {@link CHANNEL}. */
type ChallengeMessage =
  | { type: "cert"; host: string; from: string }
  | { type: "http-01"; token: string; keyAuthorization?: string }
  | { type: "tls-alpn-01"; host: string; cert?: string; key?: string };

/** A stored certificate: the chain in clear, the key sealed. */
interface StoredCertificate {
  cert: string;
  /** base64url of iv (12) ‖ tag (16) ‖ ciphertext. */
  key: string;
}

/** Where the cluster's Redis is, and who this node is. */
export interface ClusterShareOptions {
  url: string;
  ca?: string;
  /** The cluster's secret (ClusterNode.secret): the certificate keys' encryption key derives from it. */
  secret: string;
  node: string;
  log: Logger;
}

/** One node's share of ACME in a cluster; see the module comment. */
export class AcmeClusterShare implements OrderCoordinator, ChallengeShare {
  private readonly key: Buffer;
  /** Who this node is in the lock values (unique per process). */
  private readonly owner: string;
  private readonly renewals = new Map<string, ReturnType<typeof setInterval>>();
  private manager?: AcmeManager;

  private constructor(
    private readonly options: ClusterShareOptions,
    private readonly cmd: RedisClient,
    private readonly sub: RedisClient,
  ) {
    this.key = Buffer.from(hkdfSync("sha256", options.secret, "sockets-acme", "certificate keys", 32));
    this.owner = `${options.node}/${hostname()}/${process.pid}/${randomBytes(4).toString("hex")}`;
  }

  /** Connects to the cluster's Redis (two clients: commands and the channel). */
  static async open(options: ClusterShareOptions): Promise<AcmeClusterShare> {
    const clientOptions = {
      autoReconnect: true,
      ...(options.ca !== undefined && /^rediss:/i.test(options.url) ? { tls: { ca: options.ca } } : {}),
    };
    const cmd = new RedisClient(options.url, clientOptions);
    const sub = new RedisClient(options.url, clientOptions);
    await Promise.all([cmd.connect(), sub.connect()]);
    return new AcmeClusterShare(options, cmd, sub);
  }

  /**
   * Serves every certificate the cluster holds, then follows the channel (certificates and challenges
   * other nodes announce) and coordinates this node's orders.
   */
  async attach(manager: AcmeManager): Promise<void> {
    this.manager = manager;
    manager.coordinator = this;
    manager.challenges = this;
    await this.sub.subscribe(CHANNEL, (message) => this.onMessage(message));
    let loaded = 0;
    let cursor = "0";
    // SCAN in pages: bounded replies, however many certificates the cluster holds.
    for (let page = 0; page < 10_000; page++) {
      const [next, keys] = (await this.cmd.send("SCAN", [
        cursor,
        "MATCH",
        `${CERT_PREFIX}*`,
        "COUNT",
        "200",
      ])) as [string, string[]];
      for (const key of keys) if (await this.load(key.slice(CERT_PREFIX.length))) loaded++;
      cursor = next;
      if (cursor === "0") break;
    }
    if (loaded > 0) this.options.log.info(`acme: ${loaded} certificates loaded from the cluster`);
  }

  close(): void {
    for (const timer of this.renewals.values()) clearInterval(timer);
    this.renewals.clear();
    this.cmd.close();
    this.sub.close();
  }

  async lock(host: string): Promise<boolean> {
    const taken = await this.cmd.send("SET", [
      `${LOCK_PREFIX}${host}`,
      this.owner,
      "NX",
      "PX",
      String(LOCK_MS),
    ]);
    if (taken !== "OK") return false;
    const timer = setInterval(() => {
      this.cmd
        .send("EVAL", [RENEW, "1", `${LOCK_PREFIX}${host}`, this.owner, String(LOCK_MS)])
        .catch(() => {});
    }, LOCK_MS / 3);
    timer.unref?.();
    this.renewals.set(host, timer);
    return true;
  }

  async unlock(host: string): Promise<void> {
    clearInterval(this.renewals.get(host));
    this.renewals.delete(host);
    await this.cmd.send("EVAL", [UNLOCK, "1", `${LOCK_PREFIX}${host}`, this.owner]).catch(() => {});
  }

  async publish(host: string, cert: string, key: string): Promise<void> {
    const stored: StoredCertificate = { cert, key: this.seal(host, key) };
    await this.cmd.send("SET", [`${CERT_PREFIX}${host}`, JSON.stringify(stored)]);
    await this.announce({ type: "cert", host, from: this.owner });
  }

  async httpToken(token: string, keyAuthorization: string | undefined): Promise<void> {
    await this.announce({ type: "http-01", token, keyAuthorization });
  }

  async alpnCertificate(host: string, certificate: { cert: string; key: string } | undefined): Promise<void> {
    await this.announce({ type: "tls-alpn-01", host, ...certificate });
  }

  private async announce(message: ChallengeMessage): Promise<void> {
    await this.cmd.send("PUBLISH", [CHANNEL, JSON.stringify(message)]);
  }

  private onMessage(text: string): void {
    const manager = this.manager;
    if (manager === undefined) return;
    let message: ChallengeMessage;
    try {
      message = JSON.parse(text) as ChallengeMessage;
    } catch {
      return;
    }
    if (message.type === "cert") {
      if (message.from !== this.owner) this.load(message.host).catch(() => {});
    } else if (message.type === "http-01") manager.shareHttpToken(message.token, message.keyAuthorization);
    else if (message.type === "tls-alpn-01")
      manager.shareAlpnCertificate(
        message.host,
        message.cert !== undefined && message.key !== undefined
          ? { cert: message.cert, key: message.key }
          : undefined,
      );
  }

  async current(host: string): Promise<{ cert: string; key: string } | undefined> {
    const text = await this.cmd.get(`${CERT_PREFIX}${host}`);
    if (typeof text !== "string") return undefined;
    try {
      const stored = JSON.parse(text) as StoredCertificate;
      return { cert: stored.cert, key: this.open(host, stored.key) };
    } catch (error) {
      this.options.log.warn(
        `acme: the cluster's certificate for ${host} is unreadable: ${describeError(error)}`,
      );
      return undefined;
    }
  }

  /** Reads one stored certificate and serves it; false when absent or unreadable (logged). */
  private async load(host: string): Promise<boolean> {
    const stored = await this.current(host);
    if (stored === undefined) return false;
    this.manager?.adopt(host, stored.cert, stored.key);
    return true;
  }

  /** Encrypts a private key for Redis, bound to its host name. */
  private seal(host: string, key: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.key, iv);
    cipher.setAAD(Buffer.from(host));
    const body = Buffer.concat([cipher.update(key, "utf8"), cipher.final()]);
    return Buffer.concat([iv, cipher.getAuthTag(), body]).toString("base64url");
  }

  /** Decrypts what {@link seal} made; throws when it was made with another secret or for another host. */
  private open(host: string, sealed: string): string {
    const bytes = Buffer.from(sealed, "base64url");
    const decipher = createDecipheriv("aes-256-gcm", this.key, bytes.subarray(0, 12));
    decipher.setAAD(Buffer.from(host));
    decipher.setAuthTag(bytes.subarray(12, 28));
    return Buffer.concat([decipher.update(bytes.subarray(28)), decipher.final()]).toString("utf8");
  }
}
