/**
 * README's generated parts (both option tables, the layout tree) match what the code declares:
 * `bun scripts/docs.ts` regenerates them.
 */

import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { generatedParts, ROOT, readmeIsCurrent } from "../../scripts/docs.ts";

const readme = readFileSync(join(ROOT, "README.md"), "utf8");

test("README's option tables and layout tree are the ones the code generates (run bun scripts/docs.ts)", () => {
  expect(readmeIsCurrent(readme)).toBe(true);
});

test("every generated part names what it must: each flag of both roles, each module of shared/", () => {
  const parts = generatedParts();
  for (const flag of [
    "--port N",
    "--tcp-ports MIN-MAX",
    "--request-timeout SECONDS",
    "--client-budget BYTES",
  ])
    expect(parts["server-options"]).toContain(`\`${flag}\``);
  for (const flag of ["--expose HOST:PORT", "--http HOST:PORT", "--basic-auth USER:PASSWORD"])
    expect(parts["client-options"]).toContain(`\`${flag}\``);
  for (const module of ["mux.ts", "ws-server.ts", "tunnel-client.ts", "framer.ts"])
    expect(parts.layout).toContain(module);
});
