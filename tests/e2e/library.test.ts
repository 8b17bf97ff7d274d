/**
 * The library entry points (lib/client.ts, lib/server.ts: the package's `sockets/client` and
 * `sockets/server`): a bad option rejects with the very line the command line prints for the same
 * value, and a client's events follow a cut connection (resumed) and a server restart (exposed again).
 */

import { describe, expect, test } from "bun:test";
import { startClient } from "../../lib/client.ts";
import { startServer } from "../../lib/server.ts";
import { refusedOrClosed, startProxy } from "../support/faults.ts";
import { randomData, sha256 } from "../support/hashing.ts";
import { defer, runToExit, setupFile, startServerProcess } from "../support/processes.ts";
import { startEchoService } from "../support/services.ts";
import { echoThrough } from "../support/sockets.ts";
import { ask, startUdpEcho, udpPeer } from "../support/udp.ts";

setupFile();

/** The one line a role prints for `argv`, without `error: ` and the pointer to --help. */
async function commandLineError(role: "server" | "client", argv: string[]): Promise<string> {
  const result = await runToExit(["bun", `${role}.ts`, ...argv]);
  expect(result.code).toBe(2);
  const lines = result.stderr.trim().split("\n");
  expect(lines).toHaveLength(1);
  return (lines[0] as string).replace(/^error: /, "").replace(/ \(see --help\)$/, "");
}

/** The message a library call rejects with. */
async function rejection(call: () => Promise<unknown>): Promise<string> {
  return call().then(
    () => "resolved",
    (error: Error) => error.message,
  );
}

describe("a bad option: the command line's line", () => {
  const clientCases: [string, Parameters<typeof startClient>[0], string[]][] = [
    [
      "server scheme",
      { server: "http://127.0.0.1:1", expose: [1] },
      ["--server", "http://127.0.0.1:1", "--expose", "1"],
    ],
    ["port out of range", { expose: [70000] }, ["--expose", "70000"]],
    ["host:port", { expose: ["nohost:"] }, ["--expose", "nohost:"]],
    ["heartbeat", { expose: [1], heartbeatSeconds: 0 }, ["--expose", "1", "--heartbeat", "0"]],
    ["inspect", { expose: [1], inspect: "abc" }, ["--expose", "1", "--inspect", "abc"]],
    ["nothing to expose", { expose: [] }, []],
    ["subdomain", { http: [{ port: 1, subdomain: "Bad_Name" }] }, ["--http", "1", "--subdomain", "Bad_Name"]],
    [
      "host header",
      { http: [1], hostHeader: "keep" as "preserve" },
      ["--http", "1", "--host-header", "keep"],
    ],
    [
      "allow, at the top",
      { expose: [1], allow: ["10.0.0.0/33"] },
      ["--expose", "1", "--allow", "10.0.0.0/33"],
    ],
    ["deny, on a service", { expose: [{ port: 1, deny: ["nope"] }] }, ["--expose", "1", "--deny", "nope"]],
    [
      "PROXY protocol",
      { expose: [1], proxyProtocol: "v3" as "v1" },
      ["--expose", "1", "--proxy-protocol", "v3"],
    ],
  ];
  for (const [what, options, argv] of clientCases)
    test(`client: ${what}`, async () => {
      expect(await rejection(() => startClient(options))).toBe(await commandLineError("client", argv));
    });

  const serverCases: [string, Parameters<typeof startServer>[0], string[]][] = [
    ["port", { port: 70000 }, ["--port", "70000"]],
    ["tcp ports", { tcpPorts: "9-1" }, ["--tcp-ports", "9-1"]],
    ["admin beyond loopback without a token", { admin: "0.0.0.0:9090" }, ["--admin", "0.0.0.0:9090"]],
    ["drain timeout", { drainSeconds: -1 }, ["--drain-timeout=-1"]],
  ];
  for (const [what, options, argv] of serverCases)
    test(`server: ${what}`, async () => {
      expect(await rejection(() => startServer(options))).toBe(await commandLineError("server", argv));
    });

  test("an option neither role has is named", async () => {
    const message = await rejection(() => startClient({ expose: [1], heartbeat: 5 } as never));
    expect(message).toMatch(/^unknown option 'heartbeat' \(options: .*heartbeatSeconds/);
    expect(await rejection(() => startServer({ config: "x.toml" } as never))).toMatch(
      /^unknown option 'config'/,
    );
    expect(await rejection(() => startClient({ expose: 3000 } as never))).toMatch(
      /^--expose: a list of services/,
    );
  });
});

test("events: a cut connection is resumed, a restarted server gets the tunnels again; visitors are told", async () => {
  const service = startEchoService();
  const first = await startServerProcess();
  const proxy = startProxy(first.port);
  defer(() => proxy.stop());
  const client = await startClient({
    server: `ws://127.0.0.1:${proxy.port}`,
    expose: [service.port],
    heartbeatSeconds: 1,
    maxBackoffSeconds: 1,
    quiet: true,
  });
  defer(() => client.close());
  const events: string[] = [];
  client.on("disconnected", () => events.push("disconnected"));
  client.on("reconnected", ({ resumed }) => events.push(resumed ? "resumed" : "exposed again"));
  client.on("visitor", ({ tunnel }) => events.push(`visitor on ${tunnel.id}`));
  const tunnel = client.tunnels[0] as { id: string; port: number };
  const payload = randomData(256 * 1024);
  expect(await echoThrough(tunnel.port, payload)).toBe(sha256(payload));

  const back = (type: "resumed" | "exposed again") =>
    new Promise<void>((resolve) => {
      const check = ({ resumed }: { resumed: boolean }) => {
        if (resumed !== (type === "resumed")) return;
        client.off("reconnected", check);
        resolve();
      };
      client.on("reconnected", check);
    });
  const resumed = back("resumed");
  proxy.cut();
  await resumed;
  expect(events).toEqual([`visitor on ${tunnel.id}`, "disconnected", "resumed"]);

  // The server goes away and comes back on the same port: the tunnel is exposed again.
  const again = back("exposed again");
  first.kill("SIGKILL");
  await first.exited(5000);
  await startServerProcess([], {}, { port: first.port });
  await again;
  expect(events.slice(3)).toEqual(["disconnected", "exposed again"]);
  const port = (client.tunnels[0] as { port: number }).port;
  expect(await echoThrough(port, payload)).toBe(sha256(payload));
  let closedWith = "";
  client.once("close", (reason) => {
    closedWith = reason;
  });
  await client.close();
  await Bun.sleep(0);
  expect(closedWith).toBe("client closed");
});

test("top-level allow reaches the server: a visitor from outside the range is closed unanswered; inside it is served", async () => {
  const service = startEchoService();
  const server = await startServerProcess();
  const outside = await startClient({
    server: server.url,
    expose: [service.port],
    allow: ["10.0.0.0/8"],
    quiet: true,
  });
  defer(() => outside.close());
  expect(outside.tunnels[0]?.local.allow).toEqual(["10.0.0.0/8"]);
  expect(await refusedOrClosed((outside.tunnels[0] as { port: number }).port, 5000)).toBe("closed");
  // A service's own list replaces the top-level one.
  const inside = await startClient({
    server: server.url,
    expose: [{ port: service.port, allow: ["127.0.0.0/8"] }],
    allow: ["10.0.0.0/8"],
    quiet: true,
  });
  defer(() => inside.close());
  const payload = randomData(64 * 1024);
  expect(await echoThrough((inside.tunnels[0] as { port: number }).port, payload)).toBe(sha256(payload));
});

test("udp: a UDP service published from code answers through its tunnel", async () => {
  const echo = await startUdpEcho();
  const server = await startServerProcess();
  const client = await startClient({ server: server.url, udp: [echo.port], quiet: true });
  defer(() => client.close());
  const tunnel = client.tunnels[0] as { port: number; local: { kind?: string } };
  expect(tunnel.local.kind).toBe("udp");
  const peer = await udpPeer();
  const payload = randomData(1200);
  expect(sha256(await ask(peer, tunnel.port, payload))).toBe(sha256(payload));
});
