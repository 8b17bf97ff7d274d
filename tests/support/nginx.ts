/**
 * Test support, nginx: Debian's nginx (`nginx-light`, /usr/sbin/nginx) as a local service that reads
 * PROXY protocol headers, the way users put nginx behind a tunnel. Each instance runs in its own temp
 * prefix (config, pid file, error and access logs, temp paths: nothing under /etc or /var), in the
 * foreground as one process (`daemon off; master_process off;`), so the test owns its PID and
 * {@link spawnRole}'s cleanup stops it. Its HTTP server listens with `proxy_protocol` and logs, per
 * request, the addresses the header named (`$proxy_protocol_addr`, `$proxy_protocol_port`, and the
 * destination: `$proxy_protocol_server_addr`, `$proxy_protocol_server_port`) and the connection's
 * own peer. A connection without a valid header is closed by nginx (400 and an error line).
 * @module
 */

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defer, type RoleProcess, spawnRole } from "./processes.ts";
import { freePort } from "./sockets.ts";

/** The nginx binary: Debian's, else whichever is on the PATH. */
const NGINX = Bun.which("nginx", { PATH: `/usr/sbin:${process.env.PATH ?? ""}` }) ?? "/usr/sbin/nginx";

/** The body nginx answers every request with. */
export const NGINX_BODY = "hello from nginx\n";

/** One access-log line: what the PROXY header said, and the connection's own peer. */
export interface ProxyLogLine {
  /** `$proxy_protocol_addr`: the source address of the header. */
  addr: string;
  /** `$proxy_protocol_port`. */
  port: number;
  /** `$proxy_protocol_server_addr`: the destination address of the header. */
  serverAddr: string;
  /** `$proxy_protocol_server_port`. */
  serverPort: number;
  /** `$remote_addr`: who connected to nginx (the client of the tunnel, on loopback). */
  remoteAddr: string;
  /** `$request`. */
  request: string;
}

/** An nginx the test started. */
export interface NginxProcess {
  /** Its port on 127.0.0.1 (HTTP, PROXY protocol required). */
  readonly port: number;
  readonly role: RoleProcess;
  /** The access log's lines so far, parsed. */
  accessLog(): ProxyLogLine[];
  /** The error log so far. */
  errorLog(): string;
}

/** Resolves once something accepts a TCP connection on 127.0.0.1:`port`; rejects after `timeoutMs`. */
async function waitForPort(port: number, timeoutMs: number, exited: Promise<number>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  for (let attempt = 0; attempt < 1000 && Date.now() < deadline && !gone; attempt++) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect({ port, host: "127.0.0.1" });
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    await Bun.sleep(20);
  }
  throw new Error(
    gone ? "nginx exited before it listened" : `nginx did not listen on ${port} within ${timeoutMs} ms`,
  );
}

/**
 * Starts nginx on a free loopback port and waits until it accepts connections. Rejects with the
 * reason (its error log) when /usr/sbin/nginx is missing (`apt-get install nginx-light`) or fails.
 */
export async function startNginx(): Promise<NginxProcess> {
  const prefix = mkdtempSync(join(tmpdir(), "sockets-nginx-"));
  defer(() => rmSync(prefix, { recursive: true, force: true }));
  mkdirSync(join(prefix, "temp"));
  const port = freePort();
  const at = (name: string) => join(prefix, name);
  const config = `
daemon off;
master_process off;
worker_processes 1;
pid ${at("nginx.pid")};
error_log ${at("error.log")} info;
events { worker_connections 128; }
http {
  client_body_temp_path ${at("temp")} 1;
  proxy_temp_path ${at("temp")} 1;
  fastcgi_temp_path ${at("temp")} 1;
  uwsgi_temp_path ${at("temp")} 1;
  scgi_temp_path ${at("temp")} 1;
  log_format proxied '$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port $remote_addr "$request"';
  server {
    listen 127.0.0.1:${port} proxy_protocol;
    access_log ${at("access.log")} proxied;
    keepalive_timeout 5s;
    location / { default_type text/plain; return 200 "${NGINX_BODY.replace("\n", "\\n")}"; }
  }
}
`;
  writeFileSync(at("nginx.conf"), config);
  writeFileSync(at("access.log"), "");
  writeFileSync(at("error.log"), "");
  // -e: the error log before the config is read (else nginx opens /var/log/nginx/error.log first).
  const role = spawnRole([NGINX, "-p", prefix, "-c", at("nginx.conf"), "-e", at("error.log")]);
  const read = (name: string) => {
    try {
      return readFileSync(at(name), "utf8");
    } catch {
      return "";
    }
  };
  try {
    await waitForPort(port, 10_000, role.proc.exited);
  } catch (error) {
    throw new Error(`${(error as Error).message}: ${read("error.log")}${role.stderr()}`);
  }
  return {
    port,
    role,
    accessLog: () =>
      read("access.log")
        .split("\n")
        .filter((line) => line !== "")
        .map((line) => {
          const match = /^(\S+) (\S+) (\S+) (\S+) (\S+) "(.*)"$/.exec(line);
          if (match === null) throw new Error(`unexpected nginx access log line: ${line}`);
          return {
            addr: match[1] as string,
            port: Number(match[2]),
            serverAddr: match[3] as string,
            serverPort: Number(match[4]),
            remoteAddr: match[5] as string,
            request: match[6] as string,
          };
        }),
    errorLog: () => read("error.log"),
  };
}
