/**
 * A real browser for end-to-end tests: Debian's headless Chromium driven by playwright-core (no
 * browser download). Closed by the test file's cleanup, whatever happens.
 * @module
 */

import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { defer, runToExit } from "./processes.ts";

/** A page in a fresh headless Chromium, and the errors its scripts reported so far. */
export interface BrowserPage {
  browser: Browser;
  page: Page;
  /** Page errors and console errors, for assertion messages. */
  problems: string[];
}

/**
 * Launches headless Chromium and opens a page of `viewport` size with a 15 s default timeout.
 * @throws when Chromium is not installed (CI installs it: `apt-get install chromium`).
 */
export async function openBrowserPage(
  viewport: { width: number; height: number },
  /** Count console errors as problems too (a page fetched with a 401 on purpose logs one). */
  consoleErrors = true,
  /**
   * More for the browser: `trust`, a root CA (PEM file) put in the browser's own NSS store (a fresh
   * HOME; `certutil` from libnss3-tools), so HTTPS works with no insecure flag; `args`, more flags
   * (e.g. `--host-resolver-rules`).
   */
  extra: { trust?: string; args?: string[] } = {},
): Promise<BrowserPage> {
  const executablePath = Bun.which("chromium");
  if (!executablePath)
    throw new Error(
      "chromium is not installed: this test drives a real browser; install it with `apt-get install chromium` (.ci/run does)",
    );
  const env: Record<string, string> = {};
  if (extra.trust !== undefined) env.HOME = await trustStore(extra.trust);
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", ...(extra.args ?? [])],
    timeout: 30_000,
    ...(extra.trust !== undefined ? { env: { ...(process.env as Record<string, string>), ...env } } : {}),
  });
  defer(() => browser.close());
  const page = await browser.newPage({ viewport });
  page.setDefaultTimeout(15_000);
  const problems: string[] = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  if (consoleErrors)
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console: ${message.text()}`);
    });
  return { browser, page, problems };
}

/** A fresh HOME whose NSS store (what Chromium on Linux trusts) holds `rootPem` as a CA; returns its path. */
async function trustStore(rootPem: string): Promise<string> {
  if (!Bun.which("certutil"))
    throw new Error("certutil is not installed: `apt-get install libnss3-tools` (.ci/run does)");
  const home = mkdtempSync(join(tmpdir(), "sockets-browser-home-"));
  defer(() => rmSync(home, { recursive: true, force: true }));
  const db = join(home, ".pki", "nssdb");
  mkdirSync(db, { recursive: true });
  for (const cmd of [
    ["certutil", "-N", "-d", `sql:${db}`, "--empty-password"],
    ["certutil", "-A", "-d", `sql:${db}`, "-n", "test-root", "-t", "C,,", "-i", rootPem],
  ]) {
    const result = await runToExit(cmd);
    if (result.code !== 0) throw new Error(`${cmd.slice(0, 2).join(" ")} failed: ${result.stderr}`);
  }
  return home;
}
