/**
 * PROXY protocol headers (shared/wire/proxy-protocol.ts) and the address parsing under them
 * (shared/ip.ts): every IPv4 and IPv6 connection round-trips through v1 and v2, IPv4-mapped addresses
 * come out as IPv4, unknown or mixed addresses give v1 UNKNOWN and v2 LOCAL, the bytes match the
 * spec's examples, and the parser refuses what is not a header.
 */

import { describe, expect, test } from "bun:test";
import { isIP, isIPv6 } from "node:net";
import fc from "fast-check";
import { formatIp, formatIpv6, parseIp, parseIpInto, splitAddress } from "../../shared/ip.ts";
import {
  encodeProxyHeader,
  encodeProxyV1,
  encodeProxyV2,
  type ProxyAddresses,
  parseProxyHeader,
  V1_MAX_LENGTH,
  V2_SIGNATURE,
  visitorAddresses,
} from "../../shared/wire/proxy-protocol.ts";

const RUNS = { numRuns: 500 };
const port = fc.integer({ min: 0, max: 65535 });
const words6 = fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 4, maxLength: 4 });
/** IPv6 addresses as canonical text, never IPv4-mapped (those are IPv4 here). */
const ipv6 = words6
  .filter((w) => !(w[0] === 0 && w[1] === 0 && w[2] === 0xffff))
  .map((w) => formatIpv6(Uint32Array.from(w)));

/** The canonical form WHATWG URL gives an IPv6 literal (RFC 5952 compression, no mixed notation). */
function urlCanonical(text: string): string {
  return new URL(`http://[${text}]/`).hostname.slice(1, -1);
}

describe("addresses (shared/ip.ts)", () => {
  test("IPv4 text round-trips and matches the reference parser", () => {
    fc.assert(
      fc.property(fc.ipV4(), (text) => {
        const parsed = parseIp(text);
        expect(parsed?.family).toBe(4);
        expect(formatIp(parsed as NonNullable<typeof parsed>)).toBe(text);
      }),
      RUNS,
    );
  });

  test("IPv6 text in any form (fast-check's ipV6: compressed, embedded IPv4) parses as URL does", () => {
    fc.assert(
      fc.property(fc.ipV6(), (text) => {
        const parsed = parseIp(text);
        expect(parsed).toBeDefined();
        let canonical: string;
        try {
          canonical = urlCanonical(text);
        } catch {
          // Bun's URL refuses a few valid forms (`0:0:0::0:0.0.0.0`): node:net is the oracle there.
          expect(isIPv6(text)).toBe(true);
          return;
        }
        if (parsed?.family === 4) expect(canonical).toMatch(/^::ffff:[0-9a-f]{1,4}:[0-9a-f]{1,4}$/);
        else expect(formatIp(parsed as NonNullable<typeof parsed>)).toBe(canonical);
      }),
      RUNS,
    );
  });

  test("canonical IPv6 formatting agrees with URL's for any 128 bits", () => {
    fc.assert(
      fc.property(words6, (w) => {
        const text = formatIpv6(Uint32Array.from(w));
        expect(text).toBe(urlCanonical(text));
        const back = new Uint32Array(4);
        const family = parseIpInto(text, back);
        if (family === 6) expect([...back]).toEqual(w);
      }),
      RUNS,
    );
  });

  test("IPv4-mapped IPv6 comes out as IPv4, in either notation; a zone is ignored", () => {
    expect(parseIp("::ffff:192.0.2.1")?.family).toBe(4);
    expect(parseIp("::ffff:192.0.2.1")?.words[0]).toBe(0xc0000201);
    expect(parseIp("::FFFF:c000:0201")?.family).toBe(4);
    expect(formatIp(parseIp("::ffff:c000:201") as NonNullable<ReturnType<typeof parseIp>>)).toBe("192.0.2.1");
    expect(formatIp(parseIp("fe80::1%eth0") as NonNullable<ReturnType<typeof parseIp>>)).toBe("fe80::1");
  });

  test("what is an address agrees with node:net's isIP on random strings of address characters", () => {
    const piece = fc.constantFrom(..."0123456789abcdefABCDEF:.", "::", "ffff:", "1.2.3.4", "255.");
    const text = fc.array(piece, { maxLength: 20 }).map((pieces) => pieces.join(""));
    fc.assert(
      fc.property(text, (t) => {
        expect({ t, parsed: parseIp(t) !== undefined }).toEqual({ t, parsed: isIP(t) !== 0 });
      }),
      { numRuns: 5000 },
    );
  });

  test("malformed addresses are refused", () => {
    for (const bad of [
      "",
      "1.2.3",
      "1.2.3.4.5",
      "256.1.1.1",
      "01.2.3.4",
      "1.2.3.4 ",
      "1..2.3",
      ":",
      ":::",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7:8::",
      "::1::",
      "12345::",
      "1:2:3:4:5:6:7:1.2.3.4",
      ":1::",
      "1::2:",
      "g::1",
      "localhost",
      "[::1]",
    ])
      expect({ bad, parsed: parseIp(bad) }).toEqual({ bad, parsed: undefined });
  });

  test("splitAddress reads OPEN's ip:port and [ipv6]:port", () => {
    expect(splitAddress("127.0.0.1:5000")).toEqual({ ip: "127.0.0.1", port: 5000 });
    expect(splitAddress("[::1]:80")).toEqual({ ip: "::1", port: 80 });
    expect(splitAddress("::1")).toEqual({ ip: ":", port: 1 });
    expect(splitAddress("1.2.3.4:70000")).toBeUndefined();
    expect(splitAddress("nothing")).toBeUndefined();
  });
});

/** Any connection whose two ends are of one family, as canonical text. */
const sameFamily: fc.Arbitrary<ProxyAddresses> = fc.oneof(
  fc.record({ sourceIp: fc.ipV4(), sourcePort: port, destinationIp: fc.ipV4(), destinationPort: port }),
  fc.record({ sourceIp: ipv6, sourcePort: port, destinationIp: ipv6, destinationPort: port }),
);

describe("PROXY protocol headers", () => {
  test("v1 and v2 round-trip every same-family connection, and the service's bytes follow", () => {
    fc.assert(
      fc.property(
        sameFamily,
        fc.constantFrom("v1" as const, "v2" as const),
        fc.uint8Array(),
        (a, v, tail) => {
          const header = encodeProxyHeader(v, a);
          if (v === "v1") expect(header.length).toBeLessThanOrEqual(V1_MAX_LENGTH);
          const bytes = new Uint8Array(header.length + tail.length);
          bytes.set(header);
          bytes.set(tail, header.length);
          const parsed = parseProxyHeader(bytes);
          expect(parsed?.command).toBe("proxy");
          expect(parsed?.version).toBe(v === "v1" ? 1 : 2);
          expect(parsed?.addresses).toEqual(a);
          expect(parsed?.length).toBe(header.length);
          // Every prefix shorter than the header asks for more bytes, never throws or misreads.
          for (const cut of [0, 1, 11, 15, header.length - 1])
            if (cut >= 0 && cut < header.length)
              expect(parseProxyHeader(header.subarray(0, cut))).toBeUndefined();
        },
      ),
      RUNS,
    );
  });

  test("IPv4-mapped addresses are written as IPv4 (TCP4, family 0x11)", () => {
    const a = {
      sourceIp: "::ffff:127.0.0.1",
      sourcePort: 40000,
      destinationIp: "::ffff:10.1.2.3",
      destinationPort: 80,
    };
    expect(new TextDecoder().decode(encodeProxyV1(a))).toBe("PROXY TCP4 127.0.0.1 10.1.2.3 40000 80\r\n");
    const v2 = encodeProxyV2(a);
    expect(v2[13]).toBe(0x11);
    expect(parseProxyHeader(v2)?.addresses).toEqual({
      ...a,
      sourceIp: "127.0.0.1",
      destinationIp: "10.1.2.3",
    });
  });

  test("unknown, malformed or mixed-family addresses: v1 UNKNOWN, v2 LOCAL", () => {
    const mixed = { sourceIp: "::1", sourcePort: 1, destinationIp: "127.0.0.1", destinationPort: 2 };
    const broken = { sourceIp: "nope", sourcePort: 1, destinationIp: "127.0.0.1", destinationPort: 2 };
    const badPort = {
      sourceIp: "127.0.0.1",
      sourcePort: 70000,
      destinationIp: "127.0.0.1",
      destinationPort: 2,
    };
    for (const a of [undefined, mixed, broken, badPort]) {
      expect(new TextDecoder().decode(encodeProxyV1(a))).toBe("PROXY UNKNOWN\r\n");
      const v2 = encodeProxyV2(a);
      expect([...v2]).toEqual([...V2_SIGNATURE, 0x20, 0x00, 0, 0]);
      expect(parseProxyHeader(v2)).toEqual({ version: 2, command: "local", length: 16 });
    }
  });

  test("the bytes are the spec's: v1 TCP6 text, v2 TCP4 layout", () => {
    const a = { sourceIp: "2001:db8::1", sourcePort: 56324, destinationIp: "::1", destinationPort: 443 };
    expect(new TextDecoder().decode(encodeProxyV1(a))).toBe("PROXY TCP6 2001:db8::1 ::1 56324 443\r\n");
    const v4 = encodeProxyV2({
      sourceIp: "192.0.2.1",
      sourcePort: 0x1234,
      destinationIp: "198.51.100.2",
      destinationPort: 80,
    });
    expect([...v4.subarray(12)]).toEqual([
      0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2, 0x12, 0x34, 0, 80,
    ]);
    const v6 = encodeProxyV2(a);
    expect(v6.length).toBe(16 + 36);
    expect([v6[12], v6[13], v6[14], v6[15]]).toEqual([0x21, 0x21, 0, 36]);
  });

  test("the parser refuses what is not a header, with one line", () => {
    const text = (s: string) => new TextEncoder().encode(s);
    for (const bad of [
      "GET / HTTP/1.1\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
      "PROXY TCP4 ::1 ::1 1 2\r\n",
      "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
      `PROXY ${"x".repeat(120)}`,
    ])
      expect(() => parseProxyHeader(text(bad))).toThrow(/PROXY|header/);
    expect(parseProxyHeader(text("PROXY UNKNOWN ffff::1 ::1 1 2\r\n"))?.command).toBe("unknown");
    const v3 = Uint8Array.of(...V2_SIGNATURE, 0x31, 0x11, 0, 0);
    expect(() => parseProxyHeader(v3)).toThrow(/version 3/);
  });
});

describe("the addresses a client's header names (visitorAddresses)", () => {
  const announced = { host: "tunnel.example.com", port: 7070 };

  test("OPEN's remote and local, IPv4 and IPv6", () => {
    expect(visitorAddresses("127.0.0.1:40000", "127.0.0.1:5000", announced)).toEqual({
      sourceIp: "127.0.0.1",
      sourcePort: 40000,
      destinationIp: "127.0.0.1",
      destinationPort: 5000,
    });
    expect(visitorAddresses("[::1]:40000", "[::1]:5000", announced)).toEqual({
      sourceIp: "::1",
      sourcePort: 40000,
      destinationIp: "::1",
      destinationPort: 5000,
    });
  });

  test("an older server (no local): the announced host when it is an address of the visitor's family, else unspecified", () => {
    expect(visitorAddresses("192.0.2.1:1", undefined, { host: "198.51.100.1", port: 80 })).toMatchObject({
      destinationIp: "198.51.100.1",
      destinationPort: 80,
    });
    expect(visitorAddresses("192.0.2.1:1", undefined, announced)).toMatchObject({
      destinationIp: "0.0.0.0",
      destinationPort: 7070,
    });
    expect(visitorAddresses("[2001:db8::1]:1", undefined, { host: "[::1]", port: 80 })).toMatchObject({
      destinationIp: "::1",
    });
    expect(visitorAddresses("[2001:db8::1]:1", undefined, { host: "127.0.0.1", port: 80 })).toMatchObject({
      destinationIp: "::",
    });
    const header = new TextDecoder().decode(
      encodeProxyV1(visitorAddresses("192.0.2.1:1234", undefined, announced)),
    );
    expect(header).toBe("PROXY TCP4 192.0.2.1 0.0.0.0 1234 7070\r\n");
  });

  test("a remote that is no ip:port gives no addresses (UNKNOWN / LOCAL)", () => {
    expect(visitorAddresses("?", "127.0.0.1:1", announced)).toBeUndefined();
    expect(visitorAddresses("host:1", "127.0.0.1:1", announced)).toBeUndefined();
  });
});
