/**
 * Library calls checked as the command line is: each option a program passes to `startClient` or
 * `startServer` (package exports `sockets/client`, `sockets/server`) goes through the parser of the
 * flag it stands for, under that flag's name, so that a bad value rejects with the same one line the
 * command line prints (`--heartbeat: '0' must be …`).
 * @module
 */

import { UsageError } from "./args.ts";
import type { OptionTable } from "./options.ts";

/**
 * Checks and parses `input` against a role's option table. Keys in `own` are the library's own
 * (objects, callbacks: `server`, `expose`, `tls`, …) and are left to the caller. A string or number
 * goes through the option's parser with `--FLAG` as its name; a switch must be a boolean; an object is
 * taken as already parsed (a port range, an address).
 * @throws {UsageError} for an unknown key or a value the option's parser refuses.
 */
export function checkLibraryOptions(
  table: OptionTable,
  input: Record<string, unknown>,
  own: readonly string[],
): Record<string, unknown> {
  const flags = new Map(Object.entries(table).map(([flag, spec]) => [spec.key, flag]));
  const checked: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue;
    if (own.includes(key)) {
      checked[key] = value;
      continue;
    }
    const flag = flags.get(key);
    const spec = flag === undefined ? undefined : table[flag];
    if (flag === undefined || spec === undefined)
      throw new UsageError(
        `unknown option '${key}' (options: ${[...flags.keys(), ...own].sort().join(", ")})`,
      );
    const name = `--${flag}`;
    const parse = spec.parse;
    const one = (item: unknown): unknown => {
      if (spec.value === undefined) {
        if (typeof item !== "boolean")
          throw new UsageError(`${name}: '${String(item)}' must be true or false`);
        return item;
      }
      if (typeof item === "string" || typeof item === "number")
        return parse === undefined ? String(item) : parse(String(item), name);
      if (typeof item === "object" && item !== null) return item;
      throw new UsageError(`${name}: '${String(item)}' is not a value for this option`);
    };
    checked[key] = spec.multiple && Array.isArray(value) ? value.map(one) : one(value);
  }
  return checked;
}
