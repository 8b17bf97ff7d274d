/**
 * Users' limits, in-process: subdomain patterns, port ranges, the random name drawn from a pattern,
 * a token opening its user (and nothing else), and what a reload changes among the accounts.
 */

import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readConfig } from "../../shared/config.ts";
import { AccessList, accessRefusal } from "../../shared/server/access-list.ts";
import { usersFromConfig } from "../../shared/server/config.ts";
import { parseServerArgs } from "../../shared/server/options.ts";
import {
  describeRanges,
  hashToken,
  matchesPattern,
  portAllowed,
  randomNameFor,
  SINGLE_KEY_USER,
  subdomainAllowed,
  UserDirectory,
  validPattern,
} from "../../shared/server/users.ts";
import { SUBDOMAIN } from "../../shared/wire/protocol.ts";

describe("subdomain patterns", () => {
  test("a star stands for any run of name characters, possibly none; the rest must match exactly", () => {
    expect(matchesPattern("alice-x", "alice-*")).toBe(true);
    expect(matchesPattern("alice-dev-2", "alice-*")).toBe(true);
    expect(matchesPattern("alice", "alice-*")).toBe(false);
    expect(matchesPattern("bob-alice-x", "alice-*")).toBe(false);
    expect(matchesPattern("xalice-x", "alice-*")).toBe(false);
    expect(matchesPattern("anything", "*")).toBe(true);
    expect(matchesPattern("docs", "docs")).toBe(true);
    expect(matchesPattern("docs2", "docs")).toBe(false);
    expect(matchesPattern("api-eu-1", "api-*-1")).toBe(true);
    expect(matchesPattern("api-eu-2", "api-*-1")).toBe(false);
    expect(matchesPattern("web.alice", "*")).toBe(false);
  });

  test("any of a user's patterns allows a name", () => {
    expect(subdomainAllowed("shared-1", ["alice-*", "shared-*"])).toBe(true);
    expect(subdomainAllowed("bob-1", ["alice-*", "shared-*"])).toBe(false);
    expect(subdomainAllowed("x", [])).toBe(false);
  });

  test("a pattern is a DNS label where stars may stand for parts of it", () => {
    for (const good of ["alice-*", "*", "*-dev", "a*b", "docs"]) expect(validPattern(good)).toBe(true);
    for (const bad of ["Alice-*", "alice.*", "-*", "*-", "", "a_b*", `${"a".repeat(64)}*`])
      expect(validPattern(bad)).toBe(false);
  });

  test("a random name comes from the first pattern with a star, or stands alone without patterns", () => {
    expect(randomNameFor(undefined, "k3j4h5g6f7")).toBe("k3j4h5g6f7");
    expect(randomNameFor(["docs", "alice-*"], "k3j4h5g6f7")).toBe("alice-k3j4h5g6f7");
    expect(randomNameFor(["docs"], "k3j4h5g6f7")).toBeUndefined();
    const long = randomNameFor([`${"a".repeat(58)}-*`], "k3j4h5g6f7") as string;
    expect(long.length).toBeLessThanOrEqual(63);
    expect(SUBDOMAIN.test(long)).toBe(true);
    expect(matchesPattern(long, `${"a".repeat(58)}-*`)).toBe(true);
  });
});

describe("port ranges", () => {
  const ranges = [
    { min: 20000, max: 20099 },
    { min: 22000, max: 22000 },
  ];
  test("a port is allowed inside any range, bounds included", () => {
    for (const port of [20000, 20050, 20099, 22000]) expect(portAllowed(port, ranges)).toBe(true);
    for (const port of [19999, 20100, 21999, 22001, 80]) expect(portAllowed(port, ranges)).toBe(false);
    expect(portAllowed(20000, [])).toBe(false);
  });
  test("described as written", () => {
    expect(describeRanges(ranges)).toBe("20000-20099, 22000");
  });
});

describe("UserDirectory", () => {
  const alice = { name: "alice", tokenHash: hashToken("alice-token"), limits: { maxTunnels: 2 } };
  const bob = { name: "bob", tokenHash: hashToken("bob-token"), limits: {} };

  test("a token opens its own user only; a wrong, empty or missing token opens none", () => {
    const users = new UserDirectory([alice, bob]);
    expect(users.authenticate("alice-token")?.name).toBe("alice");
    expect(users.authenticate("bob-token")?.name).toBe("bob");
    for (const token of ["alice-token ", "", undefined, hashToken("alice-token")])
      expect(users.authenticate(token)).toBeNull();
  });

  test("no users and no key: open (no account); the single key alone: one account without limits", () => {
    expect(new UserDirectory([]).open).toBe(true);
    expect(new UserDirectory([]).authenticate(undefined)).toBeUndefined();
    const keyed = new UserDirectory([], "k");
    expect(keyed.authenticate("k")?.name).toBe(SINGLE_KEY_USER);
    expect(keyed.authenticate(undefined)).toBeNull();
  });

  test("update: added, removed, new token (a fresh account), new limits (the same account)", () => {
    const users = new UserDirectory([alice, bob], "k");
    const before = { alice: users.accounts.get("alice"), bob: users.accounts.get("bob") };
    const carol = { name: "carol", tokenHash: hashToken("carol-token"), limits: {} };
    const change = users.update([
      { ...alice, limits: { maxTunnels: 1 } },
      { ...bob, tokenHash: hashToken("bob-new") },
      carol,
    ]);
    expect(change.added).toEqual(["carol"]);
    expect(change.limitsChanged).toEqual(["alice"]);
    expect(change.revoked).toHaveLength(1);
    expect(change.revoked[0]?.account).toBe(before.bob as NonNullable<typeof before.bob>);
    expect(change.revoked[0]?.why).toBe("user bob's token was changed");
    expect(users.accounts.get("alice")).toBe(before.alice);
    expect(before.alice?.limits).toEqual({ maxTunnels: 1 });
    expect(users.authenticate("bob-token")).toBeNull();
    expect(users.authenticate("bob-new")).not.toBe(before.bob);
    expect(users.authenticate("k")?.name).toBe(SINGLE_KEY_USER);

    const removed = users.update([carol]);
    expect(removed.revoked.map((r) => r.why).sort()).toEqual([
      "user alice was removed from the server's configuration",
      "user bob was removed from the server's configuration",
    ]);
    expect(users.authenticate("k")?.name).toBe(SINGLE_KEY_USER);
  });
});

describe("allow and deny lists of users and of the server", () => {
  const hash = "a".repeat(64);
  const load = (text: string) => {
    const dir = mkdtempSync(join(tmpdir(), "sockets-users-"));
    try {
      const file = join(dir, "server.toml");
      writeFileSync(file, text);
      return usersFromConfig(readConfig(file));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };

  test("a user's allow and deny become limits.access (canonical rules), absent when neither is set", () => {
    const [ann, bob] = load(
      `[[users]]\nname = "ann"\ntoken_hash = "${hash}"\nallow = ["10.1.2.3/8", "::1"]\ndeny = "10.9.9.9"\n` +
        `[[users]]\nname = "bob"\ntoken_hash = "${"b".repeat(64)}"\n`,
    );
    expect(ann?.limits.access?.toJSON()).toEqual({ allow: ["10.0.0.0/8", "::1/128"], deny: ["10.9.9.9/32"] });
    expect(ann?.limits.access?.source).toBe("user");
    expect(bob?.limits.access).toBeUndefined();
  });

  test("a reload that changes only a user's lists is a change of limits, on the same account", () => {
    const rules = (allow: string[]) => ({ access: AccessList.parse(allow, [], "user") });
    const users = new UserDirectory([
      { name: "ann", tokenHash: hashToken("t"), limits: rules(["10.0.0.0/8"]) },
    ]);
    const account = users.accounts.get("ann");
    const same = users.update([{ name: "ann", tokenHash: hashToken("t"), limits: rules(["10.0.0.0/8"]) }]);
    expect(same.limitsChanged).toEqual([]);
    const change = users.update([{ name: "ann", tokenHash: hashToken("t"), limits: rules(["10.0.0.0/16"]) }]);
    expect(change.limitsChanged).toEqual(["ann"]);
    expect(users.accounts.get("ann")).toBe(account);
    expect(account?.limits.access?.permits("10.1.0.1")).toBe(false);
  });

  test("the server's --allow/--deny become options.access; it binds a user's allow", () => {
    const options = parseServerArgs(["--deny", "127.0.0.3", "--deny", "::1"], {});
    if (options === "help") throw new Error("help");
    expect(options.access?.toJSON()).toEqual({ allow: [], deny: ["127.0.0.3/32", "::1/128"] });
    const user = AccessList.parse(["127.0.0.0/8"], [], "user");
    expect(accessRefusal("127.0.0.3", options.access, user)?.label).toBe("server_deny");
    expect(accessRefusal("127.0.0.2", options.access, user)).toBeUndefined();
    const none = parseServerArgs([], {});
    expect(none !== "help" && none.access).toBeUndefined();
    expect(() => parseServerArgs(["--allow", "10.0.0.0/33"], {})).toThrow(
      "--allow: '10.0.0.0/33': /33 is longer than an IPv4 address (at most /32)",
    );
  });
});
