/**
 * `import { startClient } from "sockets/client"`: opens tunnels from a Bun program (a test suite, a dev
 * server) and gives their URLs; events say when the connection drops and comes back and when visitors
 * arrive. Options are checked as the command line checks its flags (the same one-line messages).
 *
 * ```ts
 * const tunnel = await startClient({ server: "wss://tunnel.example.com:7070", expose: [3000] });
 * console.log(tunnel.tunnels[0].url);
 * tunnel.on("visitor", ({ tunnel, remote }) => console.log(`${remote} -> ${tunnel.url}`));
 * await tunnel.close();
 * ```
 * @module
 */

import { EventEmitter } from "node:events";
import {
  type ClientHandle,
  type ClientOptions,
  type ConnectionChange,
  type ExposeOption,
  startClient as startClientProcess,
  type TunnelInfo,
  type VisitorInfo,
} from "../client.ts";
import {
  formatHost,
  type HostPort,
  parseHostPort,
  parsePort,
  parseServerUrl,
  UsageError,
} from "../shared/args.ts";
import { CLIENT_OPTIONS, type NamedService, withTunnelSettings } from "../shared/client/options.ts";
import { checkLibraryOptions } from "../shared/library.ts";
import type { OptionTable } from "../shared/options.ts";

export { ClientError } from "../client.ts";
export type { ConnectionChange, ExposeOption, TunnelInfo, VisitorInfo };

/** A local service: `3000` (127.0.0.1:3000), `"host:3000"`, `"[::1]:3000"`, or the full form (host defaults to 127.0.0.1). */
export type ServiceSpec = number | string | (Omit<ExposeOption, "host"> & { host?: string });

/** What {@link startClient} takes. */
export interface StartClientOptions {
  /** `ws://` or `wss://` URL of the server, or several in order of preference (default `ws://localhost:7070`). */
  server?: string | URL | readonly (string | URL)[];
  /** Services to publish as raw TCP tunnels (`--expose`). */
  expose?: readonly ServiceSpec[];
  /** Services to publish as HTTP tunnels at `NAME.DOMAIN` (`--http`). */
  http?: readonly ServiceSpec[];
  /** UDP services to publish, datagrams kept whole (`--expose-udp`). */
  udp?: readonly ServiceSpec[];
  /** API key the server wants (`SOCKETS_API_KEY` on the command line). */
  apiKey?: string;
  /** PEM CA certificate(s) to trust for `wss://` (the text, not a path). */
  ca?: string;
  /** Don't verify the server's certificate (tests against a self-signed server only). */
  insecure?: boolean;
  /** HTTP tunnels: `rewrite` (default) sends the local address as Host, `preserve` the visitor's. */
  hostHeader?: "rewrite" | "preserve";
  /** HTTP tunnels: `USER:PASSWORD` visitors must present. */
  basicAuth?: string;
  /** The request inspector: `"off"` (default), `"HOST:PORT"` or a port. */
  inspect?: string | number;
  /** Exchanges the inspector keeps (default 500). */
  inspectBuffer?: number;
  /** Seconds between pings (default 10). */
  heartbeatSeconds?: number;
  /** Longest wait between reconnect attempts, in seconds (default 30). */
  maxBackoffSeconds?: number;
  /** Every tunnel shares its port or name with the same user's other clients that say `pool` (README: Pools). */
  pool?: boolean;
  /** Every tunnel: only visitors from these CIDR ranges (a service's own `allow` replaces this). */
  allow?: string[];
  /** Every tunnel: visitors from these CIDR ranges are refused. */
  deny?: string[];
  /** Every tunnel: a PROXY protocol header (`v1` or `v2`) starts each connection to the local service. */
  proxyProtocol?: "v1" | "v2";
  /** Log warnings and errors only (the log goes to stderr). */
  quiet?: boolean;
  /** One line per HTTP request on HTTP tunnels, given to this function (off when absent). */
  logRequest?: (line: string) => void;
}

/** The events a running client emits, with their arguments. */
export interface ClientEvents {
  /** A tunnel the server confirmed after start: added at run time, or exposed again after a server restart. */
  exposed: [tunnel: TunnelInfo];
  /** The connection to the server was lost; the client reconnects by itself. */
  disconnected: [reason: string];
  /** The connection is back: `resumed` (visitors carried on) or the tunnels exposed again. */
  reconnected: [info: { server: string; resumed: boolean }];
  /** A visitor connected through a tunnel. */
  visitor: [visitor: VisitorInfo];
  /** The client stopped: closed, or gave up (a revoked key); the reason. */
  close: [reason: string];
}

/** A running client: its tunnels, their URLs, and its events. */
export interface Client extends ClientHandle {
  on<E extends keyof ClientEvents>(event: E, listener: (...args: ClientEvents[E]) => void): this;
  once<E extends keyof ClientEvents>(event: E, listener: (...args: ClientEvents[E]) => void): this;
  off<E extends keyof ClientEvents>(event: E, listener: (...args: ClientEvents[E]) => void): this;
}

/** Settings every tunnel takes from the top level unless it sets its own. */
type TunnelDefaults = Pick<StartClientOptions, "pool" | "allow" | "deny" | "proxyProtocol">;

/** Command-line options a program does not pass (it has `expose`/`http` objects, and no config file). */
const COMMAND_LINE_ONLY = [
  "expose",
  "http",
  "expose-udp",
  "port",
  "subdomain",
  "server",
  "ca",
  "config",
  "watch",
  "init",
];
/** The options table a library call is checked against. */
const LIBRARY_TABLE: OptionTable = Object.fromEntries(
  Object.entries(CLIENT_OPTIONS).filter(([flag]) => !COMMAND_LINE_ONLY.includes(flag)),
);
const OWN = ["server", "expose", "http", "udp", "apiKey", "ca", "logRequest"];

/** One service of `expose` or `http`, checked as `flag` checks it on the command line. */
function service(spec: ServiceSpec, kind: "tcp" | "http" | "udp", flag: string): ExposeOption {
  if (typeof spec === "number" || typeof spec === "string")
    return { ...parseHostPort(String(spec), flag), kind };
  if (typeof spec !== "object" || spec === null)
    throw new UsageError(`${flag}: '${String(spec)}' is not HOST:PORT`);
  const target: HostPort = parseHostPort(`${formatHost(spec.host ?? "127.0.0.1")}:${spec.port}`, flag);
  const checked: ExposeOption = { ...spec, ...target, kind: spec.kind ?? kind };
  if (spec.publicPort !== undefined) checked.publicPort = parsePort(String(spec.publicPort), "--port", true);
  if (spec.subdomain !== undefined)
    checked.subdomain = CLIENT_OPTIONS.subdomain.parse(spec.subdomain, "--subdomain");
  if (spec.basicAuth !== undefined)
    checked.basicAuth = CLIENT_OPTIONS["basic-auth"].parse(spec.basicAuth, "--basic-auth");
  for (const key of ["allow", "deny"] as const) {
    const rules = spec[key];
    if (rules !== undefined)
      checked[key] = rules.map((rule) => CLIENT_OPTIONS[key].parse(String(rule), `--${key}`));
  }
  if (spec.proxyProtocol !== undefined)
    checked.proxyProtocol = CLIENT_OPTIONS["proxy-protocol"].parse(
      String(spec.proxyProtocol),
      "--proxy-protocol",
    );
  return checked;
}

/** Turns a library call's options into the client's, with the command line's checks and messages. */
export function clientOptions(input: StartClientOptions): ClientOptions {
  const values = checkLibraryOptions(
    LIBRARY_TABLE,
    input as Record<string, unknown>,
    OWN,
  ) as StartClientOptions &
    Omit<ClientOptions, "server" | "expose" | "inspect"> & { inspect?: ClientOptions["inspect"] };
  const {
    server = CLIENT_OPTIONS.server.default,
    expose = [],
    http = [],
    udp = [],
    hostHeader,
    basicAuth,
    logRequests,
    ...rest
  } = values;
  const servers = (Array.isArray(server) ? server : [server]).map((url) =>
    parseServerUrl(String(url), "--server"),
  );
  if (servers.length === 0) throw new UsageError("--server: no server given");
  for (const [flag, list] of [
    ["--expose", expose],
    ["--http", http],
    ["--expose-udp", udp],
  ] as const)
    if (!Array.isArray(list))
      throw new UsageError(`${flag}: a list of services is expected (e.g. [3000, "127.0.0.1:8080"])`);
  if (expose.length === 0 && http.length === 0 && udp.length === 0)
    throw new UsageError(
      "--expose HOST:PORT, --http HOST:PORT, --expose-udp HOST:PORT or --tls-passthrough HOST:PORT is required",
    );
  const services = [
    ...expose.map((spec) => service(spec, "tcp", "--expose")),
    ...udp.map((spec) => service(spec, "udp", "--expose-udp")),
    // HTTP services take the top-level host-header mode, basic auth and request log unless they set their own.
    ...http.map((spec): ExposeOption => {
      const checked: ExposeOption = {
        preserveHost: (hostHeader ?? CLIENT_OPTIONS["host-header"].default) === "preserve",
        ...service(spec, "http", "--http"),
      };
      if (checked.basicAuth === undefined && basicAuth !== undefined) checked.basicAuth = basicAuth;
      if (checked.logRequests === undefined && logRequests !== undefined) checked.logRequests = logRequests;
      return checked;
    }),
  ];
  // Top-level pool, allow, deny and PROXY protocol apply to every service that does not set its own.
  const { pool, allow, deny, proxyProtocol, ...others } = rest as typeof rest & TunnelDefaults;
  const settings = { pool, allow, deny, proxyProtocol };
  const withDefaults = services.map((service) =>
    withTunnelSettings({ ...service } as NamedService, {
      pool: service.pool ?? settings.pool,
      allow: service.allow ?? settings.allow,
      deny: service.deny ?? settings.deny,
      proxyProtocol: service.proxyProtocol ?? settings.proxyProtocol,
    }),
  );
  return { ...others, server: servers, expose: withDefaults, inspect: values.inspect ?? "off" };
}

/**
 * Connects to the server, exposes every service and resolves once all tunnels are live (their URLs in
 * `tunnels`). The client then stays up by itself (reconnects, resumes) until `close()`.
 * @throws {UsageError} for a bad option, with the command line's one-line message.
 * @throws {ClientError} when the server cannot be reached or refuses (API key, port taken, …).
 */
export async function startClient(options: StartClientOptions): Promise<Client> {
  const events = new EventEmitter();
  const settings = clientOptions(options);
  const handle = await startClientProcess({
    ...settings,
    onExposed: (tunnel) => events.emit("exposed", tunnel),
    onConnection: (change: ConnectionChange) =>
      change.type === "disconnected"
        ? events.emit("disconnected", change.reason)
        : events.emit("reconnected", { server: change.server, resumed: change.resumed }),
    onVisitor: (visitor) => events.emit("visitor", visitor),
  });
  void handle.closed.then((reason) => events.emit("close", reason));
  const client = handle as Client;
  client.on = (event, listener) => {
    events.on(event, listener as (...args: unknown[]) => void);
    return client;
  };
  client.once = (event, listener) => {
    events.once(event, listener as (...args: unknown[]) => void);
    return client;
  };
  client.off = (event, listener) => {
    events.off(event, listener as (...args: unknown[]) => void);
    return client;
  };
  return client;
}
