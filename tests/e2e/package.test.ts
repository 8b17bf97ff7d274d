/**
 * The npm package as a user gets it: `npm pack`, the tarball installed into a fresh project with
 * `npm install`, then `import { startClient } from "sockets/client"` (and `startServer`) opens a
 * tunnel that a fetch goes through, with its events; a bad option rejects with the command line's
 * line; the `bin` commands run under Bun, and say what to install when Bun is missing.
 */

import { beforeAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PACKAGE_VERSION } from "../../shared/version.ts";
import { defer, expectOneLineError, runToExit, setupFile } from "../support/processes.ts";

setupFile();

const NODE = Bun.which("node");
const NPM = Bun.which("npm");
let project = "";

beforeAll(async () => {
  const folder = mkdtempSync(join(tmpdir(), "sockets-package-"));
  defer(() => rmSync(folder, { recursive: true, force: true }));
  const pack = await runToExit([NPM as string, "pack", "--pack-destination", folder], {}, 60_000);
  expect(pack.code, pack.stderr).toBe(0);
  const tarball = readdirSync(folder).find((name) => name.endsWith(".tgz")) as string;
  expect(tarball).toBe(`sockets-${PACKAGE_VERSION}.tgz`);
  project = join(folder, "app");
  mkdirSync(project);
  writeFileSync(join(project, "package.json"), '{ "name": "app", "private": true, "type": "module" }\n');
  const install = await runToExit(
    ["/bin/sh", "-c", `cd '${project}' && '${NPM}' install --no-audit --no-fund '${join(folder, tarball)}'`],
    {},
    120_000,
  );
  expect(install.code, install.stderr).toBe(0);
}, 180_000);

/** A program of the user's, importing the installed package. */
const PROGRAM = `
import { startClient } from "sockets/client";
import { startServer } from "sockets/server";

const app = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: (req) => new Response("hi " + new URL(req.url).pathname) });
const server = await startServer({ host: "127.0.0.1", port: 0, apiKey: "k", quiet: true });
const tunnel = await startClient({ server: server.url, apiKey: "k", expose: [app.port], http: [{ port: app.port, subdomain: "app" }], quiet: true });
const visitors = [];
tunnel.on("visitor", (visitor) => visitors.push(visitor.tunnel.id));
const [tcp, http] = tunnel.tunnels;
const viaTcp = await (await fetch("http://127.0.0.1:" + tcp.port + "/tcp")).text();
const viaHttp = await (await fetch("http://127.0.0.1:" + server.port + "/http", { headers: { host: "app.localhost" } })).text();
const bad = await startClient({ server: server.url, expose: [app.port], heartbeatSeconds: 0 }).then(() => "resolved", (e) => e.message);
let closed = "";
tunnel.on("close", (reason) => { closed = reason; });
await tunnel.close();
await Bun.sleep(0);
await server.close();
app.stop(true);
console.log(JSON.stringify({ urls: [tcp.url, http.url], viaTcp, viaHttp, visitors: visitors.length, tunnelIds: [tcp.id, http.id], visitorIds: visitors, bad, closed }));
`;

test("installed from the tarball: startServer and startClient open TCP and HTTP tunnels that fetch goes through", async () => {
  writeFileSync(join(project, "program.mjs"), PROGRAM);
  const result = await runToExit(["/bin/sh", "-c", `cd '${project}' && exec bun program.mjs`], {}, 30_000);
  expect(result.code, result.stderr).toBe(0);
  const report = JSON.parse(result.stdout) as Record<string, unknown> & { tunnelIds: string[] };
  expect(report.viaTcp).toBe("hi /tcp");
  expect(report.viaHttp).toBe("hi /http");
  expect(report.urls).toEqual([
    expect.stringMatching(/^localhost:\d+$/),
    expect.stringMatching(/^http:\/\/app\.localhost:\d+$/),
  ]);
  expect(report.visitorIds).toEqual(report.tunnelIds);
  expect(report.closed).toBe("client closed");

  // The same bad value on the command line: the same line.
  const cli = await runToExit(["bun", "client.ts", "--expose", "1", "--heartbeat", "0"]);
  expectOneLineError(cli, /^error: --heartbeat: /);
  expect(`error: ${report.bad}`).toBe(cli.stderr.trim().replace(/ \(see --help\)$/, ""));
});

test("the package's bin commands: --version under Bun; one line naming Bun when it is missing", async () => {
  const bin = join(project, "node_modules", ".bin");
  for (const role of ["server", "client"]) {
    const viaNode = await runToExit([NODE as string, join(bin, `sockets-${role}`), "--version"], {}, 20_000);
    expect(viaNode.code, viaNode.stderr).toBe(0);
    expect(viaNode.stdout).toStartWith(`sockets-${role} ${PACKAGE_VERSION} (protocol `);
    // Installed, not a checkout: no git commit to read.
    expect(viaNode.stdout).toContain("commit unknown");
    // Help names the command as typed.
    const help = await runToExit([join(bin, `sockets-${role}`), "--help"], {}, 20_000);
    expect(help.stdout).toStartWith(`Usage: sockets-${role} `);
  }
  // PATH with node and nothing else: no bun to run on.
  const onlyNode = mkdtempSync(join(tmpdir(), "sockets-only-node-"));
  defer(() => rmSync(onlyNode, { recursive: true, force: true }));
  symlinkSync(NODE as string, join(onlyNode, "node"));
  const missing = await runToExit([join(bin, "sockets-client"), "--version"], { PATH: onlyNode }, 20_000);
  expectOneLineError(
    missing,
    /^error: sockets-client runs on Bun, which is not installed .*npm install -g bun/,
  );
  expect(missing.code).toBe(1);
});
