/**
 * `import { startServer } from "sockets/server"`: runs a tunnel server inside a Bun program (a test
 * suite that needs a server of its own, an app that hosts one). Options are the command line's, by
 * their option names (`port`, `httpPort`, `tcpPorts: "20000-20100"`, …), checked with the same
 * one-line messages.
 *
 * ```ts
 * const server = await startServer({ host: "127.0.0.1", port: 0, apiKey: "secret" });
 * console.log(server.url); // ws://127.0.0.1:PORT, for startClient({ server: server.url, … })
 * await server.close();
 * ```
 * @module
 */

import { type ServerHandle, startServer as startServerProcess } from "../server.ts";
import { UsageError } from "../shared/args.ts";
import { checkLibraryOptions } from "../shared/library.ts";
import type { OptionTable } from "../shared/options.ts";
import { finishServerOptions, SERVER_OPTIONS, type ServerOptions } from "../shared/server/options.ts";

export type { ServerHandle, ServerOptions };

/** What {@link startServer} takes: the server's options, TLS as PEM text, and the API key. */
export type StartServerOptions = Omit<ServerOptions, "config" | "watch" | "tcpPorts" | "admin"> & {
  /** The range for public TCP ports: `"20000-20100"` or `{ min, max }`. */
  tcpPorts?: string | ServerOptions["tcpPorts"];
  /** The admin listener (dashboard, API, /metrics): `"127.0.0.1:9090"` or `{ host, port }`. */
  admin?: string | ServerOptions["admin"];
};

/** Command-line options a program does not pass: the config file and its watcher, and PEM files by path. */
const COMMAND_LINE_ONLY = ["config", "watch", "tls-cert", "tls-key", "cluster-ca"];
const LIBRARY_TABLE: OptionTable = Object.fromEntries(
  Object.entries(SERVER_OPTIONS).filter(([flag]) => !COMMAND_LINE_ONLY.includes(flag)),
);
const OWN = ["tls", "clusterCa", "apiKey", "users"];

/** Turns a library call's options into the server's, with the command line's checks and messages. */
export function serverOptions(input: StartServerOptions = {}): ServerOptions {
  const { tls, clusterCa, apiKey, users, ...values } = checkLibraryOptions(
    LIBRARY_TABLE,
    input as Record<string, unknown>,
    OWN,
  ) as ServerOptions;
  if (tls !== undefined && (typeof tls.cert !== "string" || typeof tls.key !== "string"))
    throw new UsageError("--tls-cert and --tls-key must be given together");
  // The checks that span options (admin beyond loopback needs a token, --cluster-ca needs --cluster).
  finishServerOptions(values, {});
  if (clusterCa !== undefined && values.cluster === undefined)
    throw new UsageError("--cluster-ca needs --cluster (it is the CA of the cluster's Redis and nodes)");
  return { ...values, tls, clusterCa, apiKey, users };
}

/**
 * Starts a server; resolves once its control port listens (`url` is what clients connect to).
 * @throws {UsageError} for a bad option, with the command line's one-line message.
 */
export function startServer(options: StartServerOptions = {}): Promise<ServerHandle> {
  try {
    return startServerProcess(serverOptions(options));
  } catch (error) {
    return Promise.reject(error);
  }
}
