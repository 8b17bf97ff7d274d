/**
 * The providers the benchmark compares: `direct` (no tunnel, the limit), `mux-floor` (a minimal
 * multiplexing relay in C: the tunnel's topology with the least work it allows), `ssh` (ssh -N -R, in
 * ssh.ts), `sockets` (bun server.ts + bun client.ts), `sockets-compiled` (dist/ executables) and
 * `sockets-tuned`, and `rathole` (rathole 0.5.0, the fastest peer tunnel, when its binary is there).
 * @module
 */

import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildNative, EXECUTABLES, ensureExecutables, ROOT } from "./native.ts";
import { atExit, freePort, type Proc, spawn, waitForPort } from "./procs.ts";
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
  "mux-floor",
  "ssh",
  "sockets",
  "sockets-compiled",
  "sockets-tuned",
  "sockets-base",
  "rathole",
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
 * bench/native/muxfloor.c as server and client: the tunnel's own topology (visitors multiplexed over one TCP
 * link, a connection to the service per visitor) with the least user-space work it allows. The floor
 * for every figure, the connection rate included.
 */
const muxFloor: Provider = {
  name: "mux-floor",
  async prepare() {
    return null; // gcc and the build are the benchmark's own prerequisites
  },
  start: (servicePort) =>
    launch(async (track) => {
      const { muxfloor } = await buildNative();
      const server = track(spawn([muxfloor, "server"], { stdin: true }));
      const [, link] = await server.waitFor(/link (\d+)/, 10_000);
      const client = track(spawn([muxfloor, "client", link as string, String(servicePort)], { stdin: true }));
      const port = Number((await server.waitFor(/port (\d+)/, 10_000))[1]);
      return {
        port,
        processes: () => [
          { role: "server", pid: server.pid },
          { role: "client", pid: client.pid },
        ],
        describe: () => `muxfloor server ${server.pid}, client ${client.pid}`,
      };
    }),
};

/**
 * Starts a sockets server and client from the given commands (their flags for the bench's loopback
 * tunnel are appended) and waits until the tunnel's port takes connections. `extraEnv` is added to
 * both processes' environment; `cwd` defaults to this checkout (`bench/ab.ts` passes another); `via`
 * puts something between client and server (the long path's delay proxy): given the server's control
 * port, it resolves with the port the client should dial, and is stopped with the tunnel.
 */
export function startSockets(
  server: string[],
  client: string[],
  servicePort: number,
  {
    extraEnv = {},
    cwd = ROOT,
    via,
  }: {
    extraEnv?: Record<string, string>;
    cwd?: string;
    via?: (port: number) => Promise<Proc & { port: number }>;
  } = {},
): Promise<Tunnel> {
  return launch(async (track) => {
    const env = { SOCKETS_SINGLE_API_KEY: "", SOCKETS_API_KEY: "", SOCKETS_SERVER: "", ...extraEnv };
    const srv = track(spawn([...server, "--host", "127.0.0.1", "--port", "0"], { cwd, env }));
    const [, url] = await srv.waitFor(/listening on (ws:\/\/\S+)/, 20_000);
    let dial = url as string;
    if (via) {
      const proxy = await via(Number(new URL(dial).port));
      track(proxy);
      dial = `ws://127.0.0.1:${proxy.port}`;
    }
    const cli = track(
      spawn([...client, "--expose", `127.0.0.1:${servicePort}`, "--server", dial], { cwd, env }),
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
      extraEnv: { MIMALLOC_PURGE_DELAY: "-1" },
    }),
};

/**
 * Where peer tunnels built from their sources live (never in the checkout; see
 * ../shared/notes/peers-build.md): `$SOCKETS_PEERS/bin`, else `../peers/bin` beside the checkout.
 */
export const PEERS_BIN = join(process.env.SOCKETS_PEERS ?? join(ROOT, "..", "peers"), "bin");

/** rathole's binary: in {@link PEERS_BIN}, else on PATH; null when neither has it. */
function ratholeBinary(): string | null {
  const local = join(PEERS_BIN, "rathole");
  return existsSync(local) ? local : Bun.which("rathole");
}

/**
 * rathole 0.5.0 (TCP, no TLS or noise): a server and a client process with one service, configured by
 * TOML files in a temp dir (ports picked free on 127.0.0.1, a fixed token). Not multiplexed: each
 * visitor gets a data channel (a TCP connection) of its own between the two.
 */
const rathole: Provider = {
  name: "rathole",
  async prepare() {
    return ratholeBinary()
      ? null
      : `no rathole binary in ${PEERS_BIN} or on PATH (build it as ../shared/notes/peers-build.md says)`;
  },
  async start(servicePort) {
    const dir = mkdtempSync(join(tmpdir(), "bench-rathole-"));
    const removeDir = () => rmSync(dir, { recursive: true, force: true });
    const forget = atExit(removeDir);
    const cleanup = () => {
      removeDir();
      forget();
    };
    try {
      const tunnel = await launch(async (track) => {
        const binary = ratholeBinary() as string;
        const control = freePort();
        const port = freePort();
        const server = join(dir, "server.toml");
        const client = join(dir, "client.toml");
        writeFileSync(
          server,
          `[server]\nbind_addr = "127.0.0.1:${control}"\n[server.services.bench]\ntoken = "bench-token"\nbind_addr = "127.0.0.1:${port}"\n`,
        );
        writeFileSync(
          client,
          `[client]\nremote_addr = "127.0.0.1:${control}"\n[client.services.bench]\ntoken = "bench-token"\nlocal_addr = "127.0.0.1:${servicePort}"\n`,
        );
        // Warnings only: rathole logs every data channel at info, which would cost it CPU here.
        const env = { RUST_LOG: "warn" };
        const srv = track(spawn([binary, "-s", server], { env }));
        await waitForPort(control, 10_000, () => srv.exitCode() === null);
        const cli = track(spawn([binary, "-c", client], { env }));
        // The server opens the service's port once the client's control channel is up.
        await waitForPort(port, 10_000, () => srv.exitCode() === null && cli.exitCode() === null);
        return {
          port,
          processes: () => [
            { role: "server", pid: srv.pid },
            { role: "client", pid: cli.pid },
          ],
          describe: () => `rathole server ${srv.pid} + client ${cli.pid}`,
        };
      });
      return {
        ...tunnel,
        async stop() {
          await tunnel.stop();
          cleanup();
        },
      };
    } catch (error) {
      cleanup();
      throw error;
    }
  },
};

/** The other checkout `sockets-base` runs (`--sockets-root`); undefined: it is skipped. */
let baseRoot: string | undefined;

/** Names the checkout the `sockets-base` provider runs (bench.ts passes `--sockets-root`). */
export function setSocketsBase(root: string | undefined): void {
  baseRoot = root;
}

/** `bun server.ts` + `bun client.ts` of another checkout (`--sockets-root`): before and after in one run. */
const socketsBase: Provider = {
  name: "sockets-base",
  async prepare() {
    return baseRoot === undefined ? "no --sockets-root given" : null;
  },
  start: (port) =>
    startSockets(["bun", "server.ts"], ["bun", "client.ts"], port, { cwd: baseRoot as string }),
};

/** Every provider, by name. */
export const PROVIDERS: Record<ProviderName, Provider> = {
  direct,
  "mux-floor": muxFloor,
  ssh: sshProvider,
  sockets,
  "sockets-compiled": socketsCompiled,
  "sockets-tuned": socketsTuned,
  "sockets-base": socketsBase,
  rathole,
};
