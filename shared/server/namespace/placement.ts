/**
 * The rules for taking a place, as pure functions: how many tunnels a client and a user may hold,
 * which TCP ports a user may get (the server's `--tcp-ports` narrowed to the user's ranges), and which
 * HTTP name a request gets (asked for, or random under the user's patterns). Each answers a value or a
 * {@link Refusal} that names the rule; binding the port itself is public-port.ts's.
 * @module
 */

import { customAlphabet } from "nanoid";
import type { PortRange } from "../../args.ts";
import { SUBDOMAIN } from "../../wire/protocol.ts";
import { type Account, describeRanges, portAllowed, randomNameFor, subdomainAllowed } from "../users.ts";
import type { Refusal } from "./holding.ts";

/** A random HTTP tunnel name: DNS-safe, lower-case letters and digits. */
const randomName = customAlphabet("abcdefghijklmnopqrstuvwxyz0123456789", 10);

/**
 * Whether one more tunnel fits: the client's `--max-tunnels` and the user's `max_tunnels` (counted
 * over all its sessions, live and reserved).
 */
export function tunnelAllowance(
  clientTunnels: number,
  maxPerClient: number,
  account: Account | undefined,
): Refusal | null {
  if (clientTunnels >= maxPerClient)
    return { code: "limit", message: `a client may hold at most ${maxPerClient} tunnels` };
  const maxTunnels = account?.limits.maxTunnels;
  if (account !== undefined && maxTunnels !== undefined && account.tunnels >= maxTunnels)
    return { code: "limit", message: `${account} may hold at most ${maxTunnels} tunnels` };
  return null;
}

/**
 * Where a TCP tunnel may listen: the server's range, narrowed to the user's ranges when it has some
 * (each range that overlaps the server's). `undefined` in the list means "any unprivileged port".
 */
export function tcpRanges(
  port: number | undefined,
  account: Account | undefined,
  serverRange: PortRange | undefined,
): { ranges: (PortRange | undefined)[] } | Refusal {
  const allowed = account?.limits.tcpPorts;
  if (account === undefined || allowed === undefined) return { ranges: [serverRange] };
  if (port !== undefined && !portAllowed(port, allowed))
    return {
      code: "not_allowed",
      message: `port ${port} is outside user ${account.name}'s ports ${describeRanges(allowed)}`,
    };
  const ranges = allowed
    .map((r) =>
      serverRange ? { min: Math.max(r.min, serverRange.min), max: Math.min(r.max, serverRange.max) } : r,
    )
    .filter((r) => r.min <= r.max)
    .filter((r) => port === undefined || (port >= r.min && port <= r.max));
  // An operator who lists a user's ports outside the server's range (or no range) means them.
  if (ranges.length === 0 && serverRange !== undefined)
    return {
      code: "not_allowed",
      message: `user ${account.name}'s ports ${describeRanges(allowed)} are outside the server's range ${describeRanges([serverRange])}`,
    };
  return { ranges };
}

/** The name an HTTP tunnel gets: the one asked for if the user may hold it, else a random one it may. */
export function httpName(subdomain: string | undefined, account: Account | undefined): string | Refusal {
  const patterns = account?.limits.subdomains;
  const allowedText = patterns === undefined ? "" : ` (allowed: ${patterns.join(", ")})`;
  let name = subdomain;
  if (
    name !== undefined &&
    account !== undefined &&
    patterns !== undefined &&
    !subdomainAllowed(name, patterns)
  )
    return {
      code: "not_allowed",
      message: `subdomain '${name}' is not allowed for ${account}${allowedText}`,
    };
  if (name === undefined) {
    if (account !== undefined && account.limits.randomSubdomain === false)
      return {
        code: "not_allowed",
        message: `${account} may not get a random subdomain: ask for one with --subdomain${allowedText}`,
      };
    name = randomNameFor(patterns, randomName());
    if (name === undefined)
      return {
        code: "not_allowed",
        message: `${account} has no subdomain pattern with '*' to draw a random name from: ask for one with --subdomain${allowedText}`,
      };
  }
  if (!SUBDOMAIN.test(name))
    return {
      code: "bad_subdomain",
      message: `subdomain '${name}' is not a DNS label (a-z, 0-9, inner '-', at most 63)`,
    };
  return name;
}

/**
 * Whether a tunnel asking to join a held place may: both ask for a pool, and both belong to the same
 * user (or the server has no users). Null when it may, else the rule it broke, named.
 */
export function poolJoin(
  what: string,
  held: { pool: boolean; account?: Account },
  joining: { pool: boolean; account?: Account },
): Refusal | null {
  const code = what.startsWith("port") ? "port_taken" : "subdomain_taken";
  if (held.account !== joining.account)
    return { code, message: `${what} is taken (held by another user; pools are per user)` };
  if (!held.pool && !joining.pool)
    return {
      code,
      message: what.startsWith("port") ? `${what} is already in use on the server` : `${what} is taken`,
    };
  if (!held.pool)
    return {
      code,
      message: `${what} is taken by a tunnel without --pool: a pool needs --pool on every member`,
    };
  if (!joining.pool)
    return {
      code,
      message: `${what} is served by a pool: ask with --pool to join it`,
    };
  return null;
}
