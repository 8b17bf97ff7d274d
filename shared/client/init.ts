/**
 * The example config file `bun client.ts --init [FILE]` writes: commented, and working as is against a
 * local server started with `bun server.ts` (its defaults); then what to run next.
 * @module
 */

import { writeFileSync } from "node:fs";
import { commandName } from "../log.ts";

/** The example file: every key of the file, the optional ones commented out. */
export const EXAMPLE_CONFIG = `# sockets client configuration (TOML). Run: bun client.ts --config sockets.toml
# Keys are the client's command-line options with _ for - (bun client.ts --help lists them); an option
# given on the command line wins over the file, and tunnels given there (--expose, --http) replace
# the ones below. README.md, "Config file", says all of it.

# The sockets server (a local \`bun server.ts\` listens on ws://localhost:7070).
server = "ws://localhost:7070"
# The API key is not kept here: set SOCKETS_API_KEY in the environment if the server wants one.

# heartbeat = 10           # seconds; a server silent for one is pinged, for 3 of them dead
# max_backoff = 30         # longest wait between reconnect attempts, in seconds
# ca = "cert.pem"          # trust this CA or self-signed certificate for wss:// (relative to this file)
# insecure = false         # skip TLS certificate verification (unsafe)
# quiet = false            # log warnings and errors only
# watch = false            # reload this file whenever it changes (SIGHUP always reloads it)
# log_requests = true      # one line per HTTP request, for every http tunnel that does not say
# host_header = "rewrite"  # default for http tunnels: "rewrite" (the local address) or "preserve"
# basic_auth = "user:pass" # default for http tunnels: visitors must log in

# One [[tunnels]] table per local service. name: unique (a reload compares tunnels by name);
# type: "tcp" or "http"; local: the service, "HOST:PORT". Reload with SIGHUP (kill -HUP PID) or
# --watch: added tunnels are exposed, removed ones closed, changed ones exposed again, and the others
# keep their URL and their connections.

[[tunnels]]
name = "ssh"
type = "tcp"                # a raw TCP tunnel: visitors connect to SERVER:PORT
local = "127.0.0.1:8000"
# port = 2222               # ask for this public port (default: any free one)
# allow = ["192.0.2.0/24"]  # only visitors from these ranges or addresses (both types; also deny = [...])
# proxy_protocol = "v1"     # tell the service each visitor's address in a PROXY header (v1 or v2)
# pool = true               # share the port with your other clients that say pool = true

[[tunnels]]
name = "web"
type = "http"               # an HTTP tunnel at http://NAME.DOMAIN (http://NAME.localhost:7070 locally)
local = "127.0.0.1:3000"
# subdomain = "demo"        # ask for this name (default: a random one)
# host_header = "preserve"  # let the local service see the visitor's Host (default: rewrite)
# basic_auth = "user:pass"  # visitors must log in
# log_requests = false      # no request log for this tunnel
`;

/**
 * Writes {@link EXAMPLE_CONFIG} to `file`, never over an existing file; returns what to tell the user.
 * @throws {Error} with one line when the file exists or cannot be written.
 */
export function writeExample(file: string): string {
  try {
    writeFileSync(file, EXAMPLE_CONFIG, { flag: "wx" });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EEXIST")
      throw new Error(
        `${file} already exists; not overwriting it (remove it, or name another file: --init FILE)`,
      );
    throw new Error(`cannot write ${file} (${code ?? String(error)})`);
  }
  const client = commandName("client.ts");
  const server = commandName("server.ts").replace("client", "server");
  const serverLine = `  ${server}`;
  const clientLine = `  ${client} --config ${file}`;
  const width = Math.max(serverLine.length, clientLine.length) + 2;
  return [
    `wrote ${file}: two example tunnels, tcp 127.0.0.1:8000 (ssh) and http 127.0.0.1:3000 (web); edit them to your services`,
    "next:",
    `${serverLine.padEnd(width)}# a local server, if you have none (in another terminal)`,
    `${clientLine.padEnd(width)}# publish the file's tunnels; add --watch to apply each save`,
    "",
  ].join("\n");
}
