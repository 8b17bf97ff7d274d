/**
 * A cluster node's identity and its Redis address, without processes: default node names from node
 * URLs, the digests of shared settings (independent of order), `redis+sentinel://` URLs (parsed,
 * redacted, turned into the master's URL, refused with one line when malformed), and the RESP reader
 * the sentinel client uses, fed the same replies cut at every possible place.
 */

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { defaultNodeName, settingsDigest } from "../../shared/server/cluster/identity.ts";
import {
  isSentinelUrl,
  masterUrl,
  parseSentinelUrl,
  RespReader,
  type RespValue,
  redactSentinelUrl,
} from "../../shared/server/cluster/sentinel.ts";
import { parseServerArgs } from "../../shared/server/options.ts";

describe("default node names", () => {
  test("HOST:PORT of the node URL, made a valid name", () => {
    expect(defaultNodeName("ws://127.0.0.2:7070")).toBe("127.0.0.2:7070");
    expect(defaultNodeName("wss://node-3.example.com:443")).toBe("node-3.example.com:443");
    expect(defaultNodeName("wss://node.example.com")).toBe("node.example.com:443");
    expect(defaultNodeName("ws://[fd00::2]:7070")).toBe("fd00::2:7070");
    // A long host keeps its end (the port and the distinguishing labels), 64 characters at most.
    const long = defaultNodeName(`ws://${"a".repeat(80)}.example:7070`);
    expect(long.length).toBe(64);
    expect(long.endsWith(".example:7070")).toBe(true);
  });

  test("different URLs, different names", () => {
    const names = ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map((ip) => defaultNodeName(`ws://${ip}:7070`));
    expect(new Set(names).size).toBe(3);
  });
});

describe("settings digests", () => {
  const ann = { name: "ann", tokenHash: "a".repeat(64), limits: { maxTunnels: 2 } };
  const bob = { name: "bob", tokenHash: "b".repeat(64), limits: {} };

  test("the same users in another order hash alike; another limit does not", () => {
    const one = settingsDigest({ users: [ann, bob], domain: "example.com" });
    expect(settingsDigest({ users: [bob, ann], domain: "example.com" })).toEqual(one);
    const changed = settingsDigest({
      users: [{ ...ann, limits: { maxTunnels: 3 } }, bob],
      domain: "example.com",
    });
    expect(changed.users).not.toBe(one.users);
    expect(changed.settings).toBe(one.settings);
  });

  test("the domain, the lease and TLS are settings; the single API key counts with the users", () => {
    const base = settingsDigest({ domain: "a.test" });
    expect(settingsDigest({ domain: "b.test" }).settings).not.toBe(base.settings);
    expect(settingsDigest({ domain: "a.test", clusterLeaseSeconds: 10 }).settings).not.toBe(base.settings);
    expect(settingsDigest({ domain: "a.test", apiKey: "k" }).users).not.toBe(base.users);
    expect(settingsDigest({ domain: "a.test", apiKey: "k" }).settings).toBe(base.settings);
  });
});

describe("sentinel URLs", () => {
  test("hosts, ports (26379 by default), master, password, database, TLS", () => {
    const url =
      "redis+sentinel://:s3cret@10.0.0.5:26380,sentinel-b,[fd00::7]:26381/mymaster/2?sentinel_password=pw";
    expect(isSentinelUrl(url)).toBe(true);
    expect(parseSentinelUrl(url)).toEqual({
      sentinels: [
        { host: "10.0.0.5", port: 26380 },
        { host: "sentinel-b", port: 26379 },
        { host: "fd00::7", port: 26381 },
      ],
      master: "mymaster",
      tls: false,
      auth: ":s3cret",
      db: 2,
      sentinelPassword: "pw",
    });
    const parsed = parseSentinelUrl("rediss+sentinel://127.0.0.1:1/m");
    expect(parsed.tls).toBe(true);
    expect(masterUrl(parsed, "10.0.0.9", 6380)).toBe("rediss://10.0.0.9:6380");
    expect(masterUrl(parseSentinelUrl(url), "fd00::9", 6379)).toBe("redis://:s3cret@[fd00::9]:6379/2");
  });

  test("passwords never reach a log line", () => {
    const shown = redactSentinelUrl("redis+sentinel://:s3cret@h:1/m?sentinel_password=pw");
    expect(shown).not.toContain("s3cret");
    expect(shown).not.toContain("pw");
    expect(isSentinelUrl("redis://h:6379")).toBe(false);
  });

  test("a malformed one is refused by --cluster with one line", () => {
    for (const bad of ["redis+sentinel://h:1", "redis+sentinel://h:99999/m", "redis+sentinel:///m"]) {
      expect(() => parseServerArgs(["--cluster", bad], {})).toThrow(/--cluster: .*(sentinel|HOST)/);
    }
    const options = parseServerArgs(["--cluster", "redis+sentinel://a:1,b:2/m"], {});
    expect(options !== "help" && options.cluster).toBe("redis+sentinel://a:1,b:2/m");
  });
});

describe("the RESP reader", () => {
  /** Replies a sentinel sends: a master's address, nil, an error, a pub/sub message. */
  const wire =
    "*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n" +
    "*-1\r\n" +
    "-IDONTKNOW No such master with that name\r\n" +
    "*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n" +
    "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$42\r\nmymaster 127.0.0.1 6380 127.0.0.1 6381 xyz\r\n";
  const expected = (values: RespValue[]) => {
    expect(values[0]).toEqual(["127.0.0.1", "6380"]);
    expect(values[1]).toBeNull();
    expect(values[2]).toBeInstanceOf(Error);
    expect((values[2] as Error).message).toBe("IDONTKNOW No such master with that name");
    expect(values[3]).toEqual(["subscribe", "+switch-master", 1]);
    expect(values[4]).toEqual(["message", "+switch-master", "mymaster 127.0.0.1 6380 127.0.0.1 6381 xyz"]);
    expect(values).toHaveLength(5);
  };

  test("whole, and cut anywhere into any number of pieces", () => {
    const whole: RespValue[] = [];
    new RespReader((v) => whole.push(v)).push(wire);
    expected(whole);
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: wire.length - 1 }), { maxLength: 12 }), (cuts) => {
        const values: RespValue[] = [];
        const reader = new RespReader((v) => values.push(v));
        const points = [0, ...cuts.sort((a, b) => a - b), wire.length];
        for (let i = 1; i < points.length; i++)
          reader.push(new TextEncoder().encode(wire.slice(points[i - 1], points[i])));
        expected(values);
      }),
      { numRuns: 300 },
    );
  });

  test("what is not RESP, or too long, throws", () => {
    expect(() => new RespReader(() => {}).push("hello\r\n")).toThrow(/not RESP/);
    expect(() => new RespReader(() => {}).push(`$99999999\r\n${"x".repeat(1024 * 1024)}`)).toThrow(
      /too long/,
    );
  });
});
