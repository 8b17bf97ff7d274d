/**
 * Config files (TOML) for both roles. A file's top-level keys are the role's option names with `_`
 * for `-` (`tcp_ports` for `--tcp-ports`), parsed by the same parsers as the flags; tables and arrays
 * of tables (`[[tunnels]]`, `[[users]]`) belong to the role. Every error is one line that names the
 * file, the line and the column where they are known, and for an unknown key the nearest known one.
 *
 * Why smol-toml and not `Bun.TOML`: Bun's parser reports no usable position (its error's line and
 * column read 2 and 45 for mistakes on different lines, checked on 1.4.5); smol-toml is a small,
 * dependency-free TOML 1.0 parser whose errors carry line and column.
 * @module
 */

import { type FSWatcher, readFileSync, watch } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import type * as SmolToml from "smol-toml";
import { UsageError } from "./args.ts";
import type { Logger } from "./log.ts";
import { configKey, type OptionTable } from "./options.ts";

/** A config file that cannot be used: one line, `FILE:LINE:COL: what` where the position is known. */
export class ConfigError extends UsageError {
  override name = "ConfigError";
  constructor(message: string) {
    super(message, false);
  }
}

/** A parsed TOML document and what is needed to point at its lines. */
export interface ConfigSource {
  file: string;
  text: string;
  data: Record<string, unknown>;
}

/**
 * Reads and parses a TOML file.
 * @throws {ConfigError} when it cannot be read or is not TOML.
 */
export function readConfig(file: string): ConfigSource {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? String(error);
    throw new ConfigError(`${file}: cannot read the config file (${code})`);
  }
  // Loaded on first use: a run without a config file never needs the parser (memory at rest).
  const { parse, TomlError } = require("smol-toml") as typeof SmolToml;
  try {
    return { file, text, data: parse(text) as Record<string, unknown> };
  } catch (error) {
    if (error instanceof TomlError) {
      const what = error.message.split("\n")[0]?.replace(/^Invalid TOML document: /, "") ?? "not TOML";
      throw new ConfigError(`${file}:${error.line}:${error.column}: not valid TOML: ${what}`);
    }
    throw new ConfigError(`${file}: not valid TOML: ${String(error)}`);
  }
}

/**
 * Where `key` is set, as `FILE:LINE:COL` (the first line that assigns it, inside the `index`-th
 * `[[table]]` when given), or just `FILE` when it cannot be found.
 */
export function where(source: ConfigSource, key: string, table?: string, index = 0): string {
  const lines = source.text.split("\n");
  let start = 0;
  if (table !== undefined) {
    let seen = -1;
    start = lines.length;
    for (let i = 0; i < lines.length; i++)
      if (new RegExp(`^\\s*\\[\\[\\s*${table}\\s*\\]\\]`).test(lines[i] as string) && ++seen === index) {
        start = i;
        break;
      }
  }
  const assignment = new RegExp(`^(\\s*)["']?${key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}["']?\\s*=`);
  for (let i = start; i < lines.length; i++) {
    if (i > start && table !== undefined && /^\s*\[/.test(lines[i] as string)) break;
    const match = assignment.exec(lines[i] as string);
    if (match) return `${source.file}:${i + 1}:${(match[1]?.length ?? 0) + 1}`;
  }
  return source.file;
}

/** Edit distance (insertions, deletions, substitutions) between two short strings. */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++)
      next[j] = Math.min(
        (row[j] as number) + 1,
        (next[j - 1] as number) + 1,
        (row[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    row = next;
  }
  return row[b.length] as number;
}

/** ` (did you mean KEY?)` for the nearest of `known` within two edits, else "". */
export function suggestion(key: string, known: Iterable<string>): string {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of known) {
    const d = distance(key, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best === undefined ? "" : ` (did you mean ${best}?)`;
}

/**
 * The option values a table's keys give in `section` (the document itself, or one `[[table]]`),
 * parsed like flags: keyed by each option's `key`. Keys in `extra` are the role's own (tables, or a
 * tunnel's fields) and are left alone.
 * @throws {ConfigError} for an unknown key (with the nearest known one), a value of the wrong type, or
 * one the option's parser refuses.
 */
export function optionsFromConfig(
  source: ConfigSource,
  table: OptionTable,
  section: Record<string, unknown> = source.data,
  extra: readonly string[] = [],
  within?: { table: string; index: number },
): Record<string, unknown> {
  const byKey = new Map(Object.keys(table).map((flag) => [configKey(flag), flag]));
  const values: Record<string, unknown> = {};
  for (const [key, raw] of Object.entries(section)) {
    if (extra.includes(key)) continue;
    const at = () => where(source, key, within?.table, within?.index);
    const flag = byKey.get(key);
    if (flag === undefined)
      throw new ConfigError(`${at()}: unknown key '${key}'${suggestion(key, [...byKey.keys(), ...extra])}`);
    const spec = table[flag] as OptionTable[string];
    const switchOption = spec.value === undefined;
    const items = spec.multiple && Array.isArray(raw) ? raw : [raw];
    const parsed = items.map((item) => {
      if (switchOption) {
        if (typeof item !== "boolean") throw new ConfigError(`${at()}: ${key} must be true or false`);
        return item;
      }
      if (typeof item !== "string" && typeof item !== "number")
        throw new ConfigError(`${at()}: ${key} must be a ${spec.value === "N" ? "number" : "string"}`);
      try {
        return spec.parse ? spec.parse(String(item), key) : String(item);
      } catch (error) {
        throw new ConfigError(`${at()}: ${(error as Error).message}`);
      }
    });
    values[spec.key] = spec.multiple ? parsed : parsed[0];
  }
  return values;
}

/** Quiet time after the last change of a watched file before it is read (editors write in steps). */
const WATCH_DEBOUNCE_MS = 200;

/**
 * Calls `onChange` once the file changed and stayed unchanged for a moment. Watches the folder, not
 * the file: editors save by writing a new file and renaming it over the old one, which ends a watch
 * on the old file's inode. One pending timer at most, whatever the burst of events.
 */
export function watchConfigFile(file: string, onChange: () => void, log: Logger): { stop(): void } {
  const name = basename(file);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dirname(resolve(file)), (_event, changed) => {
      if (changed !== null && changed !== name) return;
      clearTimeout(timer);
      timer = setTimeout(onChange, WATCH_DEBOUNCE_MS);
    });
    watcher.on("error", (error) => log.warn(`--watch ${file}: ${error.message}; reload with SIGHUP`));
  } catch (error) {
    log.warn(`--watch ${file}: ${(error as Error).message}; reload with SIGHUP`);
  }
  return {
    stop() {
      clearTimeout(timer);
      watcher?.close();
    },
  };
}
