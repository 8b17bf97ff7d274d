/**
 * End-to-end TLS tunnels: `--tls-passthrough` publishes a local TLS service at NAME.DOMAIN on the
 * server's `--https-port`, routed by the ClientHello's name and never decrypted: visitors see the
 * service's own certificate. Beside it, on the same port, an HTTP tunnel is terminated with the
 * server's wildcard; unknown names get a TLS alert; a ClientHello dribbled a byte at a time or one
 * without a name never holds the port.
 */

import { describe, expect, test } from "bun:test";
import { createHash, X509Certificate } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { join } from "node:path";
import tls from "node:tls";
import { MiB, randomData, sha256 } from "../support/hashing.ts";
import { HTTPS_DOMAIN, type HttpsFront, startHttpsFront } from "../support/https-front.ts";
import { runToExit, setupFile, withTimeout } from "../support/processes.ts";
import { hashBodyResponse } from "../support/services.ts";

setupFile();

const DOMAIN = HTTPS_DOMAIN;

type Setup = HttpsFront;

/** A server with an HTTPS port and a wildcard; a local HTTPS service published end to end as `secure`; a plain app as `plain`. */
function start(): Promise<Setup> {
  return startHttpsFront(
    (req) => {
      const url = new URL(req.url);
      if (url.pathname === "/sha256") return hashBodyResponse(req);
      if (url.pathname === "/bytes") return new Response(pattern(Number(url.searchParams.get("n"))));
      return new Response("hello from the TLS service");
    },
    () => new Response("hello from plain"),
  );
}

/** `size` bytes of a fixed pattern. */
function pattern(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 7 + (i >>> 13)) & 0xff;
  return bytes;
}

function curlArgs(setup: Setup, host: string, ca: string, path: string, extra: string[] = []): string[] {
  return [
    "curl",
    "-sS",
    "--max-time",
    "60",
    "--resolve",
    `${host}:${setup.httpsPort}:127.0.0.1`,
    "--cacert",
    ca,
    ...extra,
    `https://${host}:${setup.httpsPort}${path}`,
  ];
}

/** The first bytes a TLS client sends for `servername` (undefined: no SNI): its ClientHello. */
async function clientHello(servername: string | undefined): Promise<Uint8Array> {
  let captured: Uint8Array | undefined;
  const capture = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(socket, chunk) {
        captured ??= chunk.slice();
        socket.terminate();
      },
    },
  });
  try {
    const socket = tls.connect({
      host: "127.0.0.1",
      port: capture.port,
      servername,
      rejectUnauthorized: false,
    });
    socket.on("error", () => {});
    await withTimeout(
      (async () => {
        while (captured === undefined) await Bun.sleep(10);
      })(),
      5000,
      "ClientHello",
    );
    socket.destroy();
  } finally {
    capture.stop(true);
  }
  return captured as Uint8Array;
}

describe("end-to-end TLS tunnels", () => {
  test("curl sees the service's certificate, not the server's; 64 MiB each way intact; a terminated tunnel beside it; unknown names get an alert", async () => {
    const setup = await start();
    // Trusting only the service's certificate: the handshake is the service's own.
    const hello = await runToExit(curlArgs(setup, `secure.${DOMAIN}`, setup.serviceCert, "/"));
    expect(hello.stdout).toBe("hello from the TLS service");
    // And the server's wildcard does not verify it (it is not the server's certificate).
    const wrongCa = await runToExit(curlArgs(setup, `secure.${DOMAIN}`, setup.wildcard, "/"));
    expect(wrongCa.code).not.toBe(0);
    const peer = await new Promise<X509Certificate>((resolve, reject) => {
      const socket = tls.connect({
        host: "127.0.0.1",
        port: setup.httpsPort,
        servername: `secure.${DOMAIN}`,
        ca: readFileSync(setup.serviceCert, "utf8"),
      });
      socket.once("secureConnect", () => {
        resolve(new X509Certificate(socket.getPeerX509Certificate()?.raw as Buffer));
        socket.destroy();
      });
      socket.once("error", reject);
    });
    expect(peer.fingerprint256).toBe(new X509Certificate(readFileSync(setup.serviceCert)).fingerprint256);

    // 64 MiB up (hashed by the service) and 64 MiB down (hashed here).
    const size = 64 * MiB;
    const upload = randomData(size);
    const uploadFile = join(setup.dir, "upload");
    writeFileSync(uploadFile, upload);
    const up = await runToExit(
      curlArgs(setup, `secure.${DOMAIN}`, setup.serviceCert, "/sha256", ["--data-binary", `@${uploadFile}`]),
      {},
      60_000,
    );
    expect(JSON.parse(up.stdout)).toEqual({ bytes: size, sha256: sha256(upload) });
    const downloadFile = join(setup.dir, "download");
    const down = await runToExit(
      curlArgs(setup, `secure.${DOMAIN}`, setup.serviceCert, `/bytes?n=${size}`, ["-o", downloadFile]),
      {},
      60_000,
    );
    expect(down.stderr).toBe("");
    const hash = createHash("sha256").update(readFileSync(downloadFile)).digest("hex");
    expect(hash).toBe(sha256(pattern(size)));

    // The terminated HTTP tunnel on the same port, with the server's wildcard.
    const plain = await runToExit(curlArgs(setup, `plain.${DOMAIN}`, setup.wildcard, "/"));
    expect(plain.stdout).toBe("hello from plain");

    // A name outside every certificate and tunnel: a TLS alert, and one line naming it.
    const stranger = await runToExit(curlArgs(setup, "nobody.example.org", setup.wildcard, "/"));
    expect(stranger.code).not.toBe(0);
    expect(stranger.stderr).toMatch(/unrecognized name|alert/i);
    await setup.server.waitFor(/no tunnel or certificate for nobody\.example\.org/);
  });

  test("a ClientHello dribbled a byte at a time is closed within the head timeout and holds nothing; one without SNI gets the default certificate", async () => {
    const setup = await start();
    const hello = await clientHello(`secure.${DOMAIN}`);
    const dribbler = tcpConnect({ host: "127.0.0.1", port: setup.httpsPort });
    let closed = false;
    dribbler.on("close", () => {
      closed = true;
    });
    dribbler.on("error", () => {});
    const started = performance.now();
    let sent = 0;
    const timer = setInterval(() => {
      if (sent < hello.length - 1 && !closed) dribbler.write(hello.subarray(sent, ++sent));
    }, 100);
    try {
      // Meanwhile the port serves others at once.
      const plain = await runToExit(curlArgs(setup, `plain.${DOMAIN}`, setup.wildcard, "/"));
      expect(plain.stdout).toBe("hello from plain");
      const through = await runToExit(curlArgs(setup, `secure.${DOMAIN}`, setup.serviceCert, "/"));
      expect(through.stdout).toBe("hello from the TLS service");
      await withTimeout(
        (async () => {
          while (!closed) await Bun.sleep(20);
        })(),
        6000,
        "the dribbler closed",
      );
      // Within --request-timeout 2 (the sweep adds at most 0.25 s), or sooner at 32 reads without a
      // whole ClientHello; it never completed one.
      expect(performance.now() - started).toBeLessThan(5000);
      expect(sent).toBeLessThan(hello.length - 1);
    } finally {
      clearInterval(timer);
      dribbler.destroy();
    }
    // No SNI: the server's default certificate (the wildcard) answers at once.
    const anonymous = await new Promise<string>((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port: setup.httpsPort, rejectUnauthorized: false });
      socket.once("secureConnect", () => {
        resolve(socket.getPeerX509Certificate()?.fingerprint256 ?? "");
        socket.destroy();
      });
      socket.once("error", reject);
    });
    expect(anonymous).toBe(new X509Certificate(readFileSync(setup.wildcard)).fingerprint256);
  });
});
