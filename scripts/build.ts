/**
 * Builds the single executables `dist/sockets-server` and `dist/sockets-client` with
 * `bun build --compile`. They take the same options as `bun server.ts` and `bun client.ts`.
 *
 * ```sh
 * bun run build            # for this machine
 * bun run build --target bun-linux-x64-baseline   # CPUs without AVX2
 * ```
 * @module
 */

import { parseArgs } from "node:util";

/** The role entry points and the executable each becomes. */
export const EXECUTABLES = [
  { entry: "server.ts", out: "dist/sockets-server" },
  { entry: "client.ts", out: "dist/sockets-client" },
] as const;

/** Compiles every role; resolves with the paths written, throws with Bun's message on failure. */
export async function buildExecutables(target?: string, root = `${import.meta.dir}/..`): Promise<string[]> {
  const written: string[] = [];
  for (const { entry, out } of EXECUTABLES) {
    const cmd = ["bun", "build", "--compile", "--minify", "--sourcemap", entry, "--outfile", out];
    if (target) cmd.push("--target", target);
    const proc = Bun.spawn(cmd, { cwd: root, stdout: "pipe", stderr: "pipe" });
    const [code, stderr] = await Promise.all([proc.exited, new Response(proc.stderr).text()]);
    if (code !== 0) throw new Error(`bun build ${entry} failed: ${stderr.trim().split("\n")[0]}`);
    written.push(out);
  }
  return written;
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { target: { type: "string" } }, strict: true });
  try {
    for (const out of await buildExecutables(values.target)) process.stdout.write(`built ${out}\n`);
  } catch (error) {
    process.stderr.write(`error: ${(error as Error).message}\n`);
    process.exit(1);
  }
}
