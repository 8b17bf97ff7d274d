/**
 * README's first command, `npm run demo`, as a person runs it (Bun already present, so the setup step
 * only checks it and runs `bun install --frozen-lockfile`): it prints an HTTP and a TCP tunnel URL,
 * both reach the built-in service (hello and echo), and a Ctrl-C to the terminal's process group
 * stops npm, the setup script, the demo, the server and the client, with nothing left running or
 * listening. Self-contained: it spawns the command and reads its stdout, as the README reader would.
 */

import { expect, test } from "bun:test";
import { connect } from "node:net";

const ROOT = `${import.meta.dir}/../..`;

/** Every process in process group `group` (ps: Linux and macOS). */
function processGroup(group: number): number[] {
  const ps = Bun.spawnSync(["ps", "-A", "-o", "pid=,pgid="]);
  return new TextDecoder()
    .decode(ps.stdout)
    .split("\n")
    .map((line) => line.trim().split(/\s+/).map(Number))
    .filter(([pid, pgid]) => pgid === group && pid !== undefined && pid > 0)
    .map(([pid]) => pid as number);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Whether something accepts TCP connections on 127.0.0.1:port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

test("npm run demo: prints two URLs that reach the built-in service; Ctrl-C stops every process", async () => {
  const demo = Bun.spawn(["npm", "run", "--silent", "demo", "--", "--port", "0", "--subdomain", "e2e"], {
    cwd: ROOT,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    detached: true, // its own process group, as a terminal gives a command: Ctrl-C goes to all of it
  });
  const stderr = new Response(demo.stderr).text();
  let out = "";
  const decoder = new TextDecoder();
  const reader = demo.stdout.getReader();
  const deadline = Date.now() + 60_000;
  while (!out.includes("Ctrl-C stops") && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    out += decoder.decode(value, { stream: true });
  }
  // Keep reading (the request log) so that the demo never blocks on a full pipe.
  const rest = (async () => {
    for (let r = await reader.read(); !r.done; r = await reader.read()) out += decoder.decode(r.value);
  })();
  try {
    const http = /HTTP tunnel: (http:\/\/e2e\.localhost:(\d+)\/)/.exec(out);
    const tcp = /TCP tunnel: {2}\S+:(\d+)/.exec(out);
    if (!http || !tcp) throw new Error(`no URLs in the demo's output:\n${out}\n${await stderr}`);
    const controlPort = Number(http[2]);
    expect(out).toContain(`curl ${http[1]}`);

    const hello = await fetch(http[1] as string);
    expect(hello.status).toBe(200);
    expect(await hello.text()).toContain("hello from behind the NAT");
    const echo = await fetch(`${http[1]}echo`, { method: "POST", body: "through the tunnel" });
    expect(await echo.text()).toBe("through the tunnel");
    const raw = await fetch(`http://127.0.0.1:${tcp[1]}/`);
    expect(await raw.text()).toContain("through a TCP tunnel");

    const group = processGroup(demo.pid);
    // npm, sh (where npm uses one), node setup.mjs, bun demo.ts, the server, the client.
    expect(group.length).toBeGreaterThanOrEqual(5);
    process.kill(-demo.pid, "SIGINT");
    const code = await Promise.race([demo.exited, Bun.sleep(20_000).then(() => "still running")]);
    // npm answers a Ctrl-C with 130 (128 + SIGINT) whatever its script did, as shells do.
    expect([0, 130]).toContain(code as number);
    await rest;
    expect(out).toContain("demo stopped");
    // Every process of the group is gone (each had its Ctrl-C and the demo waited for them).
    const until = Date.now() + 5_000;
    while (group.some(alive) && Date.now() < until) await Bun.sleep(50);
    expect(group.filter(alive)).toEqual([]);
    expect(await listening(controlPort)).toBe(false);
    expect(await listening(Number(tcp[1]))).toBe(false);
  } finally {
    if (demo.exitCode === null)
      try {
        process.kill(-demo.pid, "SIGKILL");
      } catch {
        demo.kill("SIGKILL"); // no group: the command itself is all there is
      }
  }
}, 90_000);
