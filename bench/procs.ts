/**
 * Processes for the benchmark: spawn each in its own process group, collect its output, wait for a line
 * with a deadline, and kill it by PID (group first) on stop, on error and on SIGINT.
 * @module
 */

import { readdirSync, readFileSync } from "node:fs";

/** A spawned process with its output collected. */
export interface Proc {
  pid: number;
  proc: Bun.Subprocess<"pipe" | "ignore", "pipe", "pipe">;
  /** Everything printed so far on stdout. */
  stdout(): string;
  /** Everything printed so far on stderr. */
  stderr(): string;
  /** Resolves with the first match in stdout or stderr; rejects on timeout or if the process exits first. */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  /** Writes to stdin (spawned with `stdin: true` only). */
  write(text: string): void;
  /** Exit code once exited, else null. */
  exitCode(): number | null;
  /** SIGTERM to the group, SIGKILL after `graceMs`; resolves once exited. */
  stop(graceMs?: number): Promise<void>;
}

const live = new Set<Proc>();
const exitHooks = new Set<() => void>();

/** Registers a synchronous cleanup (e.g. removing a temp dir) for {@link killAll}; returns its remover. */
export function atExit(hook: () => void): () => void {
  exitHooks.add(hook);
  return () => exitHooks.delete(hook);
}

/** Kills every process still running (SIGKILL, group and PID), then runs the exit hooks. For exit paths. */
export function killAll(): void {
  for (const p of live) signal(p.pid, "SIGKILL");
  live.clear();
  for (const hook of exitHooks) {
    try {
      hook();
    } catch {}
  }
  exitHooks.clear();
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {}
  try {
    process.kill(pid, sig);
  } catch {}
}

/** Options for {@link spawn}. */
export interface SpawnOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Keep a pipe to stdin (for processes that live as long as it stays open). */
  stdin?: boolean;
}

/** Spawns `cmd` detached (own process group) with stdout and stderr collected. */
export function spawn(cmd: string[], options: SpawnOptions = {}): Proc {
  const proc = Bun.spawn(cmd, {
    cwd: options.cwd,
    env: { ...process.env, ...options.env },
    stdin: options.stdin ? "pipe" : "ignore",
    stdout: "pipe",
    stderr: "pipe",
    detached: true,
  });
  let out = "";
  let err = "";
  let exited = false;
  const wake = new Set<() => void>();
  const notify = () => {
    for (const w of wake) w();
  };
  const pump = async (stream: ReadableStream<Uint8Array>, append: (s: string) => void) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      append(decoder.decode(chunk, { stream: true }));
      notify();
    }
  };
  void pump(proc.stdout, (s) => {
    out += s;
  });
  void pump(proc.stderr, (s) => {
    err += s;
  });
  const handle: Proc = {
    pid: proc.pid,
    proc,
    stdout: () => out,
    stderr: () => err,
    exitCode: () => proc.exitCode,
    waitFor(pattern, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const match = out.match(pattern) ?? err.match(pattern);
          if (match) {
            done();
            resolve(match);
          } else if (exited) {
            done();
            reject(new Error(`${cmd[0]} exited (${proc.exitCode}) before printing ${pattern}: ${tail(err)}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${cmd[0]}: no ${pattern} within ${timeoutMs} ms: ${tail(err || out)}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          wake.delete(check);
        };
        wake.add(check);
        check();
      });
    },
    write(text) {
      const sink = proc.stdin;
      if (sink && typeof sink !== "number") {
        sink.write(text);
        sink.flush();
      }
    },
    async stop(graceMs = 2000) {
      if (!exited) {
        signal(proc.pid, "SIGTERM");
        const timer = setTimeout(() => signal(proc.pid, "SIGKILL"), graceMs);
        await proc.exited;
        clearTimeout(timer);
      }
      // Whatever is left in its group (children) goes too.
      signal(proc.pid, "SIGKILL");
      live.delete(handle);
    },
  };
  live.add(handle);
  void proc.exited.then(() => {
    exited = true;
    notify();
  });
  return handle;
}

function tail(text: string): string {
  return text.trim().split("\n").slice(-3).join(" | ").slice(0, 300);
}

/** Runs a command to completion with a deadline; resolves with its exit code and output. */
export async function run(
  cmd: string[],
  timeoutMs: number,
  options: SpawnOptions = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = spawn(cmd, options);
  const timer = setTimeout(() => signal(p.pid, "SIGKILL"), timeoutMs);
  const code = await p.proc.exited;
  clearTimeout(timer);
  await Bun.sleep(0);
  live.delete(p);
  return { code, stdout: p.stdout(), stderr: p.stderr() };
}

/** A free TCP port on 127.0.0.1: bind port 0, read it, release it. */
export function freePort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

/** Resolves once 127.0.0.1:port accepts a connection; rejects after `timeoutMs`. */
export async function waitForPort(port: number, timeoutMs: number, alive?: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; attempt < 1000 && Date.now() < deadline; attempt++) {
    if (alive && !alive()) throw new Error(`process exited before port ${port} accepted connections`);
    try {
      const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
      socket.end();
      return;
    } catch {
      await Bun.sleep(50);
    }
  }
  throw new Error(`port ${port} did not accept connections within ${timeoutMs} ms`);
}

// ---------- /proc ----------

/** Resident set size of a process in KiB (VmRSS), or 0 if it is gone. */
export function rssKiB(pid: number): number {
  try {
    const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** The fields of a /proc stat file after the command name (state is [0]), or null when unreadable. */
function statFields(path: string): string[] | null {
  try {
    const text = readFileSync(path, "utf8");
    return text.slice(text.lastIndexOf(")") + 2).split(" ");
  } catch {
    return null;
  }
}

/** CPU ticks (user + system) from a /proc stat file; 0 when unreadable. */
function statTicks(path: string): number {
  // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
  const fields = statFields(path);
  return fields ? Number(fields[11]) + Number(fields[12]) : 0;
}

/** Minor page faults of a process so far (field 10 of its stat); 0 if it is gone. */
export function minorFaults(pid: number): number {
  const fields = statFields(`/proc/${pid}/stat`);
  return fields ? Number(fields[7]) : 0;
}

/** Clock ticks per second of /proc CPU times (USER_HZ; 100 on Linux). */
export const CLK_TCK = 100;

/** CPU ticks of a process and of each of its threads. */
export interface CpuSample {
  total: number;
  threads: Map<number, number>;
}

/** Samples the CPU ticks of a process and its threads. */
export function cpuSample(pid: number): CpuSample {
  const threads = new Map<number, number>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`))
      threads.set(Number(tid), statTicks(`/proc/${pid}/task/${tid}/stat`));
  } catch {}
  return { total: statTicks(`/proc/${pid}/stat`), threads };
}

/**
 * Busy and total CPU ticks of the whole machine (all cores), from /proc/stat. Busy counts user, nice,
 * system and steal time; interrupt time is left out, as on loopback it is mostly our own traffic.
 */
export function machineTicks(): { busy: number; total: number } {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
    // cpu user nice system idle iowait irq softirq steal (guest time is already in user)
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line
      .trim()
      .split(/\s+/)
      .slice(1, 9)
      .map(Number);
    return {
      busy: user + nice + system + steal,
      total: user + nice + system + idle + iowait + irq + softirq + steal,
    };
  } catch {
    return { busy: 0, total: 0 };
  }
}

/** Parent PID of a process, or 0. */
function parentOf(pid: number): number {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(text.slice(text.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return 0;
  }
}

/** Every descendant of `root` (children, grandchildren, …), from /proc. */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    const parent = parentOf(pid);
    const list = children.get(parent);
    if (list) list.push(pid);
    else children.set(parent, [pid]);
  }
  const out: number[] = [];
  const queue = [root];
  for (let i = 0; i < queue.length && i < 10_000; i++) {
    for (const child of children.get(queue[i] as number) ?? []) {
      out.push(child);
      queue.push(child);
    }
  }
  return out;
}
