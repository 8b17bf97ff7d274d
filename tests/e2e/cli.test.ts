/**
 * The command-line contract, each case as a real process: bad input is one clear line on stderr, a
 * non-zero exit within seconds and no stack trace; --help prints usage; signals shut down with exit 0;
 * the API key never appears in the server's output.
 */

import { describe, expect, test } from "bun:test";
import { randomData, sha256 } from "../support/hashing.ts";
import {
  eventually,
  expectOneLineError,
  runToExit,
  setupFile,
  spawnRole,
  startClientProcess,
  startServerProcess,
} from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { echoThrough, freePort } from "../support/sockets.ts";

setupFile();

const SERVER = ["bun", "server.ts"];
const CLIENT = ["bun", "client.ts"];

describe("server: bad input", () => {
  const cases: [string, string[], RegExp][] = [
    ["unknown flag", ["--bogus"], /^error: unknown option --bogus \(see --help\)$/],
    ["empty --tcp-ports", ["--tcp-ports", ""], /--tcp-ports: '' is not a range/],
    ["reversed --tcp-ports", ["--tcp-ports", "5000-4000"], /--tcp-ports: range 5000-4000 is empty/],
    ["--port out of range", ["--port", "70000"], /--port: '70000' is not a port/],
    [
      "missing --tls-cert file",
      ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
      /--tls-cert: cannot read '\/nonexistent\/cert\.pem': ENOENT/,
    ],
    [
      "--tls-cert that is a directory",
      ["--tls-cert", "/", "--tls-key", "/"],
      /--tls-cert: cannot read '\/': EISDIR/,
    ],
    ["--tls-cert without --tls-key", ["--tls-cert", "/nonexistent/cert.pem"], /--tls-cert and --tls-key/],
    [
      "--tls-cert that is not PEM",
      ["--tls-cert", "package.json", "--tls-key", "package.json"],
      /--tls-cert: 'package\.json' holds no PEM certificate/,
    ],
  ];
  for (const [name, args, pattern] of cases)
    test(name, async () => {
      expectOneLineError(
        await runToExit([...SERVER, "--host", "127.0.0.1", "--port", "0", ...args]),
        pattern,
      );
    });

  test("--port already taken", async () => {
    const holder = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const result = await runToExit([...SERVER, "--host", "127.0.0.1", "--port", String(holder.port)]);
      expectOneLineError(result, new RegExp(`port ${holder.port}.*in use`));
    } finally {
      holder.stop(true);
    }
  });
});

describe("client: bad input", () => {
  const cases: [string, string[], RegExp][] = [
    [
      "unknown flag",
      ["--expose", "127.0.0.1:80", "--bogus"],
      /^error: unknown option --bogus \(see --help\)$/,
    ],
    [
      "no --expose",
      [],
      /--expose HOST:PORT, --http HOST:PORT, --expose-udp HOST:PORT or --tls-passthrough HOST:PORT is required/,
    ],
    [
      "--subdomain that is not a DNS label",
      ["--http", "3000", "--subdomain", "UPPER"],
      /--subdomain: 'UPPER'/,
    ],
    ["--subdomain without --http", ["--expose", "3000", "--subdomain", "a"], /more times than --http/],
    ["--host-header neither mode", ["--http", "3000", "--host-header", "keep"], /--host-header: 'keep'/],
    [
      "--basic-auth without a password",
      ["--http", "3000", "--basic-auth", "alice"],
      /--basic-auth: expected USER:PASSWORD/,
    ],
    ["--expose without a value", ["--expose"], /--expose/],
    ["--expose without a port", ["--expose", "localhost"], /--expose: 'localhost' is not HOST:PORT/],
    ["--expose with port 0", ["--expose", "127.0.0.1:0"], /--expose: '0' is not a port/],
    ["--expose with port 70000", ["--expose", "127.0.0.1:70000"], /--expose: '70000' is not a port/],
    [
      "--expose host that does not resolve",
      ["--expose", "no-such-host.invalid:80"],
      /--expose: cannot resolve host 'no-such-host\.invalid'/,
    ],
    [
      "--server with http://",
      ["--expose", "127.0.0.1:80", "--server", "http://localhost:7070"],
      /--server: 'http:\/\/localhost:7070' must start with ws:\/\/ or wss:\/\//,
    ],
    [
      "--server without a scheme",
      ["--expose", "127.0.0.1:80", "--server", "localhost:7070"],
      /--server: 'localhost:7070' must start with ws:\/\//,
    ],
    [
      "--server that is not a URL",
      ["--expose", "127.0.0.1:80", "--server", "not a url"],
      /--server: 'not a url' is not a URL/,
    ],
    ["--port 0", ["--expose", "127.0.0.1:80", "--port", "0"], /--port: '0' is not a port/],
    [
      "more --port than --expose",
      ["--expose", "127.0.0.1:80", "--port", "5000", "--port", "5001"],
      /--port given more times than --expose/,
    ],
    [
      "missing --ca file",
      ["--expose", "127.0.0.1:80", "--server", "wss://127.0.0.1:1", "--ca", "/nonexistent/ca.pem"],
      /--ca: cannot read '\/nonexistent\/ca\.pem'/,
    ],
  ];
  for (const [name, args, pattern] of cases)
    test(name, async () => {
      expectOneLineError(await runToExit([...CLIENT, ...args]), pattern);
    });

  test("server unreachable: fails fast", async () => {
    const port = freePort();
    const result = await runToExit([
      ...CLIENT,
      "--expose",
      "127.0.0.1:80",
      "--server",
      `ws://127.0.0.1:${port}`,
    ]);
    expectOneLineError(
      result,
      new RegExp(`cannot reach server ws://127\\.0\\.0\\.1:${port}: connection refused`),
      3000,
    );
  });

  test("SOCKETS_SERVER is used when --server is absent", async () => {
    const port = freePort();
    const result = await runToExit([...CLIENT, "--expose", "127.0.0.1:80"], {
      SOCKETS_SERVER: `ws://127.0.0.1:${port}`,
    });
    expectOneLineError(result, new RegExp(`cannot reach server ws://127\\.0\\.0\\.1:${port}`), 3000);
  });

  test("a public port another tunnel already holds: port taken", async () => {
    const service = startEchoService();
    const server = await startServerProcess();
    const first = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
    const taken = (first.tunnels[0] as { port: number }).port;
    const result = await runToExit([
      ...CLIENT,
      "--server",
      server.url,
      "--expose",
      `127.0.0.1:${service.port}`,
      "--port",
      String(taken),
    ]);
    expectOneLineError(result, new RegExp(`server refused the tunnel: port ${taken} is already in use`));
    // The first tunnel is untouched and still carries traffic.
    const data = randomData(64 * 1024);
    expect(await echoThrough(taken, data)).toBe(sha256(data));
    expect(await server.health()).toMatchObject({ clients: 1, tunnels: 1 });
  });

  test("--port: the tunnel gets the public port asked for", async () => {
    const service = startEchoService();
    const server = await startServerProcess();
    const wanted = freePort();
    const client = await startClientProcess(
      server.url,
      [`127.0.0.1:${service.port}`],
      ["--port", String(wanted)],
    );
    expect(client.tunnels.map((t) => t.port)).toEqual([wanted]);
    const data = randomData(1000);
    expect(await echoThrough(wanted, data)).toBe(sha256(data));
  });
});

describe("allow, deny and PROXY protocol: bad input is one line and exit 2", () => {
  const cases: [string, string[], string[], RegExp][] = [
    [
      "client: a malformed CIDR",
      CLIENT,
      ["--expose", "80", "--allow", "10.0.0"],
      /^error: --allow: '10\.0\.0' is not an IP address or CIDR range \(e\.g\. 203\.0\.113\.0\/24/,
    ],
    [
      "client: an IPv4 /33",
      CLIENT,
      ["--expose", "80", "--deny", "10.0.0.0/33"],
      /^error: --deny: '10\.0\.0\.0\/33': \/33 is longer than an IPv4 address \(at most \/32\)$/,
    ],
    [
      "client: an IPv6 /129",
      CLIENT,
      ["--http", "80", "--allow", "2001:db8::/129"],
      /^error: --allow: '2001:db8::\/129': \/129 is longer than an IPv6 address \(at most \/128\)$/,
    ],
    [
      "client: an unknown PROXY protocol version",
      CLIENT,
      ["--expose", "80", "--proxy-protocol", "v3"],
      /^error: --proxy-protocol: 'v3' is not a PROXY protocol version \(v1 or v2\)$/,
    ],
    [
      "server: a malformed CIDR",
      [...SERVER, "--port", "0"],
      ["--allow", "localhost"],
      /^error: --allow: 'localhost' is not an IP address or CIDR range/,
    ],
    [
      "server: an IPv4 /33",
      [...SERVER, "--port", "0"],
      ["--deny", "127.0.0.1/33"],
      /^error: --deny: '127\.0\.0\.1\/33': \/33 is longer than an IPv4 address/,
    ],
  ];
  for (const [name, command, args, pattern] of cases)
    test(name, async () => {
      const result = await runToExit([...command, ...args]);
      expectOneLineError(result, pattern);
      expect(result.code).toBe(2);
    });
});

describe("--help", () => {
  for (const [role, cmd] of [
    ["server", SERVER],
    ["client", CLIENT],
  ] as const)
    for (const flag of ["--help", "-h"])
      test(`${role} ${flag} prints usage on stdout and exits 0`, async () => {
        const result = await runToExit([...cmd, flag]);
        expect(result.code).toBe(0);
        expect(result.stdout).toStartWith(`Usage: bun ${role}.ts`);
        expect(result.stdout).toContain("--help");
        expect(result.stderr).toBe("");
      });
});

describe("signals", () => {
  for (const signal of ["SIGTERM", "SIGINT"] as const)
    test(`server: ${signal} shuts down with exit 0; its client notices and keeps trying`, async () => {
      const service = startEchoService();
      const server = await startServerProcess();
      const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
      server.kill(signal);
      expect(await server.exited(5000)).toBe(0);
      // The client hears the going-away notice and keeps trying: the server may come back.
      await client.waitFor(/reconnecting/, 5000);
      expect(client.stderr()).toMatch(/server is shutting down/);
      expect(client.proc.exitCode).toBeNull();
    });

  for (const signal of ["SIGINT", "SIGTERM"] as const)
    test(`client: ${signal} exits 0 and the server drops its tunnel`, async () => {
      const service = startEchoService();
      const server = await startServerProcess();
      const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`]);
      client.kill(signal);
      const code = await client.exited(5000);
      expect({ code, signal: client.proc.signalCode }, client.stderr()).toEqual({ code: 0, signal: null });
      expect(client.stderr()).not.toMatch(/error/);
      await eventually(async () => (await server.health()).tunnels === 0, 5000, "tunnel released");
      expect(await server.health()).toMatchObject({ clients: 0, tunnels: 0 });
    });

  test("server without clients: SIGTERM exits 0 promptly", async () => {
    const server = spawnRole([...SERVER, "--host", "127.0.0.1", "--port", "0"]);
    await server.waitFor(/listening on/);
    server.kill("SIGTERM");
    expect(await server.exited(3000)).toBe(0);
  });
});

test("the server never prints the API key, whether the client's key is right or wrong", async () => {
  const key = `k-${crypto.randomUUID()}`;
  const wrong = `w-${crypto.randomUUID()}`;
  const service = startEchoService();
  const server = await startServerProcess([], { SOCKETS_SINGLE_API_KEY: key });
  const client = await startClientProcess(server.url, [`127.0.0.1:${service.port}`], [], {
    SOCKETS_API_KEY: key,
  });
  const rejected = await runToExit(
    [...CLIENT, "--server", server.url, "--expose", `127.0.0.1:${service.port}`],
    {
      SOCKETS_API_KEY: wrong,
    },
  );
  expect(rejected.code).not.toBe(0);
  client.kill("SIGINT");
  await client.exited();
  server.kill("SIGTERM");
  expect(await server.exited()).toBe(0);
  const output = server.stdout() + server.stderr();
  expect(output).toContain("refused"); // the rejection was logged…
  expect(output).not.toContain(key); // …but no key, right or wrong
  expect(output).not.toContain(wrong);
  expect(client.stdout() + client.stderr() + rejected.stdout + rejected.stderr).not.toContain(key);
  expect(rejected.stderr).not.toContain(wrong);
});
