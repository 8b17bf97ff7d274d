/**
 * `npm run demo` (through scripts/setup.mjs, which installs Bun first when it is absent) or
 * `bun scripts/demo.ts`: a whole tunnel on this machine, with nothing else to start.
 *
 * Starts a small web service (this process: `GET /` says hello, `POST /echo` sends the body back),
 * a server (`bun server.ts`) and a client (`bun client.ts`) that publishes the service twice: as an
 * HTTP tunnel at `http://demo.localhost:PORT` and as a TCP tunnel on a public port. Prints both URLs
 * and what to try with them, then the client's request log. Ctrl-C (SIGINT) or SIGTERM stops the
 * client, the server and the service, and waits until both processes have exited.
 *
 * Everything listens on 127.0.0.1 only, with a random API key: the demo publishes nothing beyond this
 * machine. The server takes port 7070 when it is free (the README's examples), another one otherwise.
 * @module
 */

import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import type { Subprocess } from "bun";

const ROOT = `${import.meta.dir}/..`;
const HOST = "127.0.0.1";
/** How long the server and the client get to come up, and to exit once asked, in ms. */
const START_MS = 15_000;
const STOP_MS = 5_000;

/** The built-in service: what the tunnels publish. */
export function startService(): ReturnType<typeof Bun.serve> {
  return Bun.serve({
    hostname: HOST,
    port: 0,
    fetch: async (request) => {
      const url = new URL(request.url);
      if (url.pathname === "/echo")
        return new Response(request.body === null ? "" : await request.arrayBuffer(), {
          headers: { "content-type": request.headers.get("content-type") ?? "application/octet-stream" },
        });
      if (url.pathname !== "/") return new Response("not found: try / or /echo\n", { status: 404 });
      const forwarded = request.headers.get("x-forwarded-for");
      const via = forwarded ? `an HTTP tunnel, for visitor ${forwarded}` : "a TCP tunnel (raw bytes)";
      return new Response(`hello from behind the NAT\nyou reached me through ${via}\n`, {
        headers: { "content-type": "text/plain; charset=utf-8" },
      });
    },
  });
}

/** Port 7070 when nothing listens on it, else one the kernel picks. */
function pickPort(wanted: number): number {
  for (const port of [wanted, 0]) {
    try {
      const probe = Bun.listen({ hostname: HOST, port, socket: { data() {} } });
      const got = probe.port;
      probe.stop(true);
      return got;
    } catch {
      // taken: try the next
    }
  }
  throw new Error("no free port on 127.0.0.1");
}

/** Reads a child's stdout line by line. */
async function eachLine(stream: ReadableStream<Uint8Array>, line: (text: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  let rest = "";
  for await (const chunk of stream) {
    rest += decoder.decode(chunk, { stream: true });
    for (let at = rest.indexOf("\n"); at !== -1; at = rest.indexOf("\n")) {
      line(rest.slice(0, at));
      rest = rest.slice(at + 1);
    }
  }
  if (rest) line(rest);
}

/** Copies a child's stderr (warnings and errors: both run with -q) to ours, each line tagged. */
function tagStderr(stderr: ReadableStream<Uint8Array>, tag: string): void {
  void eachLine(stderr, (text) => process.stderr.write(`[${tag}] ${text}\n`));
}

/** Resolves once `url` answers 200, or rejects when `child` exits or time runs out. */
async function waitHealthy(url: string, child: Subprocess): Promise<void> {
  const deadline = Date.now() + START_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error("the server exited at start");
    try {
      if ((await fetch(url)).status === 200) return;
    } catch {
      // not listening yet
    }
    await Bun.sleep(50);
  }
  throw new Error(`the server did not answer ${url} within ${START_MS / 1000} s`);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { port: { type: "string" }, subdomain: { type: "string" } },
    strict: true,
  });
  const port = pickPort(Number(values.port ?? 7070));
  const subdomain = values.subdomain ?? "demo";
  const service = startService();
  const key = randomBytes(18).toString("base64url");
  const bun = process.execPath;
  const children: Subprocess[] = [];
  let stopping = false;

  const stop = async (code: number): Promise<number> => {
    stopping = true;
    // Client first: it says goodbye, and the server releases the tunnels at once.
    for (const child of [...children].reverse()) {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGINT");
      const exited = await Promise.race([
        child.exited.then(() => true),
        Bun.sleep(STOP_MS).then(() => false),
      ]);
      if (!exited) child.kill("SIGKILL");
      await child.exited;
    }
    service.stop(true);
    return code;
  };
  let interrupted: (signal: string) => void = () => {};
  const signalled = new Promise<string>((resolve) => {
    interrupted = resolve;
  });
  process.on("SIGINT", () => interrupted("SIGINT"));
  process.on("SIGTERM", () => interrupted("SIGTERM"));

  const serverArgs = ["server.ts", "--host", HOST, "--port", String(port), "--drain-timeout", "1", "-q"];
  const server = Bun.spawn([bun, ...serverArgs], {
    cwd: ROOT,
    env: { ...process.env, SOCKETS_SINGLE_API_KEY: key },
    stdin: "ignore",
    stdout: "inherit",
    stderr: "pipe",
  });
  children.push(server);
  tagStderr(server.stderr, "server");
  try {
    await Promise.race([waitHealthy(`http://${HOST}:${port}/health`, server), signalled]);
  } catch (error) {
    process.stderr.write(`demo: ${(error as Error).message}\n`);
    return stop(1);
  }
  if (stopping || server.exitCode !== null) return stop(0);

  const local = `${HOST}:${service.port}`;
  const clientArgs = [
    "client.ts",
    "--server",
    `ws://${HOST}:${port}`,
    "--http",
    local,
    "--subdomain",
    subdomain,
    "--expose",
    local,
    "--log-requests",
    "-q",
  ];
  const client = Bun.spawn([bun, ...clientArgs], {
    cwd: ROOT,
    env: { ...process.env, SOCKETS_API_KEY: key },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  children.push(client);
  tagStderr(client.stderr, "client");

  const urls: { http?: string; tcp?: string } = {};
  let up: () => void = () => {};
  const exposed = new Promise<void>((resolve) => {
    up = resolve;
  });
  void eachLine(client.stdout, (line) => {
    const url = /^exposed with tunnel id \S+, url: (\S+)$/.exec(line)?.[1];
    if (url === undefined) {
      process.stdout.write(`[request] ${line}\n`);
      return;
    }
    if (url.startsWith("http")) urls.http = url;
    else urls.tcp = url;
    if (urls.http && urls.tcp) up();
  });
  const started = await Promise.race([
    exposed.then(() => "up"),
    signalled,
    client.exited.then(() => "client exited"),
    server.exited.then(() => "server exited"),
    Bun.sleep(START_MS).then(() => "timeout"),
  ]);
  if (started !== "up") {
    if (started === "SIGINT" || started === "SIGTERM") return stop(0);
    process.stderr.write(`demo: the tunnels did not come up (${started})\n`);
    return stop(1);
  }

  const http = `${urls.http}/`;
  const tcpPort = (urls.tcp as string).slice((urls.tcp as string).lastIndexOf(":") + 1);
  process.stdout.write(
    [
      "",
      "sockets demo: a server, a client and a small web service, all on this machine (127.0.0.1 only).",
      "",
      `  HTTP tunnel: ${http}`,
      `  TCP tunnel:  ${urls.tcp}`,
      "",
      "Try, in another terminal:",
      `  curl ${http}                      # "hello from behind the NAT", through the HTTP tunnel`,
      `  curl --data 'it works' ${http}echo   # the service echoes the body back`,
      `  curl http://localhost:${tcpPort}/                 # the same service through the TCP tunnel`,
      `  or open ${http} in a browser`,
      "",
      "What runs (the per-role commands of README):",
      `  SOCKETS_SINGLE_API_KEY=… bun ${serverArgs.join(" ")}`,
      `  SOCKETS_API_KEY=… bun ${clientArgs.join(" ")}`,
      `  the web service: ${local} (scripts/demo.ts)`,
      "",
      "Requests show up below. Ctrl-C stops the client, the server and the service.",
      "",
    ].join("\n"),
  );

  const ended = await Promise.race([
    signalled,
    client.exited.then(() => "client exited"),
    server.exited.then(() => "server exited"),
  ]);
  if (ended === "SIGINT" || ended === "SIGTERM") {
    process.stdout.write("\nstopping: client, server, service\n");
    const code = await stop(0);
    process.stdout.write("demo stopped\n");
    return code;
  }
  process.stderr.write(`demo: ${ended} unexpectedly\n`);
  return stop(1);
}

if (import.meta.main) process.exit(await main());
