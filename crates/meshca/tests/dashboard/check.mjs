// Opens the dashboard in Debian's Chromium through Playwright and reports, as one JSON line,
// what a person would see: console errors, requests that failed or left the page, which of
// the expected texts are visible, and a full-page screenshot.
//
// MESHCA_NODE_PREFIX=DIR node check.mjs URL SCREENSHOT.png '["text", ...]'
// (DIR: where `npm install --prefix DIR playwright-core` put it, outside the clone)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const prefix = process.env.MESHCA_NODE_PREFIX;
const { chromium } = await import(pathToFileURL(join(prefix, 'node_modules/playwright-core/index.mjs')).href);

const [url, screenshot, expectedJson] = process.argv.slice(2);
const expected = JSON.parse(expectedJson);
const profile = mkdtempSync(join(tmpdir(), 'meshca-chromium-'));
const report = { consoleErrors: [], pageErrors: [], failedRequests: [], outsideRequests: [], missing: [] };

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.MESHCA_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1100, height: 900 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  const page = context.pages()[0] ?? await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') report.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => report.pageErrors.push(String(e)));
  page.on('requestfailed', (r) => report.failedRequests.push(`${r.url()}: ${r.failure()?.errorText}`));
  // The page must be self-contained: the only request is the page itself.
  page.on('request', (r) => { if (r.url() !== url && !r.url().startsWith('data:')) report.outsideRequests.push(r.url()); });
  const response = await page.goto(url, { waitUntil: 'load', timeout: 30000 });
  report.status = response ? response.status() : null;
  report.title = await page.title();
  for (const text of expected) {
    const visible = await page.getByText(text).filter({ visible: true }).count();
    if (visible === 0) report.missing.push(text);
  }
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
