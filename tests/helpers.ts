/**
 * Test helpers: real processes, real sockets, bounded waits, and cleanup that runs even when a test fails.
 *
 * Every test file that uses these helpers must call, at its top level:
 *
 * ```ts
 * setupFile();
 * ```
 *
 * (bun test evaluates this module once for the whole run, so a hook or a default timeout set here would
 * belong to the first test file only.) As a backstop, spawned processes get SIGKILL from the kernel when the test
 * runner dies (`setpriv --pdeathsig KILL`, where available): bun test never emits process `'exit'`.
 * @module
 */

import { afterAll, expect, setDefaultTimeout } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { join } from "node:path";

/**
 * Sets up the calling test file: a 60 s default timeout (end-to-end tests start processes and move
 * megabytes; each also bounds its own waits) and {@link cleanup} after its last test.
 */
export function setupFile(): void {
  setDefaultTimeout(60_000);
  afterAll(cleanup);
}

/** Repository root (where server.ts and client.ts live). */
export const ROOT = join(import.meta.dir, "..");

const cleanups: (() => unknown)[] = [];
/** Registers something to stop by the next {@link cleanup} (the end of the test file), whatever happened. */
export function defer(stop: () => unknown): void {
  cleanups.push(stop);
}

/**
 * Stops everything registered with {@link defer} so far (processes, services, sockets), newest first;
 * errors are ignored and each step is bounded. Every test file registers it through {@link setupFile}.
 */
export async function cleanup(): Promise<void> {
  for (const stop of cleanups.splice(0).reverse()) {
    try {
      await withTimeout(Promise.resolve().then(stop), 5000, "cleanup step");
    } catch {}
  }
}

// Kernel backstop: the child gets SIGKILL when the test runner exits or crashes. setpriv execs the
// command, so the PID is the command's own.
const SETPRIV = process.platform === "linux" ? Bun.which("setpriv") : null;

/** A spawned role process with its output collected line by line. */
export interface RoleProcess {
  proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  stdout: () => string;
  stderr: () => string;
  /** Resolves with the first match of `pattern` in stdout or stderr, or rejects after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code once the process exited and its output was read, or rejects after `timeoutMs`. */
  exited(timeoutMs?: number): Promise<number>;
  kill(signal?: NodeJS.Signals): void;
}

/**
 * Spawns `cmd` in the repository root with its output captured and the API-key and server env vars
 * cleared (then `env` applied). It is killed (SIGKILL by PID) by {@link cleanup}.
 */
export function spawnRole(cmd: string[], env: Record<string, string | undefined> = {}): RoleProcess {
  const proc = Bun.spawn(SETPRIV ? [SETPRIV, "--pdeathsig", "KILL", ...cmd] : cmd, {
    cwd: ROOT,
    env: { ...process.env, SOCKETS_SINGLE_API_KEY: "", SOCKETS_API_KEY: "", SOCKETS_SERVER: "", ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  let out = "";
  let err = "";
  const listeners = new Set<() => void>();
  const pump = async (stream: ReadableStream<Uint8Array>, append: (s: string) => void) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      append(decoder.decode(chunk, { stream: true }));
      for (const l of listeners) l();
    }
  };
  const pumped = Promise.all([
    pump(proc.stdout, (s) => {
      out += s;
    }),
    pump(proc.stderr, (s) => {
      err += s;
    }),
  ]).catch(() => {});
  defer(async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await withTimeout(proc.exited, 3000, `process ${proc.pid} did not die`);
  });
  const role: RoleProcess = {
    proc,
    stdout: () => out,
    stderr: () => err,
    waitFor(pattern, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const match = out.match(pattern) ?? err.match(pattern);
          if (match) {
            finish();
            resolve(match);
          }
        };
        const timer = setTimeout(() => {
          finish();
          reject(new Error(`timed out waiting for ${pattern}\nstdout: ${out}\nstderr: ${err}`));
        }, timeoutMs);
        const finish = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
        void proc.exited.then(() => setTimeout(check, 50));
      });
    },
    exited(timeoutMs = 10_000) {
      return withTimeout(
        Promise.all([proc.exited, pumped]).then(([code]) => code),
        timeoutMs,
        `process ${cmd.join(" ")} did not exit`,
      );
    },
    kill(signal = "SIGTERM") {
      proc.kill(signal);
    },
  };
  return role;
}

/** How a process that ran to its end went. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit, in ms. */
  ms: number;
}

/** Runs `cmd` (see {@link spawnRole}) to its end; rejects if it does not exit within `timeoutMs`. */
export async function runToExit(
  cmd: string[],
  env: Record<string, string | undefined> = {},
  timeoutMs = 10_000,
): Promise<RunResult> {
  const started = performance.now();
  const role = spawnRole(cmd, env);
  const code = await role.exited(timeoutMs);
  return { code, stdout: role.stdout(), stderr: role.stderr(), ms: performance.now() - started };
}

/**
 * Asserts the CLI error contract: non-zero exit, nothing on stdout, exactly one line on stderr that
 * matches `pattern`, no stack trace, and an exit within `withinMs`.
 */
export function expectOneLineError(result: RunResult, pattern: RegExp, withinMs = 5000): void {
  const context = `stdout: ${result.stdout}\nstderr: ${result.stderr}`;
  expect(result.code, context).not.toBe(0);
  expect(result.stdout, context).toBe("");
  const lines = result.stderr.split("\n").filter((line) => line.trim() !== "");
  expect(lines, context).toHaveLength(1);
  expect(lines[0], context).toMatch(pattern);
  expect(result.stderr, context).not.toMatch(/^\s+at /m);
  expect(result.ms).toBeLessThan(withinMs);
}

/** A TCP port on 127.0.0.1 that nothing listens on (taken from the kernel, then released). */
export function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

/** Rejects with `message` if `promise` takes longer than `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${message} within ${ms} ms`)), ms);
    }),
  ]);
}

/** A server process on a free port. */
export interface ServerProcess extends RoleProcess {
  port: number;
  url: string;
  health(): Promise<{ clients: number; tunnels: number; streams: number }>;
}

/** Starts `bun server.ts` on 127.0.0.1 and a free port; waits for its listening line. */
export async function startServerProcess(
  args: string[] = [],
  env: Record<string, string | undefined> = {},
  cmd: string[] = ["bun", "server.ts"],
): Promise<ServerProcess> {
  const role = spawnRole([...cmd, "--host", "127.0.0.1", "--port", "0", ...args], env);
  const match = await role.waitFor(/listening on (wss?):\/\/\S+:(\d+)/);
  const port = Number(match[2]);
  const scheme = match[1] === "wss" ? "https" : "http";
  return {
    ...role,
    port,
    url: `${match[1]}://127.0.0.1:${port}`,
    async health() {
      const response = await fetch(`${scheme}://127.0.0.1:${port}/health`, {
        tls: { rejectUnauthorized: false },
      } as RequestInit);
      return (await response.json()) as { clients: number; tunnels: number; streams: number };
    },
  };
}

/** A client process with its tunnels' public ports. */
export interface ClientProcess extends RoleProcess {
  tunnels: { id: string; port: number }[];
}

/** Starts `bun client.ts` exposing `targets`; waits for one exposed line per target. */
export async function startClientProcess(
  server: string,
  targets: string[],
  args: string[] = [],
  env: Record<string, string | undefined> = {},
  cmd: string[] = ["bun", "client.ts"],
): Promise<ClientProcess> {
  const role = spawnRole(
    [...cmd, "--server", server, ...targets.flatMap((t) => ["--expose", t]), ...args],
    env,
  );
  const pattern = new RegExp(`(?:exposed with tunnel id \\S+, url: \\S+:\\d+\\n[^]*){${targets.length}}`);
  await role.waitFor(pattern);
  const tunnels = [...role.stdout().matchAll(/exposed with tunnel id (\S+), url: \S+:(\d+)/g)].map((m) => ({
    id: m[1] as string,
    port: Number(m[2]),
  }));
  return { ...role, tunnels };
}

/** A server process with HTTP tunnels, and the port they are served on. */
export type HttpServerProcess = ServerProcess & { httpPort: number };

/** A server process with HTTP tunnels under `localhost`, and the port they are served on. */
export async function startHttpServer(args: string[] = ["--http-port", "0"]): Promise<HttpServerProcess> {
  const server = await startServerProcess([...args, "--domain", "localhost"]);
  const httpPort = Number((await server.waitFor(/http tunnels on https?:\/\/\*\.localhost:(\d+)/))[1]);
  return { ...server, httpPort };
}

/** A client publishing the web app on 127.0.0.1:`appPort` as HTTP tunnel `name`; resolves once exposed. */
export async function startHttpClient(
  serverUrl: string,
  appPort: number,
  name: string,
  args: string[] = [],
): Promise<ClientProcess> {
  const client = await startClientProcess(
    serverUrl,
    [],
    ["--http", `127.0.0.1:${appPort}`, "--subdomain", name, ...args],
  );
  await client.waitFor(/exposed with tunnel id \S+, url: http/);
  return client;
}

/**
 * Makes a self-signed EC certificate with openssl into `dir` (`NAME.pem`, `NAME.key`) for the
 * given subjectAltName (e.g. `DNS:localhost,IP:127.0.0.1`); resolves with [certFile, keyFile].
 */
export async function makeCertificate(
  dir: string,
  name: string,
  subjectAltName: string,
): Promise<[string, string]> {
  if (!Bun.which("openssl")) throw new Error("openssl is not installed (apt-get install openssl)");
  const [certFile, keyFile] = [join(dir, `${name}.pem`), join(dir, `${name}.key`)];
  const result = await runToExit([
    "openssl",
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=localhost",
    "-addext",
    `subjectAltName=${subjectAltName}`,
    "-keyout",
    keyFile,
    "-out",
    certFile,
  ]);
  if (result.code !== 0) throw new Error(`openssl failed: ${result.stderr}`);
  return [certFile, keyFile];
}

/** A local web app's answer to an upload: `{ bytes, sha256 }` of the request body, hashed as it streams. */
export async function hashBodyResponse(req: Request): Promise<Response> {
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of req.body ?? []) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  return Response.json({ bytes, sha256: hash.digest("hex") });
}

/** A local service for tests, in this process. */
export interface LocalService {
  port: number;
  /** Connections accepted so far. */
  accepted: number;
  stop(): void;
}

/** An echo service that can also be stopped and started again on the same port. */
export interface EchoService extends LocalService {
  /** Listens again on the same port after {@link LocalService.stop}. */
  restart(): void;
}

/** One mebibyte, for test sizes. */
export const MiB = 1024 * 1024;

/**
 * Writes the queued chunks to `socket` in order until the kernel takes less than given; keeps the
 * rest queued. Returns true once the queue is empty (the test doubles' drain handlers).
 */
export function writeQueued(socket: { write(chunk: Uint8Array): number }, queue: Uint8Array[]): boolean {
  while (queue.length > 0) {
    const chunk = queue[0] as Uint8Array;
    const n = socket.write(chunk);
    if (n < chunk.length) {
      queue[0] = chunk.subarray(Math.max(n, 0));
      return false;
    }
    queue.shift();
  }
  return true;
}

/**
 * An echo service that writes back everything (respecting backpressure) and half-closes after the
 * peer's FIN; on `port`, or a free one.
 */
export function startEchoService(port = 0): EchoService {
  const listen = (p: number) =>
    Bun.listen<{ pending: Uint8Array[]; ended: boolean }>({
      hostname: "127.0.0.1",
      port: p,
      allowHalfOpen: true,
      socket: {
        open(socket) {
          socket.data = { pending: [], ended: false };
          service.accepted++;
        },
        data(socket, chunk) {
          if (socket.data.pending.length > 0) {
            socket.data.pending.push(chunk);
            return;
          }
          const n = socket.write(chunk);
          if (n < chunk.length) {
            socket.data.pending.push(chunk.subarray(Math.max(n, 0)));
            socket.pause();
          }
        },
        drain(socket) {
          if (!writeQueued(socket, socket.data.pending)) return;
          socket.resume();
          if (socket.data.ended) socket.shutdown();
        },
        end(socket) {
          socket.data.ended = true;
          if (socket.data.pending.length === 0) socket.shutdown();
        },
      },
    });
  let listener: ReturnType<typeof listen> | null = listen(port);
  const service: EchoService = {
    port: listener.port,
    accepted: 0,
    stop() {
      listener?.stop(true);
      listener = null;
    },
    restart() {
      if (!listener) listener = listen(service.port);
    },
  };
  defer(service.stop);
  return service;
}

/** sha256 hex of bytes. */
export function sha256(data: Uint8Array | Uint8Array[]): string {
  const hash = createHash("sha256");
  for (const chunk of Array.isArray(data) ? data : [data]) hash.update(chunk);
  return hash.digest("hex");
}

/** Random bytes. */
export function randomData(size: number): Uint8Array {
  return new Uint8Array(randomBytes(size));
}

/** Connects a visitor (node:net) and resolves once connected. */
export function connectVisitor(port: number, host = "127.0.0.1"): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host, allowHalfOpen: true });
    socket.once("connect", () => resolve(socket));
    socket.once("error", reject);
    defer(() => socket.destroy());
  });
}

/** Reads a socket to its end; resolves with what arrived (hash and length), rejects on error. */
export function readAll(socket: Socket): Promise<{ bytes: number; sha256: string; chunks: Uint8Array[] }> {
  return new Promise((resolve, reject) => {
    const chunks: Uint8Array[] = [];
    let bytes = 0;
    socket.on("data", (chunk: Uint8Array) => {
      chunks.push(chunk);
      bytes += chunk.length;
    });
    socket.once("end", () => resolve({ bytes, sha256: sha256(chunks), chunks }));
    socket.once("error", reject);
  });
}

/**
 * Sends `data` through a visitor connection, half-closes, and reads the echo to its end.
 * Resolves with the sha256 of what came back.
 */
export async function echoThrough(port: number, data: Uint8Array, timeoutMs = 30_000): Promise<string> {
  const socket = await connectVisitor(port);
  const received = readAll(socket);
  socket.end(data);
  const result = await withTimeout(received, timeoutMs, `echo of ${data.length} bytes did not complete`);
  socket.destroy();
  return result.sha256;
}

/** Resolves once the peer closed `socket` (EOF or reset), or rejects after `timeoutMs`. */
export function closedWithin(socket: Socket, timeoutMs: number): Promise<void> {
  return withTimeout(
    new Promise<void>((resolve) => {
      if (socket.closed || socket.readableEnded) resolve();
      socket.once("close", () => resolve());
      socket.once("end", () => resolve());
      socket.resume();
    }),
    timeoutMs,
    "socket did not close",
  );
}

/**
 * Connects a visitor and resolves once the peer closed it (EOF or reset, even a reset that beats the
 * handshake's completion on loopback); rejects if the port refuses the connection or after `timeoutMs`.
 */
export function visitUntilClosed(port: number, timeoutMs: number, host = "127.0.0.1"): Promise<void> {
  const socket = connect({ port, host, allowHalfOpen: true });
  defer(() => socket.destroy());
  return withTimeout(
    new Promise<void>((resolve, reject) => {
      socket.on("error", (error: NodeJS.ErrnoException) => {
        if (error.code === "ECONNREFUSED") reject(error);
        else resolve();
      });
      socket.once("end", () => resolve());
      socket.once("close", () => resolve());
      socket.resume();
    }),
    timeoutMs,
    "visitor was not closed",
  ).finally(() => socket.destroy());
}

/** Polls `check` every 50 ms until it returns true, for at most `timeoutMs`. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  what = "condition",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await Bun.sleep(50);
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms`);
}

/** Resident set size of a process in KiB (from /proc). */
export async function rssKiB(pid: number): Promise<number> {
  const status = await Bun.file(`/proc/${pid}/status`).text();
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}
