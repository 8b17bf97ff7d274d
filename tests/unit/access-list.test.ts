/**
 * Allow and deny lists (shared/server/access-list.ts) and CIDR parsing (shared/ip.ts): rules parse
 * or fail with one line, deny wins, an empty allow list allows all, IPv4-mapped visitors match IPv4
 * rules, the operator's lists bind the tunnel's, and a check agrees with a plain reference model
 * (BigInt arithmetic) on random rules and addresses.
 */

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { formatIpv4, formatIpv6, parseCidr } from "../../shared/ip.ts";
import {
  AccessList,
  accessPermits,
  accessRefusal,
  MAX_RULES,
  tunnelAccess,
} from "../../shared/server/access-list.ts";

describe("CIDR rules", () => {
  test("ranges and single addresses, canonical, host bits cleared", () => {
    expect(parseCidr("10.0.0.0/8").text).toBe("10.0.0.0/8");
    expect(parseCidr("192.0.2.77/24").text).toBe("192.0.2.0/24");
    expect(parseCidr("198.51.100.7").text).toBe("198.51.100.7/32");
    expect(parseCidr("0.0.0.0/0").text).toBe("0.0.0.0/0");
    expect(parseCidr("2001:DB8:0:0::/32").text).toBe("2001:db8::/32");
    expect(parseCidr("::1").text).toBe("::1/128");
    expect(parseCidr("::/0").text).toBe("::/0");
    expect(parseCidr("::ffff:10.1.2.3/104").text).toBe("10.0.0.0/8");
    expect(parseCidr("::ffff:10.1.2.3").text).toBe("10.1.2.3/32");
    expect(parseCidr("::ffff:0:0/80").text).toBe("::/80");
  });

  test("malformed rules and over-long prefixes fail with one line that names them", () => {
    const cases: [string, RegExp][] = [
      ["10.0.0.0/33", /^'10\.0\.0\.0\/33': \/33 is longer than an IPv4 address \(at most \/32\)$/],
      ["::/129", /\/129 is longer than an IPv6 address \(at most \/128\)/],
      ["10.0.0", /'10\.0\.0' is not an IP address or CIDR range \(e\.g\./],
      ["10.0.0.0/", /has no prefix length/],
      ["10.0.0.0/08", /has no prefix length/],
      ["10.0.0.0/-1", /has no prefix length/],
      ["10.0.0.0/8/8", /has no prefix length/],
      ["fe80::1%eth0", /not an IP address/],
      ["example.com", /not an IP address/],
      ["", /not an IP address/],
    ];
    for (const [text, pattern] of cases) {
      let message = "";
      try {
        parseCidr(text);
      } catch (error) {
        message = (error as Error).message;
      }
      expect({ text, message }).toEqual({ text, message: expect.stringMatching(pattern) });
      expect(message).not.toContain("\n");
    }
  });
});

describe("AccessList", () => {
  const list = (allow: string[], deny: string[] = []) => AccessList.parse(allow, deny, "tunnel");

  test("an empty list permits everyone; an empty allow list with a deny list permits all but the denied", () => {
    expect(list([]).permits("203.0.113.9")).toBe(true);
    expect(list([]).empty).toBe(true);
    const denyOne = list([], ["127.0.0.2"]);
    expect(denyOne.permits("127.0.0.1")).toBe(true);
    expect(denyOne.permits("127.0.0.2")).toBe(false);
    expect(denyOne.permits("::1")).toBe(true);
  });

  test("deny wins over allow", () => {
    const l = list(["127.0.0.0/8"], ["127.0.0.3"]);
    expect(l.permits("127.0.0.1")).toBe(true);
    expect(l.permits("127.0.0.3")).toBe(false);
    expect(l.refusal("127.0.0.3")).toBe(l.denied);
    expect(l.refusal("10.0.0.1")).toBe(l.notAllowed);
    expect(l.refusal("10.0.0.1")?.label).toBe("tunnel_not_allowed");
    expect(l.denied.label).toBe("tunnel_deny");
  });

  test("IPv4-mapped visitors (a dual-stack socket's view) match IPv4 rules; ::/0 covers IPv4 too", () => {
    const l = list(["127.0.0.0/8"]);
    expect(l.permits("::ffff:127.0.0.1")).toBe(true);
    expect(l.permits("::ffff:10.0.0.1")).toBe(false);
    expect(l.permits("::1")).toBe(false);
    const v6 = list(["::1"]);
    expect(v6.permits("::1")).toBe(true);
    expect(v6.permits("127.0.0.1")).toBe(false);
    const everyone = list([], ["::/0"]);
    expect(everyone.permits("127.0.0.1")).toBe(false);
    expect(everyone.permits("::ffff:192.0.2.1")).toBe(false);
    expect(list([], ["2001:db8::/32"]).permits("127.0.0.1")).toBe(true);
  });

  test("an address that does not parse passes only a list without an allow list", () => {
    expect(list(["127.0.0.1"]).permits("garbage")).toBe(false);
    expect(list([], ["127.0.0.1"]).permits("garbage")).toBe(true);
  });

  test("a bad rule names its list; more than 64 rules are refused", () => {
    expect(() => list(["10.0.0.0/33"])).toThrow(/^allow: '10\.0\.0\.0\/33': \/33 is longer/);
    expect(() => list([], ["nope"])).toThrow(/^deny: 'nope' is not an IP address/);
    const many = Array.from({ length: MAX_RULES + 1 }, (_, i) => `10.0.${i}.0/24`);
    expect(() => list(many)).toThrow(/at most 64/);
  });

  test("tunnelAccess: an expose request's lists, none when it carries none, one line for a bad rule", () => {
    expect(tunnelAccess({})).toBeUndefined();
    expect(tunnelAccess({ allow: [], deny: [] })).toBeUndefined();
    const access = tunnelAccess({ deny: ["127.0.0.2"] });
    expect(access?.source).toBe("tunnel");
    expect(access?.permits("127.0.0.2")).toBe(false);
    expect(() => tunnelAccess({ allow: ["::/129"] })).toThrow(
      /^allow: '::\/129': \/129 is longer than an IPv6/,
    );
  });

  test("toJSON gives the canonical rules (how a reload compares a user's limits)", () => {
    expect(JSON.stringify(list(["10.1.2.3/8"], ["::1"]))).toBe('{"allow":["10.0.0.0/8"],"deny":["::1/128"]}');
  });
});

describe("combined lists (operator, user, tunnel)", () => {
  const server = AccessList.parse([], ["127.0.0.3"], "server");
  const user = AccessList.parse(["127.0.0.0/8", "::1"], ["127.0.0.2"], "user");
  const tunnel = AccessList.parse(["127.0.0.2", "127.0.0.3", "127.0.0.4"], [], "tunnel");

  test("a visitor passes only if every list permits it: a user cannot allow what the operator denies", () => {
    expect(accessPermits("127.0.0.4", server, user, tunnel)).toBe(true);
    expect(accessRefusal("127.0.0.3", server, user, tunnel)).toBe(server.denied);
    expect(accessRefusal("127.0.0.2", server, user, tunnel)).toBe(user.denied);
    expect(accessRefusal("127.0.0.1", server, user, tunnel)).toBe(tunnel.notAllowed);
    expect(accessRefusal("10.0.0.1", server, user, tunnel)).toBe(user.notAllowed);
    expect(accessPermits("::1", server, user)).toBe(true);
    expect(accessPermits("::1", server, user, tunnel)).toBe(false);
    expect(accessPermits("203.0.113.1")).toBe(true);
    expect(accessPermits("203.0.113.1", undefined, undefined, tunnel)).toBe(false);
  });

  test("refusals say which list and rule, in words and as a metric label", () => {
    expect(server.denied).toEqual({
      source: "server",
      rule: "deny",
      label: "server_deny",
      message: "denied by the server's list",
    });
    expect(user.notAllowed.message).toBe("not in the user's allow list");
  });
});

/** A reference model: addresses and ranges as BigInts over 128 bits (IPv4 as its mapped IPv6). */
function model(allow: string[], deny: string[], ip: string): boolean {
  const big = (text: string): bigint => {
    if (!text.includes(":"))
      return (0xffffn << 32n) | BigInt(text.split(".").reduce((a, p) => a * 256 + Number(p), 0));
    const [head = "", tail = ""] = text.includes("::") ? text.split("::") : [text, ""];
    const h = head === "" ? [] : head.split(":");
    const t = tail === "" ? [] : tail.split(":");
    const parts = text.includes("::") ? [...h, ...Array(8 - h.length - t.length).fill("0"), ...t] : h;
    return parts.reduce((a, p) => (a << 16n) | BigInt(Number.parseInt(p, 16)), 0n);
  };
  const inRange = (rule: string) => {
    const [address = "", prefixText] = rule.split("/");
    const v4 = !address.includes(":");
    const prefix = BigInt(prefixText === undefined ? 128 : Number(prefixText) + (v4 ? 96 : 0));
    const shift = 128n - prefix;
    return big(address) >> shift === big(ip) >> shift;
  };
  if (deny.some(inRange)) return false;
  return allow.length === 0 || allow.some(inRange);
}

describe("agrees with a reference model", () => {
  const v4rule = fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 32 })).map(([a, p]) => `${a}/${p}`);
  const words = fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 4, maxLength: 4 });
  const v6address = words.map((w) => formatIpv6(Uint32Array.from(w)));
  const v6rule = fc.tuple(v6address, fc.integer({ min: 0, max: 128 })).map(([a, p]) => `${a}/${p}`);
  // Visitors near each other, so that rules match often: a few fixed prefixes with random tails.
  const visitor = fc.oneof(
    fc.integer({ min: 0, max: 0xffff }).map((n) => formatIpv4((0x7f000000 | n) >>> 0)),
    fc.ipV4(),
    v6address,
    fc.integer({ min: 0, max: 0xffff }).map((n) => `2001:db8::${n.toString(16)}`),
  );
  const nearRule = fc.oneof(
    fc.integer({ min: 8, max: 32 }).map((p) => `127.0.0.0/${p}`),
    fc.integer({ min: 96, max: 128 }).map((p) => `2001:db8::/${p}`),
    fc.constantFrom("::/0", "0.0.0.0/0", "127.0.0.1", "::1"),
  );
  const rules = fc.array(fc.oneof(v4rule, v6rule, nearRule), { maxLength: 6 });

  test("random rules and visitors (IPv4, IPv6, mapped)", () => {
    fc.assert(
      fc.property(rules, rules, visitor, fc.boolean(), (allow, deny, ip, asMapped) => {
        const list = AccessList.parse(allow, deny, "tunnel");
        const seen = asMapped && !ip.includes(":") ? `::ffff:${ip}` : ip;
        // The model reads rules as written: canonical forms only (the parser's own output).
        const canon = (list: readonly { text: string }[]) => list.map((rule) => rule.text);
        expect(list.permits(seen)).toBe(model(canon(list.allow), canon(list.deny), ip));
      }),
      { numRuns: 2000 },
    );
  });
});
