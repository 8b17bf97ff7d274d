// What both commands of the npm package do: each role is a TypeScript file that runs on Bun. Started by
// Bun, the role runs here; started by Node (npm's bin shims use `node`), it runs again under the `bun`
// on PATH, with the same arguments, signals (SIGHUP reloads) and exit code; without Bun, one line says
// what to install.
import { spawn } from "node:child_process";
import { constants } from "node:os";
import { fileURLToPath } from "node:url";

/**
 * Runs `role` (`client` or `server`: ../client.ts, ../server.ts) as the command `sockets-ROLE`.
 * @param {"client" | "server"} role
 */
export async function runOnBun(role) {
  const command = `sockets-${role}`;
  const entry = fileURLToPath(new URL(`../${role}.ts`, import.meta.url));
  // --help and --init's example name the command as the user typed it (shared/log.ts, commandName).
  process.env.SOCKETS_COMMAND = command;
  if (process.versions.bun) {
    const { main } = await import(entry);
    await main();
    return;
  }
  const child = spawn("bun", [entry, ...process.argv.slice(2)], { stdio: "inherit", env: process.env });
  child.on("error", (error) => {
    if (error.code === "ENOENT")
      process.stderr.write(
        `error: ${command} runs on Bun, which is not installed (or not on PATH): npm install -g bun (or see https://bun.sh), then run it again\n`,
      );
    else process.stderr.write(`error: cannot start bun: ${error.message}\n`);
    process.exit(1);
  });
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal));
  child.on("exit", (code, signal) => process.exit(code ?? 128 + (constants.signals[signal] ?? 0)));
}
