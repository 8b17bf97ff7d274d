/**
 * Parsing and validation of command-line values shared by both roles. Every failure is a
 * {@link UsageError} with one line that names the flag and the bad value.
 * @module
 */

/** Bad command-line input; the CLI prints its message on one line and exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
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

/** Formats a host for a URL (brackets around IPv6). */
export function formatHost(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}
