/**
 * Allow and deny lists: which visitor addresses may reach a tunnel. A list is CIDR ranges or single
 * addresses, IPv4 and IPv6; deny wins over allow; an empty allow list allows everyone (not denied).
 * Lists come from three places, and a visitor passes only if every one of them permits it: the
 * server's own (`--allow`/`--deny`), the user's in the server's config (`[[users]]` `allow`/`deny`),
 * and the tunnel's (the client's `--allow`/`--deny`). So a user cannot allow what the operator denies,
 * and a tunnel can only narrow what its user may receive.
 *
 * Rules are parsed once into numbers (shared/ip.ts); a check parses the visitor's address into a
 * scratch buffer and compares words: it allocates nothing. An IPv4 visitor (also one a dual-stack
 * socket reports as `::ffff:a.b.c.d`) matches IPv4 rules, and IPv6 rules wide enough to contain its
 * IPv4-mapped address (`::/0` covers everyone). An address that does not parse matches no rule: it
 * passes a list with an empty allow list only.
 * @module
 */

import { type Cidr, cidrContains, type IpFamily, parseCidr, parseIpInto } from "../ip.ts";

/** Where a list comes from: the server's flags, the user's `[[users]]` entry, or the tunnel's client. */
export type AccessSource = "server" | "user" | "tunnel";

/** Why a visitor was refused: which list, and which rule. Preallocated: a refusal allocates nothing. */
export interface AccessRefusal {
  readonly source: AccessSource;
  /** `deny`: a deny rule names the address; `allow`: the (non-empty) allow list does not. */
  readonly rule: "deny" | "allow";
  /** A metric label: `server_deny`, `user_not_allowed`, `tunnel_deny`, … */
  readonly label: string;
  /** Words for a log line: "denied by the user's list". */
  readonly message: string;
}

/** Most rules in one list (a tunnel's come over the wire; the wire allows 64 per list). */
export const MAX_RULES = 64;

/** The address being checked, parsed once per check. */
const visitor = new Uint32Array(4);
/** Its IPv4-mapped IPv6 form, for IPv6 rules that cover IPv4 (`::/0`). */
const mapped = new Uint32Array(4);

const OWNER: Record<AccessSource, string> = {
  server: "the server's",
  user: "the user's",
  tunnel: "the tunnel's",
};

/** One allow list and one deny list, from one source. */
export class AccessList {
  /** The refusal when a deny rule matched. */
  readonly denied: AccessRefusal;
  /** The refusal when the allow list does not name the address. */
  readonly notAllowed: AccessRefusal;

  /**
   * @param allow ranges allowed (empty: every address not denied).
   * @param deny ranges refused, whatever `allow` says.
   * @param source where the list comes from (for refusals).
   */
  constructor(
    readonly allow: readonly Cidr[],
    readonly deny: readonly Cidr[],
    readonly source: AccessSource,
  ) {
    this.denied = {
      source,
      rule: "deny",
      label: `${source}_deny`,
      message: `denied by ${OWNER[source]} list`,
    };
    this.notAllowed = {
      source,
      rule: "allow",
      label: `${source}_not_allowed`,
      message: `not in ${OWNER[source]} allow list`,
    };
  }

  /**
   * A list from rule texts (flags, a config file, an expose request).
   * @throws {Error} one line naming the first bad rule (`allow: '10.0.0.0/33': /33 is longer …`), or
   * too many rules.
   */
  static parse(allow: readonly string[], deny: readonly string[], source: AccessSource): AccessList {
    const rules = (texts: readonly string[], key: string) => {
      if (texts.length > MAX_RULES)
        throw new Error(`${key}: ${texts.length} rules, at most ${MAX_RULES} (use wider ranges)`);
      return texts.map((text) => {
        try {
          return parseCidr(text);
        } catch (error) {
          throw new Error(`${key}: ${(error as Error).message}`);
        }
      });
    };
    return new AccessList(rules(allow, "allow"), rules(deny, "deny"), source);
  }

  /** True when the list has no rule (it permits everyone). */
  get empty(): boolean {
    return this.allow.length === 0 && this.deny.length === 0;
  }

  /** Whether `ip` (as a socket reports it: `::ffff:` prefix, zone and all) may pass this list. */
  permits(ip: string): boolean {
    return this.refusal(ip) === undefined;
  }

  /** Why this list refuses `ip`, or undefined when it permits it. */
  refusal(ip: string): AccessRefusal | undefined {
    if (this.empty) return undefined;
    return this.refusalOfParsed(parseVisitor(ip));
  }

  /** {@link AccessList.refusal} for the address last parsed by {@link parseVisitor} (family 0: none). */
  refusalOfParsed(family: IpFamily | 0): AccessRefusal | undefined {
    if (family !== 0 && anyContains(this.deny, family)) return this.denied;
    if (this.allow.length === 0 || (family !== 0 && anyContains(this.allow, family))) return undefined;
    return this.notAllowed;
  }

  /** The rules as canonical text (for /health, the dashboard, and comparing two loads of a config). */
  toJSON(): { allow: string[]; deny: string[] } {
    return { allow: this.allow.map((rule) => rule.text), deny: this.deny.map((rule) => rule.text) };
  }
}

/** Parses `ip` into the module's scratch words (and the mapped form for IPv4); its family or 0. */
function parseVisitor(ip: string): IpFamily | 0 {
  const family = parseIpInto(ip, visitor);
  if (family === 4) {
    mapped[0] = 0;
    mapped[1] = 0;
    mapped[2] = 0xffff;
    mapped[3] = visitor[0] as number;
  }
  return family;
}

function anyContains(rules: readonly Cidr[], family: IpFamily): boolean {
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i] as Cidr;
    if (
      rule.family === family
        ? cidrContains(rule, family, visitor)
        : family === 4 && cidrContains(rule, 6, mapped)
    )
      return true;
  }
  return false;
}

/**
 * Why the lists refuse `ip` (the first that does, in the order given: the server's, the user's, the
 * tunnel's), or undefined when every list permits it. Absent lists permit everyone. The address is
 * parsed once; nothing is allocated.
 */
export function accessRefusal(
  ip: string,
  first?: AccessList,
  second?: AccessList,
  third?: AccessList,
): AccessRefusal | undefined {
  const any = (first !== undefined && !first.empty) || (second !== undefined && !second.empty);
  if (!any && (third === undefined || third.empty)) return undefined;
  const family = parseVisitor(ip);
  return (
    (first?.empty === false ? first.refusalOfParsed(family) : undefined) ??
    (second?.empty === false ? second.refusalOfParsed(family) : undefined) ??
    (third?.empty === false ? third.refusalOfParsed(family) : undefined)
  );
}

/** Whether every given list permits `ip` (see {@link accessRefusal}). */
export function accessPermits(
  ip: string,
  first?: AccessList,
  second?: AccessList,
  third?: AccessList,
): boolean {
  return accessRefusal(ip, first, second, third) === undefined;
}

/**
 * The lists an expose request carries (`allow`, `deny`), parsed once when the tunnel is placed;
 * undefined when it carries none.
 * @throws {Error} one line naming the first bad rule (`deny: '10.0.0.0/33': /33 is longer …`), for
 * the server's refusal of the expose.
 */
export function tunnelAccess(request: {
  allow?: readonly string[];
  deny?: readonly string[];
}): AccessList | undefined {
  const { allow = [], deny = [] } = request;
  return allow.length + deny.length === 0 ? undefined : AccessList.parse(allow, deny, "tunnel");
}
