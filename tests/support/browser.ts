/**
 * A real browser for end-to-end tests: Debian's headless Chromium driven by playwright-core (no
 * browser download). Closed by the test file's cleanup, whatever happens.
 * @module
 */

import { type Browser, chromium, type Page } from "playwright-core";
import { defer } from "./processes.ts";

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
): Promise<BrowserPage> {
  const executablePath = Bun.which("chromium");
  if (!executablePath)
    throw new Error(
      "chromium is not installed: this test drives a real browser; install it with `apt-get install chromium` (.ci/run does)",
    );
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox"],
    timeout: 30_000,
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
