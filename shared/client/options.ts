/**
 * The client's options, each declared once (see shared/options.ts): `--help`, the parser, the
 * defaults the client uses and README's client table all come from {@link CLIENT_OPTIONS}. The flags
 * that pair up (`--port` with `--expose`, `--subdomain` with `--http`) become one list of services.
 * @module
 */

import {
  type HostPort,
  parseHostPort,
  parsePort,
  parseSeconds,
  parseServerUrl,
  UsageError,
} from "../args.ts";
import { type EnvSpec, type OptionTable, type OptionValues, parseOptions } from "../options.ts";
import { SUBDOMAIN } from "../wire/protocol.ts";

/** One local service to publish. */
export interface ExposeOption extends HostPort {
  /** A raw TCP tunnel (default) or an HTTP tunnel at `NAME.DOMAIN`. */
  kind?: "tcp" | "http";
  /** TCP: the public port to ask for; absent for any. */
  publicPort?: number;
  /** HTTP: the name to ask for; absent for a random one. */
  subdomain?: string;
  /** HTTP: keep the visitor's Host header instead of sending the local address (default false). */
  preserveHost?: boolean;
  /** HTTP: `user:password` visitors must present (basic auth, checked by the server). */
  basicAuth?: string;
}

const seconds = (text: string, flag: string): number => parseSeconds(text, flag, 0.1, 3600);

/** Every client option, in `--help` order. */
export const CLIENT_OPTIONS = {
  expose: {
    key: "tcp",
    value: "HOST:PORT",
    multiple: true,
    help: "local service to publish as a TCP tunnel (repeatable: one tunnel each); PORT alone means 127.0.0.1:PORT; IPv6 as [::1]:PORT",
    parse: (text: string, flag: string): HostPort => parseHostPort(text, flag),
  },
  server: {
    key: "server",
    value: "URL",
    default: "ws://localhost:7070",
    env: "SOCKETS_SERVER",
    help: "ws:// or wss:// server",
    parse: (text: string, flag: string): URL => parseServerUrl(text, flag),
  },
  port: {
    key: "ports",
    value: "N",
    multiple: true,
    defaultText: "any",
    help: "ask for this public port (repeatable: the n-th --port goes with the n-th --expose)",
    parse: (text: string, flag: string): number => parsePort(text, flag),
  },
  http: {
    key: "http",
    value: "HOST:PORT",
    multiple: true,
    help: "local web service to publish at http(s)://NAME.DOMAIN (repeatable: one tunnel each; combinable with --expose)",
    parse: (text: string, flag: string): HostPort => parseHostPort(text, flag),
  },
  subdomain: {
    key: "subdomains",
    value: "NAME",
    multiple: true,
    defaultText: "random (10 lower-case letters and digits)",
    help: "ask for this name (repeatable: the n-th goes with the n-th --http); a DNS label: a-z, 0-9, inner '-', at most 63",
    parse: (text: string, flag: string): string => {
      if (!SUBDOMAIN.test(text))
        throw new UsageError(`${flag}: '${text}' is not a DNS label (a-z, 0-9, inner '-', at most 63)`);
      return text;
    },
  },
  "host-header": {
    key: "hostHeader",
    value: "MODE",
    default: "rewrite",
    help: "the Host header the local web service sees: its own address (rewrite, as ngrok does; dev servers check it) or the visitor's (preserve)",
    parse: (text: string, flag: string): "rewrite" | "preserve" => {
      if (text !== "rewrite" && text !== "preserve")
        throw new UsageError(`${flag}: '${text}' is not rewrite or preserve`);
      return text;
    },
  },
  "basic-auth": {
    key: "basicAuth",
    value: "USER:PASSWORD",
    help: "visitors of every --http tunnel must log in (checked by the server, never forwarded)",
    parse: (text: string, flag: string): string => {
      if (!/^[^:]+:.+$/.test(text)) throw new UsageError(`${flag}: expected USER:PASSWORD`);
      return text;
    },
  },
  "log-requests": {
    key: "logRequests",
    defaultText: "on when stdout is a terminal",
    help: "one stdout line per HTTP request: time, method, path, status, duration, bytes",
  },
  ca: {
    key: "ca",
    value: "FILE",
    defaultText: "system roots",
    help: "trust this CA or self-signed certificate (PEM) for wss",
  },
  insecure: {
    key: "insecure",
    defaultText: "off",
    help: "skip TLS certificate verification (unsafe; prints a warning)",
  },
  heartbeat: {
    key: "heartbeatSeconds",
    value: "SECONDS",
    default: 10,
    help: "ping interval; a server silent for 3 intervals is dead",
    parse: seconds,
  },
  "max-backoff": {
    key: "maxBackoffSeconds",
    value: "SECONDS",
    default: 30,
    help: "longest wait between reconnect attempts",
    parse: seconds,
  },
  quiet: { key: "quiet", short: "q", help: "log warnings and errors only" },
} as const satisfies OptionTable;

/** Environment variables the client reads that no flag sets. */
export const CLIENT_ENVIRONMENT: EnvSpec[] = [
  { name: "SOCKETS_API_KEY", help: "API key sent to the server", defaultText: "none" },
];

/** What the command line says, once the paired flags became one list of services. */
export type ClientArgs = Omit<
  OptionValues<typeof CLIENT_OPTIONS>,
  "tcp" | "http" | "ports" | "subdomains" | "hostHeader" | "basicAuth" | "ca" | "server"
> & {
  server: URL;
  expose: ExposeOption[];
  /** PEM CA certificate(s) to trust for wss (the file's contents). */
  ca?: string;
  apiKey?: string;
};

/**
 * Turns argv and env into the client's options, or "help".
 * @throws {UsageError} on bad input, with one line naming the flag.
 */
export async function parseClientArgs(
  argv: string[],
  env: Record<string, string | undefined>,
): Promise<ClientArgs | "help"> {
  const { values, help } = parseOptions(CLIENT_OPTIONS, argv, env);
  if (help) return "help";
  const {
    tcp = [],
    http = [],
    ports = [],
    subdomains = [],
    hostHeader,
    basicAuth,
    ca,
    server,
    ...rest
  } = values as OptionValues<typeof CLIENT_OPTIONS>;
  if (tcp.length + http.length === 0)
    throw new UsageError("--expose HOST:PORT or --http HOST:PORT is required");
  if (ports.length > tcp.length) throw new UsageError("--port given more times than --expose");
  if (subdomains.length > http.length) throw new UsageError("--subdomain given more times than --http");
  if (basicAuth !== undefined && http.length === 0) throw new UsageError("--basic-auth needs --http");
  const preserveHost = (hostHeader ?? CLIENT_OPTIONS["host-header"].default) === "preserve";
  const expose: ExposeOption[] = [
    ...tcp.map((target, i): ExposeOption => {
      const publicPort = ports[i];
      return publicPort === undefined ? target : { ...target, publicPort };
    }),
    ...http.map(
      (target, i): ExposeOption => ({
        ...target,
        kind: "http",
        subdomain: subdomains[i],
        preserveHost,
        basicAuth,
      }),
    ),
  ];
  let caText: string | undefined;
  if (ca !== undefined) {
    const file = Bun.file(ca);
    if (!(await file.exists())) throw new UsageError(`--ca: cannot read '${ca}'`);
    caText = await file.text();
  }
  return {
    ...rest,
    server: server ?? parseServerUrl(CLIENT_OPTIONS.server.default, "--server"),
    expose,
    ca: caText,
    apiKey: env.SOCKETS_API_KEY || undefined,
    logRequests: rest.logRequests ?? process.stdout.isTTY === true,
  };
}
