/**
 * Test support, the server's HTTPS port with both kinds of tunnel: a server with `--https-port` and a
 * wildcard for *.tunnel.test, a local HTTPS service published end to end (`--tls-passthrough`) as
 * `secure`, and a plain HTTP app terminated by the server as `plain`.
 * @module
 */

import { readFileSync } from "node:fs";
import { makeCertificate } from "./certificates.ts";
import { freePorts } from "./pebble.ts";
import {
  type ClientProcess,
  defer,
  type ServerProcess,
  startClientProcess,
  startServerProcess,
} from "./processes.ts";
import { configFolder } from "./server-config.ts";

/** The domain the server's tunnels are named under. */
export const HTTPS_DOMAIN = "tunnel.test";

/** What {@link startHttpsFront} started. */
export interface HttpsFront {
  server: ServerProcess;
  client: ClientProcess;
  httpsPort: number;
  /** The server's wildcard for *.DOMAIN (and 127.0.0.1, for the control port's wss). */
  wildcard: string;
  /** The local TLS service's own certificate. */
  serviceCert: string;
  /** The test's folder (certificates, files). */
  dir: string;
}

/**
 * Starts the server (`--request-timeout 2`), the TLS service answering with `serviceFetch`, the plain
 * app answering with `appFetch`, and a client publishing both; resolves once both URLs are printed.
 * The services stop when the test file ends.
 */
export async function startHttpsFront(
  serviceFetch: (request: Request) => Response | Promise<Response>,
  appFetch: (request: Request) => Response | Promise<Response>,
): Promise<HttpsFront> {
  const dir = configFolder();
  const [wildcard, wildcardKey] = await makeCertificate(
    dir,
    "wildcard",
    `DNS:*.${HTTPS_DOMAIN},IP:127.0.0.1`,
  );
  const [serviceCert, serviceKey] = await makeCertificate(dir, "service", `DNS:secure.${HTTPS_DOMAIN}`);
  const [httpsPort] = freePorts(1) as [number];
  const server = await startServerProcess([
    ...["--domain", HTTPS_DOMAIN, "--https-port", String(httpsPort), "--http-port", "0"],
    ...["--tls-cert", wildcard, "--tls-key", wildcardKey, "--request-timeout", "2"],
  ]);
  const service = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: readFileSync(serviceCert, "utf8"), key: readFileSync(serviceKey, "utf8") },
    fetch: serviceFetch,
  });
  const app = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: appFetch });
  defer(() => service.stop(true));
  defer(() => app.stop(true));
  const client = await startClientProcess(
    server.url,
    [],
    [
      ...["--tls-passthrough", `127.0.0.1:${service.port}`, "--http", `127.0.0.1:${app.port}`],
      // Names go to HTTP tunnels first, then TLS ones.
      ...["--subdomain", "plain", "--subdomain", "secure", "--ca", wildcard],
    ],
  );
  await client.waitFor(/url: tls:\/\/secure\.tunnel\.test:\d+/);
  await client.waitFor(/url: https:\/\/plain\.tunnel\.test:\d+/);
  return { server, client, httpsPort, wildcard, serviceCert, dir };
}
