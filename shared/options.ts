/**
 * Every command-line option of a role is declared once, in one table: its flag, short flag, value
 * placeholder, repeatability, default, environment variable, help text and parser. From that table
 * come the `parseArgs` config, the values `start…` receives, `--help`, the defaults `start…` uses and
 * README's option tables (a test holds README to the table). A config file's keys will be the flag
 * names with `_` for `-` ({@link configKey}: `tcp_ports` for `--tcp-ports`).
 * @module
 */

import { parseFlags } from "./args.ts";

/** One option. */
export interface OptionSpec {
  /** Property of the role's options object the value goes to (camelCase). */
  key: string;
  /** Placeholder for the value in help (`N`, `HOST:PORT`); absent for a switch. */
  value?: string;
  /** One-letter alias. */
  short?: string;
  /** May be given more than once (the values come as a list, in order). */
  multiple?: boolean;
  /** The default `start…` uses when the option is absent. */
  default?: unknown;
  /** How help and README state the default when it is not `String(default)` (README may use Markdown). */
  defaultText?: string;
  /** Environment variable read when the flag is absent (an empty value counts as absent). */
  env?: string;
  /** What it does, one sentence. */
  help: string;
  /** Turns the text given into the value (throws a UsageError naming the flag); default: the text. */
  parse?: (text: string, flag: string) => unknown;
  /**
   * A running process cannot take a changed value up (its listeners, certificates, buffers are built
   * once): a reload that changes it logs that a restart is needed and applies the rest.
   */
  restart?: true;
}

/** A role's options, keyed by flag name without dashes (`tcp-ports`). */
export type OptionTable = Record<string, OptionSpec>;

/** The type of one option's value: what its parser returns, else a string or (a switch) a boolean. */
type ValueOf<S> = S extends { parse: (...args: never[]) => infer V }
  ? V
  : S extends { value: string }
    ? string
    : boolean;

/** The options object a table parses into: each option's value under its `key`, all optional. */
export type OptionValues<T extends OptionTable> = {
  -readonly [F in keyof T as T[F]["key"]]?: T[F] extends { multiple: true } ? ValueOf<T[F]>[] : ValueOf<T[F]>;
};

/** An environment variable a role reads that has no flag. */
export interface EnvSpec {
  name: string;
  help: string;
  defaultText: string;
}

/** The key a config file will use for a flag: `tcp_ports` for `tcp-ports`. */
export function configKey(flag: string): string {
  return flag.replaceAll("-", "_");
}

/**
 * Parses argv (and the table's environment fallbacks) into the role's options object: parsed values
 * under each option's `key`, absent options absent; `help` is true when `-h/--help` was given,
 * `version` when `-V/--version` was.
 * @throws {UsageError} for an unknown flag, a missing value, or a value the option's parser refuses.
 */
export function parseOptions(
  table: OptionTable,
  argv: string[],
  env: Record<string, string | undefined>,
): { values: Record<string, unknown>; help: boolean; version: boolean } {
  const options: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = {
    help: { type: "boolean", short: "h" },
    version: { type: "boolean", short: "V" },
  };
  for (const [flag, spec] of Object.entries(table)) {
    // parseArgs refuses keys present with an undefined value: set only what the option has.
    const option: { type: "string" | "boolean"; short?: string; multiple?: boolean } = {
      type: spec.value === undefined ? "boolean" : "string",
    };
    if (spec.short !== undefined) option.short = spec.short;
    if (spec.multiple) option.multiple = true;
    options[flag] = option;
  }

  const { values: raw } = parseFlags({ args: argv, strict: true, allowPositionals: false, options });
  const values: Record<string, unknown> = {};
  for (const [flag, spec] of Object.entries(table)) {
    let given = raw[flag] as string | string[] | boolean | undefined;
    if (given === undefined && spec.env !== undefined && env[spec.env]) given = env[spec.env];
    if (given === undefined) continue;
    const parse = spec.parse;
    const name = `--${flag}`;
    if (parse === undefined || typeof given === "boolean") values[spec.key] = given;
    else values[spec.key] = Array.isArray(given) ? given.map((v) => parse(v, name)) : parse(given, name);
  }
  return { values, help: raw.help === true, version: raw.version === true };
}

/** The default as help shows it, if any. */
function defaultOf(spec: OptionSpec, markdown: boolean): string | undefined {
  if (spec.defaultText !== undefined)
    return markdown ? spec.defaultText : spec.defaultText.replaceAll("`", "");
  if (spec.default === undefined) return undefined;
  return markdown ? `\`${spec.default}\`` : String(spec.default);
}

/** How a flag is written with its value: `-q, --quiet`, `--port N`. */
function usageOf(flag: string, spec: OptionSpec): string {
  const long = `--${flag}${spec.value === undefined ? "" : ` ${spec.value}`}`;
  return spec.short === undefined ? long : `-${spec.short}, ${long}`;
}

/** Wraps `text` at `width` columns, continuation lines indented by `indent`. */
function wrap(text: string, first: number, indent: number, width: number): string {
  const lines: string[] = [];
  let line = "";
  let room = width - first;
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > room) {
      lines.push(line);
      line = word;
      room = width - indent;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  lines.push(line);
  return lines.join(`\n${" ".repeat(indent)}`);
}

/** `--help`: the usage line, every option with its default, and the environment. */
export function helpText(usage: string, table: OptionTable, environment: EnvSpec[], footer = ""): string {
  const column = 26;
  let text = `Usage: ${usage}\n\nOptions:\n`;
  const rows: [string, string][] = Object.entries(table).map(([flag, spec]) => {
    const fallback = defaultOf(spec, false);
    const envNote = spec.env === undefined ? "" : ` (env ${spec.env})`;
    return [
      usageOf(flag, spec),
      `${spec.help}${envNote}${fallback === undefined ? "" : ` (default ${fallback})`}`,
    ];
  });
  rows.push(["-V, --version", "print the version, protocol version and build commit"]);
  rows.push(["-h, --help", "show this help"]);
  for (const [flags, help] of rows) {
    const head = `  ${flags}`;
    const pad = head.length + 1 >= column ? `\n${" ".repeat(column)}` : " ".repeat(column - head.length);
    text += `${head}${pad}${wrap(help, column, column, 100)}\n`;
  }
  if (environment.length > 0) {
    text += "\nEnvironment:\n";
    for (const variable of environment)
      text += `  ${variable.name.padEnd(column - 3)} ${variable.help} (default ${variable.defaultText.replaceAll("`", "")})\n`;
  }
  return `${text}${footer}`;
}

/** README's option table for a role: one row per option and environment variable, in table order. */
export function markdownTable(table: OptionTable, environment: EnvSpec[]): string {
  const rows = Object.entries(table).map(
    ([flag, spec]) =>
      `| \`${usageOf(flag, spec)}\` | ${spec.help}${spec.env === undefined ? "" : ` (else env \`${spec.env}\`)`} | ${defaultOf(spec, true) ?? ""} |`,
  );
  rows.push(
    "| `-V, --version` | print the version, protocol version and git commit built from, and exit 0 | |",
  );
  rows.push("| `-h, --help` | print the options and exit 0 | |");
  for (const variable of environment)
    rows.push(`| env \`${variable.name}\` | ${variable.help} | ${variable.defaultText} |`);
  return ["| option | meaning | default |", "| --- | --- | --- |", ...rows].join("\n");
}
