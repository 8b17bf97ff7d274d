/**
 * Opening a tunnel's public port, on real listeners: the port asked for, a range, or any; never the
 * server's own or a privileged one without a range; each refusal a PortError with the client's code.
 */

import { afterEach, describe, expect, test } from "bun:test";
import type { TCPSocketListener } from "bun";
import {
  defaultHost,
  FIRST_UNPRIVILEGED_PORT,
  listenPublic,
  PortError,
  type PublicPortRequest,
} from "../../shared/server/public-port.ts";
import { cleanup, defer } from "../support/processes.ts";
import { freePort } from "../support/sockets.ts";

afterEach(cleanup);

const HOST = "127.0.0.1";
const handler = { data() {} };

function open(request: PublicPortRequest): TCPSocketListener<unknown> {
  const listener = listenPublic(request, handler);
  defer(() => listener.stop(true));
  return listener;
}

/** The PortError `open` throws. */
function refusal(request: PublicPortRequest): PortError {
  try {
    open(request);
  } catch (error) {
    expect(error).toBeInstanceOf(PortError);
    return error as PortError;
  }
  throw new Error(`listenPublic(${JSON.stringify(request)}) did not refuse`);
}

describe("listenPublic", () => {
  test("no port and no range: a port the kernel picks, unprivileged", () => {
    const listener = open({ host: HOST });
    expect(listener.port).toBeGreaterThanOrEqual(FIRST_UNPRIVILEGED_PORT);
  });

  test("the port asked for, when it is free", () => {
    const port = freePort();
    expect(open({ host: HOST, port }).port).toBe(port);
  });

  test("a port in use: port_taken, saying so", () => {
    const taken = open({ host: HOST });
    const error = refusal({ host: HOST, port: taken.port });
    expect(error.code).toBe("port_taken");
    expect(error.message).toBe(`port ${taken.port} is already in use on the server`);
  });

  test("a privileged port without --tcp-ports: port_out_of_range, before any listen", () => {
    const error = refusal({ host: HOST, port: 80 });
    expect(error.code).toBe("port_out_of_range");
    expect(error.message).toMatch(/^port 80 is privileged \(below 1024\)/);
  });

  test("one of the server's own ports: port_taken", () => {
    const own = freePort();
    const error = refusal({ host: HOST, port: own, own: [own] });
    expect(error.code).toBe("port_taken");
    expect(error.message).toMatch(/the server's own/);
  });

  test("with a range: a port outside it is port_out_of_range; a privileged port inside it is allowed to try", () => {
    const port = freePort();
    const error = refusal({ host: HOST, port: port + 1, range: { min: port, max: port } });
    expect(error.code).toBe("port_out_of_range");
    expect(error.message).toBe(`port ${port + 1} is outside the server's range ${port}-${port}`);
    // Inside an operator's range the privilege rule does not apply (whether the listen succeeds is the OS's call).
    try {
      open({ host: HOST, port: 1, range: { min: 1, max: 1 } });
    } catch (e) {
      expect((e as PortError).code).not.toBe("port_out_of_range");
    }
  });

  test("a range: a free port in it; none free (or only the server's own): no_free_port", () => {
    const port = freePort();
    expect(open({ host: HOST, range: { min: port, max: port } }).port).toBe(port);
    const error = refusal({ host: HOST, range: { min: port, max: port } }); // now taken by the line above
    expect(error.code).toBe("no_free_port");
    expect(error.message).toBe(`no free port in the server's range ${port}-${port}`);
    const other = freePort();
    expect(refusal({ host: HOST, range: { min: other, max: other }, own: [other] }).code).toBe(
      "no_free_port",
    );
  });

  test("half-close is on: after the visitor's FIN the tunnel can still answer", async () => {
    let answered = "";
    const listener = listenPublic<undefined>(
      { host: HOST },
      {
        data() {},
        end(socket) {
          // Later, as a tunnel's answer comes: without half-close Bun would have closed the socket.
          setTimeout(() => {
            socket.write("still here");
            socket.end();
          }, 20);
        },
      },
    );
    defer(() => listener.stop(true));
    const done = new Promise<void>((resolve) => {
      void Bun.connect({
        hostname: HOST,
        port: listener.port,
        allowHalfOpen: true,
        socket: {
          open: (socket) => socket.shutdown(),
          data: (_socket, chunk) => {
            answered += Buffer.from(chunk).toString();
          },
          end: () => resolve(),
          close: () => resolve(),
        },
      });
    });
    await done;
    expect(answered).toBe("still here");
  });
});

test("defaultHost: '::' where IPv6 also takes IPv4, else 0.0.0.0; either way one a listener binds", async () => {
  const host = await defaultHost();
  expect(["::", "0.0.0.0"]).toContain(host);
  const listener = Bun.listen({ hostname: host, port: 0, socket: { data() {} } });
  listener.stop(true);
});
