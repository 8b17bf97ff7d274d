/**
 * The providers the benchmark compares: `direct` (no tunnel, the limit), `relay-floor` (two chained minimal
 * C relays: what three loopback hops cost with no tunnel work), `ssh` (ssh -N -R, in ssh.ts), `sockets`
 * (bun server.ts + bun client.ts), `sockets-compiled` (dist/ executables) and `sockets-tuned`.
 * @module
 */

import { join } from "node:path";
import { buildNative, EXECUTABLES, ensureExecutables, ROOT } from "./native.ts";
import { type Proc, spawn, waitForPort } from "./procs.ts";
import { sshProvider } from "./ssh.ts";

/** One process of a tunnel: its role in the report and its PID. */
export interface TunnelProcess {
  role: string;
  pid: number;
}

/** A running tunnel to the local service. */
export interface Tunnel {
  /** Port on 127.0.0.1 that visitors connect to. */
  port: number;
  /** The tunnel's processes right now, by role (memory and CPU are summed over them). */
  processes(): TunnelProcess[];
  /** Which processes those are, for the report. */
  describe(): string;
  /** Open streams the tunnel still tracks, when it can tell (sockets: GET /health). */
  streams?(): Promise<number>;
  /** Stops every process of the tunnel. */
  stop(): Promise<void>;
}

/** Names of the providers, in the order they run. */
export const PROVIDER_NAMES = [
  "direct",
  "relay-floor",
  "ssh",
  "sockets",
  "sockets-compiled",
  "sockets-tuned",
] as const;

/** A provider name. */
export type ProviderName = (typeof PROVIDER_NAMES)[number];

/** One way for a visitor to reach the local service. */
export interface Provider {
  name: ProviderName;
  /** Checks (and builds) what the provider needs: null when it can run, else the note to print. */
  prepare(): Promise<string | null>;
  /** Starts a tunnel to 127.0.0.1:servicePort. */
  start(servicePort: number): Promise<Tunnel>;
}

const direct: Provider = {
  name: "direct",
  async prepare() {
    return null;
  },
  async start(servicePort) {
    return { port: servicePort, processes: () => [], describe: () => "no tunnel", stop: async () => {} };
  },
};

/**
 * Starts a tunnel's processes through `start`, which spawns each with the `track` it is given; if
 * `start` fails, every process it spawned is stopped before the error goes on.
 */
async function launch(start: (track: (p: Proc) => Proc) => Promise<Omit<Tunnel, "stop">>): Promise<Tunnel> {
  const procs: Proc[] = [];
  const stop = async () => {
    for (const p of procs.reverse()) await p.stop();
  };
  const track = (p: Proc) => {
    procs.push(p);
    return p;
  };
  try {
    return { ...(await start(track)), stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * Two bench/relay.c processes chained, visitor → relay → relay → service: three loopback TCP hops, as
 * through a tunnel, with one read and one write per chunk and nothing else. The floor for bulk; its
 * connection rate pays three TCP connections per visitor where a tunnel pays two.
 */
const relayFloor: Provider = {
  name: "relay-floor",
  async prepare() {
    return null; // gcc and the build are the benchmark's own prerequisites
  },
  start: (servicePort) =>
    launch(async (track) => {
      const { relay } = await buildNative();
      // Spawned from the service outwards: relay 2 forwards to the service, relay 1 to relay 2.
      const relays: Proc[] = [];
      let target = servicePort;
      for (let i = 0; i < 2; i++) {
        const p = track(spawn([relay, String(target)], { stdin: true }));
        relays.push(p);
        target = Number((await p.waitFor(/port (\d+)/, 10_000))[1]);
      }
      const [second, first] = relays as [Proc, Proc];
      return {
        port: target,
        processes: () => [
          { role: "relay 1", pid: first.pid },
          { role: "relay 2", pid: second.pid },
        ],
        describe: () => `relay ${first.pid} → relay ${second.pid}`,
      };
    }),
};

/** Starts a sockets server and client from the given commands and waits for the tunnel's URL. */
function startSockets(
  server: string[],
  client: string[],
  servicePort: number,
  extraEnv: Record<string, string> = {},
): Promise<Tunnel> {
  return launch(async (track) => {
    const env = { SOCKETS_SINGLE_API_KEY: "", SOCKETS_API_KEY: "", SOCKETS_SERVER: "", ...extraEnv };
    const srv = track(spawn([...server, "--host", "127.0.0.1", "--port", "0"], { cwd: ROOT, env }));
    const [, url] = await srv.waitFor(/listening on (ws:\/\/\S+)/, 20_000);
    const cli = track(
      spawn([...client, "--expose", `127.0.0.1:${servicePort}`, "--server", url as string], {
        cwd: ROOT,
        env,
      }),
    );
    const match = await cli.waitFor(/exposed with tunnel id \S+, url: \S+:(\d+)/, 20_000);
    const port = Number(match[1]);
    await waitForPort(port, 10_000);
    const health = `${(url as string).replace(/^ws/, "http")}/health`;
    return {
      port,
      processes: () => [
        { role: "server", pid: srv.pid },
        { role: "client", pid: cli.pid },
      ],
      describe: () => `server ${srv.pid} + client ${cli.pid}`,
      async streams() {
        const body = (await (await fetch(health, { signal: AbortSignal.timeout(2000) })).json()) as {
          streams: number;
        };
        return body.streams;
      },
    };
  });
}

const sockets: Provider = {
  name: "sockets",
  async prepare() {
    return null;
  },
  start: (port) => startSockets(["bun", join(ROOT, "server.ts")], ["bun", join(ROOT, "client.ts")], port),
};

const socketsCompiled: Provider = {
  name: "sockets-compiled",
  async prepare() {
    const { ok, note } = await ensureExecutables();
    if (!ok) return note;
    process.stderr.write(`sockets-compiled: ${note}\n`);
    return null;
  },
  start: (port) => startSockets([EXECUTABLES.server], [EXECUTABLES.client], port),
};

/**
 * `bun server.ts` + `bun client.ts` with `MIMALLOC_PURGE_DELAY=-1` on both sides: mimalloc keeps freed
 * pages for reuse (README: "Memory for speed"). Shows what that opt-in buys beside the default.
 */
const socketsTuned: Provider = {
  name: "sockets-tuned",
  async prepare() {
    return null;
  },
  start: (port) =>
    startSockets(["bun", join(ROOT, "server.ts")], ["bun", join(ROOT, "client.ts")], port, {
      MIMALLOC_PURGE_DELAY: "-1",
    }),
};

/** Every provider, by name. */
export const PROVIDERS: Record<ProviderName, Provider> = {
  direct,
  "relay-floor": relayFloor,
  ssh: sshProvider,
  sockets,
  "sockets-compiled": socketsCompiled,
  "sockets-tuned": socketsTuned,
};
