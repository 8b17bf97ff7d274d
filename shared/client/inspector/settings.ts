/**
 * Inspector settings: where it listens (`--inspect`) and how much it keeps (`--inspect-buffer`), in a
 * module of their own so that the option table reads them without loading the inspector.
 * @module
 */

import { type HostPort, parseHostPort, UsageError } from "../../args.ts";

/** Where the inspector listens unless told otherwise. */
export const DEFAULT_INSPECT: HostPort = { host: "127.0.0.1", port: 4040 };

/** How many exchanges (and recent TCP connections) the inspector keeps, by default. */
export const DEFAULT_CAPACITY = 500;

/** `--inspect`'s value: an address, or off. */
export type InspectSetting = HostPort | "off";

/**
 * Parses `--inspect`: `off`, `HOST:PORT`, `[IPv6]:PORT` or a bare `PORT` (on 127.0.0.1); port 0 takes
 * any free port.
 * @throws {UsageError} naming the flag and the value.
 */
export function parseInspect(text: string, flag: string): InspectSetting {
  if (text === "off") return "off";
  const anyPort = /(^|:)0$/.test(text);
  try {
    const address = parseHostPort(anyPort ? text.replace(/0$/, "1") : text, flag);
    return anyPort ? { host: address.host, port: 0 } : address;
  } catch {
    throw new UsageError(`${flag}: '${text}' is not HOST:PORT, PORT or off`);
  }
}
