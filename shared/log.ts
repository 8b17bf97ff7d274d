/**
 * One-line logs on stderr, tagged with the role. Never on the relay's hot path. No colour, ever.
 * Under systemd with stderr connected to the journal (`JOURNAL_STREAM` names stderr), each line
 * starts with its syslog priority (`<6>` info, `<4>` warning, `<3>` error: journald reads the prefix
 * as the entry's level) instead of a timestamp (journald stamps each entry itself).
 * @module
 */

import { fstatSync } from "node:fs";

/** A logger for one role. */
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** Syslog priorities journald reads from a `<N>` line prefix. */
const PRIORITY = { info: 6, warn: 4, error: 3 } as const;

/**
 * Whether stderr is connected to the systemd journal: systemd sets `JOURNAL_STREAM` to the
 * `DEVICE:INODE` of the stream it connected, which a redirected stderr no longer is.
 */
export function stderrIsJournal(env: Record<string, string | undefined> = process.env): boolean {
  const stream = env.JOURNAL_STREAM;
  if (!stream) return false;
  try {
    const stat = fstatSync(2);
    return stream === `${stat.dev}:${stat.ino}`;
  } catch {
    return false;
  }
}

/**
 * Returns a logger that writes `TIME [role] message` lines to stderr (under journald,
 * `<PRIORITY>[role] message`); `quiet` drops info lines.
 */
export function createLogger(role: string, quiet = false): Logger {
  const journal = stderrIsJournal();
  const write = (level: keyof typeof PRIORITY, label: string, message: string) =>
    process.stderr.write(
      `${journal ? `<${PRIORITY[level]}>` : `${new Date().toISOString()} `}[${role}] ${label}${message}\n`,
    );
  return {
    info: (message) => {
      if (!quiet) write("info", "", message);
    },
    warn: (message) => write("warn", "WARNING: ", message),
    error: (message) => write("error", "error: ", message),
  };
}

/** Returns the first line of an error's message, for one-line reports. */
export function describeError(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  const line = text.split("\n")[0] ?? text;
  // Bun's listen errors say only "Failed to listen at HOST": the errno code says why.
  const code = (error as { code?: unknown } | null)?.code;
  const why = typeof code === "string" ? ERRNO_TEXT[code] : undefined;
  return why !== undefined && !line.includes(why) ? `${line}: ${why}` : line;
}

/** What the errno codes a listener or connection meets mean, in words. */
const ERRNO_TEXT: Record<string, string> = {
  EADDRINUSE: "address already in use",
  EACCES: "permission denied (ports below 1024 need privileges)",
  EADDRNOTAVAIL: "address not available on this machine",
};

/**
 * How the user started this role: `bun server.ts`, the executable's name when compiled, or the npm
 * package's command (`sockets-server`: its bin entry sets `SOCKETS_COMMAND`).
 */
export function commandName(script: string): string {
  const role = script.replace(/\.ts$/, "");
  if (process.env.SOCKETS_COMMAND?.startsWith("sockets-")) return `sockets-${role}`;
  // Modules of a `bun build --compile` executable live in its embedded /$bunfs/ file system.
  const compiled = import.meta.path.startsWith("/$bunfs/");
  return compiled ? (process.execPath.split("/").pop() as string) : `bun ${script}`;
}
