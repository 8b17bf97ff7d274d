/**
 * One-line logs on stderr, tagged with the role. Never on the relay's hot path.
 * @module
 */

/** A logger for one role. */
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** Returns a logger that writes `[role] message` lines to stderr; `quiet` drops info lines. */
export function createLogger(role: string, quiet = false): Logger {
  const write = (level: string, message: string) =>
    process.stderr.write(`${new Date().toISOString()} [${role}] ${level}${message}\n`);
  return {
    info: (message) => {
      if (!quiet) write("", message);
    },
    warn: (message) => write("WARNING: ", message),
    error: (message) => write("error: ", message),
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

/** How the user started this role: `bun server.ts`, or the executable's name when compiled. */
export function commandName(script: string): string {
  // Modules of a `bun build --compile` executable live in its embedded /$bunfs/ file system.
  const compiled = import.meta.path.startsWith("/$bunfs/");
  return compiled ? (process.execPath.split("/").pop() as string) : `bun ${script}`;
}
