/**
 * API key and TLS, through real processes: the right key works end to end, a wrong or missing key is
 * one clear line and no tunnel; a self-signed certificate (made with openssl at test time) is refused
 * by default and accepted with --ca or --insecure, and bytes cross wss intact.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type ClientProcess,
  defer,
  echoThrough,
  eventually,
  expectOneLineError,
  type LocalService,
  makeCertificate,
  randomData,
  runToExit,
  type ServerProcess,
  setupFile,
  sha256,
  startClientProcess,
  startEchoService,
  startServerProcess,
} from "./helpers.ts";

setupFile();

const CLIENT = ["bun", "client.ts"];

/** Sends 1 MiB through the tunnel and back; asserts the sha256 and that the client is still up. */
async function expectEcho(client: ClientProcess): Promise<void> {
  const data = randomData(1024 * 1024);
  expect(await echoThrough((client.tunnels[0] as { port: number }).port, data)).toBe(sha256(data));
  expect(client.proc.exitCode).toBeNull();
}

/** Stops a client that worked and waits until the server has dropped its tunnel. */
async function stopClient(client: ClientProcess, server: ServerProcess): Promise<void> {
  client.kill("SIGINT");
  expect(await client.exited(5000)).toBe(0);
  await eventually(async () => (await server.health()).tunnels === 0, 5000, "tunnel released");
}

describe("API key", () => {
  const key = `key-${crypto.randomUUID()}`;
  let service: LocalService;
  let server: ServerProcess;

  beforeAll(async () => {
    service = startEchoService();
    server = await startServerProcess([], { SOCKETS_SINGLE_API_KEY: key });
    // With a key set, the server does not warn about running without one.
    expect(server.stderr()).not.toMatch(/no SOCKETS_SINGLE_API_KEY/);
  });

  test("the right key: tunnel up, echo intact", async () => {
    const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`], [], {
      SOCKETS_API_KEY: key,
    });
    expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1 });
    await expectEcho(client);
    await stopClient(client, server);
  });

  for (const [name, env] of [
    ["a wrong key", { SOCKETS_API_KEY: `${key}x` }],
    ["no key", {}],
  ] as const)
    test(`${name}: one clear line, exit non-zero, no tunnel on the server`, async () => {
      const before = await server.health();
      const result = await runToExit(
        [...CLIENT, "--server", server.url, "--expose", `127.0.0.1:${service.port}`],
        env,
      );
      expectOneLineError(result, /rejected the API key.*authentication failed/);
      expect(await server.health()).toMatchObject({ clients: before.clients, tunnels: before.tunnels });
    });
});

describe("TLS with a self-signed certificate", () => {
  let dir: string;
  let cert: string;
  let otherCert: string;
  let service: LocalService;
  let server: ServerProcess;
  let wss: string;

  /** A self-signed certificate for localhost and 127.0.0.1; returns [cert, key]. */
  const selfSigned = (name: string) => makeCertificate(dir, name, "DNS:localhost,IP:127.0.0.1");

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "sockets-tls-"));
    defer(() => rmSync(dir, { recursive: true, force: true }));
    const [certFile, keyFile] = await selfSigned("server");
    cert = certFile;
    [otherCert] = await selfSigned("other");
    service = startEchoService();
    server = await startServerProcess(["--tls-cert", certFile, "--tls-key", keyFile]);
    expect(server.url).toStartWith("wss://");
    wss = server.url;
  });

  test("refused by default: one clear TLS line, exit non-zero, no tunnel", async () => {
    const result = await runToExit([...CLIENT, "--server", wss, "--expose", `127.0.0.1:${service.port}`]);
    expectOneLineError(result, /TLS verification of wss:\/\/127\.0\.0\.1:\d+ failed.*--ca FILE.*--insecure/);
    expect(await server.health()).toMatchObject({ clients: 0, tunnels: 0 });
  });

  test("refused with --ca naming another certificate", async () => {
    const result = await runToExit([
      ...CLIENT,
      "--server",
      wss,
      "--expose",
      `127.0.0.1:${service.port}`,
      "--ca",
      otherCert,
    ]);
    expectOneLineError(result, /TLS verification .* failed/);
  });

  test("plain ws:// to the TLS port fails with one line", async () => {
    const result = await runToExit([
      ...CLIENT,
      "--server",
      wss.replace("wss://", "ws://"),
      "--expose",
      `127.0.0.1:${service.port}`,
    ]);
    expectOneLineError(result, /server ws:\/\/127\.0\.0\.1:\d+/);
  });

  for (const host of ["127.0.0.1", "localhost"])
    test(`accepted with --ca cert.pem (${host}): echo over wss intact`, async () => {
      const client = await startClientProcess(
        wss.replace("127.0.0.1", host),
        [`127.0.0.1:${service.port}`],
        ["--ca", cert],
      );
      expect(client.stderr()).not.toMatch(/WARNING/);
      await expectEcho(client);
      await stopClient(client, server);
    });

  test("accepted with --insecure, which prints a warning: echo over wss intact", async () => {
    const client = await startClientProcess(wss, [`127.0.0.1:${service.port}`], ["--insecure"]);
    expect(client.stderr()).toMatch(/WARNING: --insecure: .*NOT verified/);
    await expectEcho(client);
    await stopClient(client, server);
  });

  test("TLS and an API key together", async () => {
    const key = `key-${crypto.randomUUID()}`;
    const [certFile, keyFile] = [cert, cert.replace(/\.pem$/, ".key")];
    const keyed = await startServerProcess(["--tls-cert", certFile, "--tls-key", keyFile], {
      SOCKETS_SINGLE_API_KEY: key,
    });
    const refused = await runToExit(
      [...CLIENT, "--server", keyed.url, "--expose", `127.0.0.1:${service.port}`, "--ca", cert],
      { SOCKETS_API_KEY: "wrong" },
    );
    expectOneLineError(refused, /rejected the API key/);
    const client = await startClientProcess(keyed.url, [`127.0.0.1:${service.port}`], ["--ca", cert], {
      SOCKETS_API_KEY: key,
    });
    await expectEcho(client);
  });
});
