/**
 * Opening a tunnel's public TCP listener: on the port a client asked for, in the server's
 * `--tcp-ports` range, or on any free port.
 * @module
 */

import type { SocketHandler, TCPSocketListener } from "bun";
import type { PortRange } from "./args.ts";

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
  /** The server's allowed range; absent means any port. */
  range?: PortRange;
}

/**
 * Listens on a public port with half-close enabled.
 * @throws {PortError} with a one-line message for the client.
 */
export function listenPublic<T>(request: PublicPortRequest, socket: SocketHandler<T>): TCPSocketListener<T> {
  const { host, port, range } = request;
  const listen = (p: number) => Bun.listen<T>({ hostname: host, port: p, allowHalfOpen: true, socket });
  if (port !== undefined) {
    if (range && (port < range.min || port > range.max))
      throw new PortError(
        "port_out_of_range",
        `port ${port} is outside the server's range ${range.min}-${range.max}`,
      );
    try {
      return listen(port);
    } catch (error) {
      throw listenError(error, port);
    }
  }
  if (!range) {
    try {
      return listen(0);
    } catch (error) {
      throw listenError(error, 0);
    }
  }
  // Start at a random port in the range so that concurrent servers and restarts spread out.
  const size = range.max - range.min + 1;
  const start = Math.floor(Math.random() * size);
  for (let i = 0; i < size; i++) {
    const candidate = range.min + ((start + i) % size);
    try {
      return listen(candidate);
    } catch (error) {
      if (
        (error as { code?: string }).code !== "EADDRINUSE" &&
        (error as { code?: string }).code !== "EACCES"
      )
        throw listenError(error, candidate);
    }
  }
  throw new PortError("no_free_port", `no free port in the server's range ${range.min}-${range.max}`);
}

function listenError(error: unknown, port: number): PortError {
  const code = (error as { code?: string }).code;
  if (code === "EADDRINUSE")
    return new PortError("port_taken", `port ${port} is already in use on the server`);
  if (code === "EACCES")
    return new PortError("listen_failed", `port ${port} needs privileges the server lacks`);
  return new PortError("listen_failed", `cannot listen on port ${port}: ${(error as Error).message}`);
}
