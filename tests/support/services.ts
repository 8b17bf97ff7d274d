/**
 * Test support, services: the local services tests publish through tunnels, in this process: a
 * restartable echo service, and the answer of a local web app to an upload.
 * @module
 */

import { createHash } from "node:crypto";
import { defer } from "./processes.ts";
import { writeQueued } from "./sockets.ts";

/** A local web app's answer to an upload: `{ bytes, sha256 }` of the request body, hashed as it streams. */
export async function hashBodyResponse(req: Request): Promise<Response> {
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of req.body ?? []) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  return Response.json({ bytes, sha256: hash.digest("hex") });
}

/** A local service for tests, in this process. */
export interface LocalService {
  port: number;
  /** Connections accepted so far. */
  accepted: number;
  stop(): void;
}

/** An echo service that can also be stopped and started again on the same port. */
export interface EchoService extends LocalService {
  /** Listens again on the same port after {@link LocalService.stop}. */
  restart(): void;
}

/**
 * An echo service that writes back everything (respecting backpressure) and half-closes after the
 * peer's FIN; on `port`, or a free one.
 */
export function startEchoService(port = 0): EchoService {
  const listen = (p: number) =>
    Bun.listen<{ pending: Uint8Array[]; ended: boolean }>({
      hostname: "127.0.0.1",
      port: p,
      allowHalfOpen: true,
      socket: {
        open(socket) {
          socket.data = { pending: [], ended: false };
          service.accepted++;
        },
        data(socket, chunk) {
          if (socket.data.pending.length > 0) {
            socket.data.pending.push(chunk);
            return;
          }
          const n = socket.write(chunk);
          if (n < chunk.length) {
            socket.data.pending.push(chunk.subarray(Math.max(n, 0)));
            socket.pause();
          }
        },
        drain(socket) {
          if (!writeQueued(socket, socket.data.pending)) return;
          socket.resume();
          if (socket.data.ended) socket.shutdown();
        },
        end(socket) {
          socket.data.ended = true;
          if (socket.data.pending.length === 0) socket.shutdown();
        },
      },
    });
  let listener: ReturnType<typeof listen> | null = listen(port);
  const service: EchoService = {
    port: listener.port,
    accepted: 0,
    stop() {
      listener?.stop(true);
      listener = null;
    },
    restart() {
      if (!listener) listener = listen(service.port);
    },
  };
  defer(service.stop);
  return service;
}

/**
 * A local service that accepts and never reads (it pauses every connection at once); stopped when the
 * test file ends, or by `stop()` (the benches).
 */
export function startStalledSink(): { port: number; stop(): void } {
  const listener = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.pause();
      },
      data() {},
    },
  });
  defer(() => listener.stop(true));
  return { port: listener.port, stop: () => listener.stop(true) };
}
