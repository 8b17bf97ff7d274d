/**
 * Test support, processes: real server and client processes with their output collected, runs to exit,
 * bounded waits, and cleanup that runs even when a test fails. The other support modules (services,
 * sockets, certificates, hashing, faults, raw-http) register what they start with {@link defer} too.
 *
 * Every end-to-end test file must call, at its top level:
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
import { closeSync, mkdtempSync, openSync, readdirSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
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
export const ROOT = join(import.meta.dir, "..", "..");

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

/** A spawned role process with its output collected as it is written. */
export interface RoleProcess {
  proc: Bun.Subprocess<"ignore", number, number>;
  stdout: () => string;
  stderr: () => string;
  /** Resolves with the first match of `pattern` in stdout or stderr, or rejects after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code once the process exited and its output was read, or rejects after `timeoutMs`. */
  exited(timeoutMs?: number): Promise<number>;
  kill(signal?: NodeJS.Signals): void;
}

/** How often a role's output files are read for new bytes (the latency of {@link RoleProcess.waitFor}). */
const OUTPUT_POLL_MS = 10;

/** New bytes of an output file, read from where the last call stopped. */
function fileTail(path: string): { read: () => string; close: () => void } {
  const fd = openSync(path, "r");
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(64 * 1024);
  let closed = false;
  return {
    read() {
      if (closed) return "";
      let text = "";
      for (;;) {
        const n = readSync(fd, buffer, 0, buffer.length, null);
        if (n <= 0) return text;
        text += decoder.decode(buffer.subarray(0, n), { stream: true });
      }
    },
    close() {
      if (!closed) closeSync(fd);
      closed = true;
    },
  };
}

/**
 * Spawns `cmd` in the repository root with its output captured, the API-key and server env vars
 * cleared and the client's inspector off (then `env` applied). It is killed (SIGKILL by PID) by {@link cleanup}.
 *
 * Its stdout and stderr go to files that are read every {@link OUTPUT_POLL_MS} ms, not to pipes: Bun
 * 1.4.5's reader of a child's pipe stopped now and then for good, with the child's lines waiting unread
 * in the socket (`ss -x` showed its Recv-Q growing while the stream's read never resolved); a later
 * `waitFor` then timed out on a line the child had written (tests/e2e/reload.test.ts, 1 run in 10).
 */
export function spawnRole(cmd: string[], env: Record<string, string | undefined> = {}): RoleProcess {
  const folder = mkdtempSync(join(tmpdir(), "sockets-role-"));
  const outPath = join(folder, "stdout");
  const errPath = join(folder, "stderr");
  const outFd = openSync(outPath, "w");
  const errFd = openSync(errPath, "w");
  let proc: Bun.Subprocess<"ignore", number, number>;
  try {
    proc = Bun.spawn(SETPRIV ? [SETPRIV, "--pdeathsig", "KILL", ...cmd] : cmd, {
      cwd: ROOT,
      // The client's inspector is off unless a test asks for it (`--inspect`, or this variable).
      env: {
        ...process.env,
        SOCKETS_SINGLE_API_KEY: "",
        SOCKETS_API_KEY: "",
        SOCKETS_SERVER: "",
        SOCKETS_INSPECT: "off",
        ...env,
      },
      stdin: "ignore",
      stdout: outFd,
      stderr: errFd,
    });
  } finally {
    // The child has its own copies.
    closeSync(outFd);
    closeSync(errFd);
  }
  const outTail = fileTail(outPath);
  const errTail = fileTail(errPath);
  // Both ends are open (the child's and ours): the names are no longer needed.
  rmSync(folder, { recursive: true, force: true });
  let out = "";
  let err = "";
  const listeners = new Set<() => void>();
  /** Takes up what the process wrote since the last call; tells the waiters when there was some. */
  const poll = () => {
    const more = [outTail.read(), errTail.read()];
    out += more[0];
    err += more[1];
    if (more[0] !== "" || more[1] !== "") for (const l of listeners) l();
  };
  const timer = setInterval(poll, OUTPUT_POLL_MS);
  // Once it exited, everything it wrote is in the files: one last read.
  const drained = proc.exited.then(() => {
    clearInterval(timer);
    poll();
    outTail.close();
    errTail.close();
  });
  defer(async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await withTimeout(drained, 3000, `process ${proc.pid} did not die`);
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
        void drained.then(check);
      });
    },
    exited(timeoutMs = 10_000) {
      return withTimeout(
        drained.then(() => proc.exited),
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

/** What `GET /health` answers (the fields every test reads; some tests read more). */
export interface Health {
  status: string;
  protocol: number;
  clients: number;
  tunnels: number;
  streams: number;
  reserved: number;
}

/** A server process with its control port and a typed /health. */
export interface ServerProcess extends RoleProcess {
  port: number;
  url: string;
  health(): Promise<Health>;
}

/** Where and how {@link startServerProcess} starts a server. */
export interface ServerStart {
  /** The control port: 0 (the default) for any free one, or a chosen one (to restart a server where it was). */
  port?: number;
  /** The command in place of `bun server.ts` (e.g. the compiled executable). */
  cmd?: string[];
}

/**
 * Starts a server (`bun server.ts`, or `start.cmd`) on 127.0.0.1 and `start.port` (default: a free
 * port) and waits for its listening line; rejects if it exits first.
 */
export async function startServerProcess(
  args: string[] = [],
  env: Record<string, string | undefined> = {},
  start: ServerStart = {},
): Promise<ServerProcess> {
  const cmd = start.cmd ?? ["bun", "server.ts"];
  const role = spawnRole([...cmd, "--host", "127.0.0.1", "--port", String(start.port ?? 0), ...args], env);
  const match = await Promise.race([
    role.waitFor(/listening on (wss?):\/\/\S+:(\d+) /),
    role.proc.exited.then((code) => {
      throw new Error(`server exited (${code}) before listening: ${role.stderr()}`);
    }),
  ]);
  const port = Number(match[2]);
  const scheme = match[1] === "wss" ? "https" : "http";
  return {
    ...role,
    port,
    url: `${match[1]}://127.0.0.1:${port}`,
    async health() {
      const response = await fetch(`${scheme}://127.0.0.1:${port}/health`, {
        tls: { rejectUnauthorized: false },
        signal: AbortSignal.timeout(3000),
      } as RequestInit);
      return (await response.json()) as Health;
    },
  };
}

/** A client process with its tunnels' public ports. */
export interface ClientProcess extends RoleProcess {
  tunnels: { id: string; port: number }[];
}

/** The `(id, port)` of every `exposed` line a client printed so far. */
export function exposedLines(stdout: string): { id: string; port: number }[] {
  return [...stdout.matchAll(/exposed with tunnel id (\S+), url: \S+:(\d+)/g)].map((m) => ({
    id: m[1] as string,
    port: Number(m[2]),
  }));
}

/** Number of matches of `pattern` (which must have the `g` flag) in `text` (a process's output). */
export function count(text: string, pattern: RegExp): number {
  return [...text.matchAll(pattern)].length;
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
  return { ...role, tunnels: exposedLines(role.stdout()) };
}

/** A server process with HTTP tunnels, and the port they are served on. */
export type HttpServerProcess = ServerProcess & { httpPort: number };

/** A server process with HTTP tunnels under `localhost`, and the port they are served on. */
export async function startHttpServer(args: string[] = ["--http-port", "0"]): Promise<HttpServerProcess> {
  const server = await startServerProcess([...args, "--domain", "localhost"]);
  const httpPort = Number((await server.waitFor(/http tunnels on https?:\/\/\*\.localhost:(\d+)\n/))[1]);
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
  await client.waitFor(/exposed with tunnel id \S+, url: http\S*\n/);
  return client;
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

/** Open descriptors of a process (from /proc). */
export function openDescriptors(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Sends SIGCONT at cleanup (before its kill), for a process a test may leave stopped. */
export function deferContinue(role: RoleProcess): void {
  defer(() => {
    if (role.proc.exitCode === null && role.proc.signalCode === null) {
      role.kill("SIGCONT");
    }
  });
}
