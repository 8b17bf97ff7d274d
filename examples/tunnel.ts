/**
 * Use it from code: publish a local HTTP service through a sockets server and fetch it through the
 * tunnel. With a server URL (and `SOCKETS_API_KEY` if it wants one) it uses that server; without, it
 * starts one of its own on 127.0.0.1.
 *
 * ```sh
 * bun examples/tunnel.ts                                   # a server of its own
 * bun examples/tunnel.ts wss://tunnel.example.com:7070     # yours
 * ```
 * @module
 */

import { startClient } from "sockets/client";
import { startServer } from "sockets/server";

// The service to publish: anything listening locally (here, a tiny Bun server on a free port).
const app = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  fetch: () => new Response("hello through the tunnel\n"),
});

// A server of its own (any free port, a random API key) unless one was named.
const ownKey = crypto.randomUUID();
const ownServer =
  process.argv[2] === undefined
    ? await startServer({ host: "127.0.0.1", port: 0, apiKey: ownKey, quiet: true })
    : undefined;
const tunnel = await startClient({
  server: process.argv[2] ?? (ownServer?.url as string),
  apiKey: ownServer ? ownKey : process.env.SOCKETS_API_KEY,
  expose: [app.port as number],
  quiet: true,
});
tunnel.on("visitor", ({ tunnel, remote }) => console.log(`visitor ${remote} on ${tunnel.url}`));
tunnel.on("disconnected", (reason) => console.log(`lost the server (${reason}); reconnecting`));
tunnel.on("reconnected", ({ resumed }) => console.log(resumed ? "resumed" : "tunnels exposed again"));

const [first] = tunnel.tunnels;
console.log(`tunnel ${first?.id}: ${first?.url} -> 127.0.0.1:${app.port}`);
// A TCP tunnel's URL is HOST:PORT; anything that speaks the service's protocol can use it.
const response = await fetch(`http://${first?.url}/`);
console.log(`GET through the tunnel: ${response.status} ${(await response.text()).trim()}`);

await tunnel.close();
await ownServer?.close();
app.stop(true);
