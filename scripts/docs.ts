/**
 * README's generated parts: the option tables of both roles (from their option tables) and the
 * layout tree (from the files under lib/ and shared/ and each module's own first words). `bun scripts/docs.ts`
 * rewrites them in place between their markers; `--check` exits 1 when README differs (the unit test
 * `tests/unit/readme.test.ts` does the same check).
 * @module
 */

import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { CLIENT_ENVIRONMENT, CLIENT_OPTIONS } from "../shared/client/options.ts";
import { markdownTable } from "../shared/options.ts";
import { SERVER_ENVIRONMENT, SERVER_OPTIONS } from "../shared/server/options.ts";

/** The repository root. */
export const ROOT = join(import.meta.dir, "..");

/** A module's summary: the first words of its JSDoc, up to the first `:`, `.` or line end. */
function summary(file: string): string {
  const text = readFileSync(file, "utf8");
  const comment = /\/\*\*\s*\n\s*\*\s*(.+)/.exec(text)?.[1] ?? "";
  const first = comment.split(/[:.](?:\s|$)/)[0]?.trim() ?? "";
  // A sentence that runs on past the line: its first clause.
  return first.length > 80 ? (first.split(", ")[0] ?? first) : first;
}

/** The files of one folder in the tree: folders after files, each sorted. */
function entries(dir: string): { files: string[]; folders: string[] } {
  const names = readdirSync(dir).sort();
  return {
    files: names.filter((n) => n.endsWith(".ts") && statSync(join(dir, n)).isFile()),
    folders: names.filter((n) => statSync(join(dir, n)).isDirectory()),
  };
}

/** The layout tree: the role files and every module of shared/, each with its summary. */
export function layoutTree(): string {
  const lines: string[] = [];
  const row = (indent: number, name: string, what: string) =>
    lines.push(`${`${"  ".repeat(indent)}${name}`.padEnd(30)} ${what}`.trimEnd());
  row(0, "server.ts", summary(join(ROOT, "server.ts")));
  row(0, "client.ts", summary(join(ROOT, "client.ts")));
  const walk = (dir: string, indent: number) => {
    const { files, folders } = entries(dir);
    for (const file of files) row(indent, file, summary(join(dir, file)));
    for (const folder of folders) {
      row(indent, `${folder}/`, "");
      walk(join(dir, folder), indent + 1);
    }
  };
  row(0, "lib/", "the package's exports (`sockets/client`, `sockets/server`)");
  walk(join(ROOT, "lib"), 1);
  row(0, "shared/", "the modules behind both roles, by layer");
  walk(join(ROOT, "shared"), 1);
  row(0, "tests/", "unit/ (in-process), e2e/ (real processes), support/ (their helpers)");
  row(0, "bench/", "`bun run bench` (native/ holds its C programs)");
  row(0, "scripts/", "build (release executables), demo, README's generated parts");
  row(0, "bin/", "the package's commands (`sockets-server`, `sockets-client`: run on Bun)");
  row(0, "deploy/systemd/", "unit files for both roles (README: Run as a service)");
  row(0, "examples/", "tunnel.ts: use it from code (README: Use it from code)");
  return ["```text", ...lines, "```"].join("\n");
}

/** The test support modules, one line each (name and what it is for), as README's Development lists them. */
export function supportList(): string {
  const dir = join(ROOT, "tests", "support");
  return entries(dir)
    .files.map((file) => {
      const comment = /\/\*\*([\s\S]*?)\*\//.exec(readFileSync(join(dir, file), "utf8"))?.[1] ?? "";
      const text = comment.replace(/\n\s*\*\s?/g, " ").trim();
      const sentence = text.replace(/^Test support(, [^:]+)?: */, "").split(/[.;:](?:\s|$)/)[0] ?? "";
      const what =
        sentence.length > 110 ? `${sentence.slice(0, sentence.lastIndexOf(" ", 107))} …` : sentence;
      return `- \`${file}\`: ${what}`;
    })
    .join("\n");
}

/** Every generated part of README, by marker name. */
export function generatedParts(): Record<string, string> {
  return {
    "server-options": markdownTable(SERVER_OPTIONS, SERVER_ENVIRONMENT),
    "client-options": markdownTable(CLIENT_OPTIONS, CLIENT_ENVIRONMENT),
    layout: layoutTree(),
    "test-support": supportList(),
  };
}

/** README with every part between `<!-- NAME -->` and `<!-- /NAME -->` regenerated. */
export function renderReadme(readme: string): string {
  let out = readme;
  for (const [name, body] of Object.entries(generatedParts())) {
    const start = `<!-- ${name} -->`;
    const end = `<!-- /${name} -->`;
    const at = out.indexOf(start);
    const stop = out.indexOf(end);
    if (at < 0 || stop < at) throw new Error(`README has no ${start} … ${end} block`);
    out = `${out.slice(0, at + start.length)}\n${body}\n${out.slice(stop)}`;
  }
  return out;
}

/**
 * `text` with Markdown table padding collapsed: Biome aligns README's tables (`bun run lint`), the
 * generator does not, and the two must compare equal.
 */
export function unpadded(text: string): string {
  return text
    .split("\n")
    .map((line) => (line.startsWith("|") ? line.replace(/ {2,}/g, " ").replace(/-{3,}/g, "---") : line))
    .join("\n");
}

/** Whether README's generated parts are current (padding aside). */
export function readmeIsCurrent(readme: string): boolean {
  return unpadded(renderReadme(readme)) === unpadded(readme);
}

if (import.meta.main) {
  const file = join(ROOT, "README.md");
  const readme = readFileSync(file, "utf8");
  if (process.argv.includes("--check")) {
    if (!readmeIsCurrent(readme)) {
      process.stderr.write(`${relative(process.cwd(), file)} is out of date: run bun scripts/docs.ts\n`);
      process.exit(1);
    }
  } else if (!readmeIsCurrent(readme)) {
    writeFileSync(file, renderReadme(readme));
    // Align the tables as the linter wants them.
    Bun.spawnSync(["bunx", "biome", "format", "--write", file], {
      cwd: ROOT,
      stdout: "ignore",
      stderr: "ignore",
    });
  }
}
