/**
 * The client's config file: what a file's keys and `[[tunnels]]` become (the services the client
 * publishes, merged with the command line), every bad-input case as one FILE:LINE:COL line, the
 * `--init` example, and the reload diff by tunnel name.
 */

import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { clientSetup, parseClientArgs, restartOnlyChanges } from "../../shared/client/config.ts";
import { EXAMPLE_CONFIG, writeExample } from "../../shared/client/init.ts";
import type { ClientArgs, ClientValues, NamedService } from "../../shared/client/options.ts";
import { CLIENT_OPTIONS } from "../../shared/client/options.ts";
import { diffTunnels, sameService } from "../../shared/client/reload.ts";
import { ConfigError, readConfig } from "../../shared/config.ts";
import { parseOptions } from "../../shared/options.ts";

const dir = mkdtempSync(join(tmpdir(), "sockets-client-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;

/** Writes `text` to a fresh file and returns its path. */
function file(text: string): string {
  const path = join(dir, `c${++files}.toml`);
  writeFileSync(path, text);
  return path;
}

/** The command line's own values, as the client parses them. */
function commandLine(...argv: string[]): ClientValues {
  return parseOptions(CLIENT_OPTIONS, argv, {}).values as ClientValues;
}

/** The services a file gives (no command-line tunnels; request log off unless the file says). */
function services(text: string, ...argv: string[]): NamedService[] {
  return clientSetup(commandLine(...argv), readConfig(file(text)), false).services;
}

/** The one-line error a file gives, with its path replaced by FILE. */
function errorOf(text: string): string {
  const path = file(text);
  try {
    clientSetup({}, readConfig(path), false);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).not.toContain("\n");
    return message.replaceAll(path, "FILE");
  }
  throw new Error("no error");
}

describe("config file → services", () => {
  test("each [[tunnels]] becomes a named service with its type's options", () => {
    const list = services(`
[[tunnels]]
name = "db"
type = "tcp"
local = "127.0.0.1:5432"
port = 15432

[[tunnels]]
name = "web"
type = "http"
local = "localhost:3000"
subdomain = "demo"
basic_auth = "ann:secret"
host_header = "preserve"
log_requests = true

[[tunnels]]
name = "v6"
type = "tcp"
local = "[::1]:22"

[[tunnels]]
name = "bare"
type = "http"
local = 8080

[[tunnels]]
name = "dns"
type = "udp"
local = "127.0.0.1:53"
port = 5353
`);
    expect(list).toEqual([
      { name: "db", host: "127.0.0.1", port: 5432, publicPort: 15432 },
      {
        name: "web",
        host: "localhost",
        port: 3000,
        kind: "http",
        subdomain: "demo",
        basicAuth: "ann:secret",
        preserveHost: true,
        logRequests: true,
      },
      { name: "v6", host: "::1", port: 22 },
      { name: "bare", host: "127.0.0.1", port: 8080, kind: "http", preserveHost: false, logRequests: false },
      { name: "dns", host: "127.0.0.1", port: 53, kind: "udp", publicPort: 5353 },
    ]);
  });

  test("--expose-udp: --port values past the --expose flags go to the --expose-udp flags in order", () => {
    const setup = clientSetup(
      commandLine(
        "--expose",
        "9000",
        "--expose-udp",
        "53",
        "--expose-udp",
        "[::1]:51820",
        "--port",
        "9001",
        "--port",
        "5353",
      ),
      undefined,
      false,
    );
    expect(setup.services).toEqual([
      { name: "tcp-1", host: "127.0.0.1", port: 9000, publicPort: 9001 },
      { name: "udp-1", host: "127.0.0.1", port: 53, kind: "udp", publicPort: 5353 },
      { name: "udp-2", host: "::1", port: 51820, kind: "udp" },
    ]);
    expect(() =>
      clientSetup(commandLine("--expose-udp", "53", "--port", "1", "--port", "2"), undefined, false),
    ).toThrow(/--port given more times than --expose and --expose-udp together/);
  });

  test("top-level host_header, basic_auth and log_requests are defaults an HTTP tunnel's own keys override", () => {
    const list = services(`
host_header = "preserve"
basic_auth = "top:level"
log_requests = true
[[tunnels]]
name = "a"
type = "http"
local = "3000"
[[tunnels]]
name = "b"
type = "http"
local = "3001"
host_header = "rewrite"
basic_auth = "own:pass"
log_requests = false
[[tunnels]]
name = "c"
type = "tcp"
local = "22"
`);
    expect(list[0]).toMatchObject({ preserveHost: true, basicAuth: "top:level", logRequests: true });
    expect(list[1]).toMatchObject({ preserveHost: false, basicAuth: "own:pass", logRequests: false });
    expect(list[2]).toEqual({ name: "c", host: "127.0.0.1", port: 22 });
  });

  test("pool, allow, deny and proxy_protocol: per tunnel (both types), top-level defaults, canonical ranges", () => {
    const list = services(`
allow = ["10.0.0.0/8"]
proxy_protocol = "v1"

[[tunnels]]
name = "db"
type = "tcp"
local = "5432"
pool = true
deny = ["10.1.2.3", "2001:DB8::/32"]

[[tunnels]]
name = "web"
type = "http"
local = "3000"
allow = ["192.0.2.77/24", "::1"]
proxy_protocol = "v2"
`);
    expect(list).toEqual([
      {
        name: "db",
        host: "127.0.0.1",
        port: 5432,
        pool: true,
        allow: ["10.0.0.0/8"],
        deny: ["10.1.2.3/32", "2001:db8::/32"],
        proxyProtocol: "v1",
      },
      {
        name: "web",
        host: "127.0.0.1",
        port: 3000,
        kind: "http",
        preserveHost: false,
        logRequests: false,
        allow: ["192.0.2.0/24", "::1/128"],
        proxyProtocol: "v2",
      },
    ]);
    // The command line's flags apply to its own tunnels, TCP and HTTP alike.
    const flags = clientSetup(
      commandLine("--expose", "1", "--http", "2", "--pool", "--deny", "::1", "--proxy-protocol", "v2"),
      undefined,
      false,
    ).services;
    for (const service of flags)
      expect(service).toMatchObject({ pool: true, deny: ["::1/128"], proxyProtocol: "v2" });
  });

  test("the command line's top-level options win over the file's; its tunnels replace the file's", () => {
    const text = `
server = "ws://file.example:1"
heartbeat = 5
host_header = "preserve"
[[tunnels]]
name = "a"
type = "http"
local = "3000"
`;
    const fromFile = clientSetup(commandLine("--heartbeat", "2"), readConfig(file(text)), false);
    expect(fromFile.values.heartbeatSeconds).toBe(2);
    expect(fromFile.values.server?.map(String)).toEqual(["ws://file.example:1/"]);
    expect(fromFile.services.map((s) => s.name)).toEqual(["a"]);
    const overridden = clientSetup(commandLine("--host-header", "rewrite"), readConfig(file(text)), false);
    expect(overridden.services[0]?.preserveHost).toBe(false);
    const replaced = clientSetup(
      commandLine("--expose", "9000", "--port", "9001", "--http", "3001"),
      readConfig(file(text)),
      false,
    );
    expect(replaced.services).toEqual([
      { name: "tcp-1", host: "127.0.0.1", port: 9000, publicPort: 9001 },
      { name: "http-1", host: "127.0.0.1", port: 3001, kind: "http", preserveHost: true, logRequests: false },
    ]);
  });

  test("the file's top-level expose/http/port/subdomain keys publish like the flags", () => {
    expect(services(`expose = ["9000"]\nport = [9100]\nhttp = ["3000"]\nsubdomain = ["x"]\n`)).toEqual([
      { name: "tcp-1", host: "127.0.0.1", port: 9000, publicPort: 9100 },
      {
        name: "http-1",
        host: "127.0.0.1",
        port: 3000,
        kind: "http",
        subdomain: "x",
        preserveHost: false,
        logRequests: false,
      },
    ]);
  });

  test("parseClientArgs: --config alone publishes the file's tunnels; a relative ca is the file's neighbour", async () => {
    const path = file(
      `server = "ws://127.0.0.1:7999"\nquiet = true\n[[tunnels]]\nname = "a"\ntype = "tcp"\nlocal = "9000"\n`,
    );
    const args = (await parseClientArgs(["--config", path], {})) as ClientArgs;
    expect(args.server.href).toBe("ws://127.0.0.1:7999/");
    expect(args.quiet).toBe(true);
    expect(args.expose).toEqual([{ name: "a", host: "127.0.0.1", port: 9000 }]);
    expect(args.config?.file).toBe(path);
    writeFileSync(join(dir, "ca.pem"), "PEM");
    const withCa = (await parseClientArgs(
      ["--config", file(`ca = "ca.pem"\n[[tunnels]]\nname = "a"\ntype = "tcp"\nlocal = "9000"\n`)],
      {},
    )) as ClientArgs;
    expect(withCa.ca).toBe("PEM");
  });

  test("parseClientArgs: --init [FILE], --watch without --config, a file without tunnels", async () => {
    expect(await parseClientArgs(["--init"], {})).toEqual({ init: "sockets.toml" });
    expect(await parseClientArgs(["--init", "my.toml"], {})).toEqual({ init: "my.toml" });
    expect(parseClientArgs(["--watch", "--expose", "1"], {})).rejects.toThrow("--watch needs --config");
    expect(parseClientArgs(["--config", file("quiet = true\n")], {})).rejects.toThrow(/no tunnels/);
  });

  test("restartOnlyChanges names the top-level keys a running client cannot apply", () => {
    const before = clientSetup(
      {},
      readConfig(file(`server = "ws://a:1"\nheartbeat = 5\nlog_requests = true\n`)),
    );
    const after = clientSetup({}, readConfig(file(`server = "ws://b:1"\nheartbeat = 5\nmax_backoff = 3\n`)));
    expect(restartOnlyChanges(before.values, after.values)).toEqual(["server", "max_backoff"]);
    expect(restartOnlyChanges(before.values, before.values)).toEqual([]);
  });
});

describe("bad input: one line naming FILE:LINE:COL", () => {
  const tunnel = (extra: string, type = "tcp") =>
    `[[tunnels]]\nname = "a"\ntype = "${type}"\nlocal = "1"\n${extra}`;
  test.each([
    ["not TOML", `server = "ws://x\n`, /^FILE:1:\d+: not valid TOML/],
    [
      "unknown top-level key",
      `heartbaet = 3\n`,
      /^FILE:1:1: unknown key 'heartbaet' \(did you mean heartbeat\?\)$/,
    ],
    ["unknown tunnel key", tunnel("prot = 1\n"), /^FILE:5:1: unknown key 'prot' \(did you mean port\?\)$/],
    [
      "a key of another type",
      tunnel("subdomain = 'x'\n"),
      /^FILE:5:1: tunnel 'a': subdomain is a key of http tunnels, not tcp$/,
    ],
    ["wrong type (switch)", `quiet = "yes"\n`, /^FILE:1:1: quiet must be true or false$/],
    ["wrong type (number)", `heartbeat = [1]\n`, /^FILE:1:1: heartbeat must be a string$/],
    [
      "wrong type (seconds)",
      `heartbeat = "soon"\n`,
      /^FILE:1:1: heartbeat: 'soon' is not a number of seconds/,
    ],
    ["port out of range", tunnel("port = 70000\n"), /^FILE:5:1: port: '70000' is not a port \(1-65535\)$/],
    ["port 0", tunnel("port = 0\n"), /^FILE:5:1: port: '0' is not a port/],
    [
      "local port out of range",
      `[[tunnels]]\nname = "a"\ntype = "tcp"\n  local = "h:99999"\n`,
      /^FILE:4:3: local: '99999' is not a port/,
    ],
    [
      "local not HOST:PORT",
      `[[tunnels]]\nname = "a"\ntype = "tcp"\nlocal = "nope"\n`,
      /^FILE:4:1: local: 'nope' is not HOST:PORT$/,
    ],
    [
      "local wrong type",
      `[[tunnels]]\nname = "a"\ntype = "tcp"\nlocal = true\n`,
      /^FILE:4:1: local must be a string/,
    ],
    ["no local", `[[tunnels]]\nname = "a"\ntype = "tcp"\n`, /^FILE:1:1: tunnel 'a' has no local/],
    ["no name", `[[tunnels]]\ntype = "tcp"\nlocal = "1"\n`, /^FILE:1:1: tunnel 1 has no name/],
    ["no type", `[[tunnels]]\nname = "a"\nlocal = "1"\n`, /^FILE:1:1: tunnel 'a' has no type/],
    [
      "unknown type",
      tunnel("", "sctp"),
      /^FILE:3:1: tunnel 'a': unknown type "sctp" \(one of: tcp, http, udp, tls\)$/,
    ],
    ["bad name", `[[tunnels]]\nname = "a b"\ntype = "tcp"\nlocal = "1"\n`, /^FILE:2:1: name must be/],
    [
      "two tunnels with the same name",
      `${tunnel("")}\n[[tunnels]]\nname = "a"\ntype = "http"\nlocal = "2"\n`,
      /^FILE:7:1: two tunnels are named 'a' \(the other at FILE:2:1\): names must be unique$/,
    ],
    ["tunnels not tables", `tunnels = 3\n`, /^FILE:1:1: tunnels must be tables/],
    [
      "bad subdomain",
      tunnel("subdomain = 'Not_A_Label'\n", "http"),
      /^FILE:5:1: subdomain: 'Not_A_Label' is not a DNS label/,
    ],
    [
      "bad host_header",
      tunnel("host_header = 'keep'\n", "http"),
      /^FILE:5:1: host_header: 'keep' is not rewrite or preserve$/,
    ],
    ["config in a config file", `config = "x.toml"\n`, /^FILE:1:1: unknown key 'config'/],
    [
      "a malformed CIDR in a tunnel",
      tunnel("allow = ['10.0.0']\n"),
      /^FILE:5:1: allow: '10\.0\.0' is not an IP address or CIDR range/,
    ],
    [
      "an IPv4 /33 at the top level",
      `deny = ["10.0.0.0/33"]\n`,
      /^FILE:1:1: deny: '10\.0\.0\.0\/33': \/33 is longer than an IPv4 address \(at most \/32\)$/,
    ],
    [
      "an unknown PROXY protocol version",
      tunnel("proxy_protocol = 'v3'\n", "http"),
      /^FILE:5:1: proxy_protocol: 'v3' is not a PROXY protocol version \(v1 or v2\)$/,
    ],
    ["pool not a switch", tunnel("pool = 'yes'\n"), /^FILE:5:1: pool must be true or false$/],
    [
      "too many ranges",
      tunnel(`allow = [${Array.from({ length: 65 }, (_, i) => `"10.0.${i}.0/24"`).join(", ")}]\n`),
      /^FILE:1:1: tunnel 'a': allow: at most 64 ranges per tunnel/,
    ],
  ])("%s", (_, text, pattern) => {
    expect(errorOf(text)).toMatch(pattern);
  });

  test("an unreadable file", () => {
    expect(() => readConfig(join(dir, "missing.toml"))).toThrow(
      /missing\.toml: cannot read the config file \(ENOENT\)/,
    );
  });
});

describe("--init", () => {
  test("the example parses as is: two tunnels, the local server's default address", () => {
    const setup = clientSetup({}, readConfig(file(EXAMPLE_CONFIG)), false);
    expect(setup.values.server?.map(String)).toEqual(["ws://localhost:7070/"]);
    expect(setup.services.map((s) => [s.name, s.kind ?? "tcp", s.port])).toEqual([
      ["ssh", "tcp", 8000],
      ["web", "http", 3000],
    ]);
  });

  test("every commented-out key of the example is a real key: uncommented, the file still parses", () => {
    const uncommented = EXAMPLE_CONFIG.replace(/^# ([a-z_]+ = )/gm, "$1").replace(/^# (ca = .*)$/m, "");
    expect(uncommented).not.toBe(EXAMPLE_CONFIG);
    expect(clientSetup({}, readConfig(file(uncommented)), false).services).toHaveLength(2);
  });

  test("never overwrites a file", () => {
    const path = join(dir, "init.toml");
    expect(writeExample(path)).toContain(`--config ${path}`);
    expect(() => writeExample(path)).toThrow(`${path} already exists`);
  });
});

describe("reload diff by name", () => {
  const tcp = (name: string, port: number, extra: Partial<NamedService> = {}): NamedService => ({
    name,
    host: "127.0.0.1",
    port,
    ...extra,
  });
  test("added, removed, changed (any field) and unchanged", () => {
    const running = [tcp("a", 1), tcp("b", 2), tcp("c", 3), tcp("d", 4, { publicPort: 4000 })];
    const next = [tcp("a", 1), tcp("c", 33), tcp("d", 4, { publicPort: 4001 }), tcp("e", 5)];
    const diff = diffTunnels(running, next);
    expect(diff.unchanged.map((s) => s.name)).toEqual(["a"]);
    expect(diff.removed.map((s) => s.name)).toEqual(["b"]);
    expect(diff.changed).toEqual([tcp("c", 33), tcp("d", 4, { publicPort: 4001 })]);
    expect(diff.added.map((s) => s.name)).toEqual(["e"]);
  });

  test("a change of type, host, subdomain, basic auth, host header, request log, pool, lists or PROXY protocol is a change", () => {
    const web: NamedService = { name: "w", host: "h", port: 1, kind: "http", preserveHost: false };
    for (const change of [
      { kind: undefined },
      { host: "other" },
      { subdomain: "x" },
      { basicAuth: "u:p" },
      { preserveHost: true },
      { logRequests: true },
      { pool: true },
      { allow: ["10.0.0.0/8"] },
      { deny: ["::1/128"] },
      { proxyProtocol: "v1" },
    ] as Partial<NamedService>[])
      expect(sameService(web, { ...web, ...change })).toBe(false);
    expect(sameService(web, { ...web })).toBe(true);
    // Spelled-out defaults are no change: tcp is the default kind.
    expect(sameService(tcp("t", 1), tcp("t", 1, { kind: "tcp" }))).toBe(true);
  });

  test("the same file twice is no change; a renamed tunnel is one removed and one added", () => {
    const text = EXAMPLE_CONFIG;
    const a = clientSetup({}, readConfig(file(text)), false).services;
    const b = clientSetup({}, readConfig(file(text)), false).services;
    expect(diffTunnels(a, b)).toMatchObject({ added: [], removed: [], changed: [] });
    const renamed = clientSetup(
      {},
      readConfig(file(text.replace('name = "web"', 'name = "site"'))),
      false,
    ).services;
    const diff = diffTunnels(a, renamed);
    expect(diff.removed.map((s) => s.name)).toEqual(["web"]);
    expect(diff.added.map((s) => s.name)).toEqual(["site"]);
    expect(diff.unchanged.map((s) => s.name)).toEqual(["ssh"]);
  });
});
