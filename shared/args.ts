/**
 * Parsing and validation of command-line values shared by both roles. Every failure is a
 * {@link UsageError} with one line that names the flag and the bad value.
 * @module
 */

import { type ParseArgsConfig, parseArgs } from "node:util";

/** Bad command-line input; the CLI prints its message on one line and exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
  /**
   * @param message one line naming the flag and the bad value.
   * @param seeHelp whether the CLI should point at `--help` (not when the message already names the fix).
   */
  constructor(
    message: string,
    readonly seeHelp = true,
  ) {
    super(message);
  }
}

/**
 * `parseArgs` from `node:util`, same config, whose errors are one-line {@link UsageError}s; an unknown
 * flag names the closest known one (`unknown option --prot; did you mean --port?`).
 */
export function parseFlags<const T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    throw flagError(error, config.options ?? {});
  }
}

/** The line a CLI prints for bad input: the message, and a pointer to `--help` unless it names the fix. */
export function usageLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const first = message.split("\n")[0] ?? message;
  return error instanceof UsageError && !error.seeHelp ? `error: ${first}` : `error: ${first} (see --help)`;
}

/** The options table of a parseArgs config. */
type FlagOptions = NonNullable<ParseArgsConfig["options"]>;

/** Turns parseArgs's error (its messages carry Node's advice about `--`) into one plain line. */
function flagError(error: unknown, options: FlagOptions): unknown {
  const { code, message } = error as { code?: string; message?: string };
  const text = message ?? "";
  const quoted = /'([^']*)'/.exec(text)?.[1] ?? "";
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    const flag = quoted.replace(/=.*$/, "");
    const best = closestFlag(flag, options);
    return best === undefined
      ? new UsageError(`unknown option ${flag}`)
      : new UsageError(`unknown option ${flag}; did you mean ${best}?`, false);
  }
  if (code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL")
    return new UsageError(`unexpected argument '${quoted}': every value follows its --flag`);
  if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    const flag = /--[\w-]+/.exec(quoted)?.[0] ?? quoted;
    return text.includes("does not take")
      ? new UsageError(`${flag} takes no value`)
      : new UsageError(`${flag} needs a value`);
  }
  return error;
}

/** The known flag nearest to `typed` (edit distance at most 2, or a prefix of it), if any. */
function closestFlag(typed: string, options: FlagOptions): string | undefined {
  const name = typed.replace(/^-+/, "");
  if (name === "") return undefined;
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const known of Object.keys(options)) {
    // A truncated flag (`--tls`) is as likely a slip as a typo, but a long guess from a short stub is not.
    const distance = known.startsWith(name) && name.length >= 3 ? 1 : editDistance(name, known);
    if (distance < bestDistance) [best, bestDistance] = [known, distance];
  }
  const limit = name.length <= 3 ? 1 : 2;
  return best !== undefined && bestDistance <= limit ? `--${best}` : undefined;
}

/** Levenshtein distance, with a swap of two neighbours counted as one edit (`--prot` → `--port`). */
function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  const at = (i: number, j: number) => (rows[i] as number[])[j] as number;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) {
      let d = Math.min(
        at(i - 1, j) + 1,
        at(i, j - 1) + 1,
        at(i - 1, j - 1) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        d = Math.min(d, at(i - 2, j - 2) + 1);
      (rows[i] as number[])[j] = d;
    }
  return at(a.length, b.length);
}

/** A host and a port. */
export interface HostPort {
  host: string;
  port: number;
}

/** An inclusive range of ports. */
export interface PortRange {
  min: number;
  max: number;
}

/** Parses a TCP port (1–65535, or 0 where `allowZero`). */
export function parsePort(value: string, flag: string, allowZero = false): number {
  const port = /^\d{1,5}$/.test(value) ? Number(value) : Number.NaN;
  if (!(port >= (allowZero ? 0 : 1) && port <= 65535))
    throw new UsageError(`${flag}: '${value}' is not a port (${allowZero ? 0 : 1}-65535)`);
  return port;
}

/** Parses `HOST:PORT`, `[IPv6]:PORT` or a bare `PORT` (host 127.0.0.1). */
export function parseHostPort(value: string, flag: string): HostPort {
  if (/^\d+$/.test(value)) return { host: "127.0.0.1", port: parsePort(value, flag) };
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):([^:]*)$/.exec(value);
  if (!match) throw new UsageError(`${flag}: '${value}' is not HOST:PORT`);
  const host = (match[1] ?? match[2]) as string;
  return { host, port: parsePort(match[3] as string, flag) };
}

/** Parses `MIN-MAX` (inclusive, MIN ≤ MAX). */
export function parsePortRange(value: string, flag: string): PortRange {
  const match = /^(\d+)-(\d+)$/.exec(value);
  if (!match) throw new UsageError(`${flag}: '${value}' is not a range MIN-MAX`);
  const min = parsePort(match[1] as string, flag);
  const max = parsePort(match[2] as string, flag);
  if (min > max) throw new UsageError(`${flag}: range ${value} is empty (MIN is above MAX)`);
  return { min, max };
}

/** Parses a `ws://` or `wss://` server URL. */
export function parseServerUrl(value: string, flag: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`${flag}: '${value}' is not a URL (expected ws://HOST:PORT or wss://HOST:PORT)`);
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:")
    throw new UsageError(`${flag}: '${value}' must start with ws:// or wss://`);
  return url;
}

/** Parses a positive integer option. */
export function parseCount(value: string, flag: string): number {
  const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!(n >= 1 && n <= 0x7fffffff)) throw new UsageError(`${flag}: '${value}' is not a positive integer`);
  return n;
}

/** Parses a number of seconds (decimals allowed) within `[min, max]`. */
export function parseSeconds(value: string, flag: string, min: number, max: number): number {
  const n = /^\d+(\.\d+)?$/.test(value) ? Number(value) : Number.NaN;
  if (!(n >= min && n <= max))
    throw new UsageError(`${flag}: '${value}' is not a number of seconds (${min}-${max})`);
  return n;
}

/**
 * An IPv4 peer of a dual-stack (`::`) socket as IPv4: `::ffff:192.0.2.1` → `192.0.2.1`; any other
 * address unchanged. For logs and X-Forwarded-For, where backends and people expect the IPv4 form.
 */
export function unmappedAddress(address: string): string {
  return address.replace(/^::ffff:(?=\d{1,3}(\.\d{1,3}){3}$)/i, "");
}

/** Formats a host for a URL (brackets around IPv6). */
export function formatHost(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/**
 * Whether a Host header names this machine by address or as localhost, not by a DNS name that could
 * be rebound to it (the inspector and the admin listener answer only such requests without a token).
 */
export function trustedHost(host: string | null): boolean {
  if (host === null) return false;
  const name = host
    .replace(/:\d+$/, "")
    .replace(/^\[|\]$/g, "")
    .toLowerCase();
  return (
    name === "localhost" ||
    name.endsWith(".localhost") ||
    /^\d{1,3}(\.\d{1,3}){3}$/.test(name) ||
    (name.includes(":") && /^[0-9a-f:.]+$/.test(name))
  );
}
