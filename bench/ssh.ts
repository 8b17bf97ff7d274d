/**
 * The `ssh -N -R` reference provider: a private sshd on a free loopback port with its own temporary
 * config, host key and authorized key (never the system sshd, never port 22), and an ssh client that
 * forwards a public loopback port to the local service.
 * @module
 */

import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { atExit, descendants, freePort, type Proc, run, spawn, waitForPort } from "./procs.ts";
import type { Provider, Tunnel } from "./providers.ts";

const SSHD = ["/usr/sbin/sshd", "/usr/bin/sshd"];
/** Compiled-in privilege separation directory of Debian's OpenSSH; sshd refuses to start without it. */
const PRIVSEP_DIR = "/run/sshd";

function findSshd(): string | null {
  return SSHD.find((p) => existsSync(p)) ?? Bun.which("sshd");
}

/** Why ssh cannot run here (with how to install it), or null when it can. */
function missing(): string | null {
  if (!findSshd())
    return "sshd not found: install it with `apt-get install openssh-server` to compare with ssh -R";
  if (!Bun.which("ssh") || !Bun.which("ssh-keygen"))
    return "ssh or ssh-keygen not found: install them with `apt-get install openssh-client`";
  if (!existsSync(PRIVSEP_DIR)) {
    if (process.getuid?.() !== 0)
      return `${PRIVSEP_DIR} is missing and we are not root: create it (sudo mkdir -p ${PRIVSEP_DIR})`;
    mkdirSync(PRIVSEP_DIR, { recursive: true, mode: 0o755 });
  }
  return null;
}

function sshdConfig(dir: string, port: number): string {
  return `${[
    `Port ${port}`,
    "ListenAddress 127.0.0.1",
    `HostKey ${join(dir, "host_ed25519")}`,
    `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
    "PidFile none",
    "UsePAM no",
    "StrictModes no",
    "PermitRootLogin prohibit-password",
    "PubkeyAuthentication yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "AllowTcpForwarding yes",
    "GatewayPorts no",
    "X11Forwarding no",
    "PrintMotd no",
    "UseDNS no",
    "MaxStartups 100",
    "LogLevel INFO",
  ].join("\n")}\n`;
}

/**
 * Starts the private sshd (config, keys in a temp dir) and the forwarding ssh client. `via` puts
 * something between them (the long path's delay proxy): given sshd's port, it resolves with the port
 * the ssh client should dial, and is stopped with the tunnel.
 */
export async function startSsh(
  servicePort: number,
  via?: (port: number) => Promise<Proc & { port: number }>,
): Promise<Tunnel> {
  const dir = mkdtempSync(join(tmpdir(), "sockets-bench-ssh-"));
  const procs: Proc[] = [];
  const removeDir = () => rmSync(dir, { recursive: true, force: true });
  const forget = atExit(removeDir);
  let sessions = (): number[] => [];
  const cleanup = async () => {
    const leftovers = sessions();
    for (const p of procs.reverse()) await p.stop();
    // Session processes of our sshd (they normally end with the client): by PID, never by name.
    for (const pid of leftovers) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
    }
    removeDir();
    forget();
  };
  try {
    for (const key of ["host_ed25519", "user_ed25519"]) {
      const r = await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, key)], 20_000);
      if (r.code !== 0) throw new Error(`ssh-keygen failed: ${r.stderr.trim()}`);
    }
    writeFileSync(join(dir, "authorized_keys"), await Bun.file(join(dir, "user_ed25519.pub")).text());
    let sshd: Proc | undefined;
    let sshPort = 0;
    // The port is free when picked but could be taken before sshd binds it: retry a few times.
    for (let attempt = 0; attempt < 3 && !sshd; attempt++) {
      sshPort = freePort();
      writeFileSync(join(dir, "sshd_config"), sshdConfig(dir, sshPort));
      const p = spawn([findSshd() as string, "-D", "-e", "-f", join(dir, "sshd_config")]);
      procs.push(p);
      try {
        await p.waitFor(/Server listening on 127\.0\.0\.1 port \d+/, 10_000);
        sshd = p;
      } catch (error) {
        await p.stop();
        if (attempt === 2) throw error;
      }
    }
    const daemon = sshd as Proc;
    sessions = () => descendants(daemon.pid);
    if (via) {
      const proxy = await via(sshPort);
      procs.push(proxy);
      sshPort = proxy.port;
    }
    const publicPort = freePort();
    const client = spawn([
      "ssh",
      "-N",
      "-T",
      "-F",
      "/dev/null",
      "-i",
      join(dir, "user_ed25519"),
      "-p",
      String(sshPort),
      "-o",
      "StrictHostKeyChecking=no",
      "-o",
      "UserKnownHostsFile=/dev/null",
      "-o",
      "ExitOnForwardFailure=yes",
      "-o",
      "BatchMode=yes",
      "-o",
      "IdentitiesOnly=yes",
      "-o",
      "LogLevel=ERROR",
      "-R",
      `127.0.0.1:${publicPort}:127.0.0.1:${servicePort}`,
      "root@127.0.0.1",
    ]);
    procs.push(client);
    await waitForPort(publicPort, 15_000, () => client.exitCode() === null);
    return {
      port: publicPort,
      processes: () => [
        ...sessions().map((pid) => ({ role: "sshd", pid })),
        { role: "ssh", pid: client.pid },
      ],
      describe: () => `sshd session processes ${sessions().join(",")} + ssh client ${client.pid}`,
      stop: cleanup,
    };
  } catch (error) {
    await cleanup();
    throw error;
  }
}

/** `ssh -N -R` through a private sshd. */
export const sshProvider: Provider = {
  name: "ssh",
  async prepare() {
    return missing();
  },
  start: (port) => startSsh(port),
};
