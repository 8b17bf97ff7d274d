/**
 * Test support, Redis: a real `redis-server` (Debian's, /usr/bin) on a free loopback port, with no
 * persistence (`--save '' --appendonly no`: a restart comes back empty, as a replaced Redis would). It
 * is started through {@link spawnRole} (output to polled files, SIGKILL by PID at cleanup, kernel
 * backstop), so the test file's {@link setupFile} cleanup stops it even when a test failed.
 * @module
 */

import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defer, type RoleProcess, spawnRole, withTimeout } from "./processes.ts";

/** The redis-server binary: Debian's, else whichever is on the PATH. */
const REDIS_SERVER = Bun.which("redis-server") ?? "/usr/bin/redis-server";

/** How {@link startRedis} sets the server up (default: plain TCP, no password). */
export interface RedisSetup {
  /** `--requirepass`: clients must AUTH with it (the URL carries it). */
  password?: string;
  /** Serve TLS only (`--port 0 --tls-port PORT`), with this PEM certificate and key; clients need no certificate. */
  tls?: { cert: string; key: string; ca: string };
}

/** A redis-server the test started, on a port it keeps across restarts. */
export interface RedisProcess {
  /** Its port on 127.0.0.1. */
  readonly port: number;
  /** `redis://127.0.0.1:PORT` (`rediss://` with TLS, `:PASSWORD@` with a password). */
  readonly url: string;
  /** The PID of the process running now (a restart starts another). */
  readonly pid: number;
  /** SIGKILL to the process this helper spawned (by PID); resolves once it exited. */
  kill(): Promise<void>;
  /** Starts a new, empty redis-server on the same port (killing the running one first, if any). */
  restart(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (taken and released at once; redis-server binds it right after). */
function freePort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

/** Spawns redis-server on `port` and waits for its "Ready to accept connections" line. */
async function spawnRedis(port: number, dir: string, setup: RedisSetup): Promise<RoleProcess> {
  const { tls, password } = setup;
  const role = spawnRole([
    REDIS_SERVER,
    ...(tls === undefined
      ? ["--port", String(port)]
      : [
          ...["--port", "0", "--tls-port", String(port), "--tls-auth-clients", "no"],
          ...["--tls-cert-file", tls.cert, "--tls-key-file", tls.key, "--tls-ca-cert-file", tls.ca],
        ]),
    ...(password === undefined ? [] : ["--requirepass", password]),
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    dir,
  ]);
  await Promise.race([
    role.waitFor(/Ready to accept connections/, 10_000),
    role.proc.exited.then((code) => {
      throw new Error(`redis-server exited (${code}) before it was ready: ${role.stdout()}${role.stderr()}`);
    }),
  ]);
  return role;
}

/**
 * Starts a redis-server on a free port and waits until it accepts connections. Rejects with the
 * reason when /usr/bin/redis-server is missing (`apt-get install redis-server`) or it does not start
 * (with `setup.tls`: when it was built without TLS).
 */
export async function startRedis(setup: RedisSetup = {}): Promise<RedisProcess> {
  if (!(await Bun.file(REDIS_SERVER).exists())) {
    throw new Error(
      `${REDIS_SERVER} not found: the cluster tests need redis-server (apt-get install redis-server)`,
    );
  }
  const dir = mkdtempSync(join(tmpdir(), "sockets-redis-"));
  defer(() => Bun.$`rm -rf ${dir}`.quiet().nothrow());
  // Another process may take the free port before redis-server binds it: try a few.
  let port = 0;
  let role: RoleProcess | undefined;
  let lastError: unknown;
  for (let attempt = 0; attempt < 3 && role === undefined; attempt++) {
    port = freePort();
    try {
      role = await spawnRedis(port, dir, setup);
    } catch (error) {
      lastError = error;
    }
  }
  if (role === undefined) throw lastError;
  let current: RoleProcess = role;
  const auth = setup.password === undefined ? "" : `:${encodeURIComponent(setup.password)}@`;
  const kill = async () => {
    if (current.proc.exitCode === null && current.proc.signalCode === null) current.kill("SIGKILL");
    await withTimeout(current.proc.exited, 5000, `redis-server ${current.proc.pid} did not die`);
  };
  return {
    port,
    url: `${setup.tls ? "rediss" : "redis"}://${auth}127.0.0.1:${port}`,
    get pid() {
      return current.proc.pid;
    },
    kill,
    async restart() {
      await kill();
      current = await spawnRedis(port, dir, setup);
    },
  };
}

/** The redis-sentinel binary: Debian's, else whichever is on the PATH. */
const REDIS_SENTINEL = Bun.which("redis-sentinel") ?? "/usr/bin/redis-sentinel";

/** A master, a replica and three sentinels watching them (name `mymaster`), all on loopback. */
export interface SentinelSet {
  /** `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster`. */
  readonly url: string;
  /** The master at start, and the replica (promoted when the master dies). */
  readonly master: RoleProcess & { port: number };
  readonly replica: RoleProcess & { port: number };
  readonly sentinels: (RoleProcess & { port: number })[];
  /** The sentinels' failover settings, in ms (down-after-milliseconds, failover-timeout). */
  readonly downAfterMs: number;
}

/** Spawns a redis process on a free port (three tries: another process may take it first). */
async function spawnOnFreePort(
  start: (port: number) => Promise<RoleProcess>,
): Promise<RoleProcess & { port: number }> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = freePort();
    try {
      return Object.assign(await start(port), { port });
    } catch (error) {
      lastError = error;
    }
  }
  throw lastError;
}

/** Waits for `pattern` in a redis process's output, or rejects with its output when it exits first. */
async function ready(role: RoleProcess, pattern: RegExp, what: string): Promise<RoleProcess> {
  await Promise.race([
    role.waitFor(pattern, 15_000),
    role.proc.exited.then((code) => {
      throw new Error(`${what} exited (${code}) before it was ready: ${role.stdout()}${role.stderr()}`);
    }),
  ]);
  return role;
}

/**
 * Starts a master, a replica of it (synced) and three sentinels (quorum 2) that fail over after
 * `downAfterMs` of silence. Every process is stopped by PID at the file's cleanup.
 */
export async function startSentinels(downAfterMs = 1000): Promise<SentinelSet> {
  if (!(await Bun.file(REDIS_SENTINEL).exists()))
    throw new Error(
      `${REDIS_SENTINEL} not found: the Sentinel test needs it (apt-get install redis-sentinel)`,
    );
  const dir = mkdtempSync(join(tmpdir(), "sockets-sentinel-"));
  defer(() => Bun.$`rm -rf ${dir}`.quiet().nothrow());
  const common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
  const master = await spawnOnFreePort(async (port) => {
    const folder = join(dir, `redis-${port}`);
    mkdirSync(folder);
    const role = spawnRole([REDIS_SERVER, "--port", String(port), ...common, "--dir", folder]);
    return ready(role, /Ready to accept connections/, "redis-server (master)");
  });
  const replica = await spawnOnFreePort(async (port) => {
    const folder = join(dir, `redis-${port}`);
    mkdirSync(folder);
    const role = spawnRole([
      REDIS_SERVER,
      ...["--port", String(port), ...common, "--dir", folder],
      ...["--replicaof", "127.0.0.1", String(master.port)],
    ]);
    return ready(role, /MASTER <-> REPLICA sync: Finished with success/, "redis-server (replica)");
  });
  const sentinels: (RoleProcess & { port: number })[] = [];
  for (let i = 0; i < 3; i++)
    sentinels.push(
      await spawnOnFreePort(async (port) => {
        const file = join(dir, `sentinel-${port}.conf`);
        writeFileSync(
          file,
          [
            `port ${port}`,
            "bind 127.0.0.1",
            `dir ${dir}`,
            `sentinel monitor mymaster 127.0.0.1 ${master.port} 2`,
            `sentinel down-after-milliseconds mymaster ${downAfterMs}`,
            `sentinel failover-timeout mymaster ${Math.max(3000, 3 * downAfterMs)}`,
            "sentinel parallel-syncs mymaster 1",
            "",
          ].join("\n"),
        );
        return ready(spawnRole([REDIS_SENTINEL, file]), /\+monitor master mymaster/, "redis-sentinel");
      }),
    );
  const hosts = sentinels.map((s) => `127.0.0.1:${s.port}`).join(",");
  return { url: `redis+sentinel://${hosts}/mymaster`, master, replica, sentinels, downAfterMs };
}
