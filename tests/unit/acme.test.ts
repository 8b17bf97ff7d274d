/**
 * The HTTPS side's pure parts: the ClientHello reader (real ClientHellos from node:tls, split at every
 * byte, truncated, oversized, not TLS), the certificate store's choice by name (own, wildcard,
 * operator's; never an expired or revoked one) and its private files, and the custom-domain patterns.
 */

import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import * as fc from "fast-check";
import { CertificateStore, covers } from "../../shared/server/acme/certificates.ts";
import { MAX_CLIENT_HELLO, readClientHello } from "../../shared/server/acme/client-hello.ts";
import { customHost, hostnameAllowed, validHostPattern } from "../../shared/server/acme/hostnames.ts";
import { listenTlsFront } from "../../shared/server/acme/tls-front.ts";
import { HeadBudget } from "../../shared/server/http-ingress.ts";
import { makeCertificate } from "../support/certificates.ts";
import { withTimeout } from "../support/processes.ts";

/** The ClientHello node:tls sends for these options (captured by a listener that never answers). */
async function capture(options: tls.ConnectionOptions): Promise<Uint8Array> {
  let first: Uint8Array | undefined;
  const listener = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(socket, chunk) {
        first ??= chunk.slice();
        socket.terminate();
      },
    },
  });
  try {
    const socket = tls.connect({
      host: "127.0.0.1",
      port: listener.port,
      rejectUnauthorized: false,
      ...options,
    });
    socket.on("error", () => {});
    await withTimeout(
      (async () => {
        while (first === undefined) await Bun.sleep(5);
      })(),
      5000,
      "ClientHello",
    );
    socket.destroy();
  } finally {
    listener.stop(true);
  }
  return first as Uint8Array;
}

describe("readClientHello", () => {
  test("a real ClientHello: its name and ALPN; incomplete at every shorter prefix", async () => {
    const hello = await capture({ servername: "Api.Example.COM", ALPNProtocols: ["acme-tls/1", "http/1.1"] });
    expect(readClientHello(hello)).toEqual({
      status: "done",
      hello: { serverName: "api.example.com", alpn: ["acme-tls/1", "http/1.1"] },
    });
    for (let n = 0; n < hello.length; n++) expect(readClientHello(hello.subarray(0, n)).status).toBe("more");
  });

  test("without SNI and ALPN: no name, no protocols", async () => {
    const hello = await capture({});
    expect(readClientHello(hello)).toEqual({ status: "done", hello: { alpn: [] } });
  });

  test("one handshake split over many records is reassembled", async () => {
    const hello = await capture({ servername: "split.example" });
    const body = hello.subarray(5);
    // Re-frame the handshake bytes as records of 7 bytes each.
    const records: number[] = [];
    for (let at = 0; at < body.length; at += 7) {
      const piece = body.subarray(at, at + 7);
      records.push(0x16, 0x03, 0x01, 0, piece.length, ...piece);
    }
    const read = readClientHello(Uint8Array.from(records));
    expect(read).toMatchObject({ status: "done", hello: { serverName: "split.example" } });
  });

  test("not TLS, a record too long, a huge announced ClientHello: bad at once", () => {
    expect(readClientHello(new TextEncoder().encode("GET / HTTP/1.1\r\n")).status).toBe("bad");
    expect(readClientHello(Uint8Array.of(0x16, 0x03, 0x01, 0xff, 0xff)).status).toBe("bad");
    expect(readClientHello(Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff)).status).toBe(
      "bad",
    );
    expect(readClientHello(Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0)).status).toBe("bad");
  });

  test("property: any bytes are read without throwing, within the bound", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.boolean(), (bytes, asRecord) => {
        const input = asRecord
          ? Uint8Array.of(0x16, 0x03, 0x01, bytes.length >> 8, bytes.length & 0xff, ...bytes)
          : bytes;
        const read = readClientHello(input);
        expect(["more", "done", "bad"]).toContain(read.status);
      }),
    );
    // Never "more" past the bound.
    const big = new Uint8Array(MAX_CLIENT_HELLO + 10);
    big.set([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc]);
    expect(readClientHello(big).status).not.toBe("more");
  });
});

describe("CertificateStore", () => {
  test("own certificate first, then a wildcard, then the operator's; files private; reloaded from disk", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sockets-acme-unit-"));
    try {
      const [ownCert, ownKey] = await makeCertificate(dir, "own", "DNS:a.tunnel.test");
      const [wildCert, wildKey] = await makeCertificate(dir, "wild", "DNS:*.tunnel.test");
      const [opCert, opKey] = await makeCertificate(dir, "op", "DNS:*.other.test");
      const read = (file: string) => Bun.file(file).text();
      const acmeDir = join(dir, "acme");
      const store = new CertificateStore(acmeDir);
      store.addOperator(await read(opCert), await read(opKey));
      const own = store.put("a.tunnel.test", await read(ownCert), await read(ownKey));
      const wild = store.put("*.tunnel.test", await read(wildCert), await read(wildKey));
      expect(store.select("a.tunnel.test")).toBe(own);
      expect(store.select("b.tunnel.test")).toBe(wild);
      expect(store.select("x.other.test")?.source).toBe("operator");
      expect(store.select("x.y.other.test")).toBeUndefined();
      expect(store.select(undefined)?.source).toBe("operator");
      // An expired own certificate yields to the wildcard; nothing expired is ever chosen.
      const later = own.notAfter + 1000;
      expect(store.select("a.tunnel.test", later)).toBeUndefined();
      expect(store.select("a.tunnel.test", own.notBefore + 1)).toBe(own);
      expect(statSync(acmeDir).mode & 0o777).toBe(0o700);
      expect(statSync(join(acmeDir, "certificates", "a.tunnel.test.key")).mode & 0o777).toBe(0o600);
      expect(statSync(join(acmeDir, "certificates", "_wildcard_.tunnel.test.key")).mode & 0o777).toBe(0o600);
      const again = new CertificateStore(acmeDir);
      expect(again.load(() => {}).sort()).toEqual(["*.tunnel.test", "a.tunnel.test"]);
      expect(again.select("c.tunnel.test")?.names).toEqual(["*.tunnel.test"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a revoked certificate is never chosen: its name falls back to the wildcard, the operator's, else nothing", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sockets-acme-unit-"));
    try {
      const [ownCert, ownKey] = await makeCertificate(dir, "own", "DNS:a.tunnel.test");
      const [wildCert, wildKey] = await makeCertificate(dir, "wild", "DNS:*.tunnel.test");
      const [opCert, opKey] = await makeCertificate(dir, "op", "DNS:*.tunnel.test");
      const read = (file: string) => Bun.file(file).text();
      const store = new CertificateStore(undefined);
      const operator = store.addOperator(await read(opCert), await read(opKey));
      const own = store.put("a.tunnel.test", await read(ownCert), await read(ownKey));
      const wild = store.put("*.tunnel.test", await read(wildCert), await read(wildKey));
      expect(store.select("a.tunnel.test")).toBe(own);
      const version = store.version;
      store.revoke(own, "OCSP at http://127.0.0.1:1/");
      // The TLS front sees a new version and retires the revoked certificate's listener.
      expect(store.version).toBeGreaterThan(version);
      expect(store.isCurrent(own)).toBe(false);
      expect(store.select("a.tunnel.test")).toBe(wild);
      store.revoke(wild, "CRL at http://127.0.0.1:1/ca.crl");
      expect(store.select("a.tunnel.test")).toBe(operator);
      store.revoke(operator, "OCSP at http://127.0.0.1:1/");
      expect(store.select("a.tunnel.test")).toBeUndefined();
      expect(store.select(undefined)).toBeUndefined();
      expect(store.soonestExpiry()).toBeUndefined();
      // A new certificate for the name (the order after the revocation) is served again.
      const renewed = store.put("a.tunnel.test", await read(ownCert), await read(ownKey));
      expect(store.select("a.tunnel.test")).toBe(renewed);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("covers: exact names, and a wildcard for one label only", () => {
    expect(covers("a.b", "a.b")).toBe(true);
    expect(covers("*.b.c", "a.b.c")).toBe(true);
    expect(covers("*.b.c", "b.c")).toBe(false);
    expect(covers("*.b.c", "x.a.b.c")).toBe(false);
  });
});

describe("custom domains", () => {
  const alice = { name: "alice", limits: { hostnames: ["*.alice.dev", "api.example.com"] } };
  const bob = { name: "bob", limits: {} };

  test("patterns: one label for `*.`; exact names", () => {
    expect(hostnameAllowed("x.alice.dev", alice.limits.hostnames)).toBe(true);
    expect(hostnameAllowed("alice.dev", alice.limits.hostnames)).toBe(false);
    expect(hostnameAllowed("a.b.alice.dev", alice.limits.hostnames)).toBe(false);
    expect(hostnameAllowed("api.example.com", alice.limits.hostnames)).toBe(true);
    expect(validHostPattern("*.example.com")).toBe(true);
    expect(validHostPattern("a.*.example.com")).toBe(false);
    expect(validHostPattern("localhost")).toBe(false);
  });

  test("a claim: allowed, refused with the rule named, or sent back to --subdomain", () => {
    expect(customHost(undefined, "tunnel.test", alice, undefined)).toBeUndefined();
    expect(customHost("X.alice.dev.", "tunnel.test", alice, undefined)).toBe("x.alice.dev");
    expect(customHost("evil.com", "tunnel.test", alice, undefined)).toEqual({
      code: "not_allowed",
      message:
        "custom domain 'evil.com' is not allowed for user alice (allowed: *.alice.dev, api.example.com)",
    });
    expect(customHost("x.alice.dev", "tunnel.test", bob, undefined)).toMatchObject({ code: "not_allowed" });
    expect(customHost("demo.tunnel.test", "tunnel.test", alice, undefined)).toMatchObject({
      code: "bad_hostname",
      message: "host name 'demo.tunnel.test' is under tunnel.test: ask for it with --subdomain demo",
    });
    expect(customHost("api.example.com", "tunnel.test", undefined, ["api.example.com"])).toBe(
      "api.example.com",
    );
    expect(customHost("api.example.com", "tunnel.test", undefined, undefined)).toMatchObject({
      message: "custom domain 'api.example.com' is not allowed for this server (no --custom-domains)",
    });
    expect(customHost("bad_name.com", "tunnel.test", alice, undefined)).toMatchObject({
      code: "bad_hostname",
    });
  });
});

describe("the HTTPS front", () => {
  test("incomplete ClientHellos count against the server's head budget: past it, an alert; released on close", async () => {
    const heads = new HeadBudget(1000);
    const logs: string[] = [];
    const log = {
      info: (line: string) => logs.push(line),
      warn: (line: string) => logs.push(line),
      error: (line: string) => logs.push(line),
    };
    const front = listenTlsFront({
      host: "127.0.0.1",
      port: 0,
      headTimeoutSeconds: 5,
      certificates: new CertificateStore(),
      passthrough: () => undefined,
      alpnCertificate: () => undefined,
      http: { domain: "tunnel.test", route: () => undefined, heads },
      log: log as never,
    });
    try {
      // A record header announcing 2000 bytes, then 600 of them: incomplete, 605 bytes held.
      const partial = new Uint8Array(605);
      partial.set([0x16, 0x03, 0x01, 0x07, 0xd0, 0x01, 0x00, 0x07, 0xcc]);
      const connect = () => {
        const received: number[] = [];
        let closed = false;
        const socket = tcpConnect({ host: "127.0.0.1", port: front.port });
        socket.on("data", (chunk: Buffer) => received.push(...chunk));
        socket.on("close", () => {
          closed = true;
        });
        socket.on("error", () => {});
        return { socket, received, closed: () => closed };
      };
      const first = connect();
      first.socket.write(partial);
      await waitUntil(() => heads.used === 605);
      const second = connect();
      second.socket.write(partial);
      await waitUntil(() => second.closed());
      // The second gets a fatal alert (internal_error) and the budget is back to the first's bytes.
      expect(second.received.slice(0, 7)).toEqual([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80]);
      expect(heads.used).toBe(605);
      expect(
        logs.some((line) => /incomplete ClientHellos and heads hold 1210 bytes \(limit 1000\)/.test(line)),
      ).toBe(true);
      first.socket.destroy();
      await waitUntil(() => heads.used === 0);
    } finally {
      front.stop(true);
    }
  });
});

/** Polls `check` every 10 ms for at most 3 s. */
async function waitUntil(check: () => boolean): Promise<void> {
  await withTimeout(
    (async () => {
      while (!check()) await Bun.sleep(10);
    })(),
    3000,
    "condition",
  );
}
