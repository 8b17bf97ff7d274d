/**
 * API key and TLS, through real processes: the right key works end to end, a wrong or missing key is
 * one clear line and no tunnel; a self-signed certificate (made with openssl at test time) is refused
 * by default and accepted with --ca or --insecure, and bytes cross wss intact.
 */

import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CONNECT_PATH } from "../../shared/wire/protocol.ts";
import { makeCertificate } from "../support/certificates.ts";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  type ClientProcess,
  defer,
  eventually,
  expectOneLineError,
  ROOT,
  runToExit,
  type ServerProcess,
  setupFile,
  spawnRole,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { type LocalService, startEchoService } from "../support/services.ts";
import { echoThrough } from "../support/sockets.ts";

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

  for (const [name, env, line] of [
    [
      "a wrong key",
      { SOCKETS_API_KEY: `${key}x` },
      /rejected the API key: authentication failed: wrong API key$/,
    ],
    ["no key", {}, /wants an API key and none was sent: set SOCKETS_API_KEY$/],
  ] as const)
    test(`${name}: one clear line, exit non-zero, no tunnel on the server`, async () => {
      const before = await server.health();
      const result = await runToExit(
        [...CLIENT, "--server", server.url, "--expose", `127.0.0.1:${service.port}`],
        env,
      );
      expectOneLineError(result, line);
      expect(await server.health()).toMatchObject({ clients: before.clients, tunnels: before.tunnels });
    });
});

test("each wrong key counts once toward --auth-fail-limit: the client's explanation is no second attempt", async () => {
  const key = `key-${crypto.randomUUID()}`;
  const service = startEchoService();
  const server = await startServerProcess(["--auth-fail-limit", "6", "--admin", "127.0.0.1:0"], {
    SOCKETS_SINGLE_API_KEY: key,
  });
  const admin = (await server.waitFor(/admin on (http:\/\/\S+)\//))[1] as string;
  const failures = async () => {
    const text = await (await fetch(`${admin}/metrics`)).text();
    return Number(/^sockets_auth_failures_total (\d+)$/m.exec(text)?.[1]);
  };
  // Five typos: five failures (each client asks again over HTTP to learn why; that is not counted).
  for (let typo = 1; typo <= 5; typo++) {
    const result = await runToExit([...CLIENT, "--server", server.url, "--expose", `${service.port}`], {
      SOCKETS_API_KEY: `${key}-${typo}`,
    });
    expectOneLineError(result, /rejected the API key: authentication failed: wrong API key$/);
  }
  expect(await failures()).toBe(5);
  // Under the limit of 6: the right key still gets in.
  const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`], [], {
    SOCKETS_API_KEY: key,
  });
  await expectEcho(client);
  await stopClient(client, server);
  // A plain request to the upgrade path, with a key, is never checked: it cannot be used to try keys.
  for (let i = 0; i < 8; i++) {
    const probe = await fetch(`${server.url.replace("ws:", "http:")}${CONNECT_PATH}`, {
      headers: { authorization: "Bearer guess" },
    });
    expect(probe.status).toBe(400);
  }
  expect(await failures()).toBe(5);
});

test("wss:// to a plain server, even with --insecure: one line naming the scheme ws://", async () => {
  const server = await startServerProcess();
  const wss = server.url.replace("ws://", "wss://");
  const result = await runToExit([...CLIENT, "--server", wss, "--expose", "80", "--insecure"]);
  expect(result.code, result.stderr).toBe(1);
  expect(result.stdout).toBe("");
  // The --insecure warning, then the error, which advises neither --insecure nor --ca.
  const lines = result.stderr.trim().split("\n");
  expect(lines).toHaveLength(2);
  expect(lines[0]).toMatch(/WARNING: --insecure/);
  expect(lines[1]).toBe(
    `error: server ${wss} speaks plain ws://, not TLS (wss://): use --server ${server.url}`,
  );
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

  test("plain ws:// to the TLS port: one line naming the scheme wss://", async () => {
    const result = await runToExit([
      ...CLIENT,
      "--server",
      wss.replace("wss://", "ws://"),
      "--expose",
      `127.0.0.1:${service.port}`,
    ]);
    expectOneLineError(
      result,
      /^error: server ws:\/\/127\.0\.0\.1:(\d+) expects TLS \(wss:\/\/\), not plain ws:\/\/: use --server wss:\/\/127\.0\.0\.1:\1$/,
    );
  });

  test("--ca trusted, but the certificate is for another name: names the names it holds", async () => {
    // The same kind of certificate, for localhost only: 127.0.0.1 is not among its names.
    const [certFile, keyFile] = await makeCertificate(dir, "named", "DNS:localhost");
    const named = await startServerProcess(["--tls-cert", certFile, "--tls-key", keyFile]);
    const result = await runToExit([
      ...CLIENT,
      "--server",
      named.url,
      "--expose",
      `127.0.0.1:${service.port}`,
      "--ca",
      certFile,
    ]);
    expectOneLineError(
      result,
      new RegExp(
        `^error: the certificate of wss://127\\.0\\.0\\.1:${named.port} is for DNS:localhost, not 127\\.0\\.0\\.1: name the server by one of those in --server \\(e\\.g\\. wss://localhost:${named.port}\\), or give the server a certificate for 127\\.0\\.0\\.1$`,
      ),
    );
    expect(result.stderr).not.toContain("--ca");
    // …and the advice works.
    const client = await startClientProcess(
      `wss://localhost:${named.port}`,
      [`127.0.0.1:${service.port}`],
      ["--ca", certFile],
    );
    await expectEcho(client);
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
    // On stderr; startClientProcess waited for the exposed line on stdout (another pipe).
    await client.waitFor(/WARNING: --insecure: .*NOT verified/, 5000);
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

test("README's TLS recipe runs as written on one machine (free ports in place of 7443 and 8080)", async () => {
  if (!Bun.which("curl")) throw new Error("curl is not installed (apt-get install curl)");
  const readme = await Bun.file(join(ROOT, "README.md")).text();
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(readme.indexOf("\n## TLS\n")))?.[1] ?? "";
  const commands = block
    .replace(/\\\n\s*/g, "")
    .split("\n")
    .map((line) => line.replace(/\s+#.*$/, "").trim());
  const find = (prefix: string) => {
    const line = commands.find((c) => c.startsWith(prefix));
    if (line === undefined) throw new Error(`README's TLS recipe has no '${prefix}' line`);
    return line;
  };
  const dir = mkdtempSync(join(tmpdir(), "sockets-recipe-"));
  defer(() => rmSync(dir, { recursive: true, force: true }));
  const inDir = (line: string) => [
    "sh",
    "-c",
    `cd '${dir}' && exec ${line.replace(/ (server|client)\.ts /, ` '${ROOT}/$1.ts' `)}`,
  ];

  // The recipe keeps its files in $TLS (outside the checkout): here, the temp folder.
  expect(find("TLS=")).toStartWith("TLS=~/.config/sockets-tls && mkdir -p $TLS");
  const env = { TLS: dir };
  const made = await runToExit(inDir(find("openssl req ")), env);
  expect(made.code, made.stderr).toBe(0);
  const web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("hello\n") });
  defer(() => web.stop(true));
  const server = spawnRole(inDir(find("bun server.ts ").replace("--port 7443", "--port 0")), env);
  const port = Number((await server.waitFor(/listening on wss:\/\/\S+:(\d+)/))[1]);
  const client = spawnRole(
    inDir(find("bun client.ts ").replaceAll(":7443", `:${port}`).replace(":8080", `:${web.port}`)),
    env,
  );
  await client.waitFor(
    new RegExp(`exposed with tunnel id \\S+, url: https://demo\\.tunnel\\.localhost:${port}`),
  );
  const visitor = await runToExit(inDir(find("curl ").replaceAll(":7443", `:${port}`)), env);
  // Nothing was written where the commands ran from but into $TLS.
  expect(readdirSync(dir).sort()).toEqual(["cert.pem", "key.pem"]);
  expect(visitor, visitor.stderr).toMatchObject({ code: 0, stdout: "hello\n" });
});
