/**
 * Command-line value parsing: good values parse, bad ones are a one-line UsageError naming the flag.
 */

import { describe, expect, test } from "bun:test";
import {
  formatHost,
  parseCount,
  parseFlags,
  parseHostPort,
  parsePort,
  parsePortRange,
  parseServerUrl,
  UsageError,
  unmappedAddress,
  usageLine,
} from "../../shared/args.ts";

/** Asserts that `run` throws a one-line UsageError that names `flag` (and `value`, if given). */
function expectUsageError(run: () => unknown, flag: string, value?: string): void {
  let error: unknown;
  try {
    run();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(UsageError);
  const message = (error as Error).message;
  expect(message).toContain(flag);
  if (value !== undefined) expect(message).toContain(value);
  expect(message).not.toContain("\n");
}

describe("parsePort", () => {
  test("accepts 1-65535", () => {
    expect(parsePort("1", "--port")).toBe(1);
    expect(parsePort("80", "--port")).toBe(80);
    expect(parsePort("65535", "--port")).toBe(65535);
  });
  test("0 only where allowed", () => {
    expect(parsePort("0", "--port", true)).toBe(0);
    expectUsageError(() => parsePort("0", "--port"), "--port", "'0'");
  });
  test("rejects out of range and non-numbers", () => {
    for (const bad of ["65536", "70000", "100000", "-1", "", " 80", "80 ", "8o", "1e3", "0x50", "1.5", "+80"])
      expectUsageError(() => parsePort(bad, "--port", true), "--port", `'${bad}'`);
  });
});

describe("parseHostPort", () => {
  test("HOST:PORT, IPv4, IPv6 in brackets, bare port", () => {
    expect(parseHostPort("localhost:8000", "--expose")).toEqual({ host: "localhost", port: 8000 });
    expect(parseHostPort("10.0.0.2:22", "--expose")).toEqual({ host: "10.0.0.2", port: 22 });
    expect(parseHostPort("[::1]:80", "--expose")).toEqual({ host: "::1", port: 80 });
    expect(parseHostPort("[fe80::1%eth0]:443", "--expose")).toEqual({ host: "fe80::1%eth0", port: 443 });
    expect(parseHostPort("3000", "--expose")).toEqual({ host: "127.0.0.1", port: 3000 });
    expect(parseHostPort("db.internal.example:5432", "--expose")).toEqual({
      host: "db.internal.example",
      port: 5432,
    });
  });
  test("rejects a missing or bad port, unbracketed IPv6 and junk", () => {
    for (const bad of [
      "localhost",
      "localhost:",
      "localhost:0",
      "localhost:70000",
      "localhost:http",
      ":80",
      "::1:80",
      "[::1]",
      "[::1]:",
      "[::1]80",
      "a:b:c",
      "0",
      "",
      "host:80:90",
    ])
      expectUsageError(() => parseHostPort(bad, "--expose"), "--expose");
  });
});

describe("parsePortRange", () => {
  test("MIN-MAX inclusive, including a single port", () => {
    expect(parsePortRange("5000-6000", "--tcp-ports")).toEqual({ min: 5000, max: 6000 });
    expect(parsePortRange("4000-4000", "--tcp-ports")).toEqual({ min: 4000, max: 4000 });
    expect(parsePortRange("1-65535", "--tcp-ports")).toEqual({ min: 1, max: 65535 });
  });
  test("rejects empty, reversed, out-of-range and malformed ranges", () => {
    expectUsageError(() => parsePortRange("5000-4000", "--tcp-ports"), "--tcp-ports", "5000-4000");
    for (const bad of ["", "5000", "5000-", "-5000", "0-10", "1-65536", "a-b", "5000 - 6000", "1-2-3"])
      expectUsageError(() => parsePortRange(bad, "--tcp-ports"), "--tcp-ports");
  });
});

describe("parseServerUrl", () => {
  test("ws:// and wss://, with IPv6", () => {
    expect(parseServerUrl("ws://localhost:7070", "--server").href).toBe("ws://localhost:7070/");
    expect(parseServerUrl("wss://tunnel.example.com", "--server").host).toBe("tunnel.example.com");
    const v6 = parseServerUrl("ws://[::1]:7070", "--server");
    expect([v6.hostname, v6.port]).toEqual(["[::1]", "7070"]);
  });
  test("rejects other schemes and non-URLs", () => {
    for (const bad of [
      "http://localhost:7070",
      "https://localhost",
      "localhost:7070",
      "tcp://x:1",
      "",
      "ws//x",
      "not a url",
    ])
      expectUsageError(() => parseServerUrl(bad, "--server"), "--server", `'${bad}'`);
  });
});

describe("parseCount and formatHost", () => {
  test("parseCount takes positive integers only", () => {
    expect(parseCount("1", "--window")).toBe(1);
    expect(parseCount("1048576", "--window")).toBe(1048576);
    for (const bad of ["0", "-1", "", "1.5", "abc", "99999999999"])
      expectUsageError(() => parseCount(bad, "--window"), "--window");
  });
  test("formatHost brackets IPv6 once", () => {
    expect(formatHost("::1")).toBe("[::1]");
    expect(formatHost("[::1]")).toBe("[::1]");
    expect(formatHost("127.0.0.1")).toBe("127.0.0.1");
    expect(formatHost("example.com")).toBe("example.com");
  });
});

describe("parseFlags", () => {
  const options = {
    port: { type: "string" },
    "tcp-ports": { type: "string" },
    insecure: { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
  } as const;
  const parse = (args: string[]) => parseFlags({ args, options, strict: true, allowPositionals: false });
  /** The CLI line for what `args` fail with. */
  const lineOf = (args: string[]) => {
    try {
      parse(args);
    } catch (error) {
      expect(error).toBeInstanceOf(UsageError);
      return usageLine(error);
    }
    throw new Error(`${args.join(" ")} parsed`);
  };

  test("parses what parseArgs parses", () => {
    expect(parse(["--port", "1", "-q", "--insecure"]).values).toEqual({
      port: "1",
      quiet: true,
      insecure: true,
    });
  });
  test("an unknown flag near a known one: did you mean, without the --help pointer", () => {
    expect(lineOf(["--prot", "1"])).toBe("error: unknown option --prot; did you mean --port?");
    expect(lineOf(["--prot=1"])).toBe("error: unknown option --prot; did you mean --port?");
    expect(lineOf(["--tcp-port", "1-2"])).toBe("error: unknown option --tcp-port; did you mean --tcp-ports?");
    expect(lineOf(["--insecur"])).toBe("error: unknown option --insecur; did you mean --insecure?");
    expect(lineOf(["--tcp"])).toBe("error: unknown option --tcp; did you mean --tcp-ports?");
  });
  test("an unknown flag near nothing, and other mistakes: one plain line and --help", () => {
    expect(lineOf(["--bogus"])).toBe("error: unknown option --bogus (see --help)");
    expect(lineOf(["-x"])).toBe("error: unknown option -x (see --help)");
    expect(lineOf(["--port"])).toBe("error: --port needs a value (see --help)");
    expect(lineOf(["--quiet=1"])).toBe("error: --quiet takes no value (see --help)");
    expect(lineOf(["8000"])).toBe(
      "error: unexpected argument '8000': every value follows its --flag (see --help)",
    );
  });
});

test("unmappedAddress gives an IPv4 peer of a dual-stack socket its IPv4 form", () => {
  expect(unmappedAddress("::ffff:192.0.2.1")).toBe("192.0.2.1");
  expect(unmappedAddress("::FFFF:127.0.0.1")).toBe("127.0.0.1");
  for (const other of ["::1", "2001:db8::1", "127.0.0.1", "::ffff:c000:201", "::ffff:1.2.3"])
    expect(unmappedAddress(other)).toBe(other);
});
