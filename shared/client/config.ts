/**
 * The client's config file, and how it meets the command line: a TOML file whose top-level keys are
 * the client's options (`max_backoff` for `--max-backoff`, same parsers), and whose `[[tunnels]]`
 * tables each publish one local service:
 *
 * ```toml
 * server = "ws://localhost:7070"   # or a list: ["wss://a.example:7070", "wss://b.example:7070"]
 *
 * [[tunnels]]
 * name = "web"           # unique; a reload compares tunnels by name
 * type = "http"          # tcp | http | udp | tls
 * local = "127.0.0.1:3000"
 * subdomain = "demo"     # http: subdomain or hostname, basic_auth, host_header, log_requests;
 *                        # tls: subdomain or hostname; tcp, udp: port
 * allow = ["10.0.0.0/8"] # all: pool, allow, deny, proxy_protocol
 * ```
 *
 * Options on the command line (and `SOCKETS_SERVER`) win over the file's; tunnels on the command line
 * (`--expose`, `--http`) replace the file's. A tunnel's own keys win over the top-level `host_header`,
 * `basic_auth`, `log_requests`, `pool`, `allow`, `deny` and `proxy_protocol`. {@link clientSetup} is the one function that merges them, at start
 * and on every reload; every error is one line naming FILE:LINE:COL where it is known.
 * @module
 */

import { dirname, resolve } from "node:path";
import { parseHostPort, UsageError } from "../args.ts";
import { ConfigError, type ConfigSource, optionsFromConfig, readConfig, where } from "../config.ts";
import { configKey, type OptionTable, parseOptions } from "../options.ts";
import {
  CLIENT_OPTIONS,
  type ClientArgs,
  type ClientValues,
  defaultServer,
  httpService,
  type NamedService,
  type ServiceDefaults,
  serversFromEnv,
  servicesFromValues,
  type TunnelSettings,
  tlsService,
  withTunnelSettings,
} from "./options.ts";

/** The file `--init` writes when given no name. */
export const DEFAULT_CONFIG_FILE = "sockets.toml";

/** The top-level keys of a client's config file: every option but `--config` and `--init`. */
const FILE_OPTIONS: OptionTable = Object.fromEntries(
  Object.entries(CLIENT_OPTIONS).filter(([flag]) => flag !== "config" && flag !== "init"),
);

/** The keys every tunnel has, whatever its type. */
const COMMON_KEYS = ["name", "type", "local"] as const;

/**
 * Each tunnel type and its own keys, parsed by the same parsers as their flags (a new type is one more
 * entry here and in the client's expose request).
 */
export const TUNNEL_TYPES = {
  tcp: {
    port: { ...CLIENT_OPTIONS.port, key: "publicPort", multiple: false },
    pool: CLIENT_OPTIONS.pool,
    allow: CLIENT_OPTIONS.allow,
    deny: CLIENT_OPTIONS.deny,
    "proxy-protocol": CLIENT_OPTIONS["proxy-protocol"],
  },
  http: {
    subdomain: { ...CLIENT_OPTIONS.subdomain, key: "subdomain", multiple: false },
    hostname: { ...CLIENT_OPTIONS.hostname, key: "hostname", multiple: false },
    "basic-auth": CLIENT_OPTIONS["basic-auth"],
    "host-header": CLIENT_OPTIONS["host-header"],
    "log-requests": CLIENT_OPTIONS["log-requests"],
    pool: CLIENT_OPTIONS.pool,
    allow: CLIENT_OPTIONS.allow,
    deny: CLIENT_OPTIONS.deny,
    "proxy-protocol": CLIENT_OPTIONS["proxy-protocol"],
  },
  udp: {
    port: { ...CLIENT_OPTIONS.port, key: "publicPort", multiple: false },
    pool: CLIENT_OPTIONS.pool,
    allow: CLIENT_OPTIONS.allow,
    deny: CLIENT_OPTIONS.deny,
  },
  tls: {
    subdomain: { ...CLIENT_OPTIONS.subdomain, key: "subdomain", multiple: false },
    hostname: { ...CLIENT_OPTIONS.hostname, key: "hostname", multiple: false },
    pool: CLIENT_OPTIONS.pool,
    allow: CLIENT_OPTIONS.allow,
    deny: CLIENT_OPTIONS.deny,
    "proxy-protocol": CLIENT_OPTIONS["proxy-protocol"],
  },
} as const satisfies Record<string, OptionTable>;

/** A tunnel type's name. */
export type TunnelType = keyof typeof TUNNEL_TYPES;

/** What a tunnel's name may look like. */
const TUNNEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** `FILE:LINE:COL` of the `index`-th `[[tunnels]]` header, or `FILE`. */
function tableAt(source: ConfigSource, index: number): string {
  const lines = source.text.split("\n");
  let seen = -1;
  for (let i = 0; i < lines.length; i++) {
    const match = /^(\s*)\[\[\s*tunnels\s*\]\]/.exec(lines[i] as string);
    if (match && ++seen === index) return `${source.file}:${i + 1}:${(match[1]?.length ?? 0) + 1}`;
  }
  return source.file;
}

/** A plain TOML table (not an array, date or scalar). */
function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/**
 * The file's top-level options, parsed like flags (keyed by each option's `key`); a relative `ca`
 * is taken from the file's folder.
 * @throws {ConfigError} for an unknown key, a wrong type or a value the option's parser refuses.
 */
export function fileValues(source: ConfigSource): ClientValues {
  const values = optionsFromConfig(source, FILE_OPTIONS, source.data, ["tunnels"]) as ClientValues;
  if (values.ca !== undefined) values.ca = resolve(dirname(source.file), values.ca);
  return values;
}

/**
 * The file's `[[tunnels]]`, each checked in full and turned into a named service with `defaults` for
 * the keys it does not set. `taken`: names already used (the file's top-level `expose`/`http`).
 * @throws {ConfigError} naming FILE:LINE:COL: not a table, a bad or repeated name, an unknown type,
 * a missing or bad `local`, an unknown key (nearest suggested), a key of another type, a bad value.
 */
export function fileTunnels(
  source: ConfigSource,
  defaults: ServiceDefaults,
  taken: readonly string[] = [],
): NamedService[] {
  const raw = source.data.tunnels;
  if (raw === undefined) return [];
  if (!Array.isArray(raw) || !raw.every(isTable))
    throw new ConfigError(
      `${where(source, "tunnels")}: tunnels must be tables: write each as [[tunnels]] with name, type and local`,
    );
  const names = new Map<string, string>(taken.map((name) => [name, "the top-level expose/http keys"]));
  return raw.map((table, index) => {
    const at = (key: string) => where(source, key, "tunnels", index);
    const header = tableAt(source, index);
    const label = `tunnel ${index + 1}`;
    const name = table.name;
    if (name === undefined) throw new ConfigError(`${header}: ${label} has no name (name = "web", unique)`);
    if (typeof name !== "string" || !TUNNEL_NAME.test(name))
      throw new ConfigError(
        `${at("name")}: name must be a string of letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit`,
      );
    const first = names.get(name);
    if (first !== undefined)
      throw new ConfigError(
        `${at("name")}: two tunnels are named '${name}' (the other at ${first}): names must be unique`,
      );
    names.set(name, at("name"));
    const types = Object.keys(TUNNEL_TYPES).join(", ");
    const type = table.type;
    if (type === undefined)
      throw new ConfigError(
        `${header}: tunnel '${name}' has no type (type = "tcp", "http", "udp" or "tls"; one of: ${types})`,
      );
    if (typeof type !== "string" || !(type in TUNNEL_TYPES))
      throw new ConfigError(
        `${at("type")}: tunnel '${name}': unknown type ${JSON.stringify(type)} (one of: ${types})`,
      );
    const keys = TUNNEL_TYPES[type as TunnelType] as OptionTable;
    for (const key of Object.keys(table)) {
      if ((COMMON_KEYS as readonly string[]).includes(key)) continue;
      const owner = Object.entries(TUNNEL_TYPES).find(
        ([other, table]) => other !== type && Object.keys(table).some((flag) => configKey(flag) === key),
      );
      if (owner !== undefined && !Object.keys(keys).some((flag) => configKey(flag) === key))
        throw new ConfigError(
          `${at(key)}: tunnel '${name}': ${key} is a key of ${owner[0]} tunnels, not ${type}`,
        );
    }
    const own = optionsFromConfig(source, keys, table, COMMON_KEYS, { table: "tunnels", index });
    if (table.local === undefined)
      throw new ConfigError(
        `${header}: tunnel '${name}' has no local (local = "HOST:PORT": the service to publish)`,
      );
    if (typeof table.local !== "string" && typeof table.local !== "number")
      throw new ConfigError(`${at("local")}: local must be a string "HOST:PORT"`);
    let target: ReturnType<typeof parseHostPort>;
    try {
      target = parseHostPort(String(table.local), "local");
    } catch (error) {
      throw new ConfigError(`${at("local")}: ${(error as Error).message}`);
    }
    // A tunnel's own pool, allow, deny and proxy_protocol replace the top level's (lists are not merged).
    const tunnelSettings: TunnelSettings = {
      pool: (own.pool as boolean | undefined) ?? defaults.pool,
      allow: (own.allow as string[] | undefined) ?? defaults.allow,
      deny: (own.deny as string[] | undefined) ?? defaults.deny,
      proxyProtocol: (own.proxyProtocol as TunnelSettings["proxyProtocol"]) ?? defaults.proxyProtocol,
    };
    if (own.subdomain !== undefined && own.hostname !== undefined)
      throw new ConfigError(`${at("hostname")}: tunnel '${name}': give subdomain or hostname, not both`);
    const withHostname = (service: NamedService): NamedService => {
      if (own.hostname !== undefined) service.hostname = own.hostname as string;
      return service;
    };
    try {
      if (type === "http") {
        const settings: ServiceDefaults = {
          hostHeader: (own.hostHeader as ServiceDefaults["hostHeader"]) ?? defaults.hostHeader,
          basicAuth: (own.basicAuth as string | undefined) ?? defaults.basicAuth,
          logRequests: (own.logRequests as boolean | undefined) ?? defaults.logRequests,
          ...tunnelSettings,
        };
        return withHostname(httpService(name, target, own.subdomain as string | undefined, settings));
      }
      if (type === "tls")
        return withHostname(tlsService(name, target, own.subdomain as string | undefined, tunnelSettings));
      const service: NamedService = type === "udp" ? { name, ...target, kind: "udp" } : { name, ...target };
      if (own.publicPort !== undefined) service.publicPort = own.publicPort as number;
      return withTunnelSettings(service, tunnelSettings);
    } catch (error) {
      throw new ConfigError(`${header}: tunnel '${name}': ${(error as Error).message.replace(/^--/, "")}`);
    }
  });
}

/** The client's settings and services, from the command line and (optionally) a config file. */
export interface ClientSetup {
  /** The top-level options: the command line's, else the file's. */
  values: ClientValues;
  /** The tunnels to publish: the command line's when it names any, else the file's. */
  services: NamedService[];
}

/**
 * Merges the command line with a config file: top-level options from the command line win; the
 * tunnels are the command line's when it names any, else the file's (its top-level `expose`/`http`
 * and its `[[tunnels]]`). HTTP services take the top-level host-header mode, basic auth and request
 * log (`tty`: the request log's default) unless they set their own. The one merge for start and reload.
 * @throws {ConfigError} for a file that does not validate; {@link UsageError} for unpaired flags.
 */
export function clientSetup(
  commandLine: ClientValues,
  source?: ConfigSource,
  tty = process.stdout.isTTY === true,
): ClientSetup {
  const file = source === undefined ? {} : fileValues(source);
  const values: ClientValues = { ...file, ...commandLine };
  const defaults: ServiceDefaults = {
    hostHeader: values.hostHeader,
    basicAuth: values.basicAuth,
    logRequests: values.logRequests ?? tty,
    pool: values.pool,
    allow: values.allow,
    deny: values.deny,
    proxyProtocol: values.proxyProtocol,
  };
  const onCommandLine =
    (commandLine.tcp?.length ?? 0) +
      (commandLine.http?.length ?? 0) +
      (commandLine.udp?.length ?? 0) +
      (commandLine.tls?.length ?? 0) >
    0;
  if (source === undefined || onCommandLine)
    return { values, services: servicesFromValues(commandLine, defaults) };
  let topLevel: NamedService[];
  try {
    topLevel = servicesFromValues(file, defaults);
  } catch (error) {
    const message = (error as Error).message.replace(/--(\w+)/g, (_, flag: string) => configKey(flag));
    throw new ConfigError(`${source.file}: ${message}`);
  }
  const tunnels = fileTunnels(
    source,
    defaults,
    topLevel.map((service) => service.name),
  );
  return { values, services: [...topLevel, ...tunnels] };
}

/** The top-level keys a running client cannot change: a reload names them and asks for a restart. */
const RESTART_KEYS = [
  "server",
  "ca",
  "insecure",
  "heartbeatSeconds",
  "maxBackoffSeconds",
  "quiet",
  "watch",
] as const;

/** The config keys (`max_backoff`) among those a restart needs whose value differs between two setups. */
export function restartOnlyChanges(before: ClientValues, after: ClientValues): string[] {
  const flagOf = new Map(Object.entries(CLIENT_OPTIONS).map(([flag, spec]) => [spec.key as string, flag]));
  const text = (value: unknown) => (value instanceof URL ? value.href : JSON.stringify(value));
  return RESTART_KEYS.filter((key) => text(before[key]) !== text(after[key])).map((key) =>
    configKey(flagOf.get(key) as string),
  );
}

/** `--init` alone means `--init sockets.toml` (parseArgs has no optional values). */
function withInitDefault(argv: string[]): string[] {
  return argv.map((arg, i) => {
    const next = argv[i + 1];
    return arg === "--init" && (next === undefined || next.startsWith("-"))
      ? `--init=${DEFAULT_CONFIG_FILE}`
      : arg;
  });
}

/**
 * Turns argv, env and the `--config` file into the client's options; "help" for `-h`, "version" for `-V`; `{ init }`
 * for `--init [FILE]`.
 * @throws {UsageError} (a {@link ConfigError} for the file) on bad input, with one line.
 */
export async function parseClientArgs(
  argv: string[],
  env: Record<string, string | undefined>,
): Promise<ClientArgs | "help" | "version" | { init: string }> {
  // SOCKETS_SERVER may hold a list, which the generic parser would read as one URL: split here.
  const serverEnv = CLIENT_OPTIONS.server.env;
  const parsed = parseOptions(CLIENT_OPTIONS, withInitDefault(argv), { ...env, [serverEnv]: undefined });
  if (parsed.help) return "help";
  if (parsed.version) return "version";
  const commandLine = parsed.values as ClientValues;
  const listed = env[serverEnv];
  if (commandLine.server === undefined && listed) {
    const servers = serversFromEnv(listed);
    if (servers.length > 0) commandLine.server = servers;
  }
  if (commandLine.init !== undefined) return { init: commandLine.init };
  if (commandLine.watch && commandLine.config === undefined)
    throw new UsageError("--watch needs --config FILE (it reloads that file when it changes)");
  const source = commandLine.config === undefined ? undefined : readConfig(commandLine.config);
  const { values, services } = clientSetup(commandLine, source);
  if (services.length === 0) {
    if (source === undefined)
      throw new UsageError(
        "--expose HOST:PORT, --http HOST:PORT, --expose-udp HOST:PORT or --tls-passthrough HOST:PORT is required",
      );
    throw new ConfigError(
      `${source.file}: no tunnels: add a [[tunnels]] table (bun client.ts --init writes an example) or give --expose/--http`,
    );
  }
  if (commandLine.basicAuth !== undefined && !services.some((service) => service.kind === "http"))
    throw new UsageError("--basic-auth needs --http");
  const {
    tcp,
    http,
    udp,
    tls,
    ports,
    subdomains,
    hostnames,
    hostHeader,
    basicAuth,
    ca,
    server,
    config,
    init,
    ...others
  } = values;
  const { pool, allow, deny, proxyProtocol, ...rest } = others;
  let caText: string | undefined;
  if (ca !== undefined) {
    const file = Bun.file(ca);
    if (!(await file.exists()))
      throw commandLine.ca === undefined && source !== undefined
        ? new ConfigError(`${where(source, "ca")}: ca: cannot read '${ca}'`)
        : new UsageError(`--ca: cannot read '${ca}'`);
    caText = await file.text();
  }
  const servers = server !== undefined && server.length > 0 ? server : [defaultServer()];
  return {
    ...rest,
    server: servers[0] as URL,
    servers,
    expose: services,
    ca: caText,
    apiKey: env.SOCKETS_API_KEY || undefined,
    logRequests: rest.logRequests ?? process.stdout.isTTY === true,
    config: config === undefined ? undefined : { file: config, commandLine, values },
  };
}
