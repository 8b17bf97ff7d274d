/**
 * Allocator tuning for the relay, applied by re-executing the process once at start.
 *
 * Bun hands every socket read to JavaScript in a freshly allocated buffer. mimalloc (Bun's allocator)
 * gives freed pages back to the kernel soon after, so on a busy tunnel each new read buffer faults its
 * pages in again and the kernel zeroes them: ~20% of the relaying process's CPU with 8 bulk streams.
 * `MIMALLOC_PURGE_DELAY=-1` keeps freed pages for reuse instead. Any finite delay, even 10 s, lost
 * most of the gain here. mimalloc reads its options once, when the process starts, so the only way to
 * set it from inside is to start again: `execve` of the same command with the variable added (same
 * PID, same descriptors), before anything was printed or listened on.
 *
 * The price: memory freed after a burst stays with the process (reused by the next burst, never
 * returned to the system). The client uses it: it runs beside the service, for one user, and keeps
 * ~85-100 MiB after a multi-GiB burst against ~55-60 MiB untuned, for 14-18% more download
 * throughput (PERFORMANCE.md). The server does not by default: on a shared, long-running host it would
 * keep its peak (~0.5 GiB after 8 parallel 1 GiB uploads); `MIMALLOC_PURGE_DELAY=-1 bun server.ts`
 * opts in (both sides tuned: +27% upload on one connection, +40% on eight). Setting `MIMALLOC_PURGE_DELAY` yourself keeps your value and skips the
 * re-exec.
 @module
 */

import { dlopen, FFIType, ptr } from "bun:ffi";

/** The environment variable mimalloc reads its purge delay (ms) from. */
export const PURGE_DELAY_VARIABLE = "MIMALLOC_PURGE_DELAY";
/** Never purge: freed pages stay mapped for the next allocation. */
const RETAIN = "-1";

/** A C string array (argv/envp) for execve: NUL-terminated strings, then a null pointer. */
function cStringArray(items: string[]): { pointers: BigUint64Array; keep: Buffer[] } {
  const keep = items.map((item) => Buffer.from(`${item}\0`));
  const pointers = new BigUint64Array(keep.length + 1);
  for (const [i, buffer] of keep.entries()) pointers[i] = BigInt(ptr(buffer));
  return { pointers, keep };
}

/** The command line that started this process, as execve needs it. */
function ownCommand(): string[] {
  // A `bun build --compile` executable runs its embedded entry from /$bunfs/: no script to name.
  const compiled = Bun.main.startsWith("/$bunfs/");
  const scriptAndArgs = compiled ? process.argv.slice(2) : process.argv.slice(1);
  return [process.execPath, ...(compiled ? [] : process.execArgv), ...scriptAndArgs];
}

/**
 * Re-executes this process with {@link PURGE_DELAY_VARIABLE} set, unless it is set already or this is
 * not Linux. Returns only when nothing was done or execve failed (the process then runs untuned).
 * Call it first thing in a role's entry point, before any output or socket.
 */
export function tuneAllocatorOrReexec(): void {
  if (process.platform !== "linux" || process.env[PURGE_DELAY_VARIABLE] !== undefined) return;
  let libc: ReturnType<typeof openLibc>;
  try {
    libc = openLibc();
  } catch {
    return; // not glibc (musl, …): run untuned rather than fail
  }
  const command = ownCommand();
  const env = { ...process.env, [PURGE_DELAY_VARIABLE]: RETAIN };
  const argv = cStringArray(command);
  const envp = cStringArray(Object.entries(env).map(([key, value]) => `${key}=${value ?? ""}`));
  const path = Buffer.from(`${command[0]}\0`);
  libc.symbols.execve(ptr(path), ptr(argv.pointers), ptr(envp.pointers));
  // Still here: execve failed. Nothing was changed; go on untuned.
  libc.close();
}

function openLibc() {
  return dlopen("libc.so.6", {
    execve: { args: [FFIType.ptr, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  });
}
