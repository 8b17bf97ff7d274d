/**
 * Users of a shared server: each with a name, a token stored only as its sha256, and optional limits
 * (subdomain patterns, TCP port ranges, most tunnels, most visitors, whether it may get a random
 * name, allow and deny lists for its visitors); the matching of names and ports against those limits; and the {@link Account} that counts
 * what a user holds now across all its sessions.
 *
 * Why sha256 and not `Bun.password` (argon2/bcrypt): a token is a long random secret (`hash-token`
 * makes 256 bits), not a password a person chose, so there is no dictionary to slow down and a fast
 * hash is as strong as the token. A slow hash would run on every client upgrade, before the client
 * is known: an argon2 per attempt hands anyone who can reach the control port a lever to burn the
 * server's CPU. The presented token is hashed once and compared with every user's hash in constant
 * time (`timingSafeEqual`), all of them, so the time taken says nothing about which user matched.
 * @module
 */

import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { PortRange } from "../args.ts";
import type { AccessList } from "./access-list.ts";

/** What a user may do; an absent field means no limit beyond the server's own. */
export interface UserLimits {
  /** Subdomain patterns (`alice-*`, `*`, `docs`): `*` stands for any run of name characters. */
  subdomains?: string[];
  /** Public TCP ports the user may hold. */
  tcpPorts?: PortRange[];
  /** Most tunnels the user holds at once, over all its sessions (live and reserved). */
  maxTunnels?: number;
  /** Most visitor connections open at once over all the user's tunnels. */
  maxVisitors?: number;
  /** Full host names outside DOMAIN (custom domains) the user may hold: `api.example.com`, `*.example.com`. */
  hostnames?: string[];
  /** Whether an HTTP tunnel that names no subdomain gets a random one (default true). */
  randomSubdomain?: boolean;
  /**
   * The operator's allow and deny lists for this user's tunnels (`allow`, `deny` in `[[users]]`): a
   * visitor passes only if these and the tunnel's own lists permit it (`accessRefusal` in
   * access-list.ts). Absent: the user's tunnels are bound by their own lists (and the server's) only.
   */
  access?: AccessList;
}

/** A user as the config file declares it. */
export interface UserConfig {
  name: string;
  /** sha256 of the token, 64 lower-case hex digits. */
  tokenHash: string;
  limits: UserLimits;
}

/** sha256 hex of a token: what a user's `token_hash` holds. */
export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

/** A fresh token: 32 random bytes, base64url (43 characters, no padding). */
export function generateToken(): string {
  return randomBytes(32).toString("base64url");
}

/** What a `token_hash` must look like. */
export const TOKEN_HASH = /^[0-9a-f]{64}$/i;

/** What a user name may look like: it appears in logs, refusals and /health. */
export const USER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** What a subdomain pattern may look like (a DNS label where `*` may stand for part of it). */
const PATTERN = /^[a-z0-9*-]{1,63}$/;

/** Whether `pattern` is a usable subdomain pattern: with each `*` read as one letter, a DNS label. */
export function validPattern(pattern: string): boolean {
  return PATTERN.test(pattern) && /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(pattern.replaceAll("*", "a"));
}

/** Whether `name` matches `pattern` (`*`: any run of characters, possibly empty). */
export function matchesPattern(name: string, pattern: string): boolean {
  // Patterns are validated to [a-z0-9*-]: nothing to escape but the star.
  return new RegExp(`^${pattern.replaceAll("*", "[a-z0-9-]*")}$`).test(name);
}

/** Whether `name` matches any of `patterns`. */
export function subdomainAllowed(name: string, patterns: readonly string[]): boolean {
  return patterns.some((pattern) => matchesPattern(name, pattern));
}

/** Whether `port` lies in any of `ranges`. */
export function portAllowed(port: number, ranges: readonly PortRange[]): boolean {
  return ranges.some((range) => port >= range.min && port <= range.max);
}

/** Ranges as a person writes them: `20000-20099, 22000`. */
export function describeRanges(ranges: readonly PortRange[]): string {
  return ranges.map((r) => (r.min === r.max ? `${r.min}` : `${r.min}-${r.max}`)).join(", ");
}

/**
 * A random name an HTTP tunnel of this user may hold: `random` itself without patterns, else the
 * first pattern with a `*`, each star filled with `random` (cut to a DNS label's 63 characters);
 * undefined when no pattern has a star.
 */
export function randomNameFor(patterns: readonly string[] | undefined, random: string): string | undefined {
  if (patterns === undefined) return random;
  const pattern = patterns.find((p) => p.includes("*"));
  if (pattern === undefined) return undefined;
  const fixed = pattern.replaceAll("*", "").length;
  const stars = pattern.split("*").length - 1;
  const each = Math.max(1, Math.floor((63 - fixed) / stars));
  return pattern.replaceAll("*", random.slice(0, each));
}

/**
 * A user while the server runs: its current token hash and limits (a reload updates them in place,
 * so every session of the user sees new limits at once) and what it holds now, over all its sessions.
 */
export class Account {
  /** Tunnels held now, live and reserved. */
  tunnels = 0;
  /** Visitor connections open now. */
  visitors = 0;
  /** In a cluster: the user's visitor connections open on the other nodes, as last read from Redis. */
  elsewhere = 0;
  /** The token's sha256 as bytes, for the constant-time compare. */
  tokenHash: Buffer;

  /**
   * @param name the user's name (never changes: a renamed user is a removed one and an added one).
   * @param tokenHash sha256 hex of the token.
   * @param limits what the user may do.
   */
  constructor(
    readonly name: string,
    tokenHash: string,
    public limits: UserLimits,
  ) {
    this.tokenHash = Buffer.from(tokenHash, "hex");
  }

  /** The user as logs and refusals name it. */
  toString(): string {
    return `user ${this.name}`;
  }
}

/** A user who came in with `SOCKETS_SINGLE_API_KEY` (the one-user shortcut): no limits of its own. */
export const SINGLE_KEY_USER = "(single api key)";

/**
 * The accounts a token may open: the config file's users, and the single API key when set. A token
 * is hashed once and compared with every account's hash in constant time.
 */
export class UserDirectory {
  /** Accounts by name. */
  readonly accounts = new Map<string, Account>();

  /**
   * @param users the config file's users.
   * @param apiKey `SOCKETS_SINGLE_API_KEY`, when set: one more account, without limits.
   */
  constructor(users: readonly UserConfig[], apiKey?: string) {
    for (const user of users)
      this.accounts.set(user.name, new Account(user.name, user.tokenHash, user.limits));
    if (apiKey !== undefined)
      this.accounts.set(SINGLE_KEY_USER, new Account(SINGLE_KEY_USER, hashToken(apiKey), {}));
  }

  /**
   * Takes a reloaded file's users: new ones are added; a user whose token changed gets a fresh
   * account (the old one is returned to be revoked, with its sessions); a removed user's account is
   * returned to be revoked; a user whose limits changed keeps its account with the new limits, which
   * its sessions read from the next tunnel or visitor on. The single-key account stays as it is.
   */
  update(users: readonly UserConfig[]): {
    added: string[];
    revoked: { account: Account; why: string }[];
    limitsChanged: string[];
  } {
    const added: string[] = [];
    const revoked: { account: Account; why: string }[] = [];
    const limitsChanged: string[] = [];
    const wanted = new Map(users.map((user) => [user.name, user]));
    for (const [name, account] of this.accounts) {
      if (name === SINGLE_KEY_USER || wanted.has(name)) continue;
      this.accounts.delete(name);
      revoked.push({ account, why: `user ${name} was removed from the server's configuration` });
    }
    for (const user of users) {
      const account = this.accounts.get(user.name);
      if (account === undefined) {
        this.accounts.set(user.name, new Account(user.name, user.tokenHash, user.limits));
        added.push(user.name);
      } else if (!account.tokenHash.equals(Buffer.from(user.tokenHash, "hex"))) {
        this.accounts.set(user.name, new Account(user.name, user.tokenHash, user.limits));
        revoked.push({ account, why: `user ${user.name}'s token was changed` });
      } else if (JSON.stringify(account.limits) !== JSON.stringify(user.limits)) {
        account.limits = user.limits;
        limitsChanged.push(user.name);
      }
    }
    return { added, revoked, limitsChanged };
  }

  /** True when nobody needs a token (no users, no key): the server warns at start. */
  get open(): boolean {
    return this.accounts.size === 0;
  }

  /**
   * The account a presented token opens; null when it opens none (or none was presented and one is
   * needed); undefined on an open server (no account: anyone may connect).
   */
  authenticate(token: string | undefined): Account | null | undefined {
    if (this.open) return undefined;
    const presented = createHash("sha256")
      .update(token ?? "")
      .digest();
    let found: Account | null = null;
    // Every hash is compared, matched or not: the time taken does not depend on which user matched.
    for (const account of this.accounts.values())
      if (timingSafeEqual(presented, account.tokenHash) && token !== undefined) found = account;
    return found;
  }
}
