// The console's first paint of each job list, in headless Chromium: from
// navigation start to the list's rows in the page (the page marks when its
// first page of rows is shown). Used by `replyd bench --scenarios console`.
//
// Usage: node console_paint.mjs BASE_URL OPERATOR_KEY

import { launch } from './chromium.mjs';

const [base, key] = process.argv.slice(2);
const lists = ['#/jobs', '#/jobs?state=failed', '#/jobs?queue=q2&state=succeeded', '#/jobs?q=disk%20quota', '#/jobs?state=queued'];
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1360, height: 860 } });
  // Sign in, and load once, so that the assets are in the cache as they
  // are for a user.
  await page.goto(`${base}/ui/`);
  await page.fill('#key', key);
  await page.click('#sign-in button');
  await page.waitForFunction(() => document.querySelector('#main')?.dataset.loaded);
  for (const hash of lists) {
    const times = [];
    let rows = 0;
    for (let i = 0; i < 5; i++) {
      await page.goto('about:blank');
      await page.goto(`${base}/ui/${hash}`);
      await page.waitForFunction((h) => document.querySelector('#main')?.dataset.loaded === h, hash, { timeout: 30000 });
      times.push(Number(await page.evaluate(() => document.querySelector('#main').dataset.loadedAt)));
      rows = await page.$$eval('#job-rows tr', (r) => r.length);
    }
    times.sort((a, b) => a - b);
    console.log(`first paint ${hash.padEnd(36)} median ${String(times[2]).padStart(4)} ms, worst ${String(times[4]).padStart(4)} ms (${rows} rows)`);
  }
} finally {
  await browser.close();
}
