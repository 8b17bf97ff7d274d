/**
 * Opening a tunnel's public TCP listener: on the port a client asked for, in the server's
 * `--tcp-ports` range, or on any free port; never on one of the server's own ports, and without a
 * range never on a privileged one (below 1024). Also the default bind address.
 * @module
 */

import { readFileSync } from "node:fs";
import type { SocketHandler, TCPSocketListener } from "bun";
import type { PortRange } from "../args.ts";

/** Why a public port could not be opened; `code` goes to the client in the error message. */
export class PortError extends Error {
  override name = "PortError";
  constructor(
    readonly code: "port_taken" | "port_out_of_range" | "no_free_port" | "listen_failed",
    message: string,
  ) {
    super(message);
  }
}

/** Where to listen and which port to try. */
export interface PublicPortRequest {
  host: string;
  /** The port the client asked for, if any. */
  port?: number;
  /** The server's allowed range; absent means any unprivileged port. */
  range?: PortRange;
  /** The server's own ports (control, HTTP): never handed to a client. */
  own?: readonly number[];
  /**
   * Without a port or a range: where to pick one (at random) instead of letting the kernel pick from
   * its ephemeral range ({@link clusterPickRange}).
   */
  pick?: PortRange;
}

/** Ports below this need privileges (ssh, http, smtp, …): no client gets one unless `--tcp-ports` allows it. */
export const FIRST_UNPRIVILEGED_PORT = 1024;

/**
 * Listens on a public port with half-close enabled.
 * @throws {PortError} with a one-line message for the client.
 */
export function listenPublic<T>(request: PublicPortRequest, socket: SocketHandler<T>): TCPSocketListener<T> {
  const { host, port, range } = request;
  const own = new Set(request.own ?? []);
  const listen = (p: number) => Bun.listen<T>({ hostname: host, port: p, allowHalfOpen: true, socket });
  if (port !== undefined) {
    if (range && (port < range.min || port > range.max))
      throw new PortError(
        "port_out_of_range",
        `port ${port} is outside the server's range ${range.min}-${range.max}`,
      );
    // As root, listening on 22 or 80 succeeds: only the operator's --tcp-ports may hand those out.
    if (!range && port < FIRST_UNPRIVILEGED_PORT)
      throw new PortError(
        "port_out_of_range",
        `port ${port} is privileged (below ${FIRST_UNPRIVILEGED_PORT}); this server hands out ${FIRST_UNPRIVILEGED_PORT}-65535 unless started with --tcp-ports`,
      );
    if (own.has(port))
      throw new PortError("port_taken", `port ${port} is the server's own (control or HTTP port)`);
    try {
      return listen(port);
    } catch (error) {
      throw listenError(error, port);
    }
  }
  if (!range && request.pick) return listenInRange(request.pick, own, listen);
  if (!range) {
    // The kernel picks from its ephemeral range (never privileged, never a port in use, so never ours).
    try {
      return listen(0);
    } catch (error) {
      throw listenError(error, 0);
    }
  }
  return listenInRange(range, own, listen);
}

function listenInRange<L>(range: PortRange, own: ReadonlySet<number>, listen: (port: number) => L): L {
  for (const candidate of portsToTry(range, own))
    try {
      return listen(candidate);
    } catch (error) {
      if (!portBusy(error)) throw listenError(error, candidate);
    }
  throw new PortError("no_free_port", `no free port in the server's range ${range.min}-${range.max}`);
}

/**
 * Where a cluster node picks a tunnel's port when the operator set no `--tcp-ports`: from 10000 up to
 * just below the kernel's ephemeral range. Every node mirrors the port, and a port from the ephemeral
 * range is where any node's own outgoing connections (to Redis, its links, local services) take their
 * local ports, so a mirror there could fail to bind; below it, only a service listening on the same
 * port can clash. Undefined (the kernel picks) when that range leaves too little room.
 */
export function clusterPickRange(): PortRange | undefined {
  if (clusterPick === null) {
    let ephemeralMin = 32_768;
    try {
      const text = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8");
      ephemeralMin = Number.parseInt(text, 10) || ephemeralMin;
    } catch {}
    const range = { min: 10_000, max: ephemeralMin - 1 };
    clusterPick = range.max - range.min >= 1_000 ? range : undefined;
  }
  return clusterPick;
}
let clusterPick: PortRange | undefined | null = null;

/**
 * The ports of `range` to try, each once and never one of `own`, starting at a random one so that
 * concurrent servers and restarts spread out.
 */
export function* portsToTry(range: PortRange, own: ReadonlySet<number>): Generator<number> {
  const size = range.max - range.min + 1;
  const start = Math.floor(Math.random() * size);
  for (let i = 0; i < size; i++) {
    const candidate = range.min + ((start + i) % size);
    if (!own.has(candidate)) yield candidate;
  }
}

/** Whether a failed bind only says the port is taken or out of reach (the next one may do). */
export function portBusy(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return code === "EADDRINUSE" || code === "EACCES";
}

function listenError(error: unknown, port: number): PortError {
  const code = (error as { code?: string }).code;
  if (code === "EADDRINUSE")
    return new PortError("port_taken", `port ${port} is already in use on the server`);
  if (code === "EACCES")
    return new PortError("listen_failed", `port ${port} needs privileges the server lacks`);
  return new PortError("listen_failed", `cannot listen on port ${port}: ${(error as Error).message}`);
}

/**
 * The default bind address: `::` where the machine has IPv6 and a socket there also takes IPv4
 * (dual stack: one listener serves both families), else `0.0.0.0`. Probed with a real listener and
 * an IPv4 connection to it, since `net.ipv6.bindv6only` or a kernel without IPv6 change the answer.
 */
export async function defaultHost(): Promise<string> {
  let probe: TCPSocketListener<undefined> | undefined;
  try {
    probe = Bun.listen({ hostname: "::", port: 0, socket: { data() {} } });
    const port = probe.port;
    const client = await Promise.race([
      Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } }),
      Bun.sleep(1000).then(() => undefined),
    ]);
    if (client === undefined) return "0.0.0.0";
    client.end();
    return "::";
  } catch {
    return "0.0.0.0";
  } finally {
    probe?.stop(true);
  }
}
