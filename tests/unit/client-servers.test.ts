/**
 * Several servers for one client: `--server` repeated, `SOCKETS_SERVER` as a comma-separated list, the
 * config file's `server` as a string or an array (a bad URL among them is one line naming where it came
 * from), the expansion of a host name with several addresses into one target each, and a dial to one
 * such address that still names the server by its host name (Host header).
 */

import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseClientArgs } from "../../shared/client/config.ts";
import {
  type AddressLookup,
  connectControl,
  resolveServers,
  sameTarget,
  targetLabel,
} from "../../shared/client/connect.ts";
import type { ClientArgs } from "../../shared/client/options.ts";
import { CONNECT_PATH, SUBPROTOCOL } from "../../shared/wire/protocol.ts";
import { testHello } from "../support/hello.ts";
import { cleanup, defer } from "../support/processes.ts";

afterEach(cleanup);
const dir = mkdtempSync(join(tmpdir(), "sockets-client-servers-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The servers parseClientArgs gives for `argv` (plus one tunnel) and `env`. */
async function servers(argv: string[], env: Record<string, string> = {}): Promise<string[]> {
  const args = (await parseClientArgs(["--expose", "9000", ...argv], env)) as ClientArgs;
  expect(args.server.href).toBe(args.servers[0]?.href as string);
  return args.servers.map((url) => url.href);
}

/** The one-line message parseClientArgs rejects with. */
async function failure(argv: string[], env: Record<string, string> = {}): Promise<string> {
  const error = await parseClientArgs(["--expose", "9000", ...argv], env).then(
    () => new Error("parsed without error"),
    (e: Error) => e,
  );
  expect(error.message).not.toContain("\n");
  return error.message;
}

let files = 0;
/** A config file with `text` and one tunnel; its path. */
function config(text: string): string {
  const path = join(dir, `c${++files}.toml`);
  writeFileSync(path, `${text}\n[[tunnels]]\nname = "a"\ntype = "tcp"\nlocal = "9000"\n`);
  return path;
}

describe("parsing", () => {
  test("--server repeated: every one, in order; none: the default", async () => {
    expect(await servers(["--server", "ws://a.example:1", "--server", "wss://b.example:2"])).toEqual([
      "ws://a.example:1/",
      "wss://b.example:2/",
    ]);
    expect(await servers([])).toEqual(["ws://localhost:7070/"]);
  });

  test("SOCKETS_SERVER: one URL or a comma-separated list; --server wins over it", async () => {
    expect(await servers([], { SOCKETS_SERVER: "ws://a.example:1" })).toEqual(["ws://a.example:1/"]);
    expect(await servers([], { SOCKETS_SERVER: " ws://a.example:1 ,wss://b.example:2,," })).toEqual([
      "ws://a.example:1/",
      "wss://b.example:2/",
    ]);
    expect(await servers(["--server", "ws://c.example:3"], { SOCKETS_SERVER: "ws://a.example:1" })).toEqual([
      "ws://c.example:3/",
    ]);
  });

  test("config file: server as a string or an array; the command line and the env win", async () => {
    const one = config(`server = "ws://a.example:1"`);
    const two = config(`server = ["ws://a.example:1", "wss://b.example:2"]`);
    expect(await servers(["--config", one])).toEqual(["ws://a.example:1/"]);
    expect(await servers(["--config", two])).toEqual(["ws://a.example:1/", "wss://b.example:2/"]);
    expect(await servers(["--config", two, "--server", "ws://c.example:3"])).toEqual(["ws://c.example:3/"]);
    expect(await servers(["--config", two], { SOCKETS_SERVER: "ws://d.example:4" })).toEqual([
      "ws://d.example:4/",
    ]);
  });

  test("a bad URL among several: one line naming the flag, the variable or FILE:LINE:COL", async () => {
    expect(await failure(["--server", "ws://a.example:1", "--server", "not a url"])).toBe(
      "--server: 'not a url' is not a URL (expected ws://HOST:PORT or wss://HOST:PORT)",
    );
    expect(await failure(["--server", "ws://a.example:1", "--server", "http://b.example:2"])).toBe(
      "--server: 'http://b.example:2' must start with ws:// or wss://",
    );
    expect(await failure([], { SOCKETS_SERVER: "ws://a.example:1,b.example:2" })).toMatch(
      /^SOCKETS_SERVER: 'b\.example:2' must start with ws:\/\/ or wss:\/\//,
    );
    const path = config(`server = ["ws://a.example:1", "https://b.example:2"]`);
    expect(await failure(["--config", path])).toBe(
      `${path}:1:1: server: 'https://b.example:2' must start with ws:// or wss://`,
    );
  });
});

describe("resolveServers", () => {
  const fake: AddressLookup = async (host) => {
    if (host === "round.example") return ["10.0.0.1", "10.0.0.2", "10.0.0.1"];
    if (host === "one.example") return ["10.0.0.9"];
    throw new Error("ENOTFOUND");
  };

  test("a name with several addresses is one target each; one address, an IP, an unknown name stay one", async () => {
    const urls = [
      "ws://round.example:7070",
      "ws://one.example:7070",
      "ws://[::1]:7070",
      "wss://nowhere.example:7070",
      "ws://one.example:7070",
    ].map((text) => new URL(text));
    const targets = await resolveServers(urls, fake);
    expect(targets.map(targetLabel)).toEqual([
      "ws://round.example:7070 (10.0.0.1)",
      "ws://round.example:7070 (10.0.0.2)",
      "ws://one.example:7070",
      "ws://[::1]:7070",
      "wss://nowhere.example:7070",
    ]);
    expect(
      sameTarget(targets[0] as never, { url: new URL("ws://round.example:7070/"), address: "10.0.0.1" }),
    ).toBe(true);
    expect(sameTarget(targets[0] as never, targets[1] as never)).toBe(false);
  });
});

describe("dialling one address of a name", () => {
  test("the connection goes to the address; the Host header keeps the URL's name", async () => {
    const hosts: (string | null)[] = [];
    const hello = testHello();
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(req, srv) {
        hosts.push(req.headers.get("host"));
        if (
          new URL(req.url).pathname === CONNECT_PATH &&
          srv.upgrade(req, { headers: { "Sec-WebSocket-Protocol": SUBPROTOCOL } })
        )
          return undefined;
        return new Response("not here\n", { status: 404 });
      },
      websocket: {
        open: (ws) => void ws.send(JSON.stringify(hello)),
        message() {},
      },
    });
    defer(() => server.stop(true));
    // The name does not resolve at all: only the address can have been dialled.
    const url = new URL(`ws://tunnel.invalid:${server.port}`);
    const connection = await connectControl({ url, address: "127.0.0.1", timeout: 3000 });
    connection.ws.close();
    expect(connection.hello.session).toBe("s1");
    expect(hosts).toEqual([`tunnel.invalid:${server.port}`]);
  });
});
