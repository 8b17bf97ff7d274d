/**
 * The server's config file (`--config FILE`, TOML): every server option as a key (`tcp_ports` for
 * `--tcp-ports`; the command line overrides the file) and `[[users]]` with their token hashes and
 * limits. Loads it at start (every mistake one line with FILE:LINE:COL, exit 2), reloads it on SIGHUP
 * or a change of the file (`--watch`), and says which changed options need a restart.
 * @module
 */

import { dirname, isAbsolute, resolve } from "node:path";
import { type PortRange, parsePort, parsePortRange } from "../args.ts";
import {
  ConfigError,
  type ConfigSource,
  optionsFromConfig,
  readConfig,
  suggestion,
  watchConfigFile,
  where,
} from "../config.ts";
import { type Cidr, parseCidr } from "../ip.ts";
import type { Logger } from "../log.ts";
import { type OptionTable, parseOptions } from "../options.ts";
import { AccessList, MAX_RULES } from "./access-list.ts";
import { validHostPattern } from "./acme/hostnames.ts";
import {
  finishServerOptions,
  SERVER_OPTIONS,
  type ServerOptions,
  type ServerOptionValues,
} from "./options.ts";
import {
  generateToken,
  hashToken,
  TOKEN_HASH,
  USER_NAME,
  type UserConfig,
  type UserLimits,
  validPattern,
} from "./users.ts";

/** The keys a file may set: every option but `config` itself. */
const FILE_OPTIONS: OptionTable = Object.fromEntries(
  Object.entries(SERVER_OPTIONS).filter(([flag]) => flag !== "config"),
);

/** The keys of one `[[users]]` entry. */
const USER_KEYS = [
  "name",
  "token_hash",
  "subdomains",
  "tcp_ports",
  "max_tunnels",
  "max_visitors",
  "random_subdomain",
  "hostnames",
  "allow",
  "deny",
] as const;

/** Options that a running server cannot take up (marked `restart` in the option table), by flag. */
export const RESTART_OPTIONS: readonly string[] = Object.entries(SERVER_OPTIONS as OptionTable)
  .filter(([, spec]) => spec.restart === true)
  .map(([flag]) => flag);

/** `FILE:LINE:COL` of the `index`-th `[[table]]` header, or `FILE`. */
function tableAt(source: ConfigSource, table: string, index: number): string {
  const lines = source.text.split("\n");
  let seen = -1;
  for (let i = 0; i < lines.length; i++) {
    const match = new RegExp(`^(\\s*)\\[\\[\\s*${table}\\s*\\]\\]`).exec(lines[i] as string);
    if (match && ++seen === index) return `${source.file}:${i + 1}:${(match[1]?.length ?? 0) + 1}`;
  }
  return source.file;
}

/** Parses a user's `tcp_ports`: `"20000-20099"`, `20000`, or a list of those. */
function parsePorts(raw: unknown, what: string): PortRange[] {
  const items = Array.isArray(raw) ? raw : [raw];
  if (items.length === 0) throw new Error(`${what} is an empty list (leave it out for no limit)`);
  return items.map((item) => {
    if (typeof item === "number") {
      const port = parsePort(String(item), what);
      return { min: port, max: port };
    }
    if (typeof item !== "string")
      throw new Error(`${what} must be a range "MIN-MAX", a port, or a list of them`);
    return /^\d+$/.test(item)
      ? { min: parsePort(item, what), max: parsePort(item, what) }
      : parsePortRange(item, what);
  });
}

/** A positive whole number, or an error naming the key. */
function count(raw: unknown, what: string): number {
  if (typeof raw !== "number" || !Number.isInteger(raw) || raw < 1 || raw > 0x7fffffff)
    throw new Error(`${what} must be a positive whole number`);
  return raw;
}

/**
 * The file's `[[users]]`, checked: each has a unique name and a well-formed token hash (and no two
 * share one: a token would open either), known keys only, limits of the right types.
 * @throws {ConfigError} naming the place in the file.
 */
export function usersFromConfig(source: ConfigSource): UserConfig[] {
  const raw = source.data.users;
  if (raw === undefined) return [];
  if (
    !Array.isArray(raw) ||
    raw.some((entry) => typeof entry !== "object" || entry === null || Array.isArray(entry))
  )
    throw new ConfigError(
      `${where(source, "users")}: users must be tables ([[users]] with name and token_hash)`,
    );
  const users: UserConfig[] = [];
  const seen = new Map<string, { at: string; hash: string }>();
  raw.forEach((entry: Record<string, unknown>, index) => {
    const at = (key?: string) =>
      key === undefined || where(source, key, "users", index) === source.file
        ? tableAt(source, "users", index)
        : where(source, key, "users", index);
    const fail = (key: string | undefined, message: string): never => {
      throw new ConfigError(`${at(key)}: ${message}`);
    };
    for (const key of Object.keys(entry))
      if (!(USER_KEYS as readonly string[]).includes(key))
        fail(key, `unknown key '${key}' in [[users]]${suggestion(key, USER_KEYS)}`);
    const name = entry.name;
    if (name === undefined) fail(undefined, 'a user without a name (add name = "...")');
    if (typeof name !== "string" || !USER_NAME.test(name))
      fail("name", "name must be a string of letters, digits, '.', '_' or '-' (at most 64)");
    const user = name as string;
    const before = seen.get(user);
    if (before) fail("name", `user '${user}' is defined twice (first at ${before.at})`);
    const hash = entry.token_hash;
    // The value is never echoed: someone may have pasted the token itself here.
    if (hash === undefined)
      fail(undefined, `user ${user} has no token_hash (make one with: bun server.ts hash-token)`);
    if (typeof hash !== "string" || !TOKEN_HASH.test(hash))
      fail(
        "token_hash",
        `token_hash of user ${user} is not a sha256 hex digest (64 hex digits; make one with: bun server.ts hash-token)`,
      );
    const tokenHash = (hash as string).toLowerCase();
    for (const [other, { hash: otherHash }] of seen)
      if (otherHash === tokenHash) fail("token_hash", `users ${other} and ${user} have the same token_hash`);
    const limits: UserLimits = {};
    const check = <T>(key: string, parse: () => T): T => {
      try {
        return parse();
      } catch (error) {
        return fail(key, (error as Error).message);
      }
    };
    if (entry.subdomains !== undefined)
      limits.subdomains = check("subdomains", () => {
        const list = Array.isArray(entry.subdomains) ? entry.subdomains : [entry.subdomains];
        for (const pattern of list)
          if (typeof pattern !== "string" || !validPattern(pattern))
            throw new Error(
              `subdomains of user ${user}: ${JSON.stringify(pattern)} is not a pattern (a DNS label, lower case, where * stands for any part: "alice-*", "*")`,
            );
        return list as string[];
      });
    if (entry.tcp_ports !== undefined)
      limits.tcpPorts = check("tcp_ports", () => parsePorts(entry.tcp_ports, `tcp_ports of user ${user}`));
    if (entry.max_tunnels !== undefined)
      limits.maxTunnels = check("max_tunnels", () => count(entry.max_tunnels, `max_tunnels of user ${user}`));
    if (entry.max_visitors !== undefined)
      limits.maxVisitors = check("max_visitors", () =>
        count(entry.max_visitors, `max_visitors of user ${user}`),
      );
    if (entry.hostnames !== undefined)
      limits.hostnames = check("hostnames", () => {
        const list = Array.isArray(entry.hostnames) ? entry.hostnames : [entry.hostnames];
        for (const pattern of list)
          if (typeof pattern !== "string" || !validHostPattern(pattern))
            throw new Error(
              `hostnames of user ${user}: ${JSON.stringify(pattern)} is not a host pattern (a host name, lower case, where a first label * stands for any one label: "api.example.com", "*.example.com")`,
            );
        return list as string[];
      });
    if (entry.random_subdomain !== undefined) {
      if (typeof entry.random_subdomain !== "boolean")
        fail("random_subdomain", `random_subdomain of user ${user} must be true or false`);
      limits.randomSubdomain = entry.random_subdomain as boolean;
    }
    const rules = (key: "allow" | "deny"): Cidr[] => {
      const raw = entry[key];
      if (raw === undefined) return [];
      return check(key, () => {
        const list = Array.isArray(raw) ? raw : [raw];
        if (list.length > MAX_RULES)
          throw new Error(`${key} of user ${user}: at most ${MAX_RULES} ranges (use wider ranges)`);
        return list.map((rule) => {
          if (typeof rule !== "string")
            throw new Error(`${key} of user ${user} must be a list of strings ("10.0.0.0/8", "2001:db8::1")`);
          try {
            return parseCidr(rule);
          } catch (error) {
            throw new Error(`${key} of user ${user}: ${(error as Error).message}`);
          }
        });
      });
    };
    const [allow, deny] = [rules("allow"), rules("deny")];
    if (allow.length + deny.length > 0) limits.access = new AccessList(allow, deny, "user");
    seen.set(user, { at: at("name"), hash: tokenHash });
    users.push({ name: user, tokenHash, limits });
  });
  return users;
}

/**
 * Reads the server's config file and merges it under the command line's values (which win).
 * Relative TLS paths in the file are relative to the file's folder.
 * @throws {ConfigError} (or a UsageError for a TLS file) on any mistake, as one line.
 */
export function loadServerConfig(
  file: string,
  commandLine: ServerOptionValues,
  env: Record<string, string | undefined>,
): ServerOptions {
  const source = readConfig(file);
  const fromFile = optionsFromConfig(source, FILE_OPTIONS, source.data, ["users"]) as ServerOptionValues;
  const users = usersFromConfig(source);
  for (const key of ["tlsCert", "tlsKey", "clusterCa", "acmeCa", "acmeDir", "acmeDnsKey"] as const) {
    const path = fromFile[key];
    if (path !== undefined && !isAbsolute(path)) fromFile[key] = resolve(dirname(file), path);
  }
  const merged = { ...fromFile, ...commandLine };
  const fileNamed = (flag: "tls-cert" | "tls-key" | "cluster-ca" | "acme-ca") =>
    commandLine[(SERVER_OPTIONS[flag] as { key: keyof ServerOptionValues }).key] !== undefined
      ? `--${flag}`
      : `${where(source, flag.replace("-", "_"))}: ${flag.replace("-", "_")}`;
  try {
    return { ...finishServerOptions(merged, env, fileNamed), users };
  } catch (error) {
    throw new ConfigError((error as Error).message);
  }
}

/** What `bun server.ts …` was asked to do. */
export interface ServerCommand {
  options: ServerOptions;
  /** With `--config`: reads the file again, under the same command line. */
  reload?: () => ServerOptions;
}

/**
 * Parses argv, env and the `--config` file (if any) into the server's options, or "help" / "version".
 * @throws {UsageError} (a {@link ConfigError} for the file) as one line.
 */
export function parseServerCommand(
  argv: string[],
  env: Record<string, string | undefined>,
): ServerCommand | "help" | "version" {
  const { values, help, version } = parseOptions(SERVER_OPTIONS, argv, env);
  if (help) return "help";
  if (version) return "version";
  const commandLine = values as ServerOptionValues;
  const file = commandLine.config;
  if (file === undefined) {
    if (commandLine.watch) throw new ConfigError("--watch needs --config FILE (the file to watch)");
    return { options: finishServerOptions(commandLine, env) };
  }
  const reload = () => loadServerConfig(file, commandLine, env);
  return { options: reload(), reload };
}

/** The file's view of an option's value, comparable across loads. */
function runningValue(options: ServerOptions, flag: string): string {
  if (flag === "tls-cert") return options.tls?.cert ?? "";
  if (flag === "tls-key") return options.tls?.key ?? "";
  const key = (SERVER_OPTIONS as OptionTable)[flag]?.key as keyof ServerOptions;
  return JSON.stringify(options[key] ?? null);
}

/** The options a reload changed that only a restart applies (flag names). */
export function restartNeeded(running: ServerOptions, reloaded: ServerOptions): string[] {
  return RESTART_OPTIONS.filter((flag) => runningValue(running, flag) !== runningValue(reloaded, flag));
}

/**
 * Reloads the config file on demand (SIGHUP) and, with `--watch`, when it changes. A file that fails
 * to load changes nothing: one log line, and the running configuration stays whole (loading is
 * complete, validated and parsed, before anything is applied).
 */
export class ConfigReloader {
  private watcher: { stop(): void } | undefined;

  /**
   * @param file the config file (for log lines and the watch).
   * @param load reads and validates the file under the command line (throws on any mistake).
   * @param apply takes up a loaded configuration.
   * @param log the server's log.
   */
  constructor(
    private readonly file: string,
    private readonly load: () => ServerOptions,
    private readonly apply: (options: ServerOptions) => void,
    private readonly log: Logger,
  ) {}

  /** Loads the file and applies it, or logs why not; `trigger` says what asked (SIGHUP, a change). */
  reload(trigger: string): void {
    let options: ServerOptions;
    try {
      options = this.load();
    } catch (error) {
      const message = (error as Error).message.split("\n")[0];
      this.log.error(`reload (${trigger}) failed, the running configuration stays: ${message}`);
      return;
    }
    this.log.info(`reloading ${this.file} (${trigger})`);
    this.apply(options);
  }

  /** Reloads on every change of the file (debounced) until {@link ConfigReloader.stop}. */
  watch(): void {
    this.watcher ??= watchConfigFile(this.file, () => this.reload("file changed"), this.log);
  }

  /** Stops watching. */
  stop(): void {
    this.watcher?.stop();
    this.watcher = undefined;
  }
}

/** One line saying what a reload changed among the users, or that it changed none. */
export function describeUsersChange(change: {
  added: string[];
  removed: string[];
  tokenChanged: string[];
  limitsChanged: string[];
  sessionsClosed: number;
}): string {
  const parts: string[] = [];
  if (change.added.length > 0) parts.push(`added ${change.added.join(", ")}`);
  if (change.removed.length > 0) parts.push(`removed ${change.removed.join(", ")}`);
  if (change.tokenChanged.length > 0) parts.push(`new token for ${change.tokenChanged.join(", ")}`);
  if (change.limitsChanged.length > 0) parts.push(`new limits for ${change.limitsChanged.join(", ")}`);
  const closed = change.sessionsClosed;
  if (closed > 0) parts.push(`${closed} session${closed === 1 ? "" : "s"} closed (4001 revoked)`);
  return `configuration reloaded: ${parts.length > 0 ? `users: ${parts.join("; ")}` : "no user changed"}`;
}

/**
 * `bun server.ts hash-token [TOKEN]`: the sha256 of TOKEN (`-` reads it from stdin, keeping it out of
 * the shell's history and `ps`), or a fresh token and its hash when none is given.
 * @throws {UsageError} for more than one argument.
 */
export async function hashTokenCommand(args: string[], stdin: () => Promise<string>): Promise<string> {
  if (args.length > 1)
    throw new ConfigError("hash-token takes at most one TOKEN (or - to read it from stdin)");
  const given = args[0] === "-" ? (await stdin()).replace(/\r?\n$/, "") : args[0];
  if (given === "") throw new ConfigError("hash-token: the token is empty");
  if (given !== undefined) return `${hashToken(given)}\n`;
  const token = generateToken();
  // Two lines: the token goes to the user (SOCKETS_API_KEY), the hash into its [[users]] entry.
  return `token: ${token}\ntoken_hash: ${hashToken(token)}\n`;
}
