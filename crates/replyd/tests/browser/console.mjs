// Drives the web console in headless Chromium against a running replyd
// (started by tests/console.rs), as an operator would: signs in, watches a
// job move live to succeeded, filters and searches, bulk-cancels 500
// queued jobs, pauses a queue, replays a dead letter and sees it
// delivered, and opens a portal link that shows one tenant only.
//
// Usage: node console.mjs BASE_URL SCREENSHOT_DIR
// Keys and the receiver come from the environment (ADMIN_KEY, ACME_KEY,
// GLOBEX_KEY, WORKER_KEY, HOOK_URL). Prints one JSON line per step; exits
// non-zero on the first step that fails.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { launch } from './chromium.mjs';

const [base, shots] = process.argv.slice(2);
const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};
const ADMIN = env('ADMIN_KEY');
const ACME = env('ACME_KEY');
const GLOBEX = env('GLOBEX_KEY');
const WORKER = env('WORKER_KEY');
const HOOK = env('HOOK_URL');
mkdirSync(shots, { recursive: true });

const say = (step, extra = {}) => console.log(JSON.stringify({ step, ...extra }));

async function call(key, method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (res.status >= 400) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function until(what, f, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const browser = await launch();
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // Script errors fail the run; a refused request (the 401 before signing
  // in, a 404 the test asks for) is logged by the browser, and is not one.
  page.on('console', (m) => m.type() === 'error' && !m.text().startsWith('Failed to load resource') && problems.push(`console: ${m.text()}`));

  // 1. `/` leads to the console, which asks for a key.
  await page.goto(base + '/');
  await page.waitForSelector('#sign-in');
  if (!page.url().includes('/ui/')) throw new Error(`/ did not lead to /ui/: ${page.url()}`);
  await page.fill('#key', 'not-a-key-at-all');
  await page.click('#sign-in button');
  await page.waitForFunction(() => document.querySelector('#sign-in-error').textContent.includes('unknown'));
  await page.screenshot({ path: join(shots, 'sign-in.png') });
  await page.fill('#key', ADMIN);
  await page.click('#sign-in button');
  await page.waitForSelector('#jobs');
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'replyd_session');
  if (!session || !session.httpOnly || session.sameSite !== 'Strict') throw new Error(`session cookie: ${JSON.stringify(session)}`);
  if (await page.evaluate(() => document.cookie.includes('replyd_session'))) throw new Error('the page script can read the session cookie');
  say('signed-in');

  // 2. A job submitted now shows up, and moves to succeeded, live.
  await page.waitForSelector('#live[data-state="live"]');
  const job = await call(ACME, 'POST', '/v1/jobs', { queue: 'work', input: { customer: 'acme-live', pages: 3 } });
  await page.waitForSelector(`tr[data-id="${job.id}"][data-state="queued"]`);
  const leased = await call(WORKER, 'POST', '/v1/queues/work/lease', { worker: 'browser-test', lease: 60, wait: 5 });
  await page.waitForSelector(`tr[data-id="${job.id}"][data-state="running"]`);
  await call(WORKER, 'POST', `/v1/jobs/${job.id}/progress`, { lease_id: leased.lease_id, percent: 50, message: 'page 2 of 3' });
  await page.waitForFunction((id) => document.querySelector(`tr[data-id="${id}"] td.detail`)?.textContent.includes('page 2 of 3'), job.id);
  await call(WORKER, 'POST', `/v1/jobs/${job.id}/complete`, { lease_id: leased.lease_id, result: { pages: 3, url: '/r.pdf' } });
  await page.waitForSelector(`tr[data-id="${job.id}"][data-state="succeeded"]`);
  say('live', { job: job.id });

  // 3. Filters: by state, and a search in the input.
  await page.selectOption('#job-filters select[name="state"]', 'succeeded');
  await page.click('#job-filters button[type="submit"]');
  await page.waitForFunction(() => document.querySelector('#main').dataset.loaded === '#/jobs?state=succeeded');
  if (!(await page.$(`tr[data-id="${job.id}"]`))) throw new Error('the succeeded job is not listed');
  const states = await page.$$eval('#job-rows tr', (rs) => rs.map((r) => r.dataset.state));
  if (!states.length || states.some((s) => s !== 'succeeded')) throw new Error(`state filter shows ${states}`);
  await page.goto(`${base}/ui/#/jobs?q=acme-live`);
  await page.waitForFunction(() => document.querySelector('#main').dataset.loaded === '#/jobs?q=acme-live');
  const found = await page.$$eval('#job-rows tr', (rs) => rs.length);
  if (found !== 1) throw new Error(`a search for acme-live shows ${found} rows`);
  say('filtered', { states: states.length });

  // 4. Bulk: cancel every one of 500 queued jobs, not only the 50 shown.
  const batch = Array.from({ length: 500 }, (_, i) => ({ queue: 'bulk', input: { n: i } }));
  await call(ACME, 'POST', '/v1/jobs:batch', { jobs: batch });
  await page.goto(`${base}/ui/#/jobs?queue=bulk&state=queued`);
  await page.waitForFunction(() => document.querySelector('#main').dataset.loaded === '#/jobs?queue=bulk&state=queued');
  const shown = await page.$$eval('#job-rows tr', (rs) => rs.length);
  if (shown !== 50) throw new Error(`the first page shows ${shown} rows`);
  await page.screenshot({ path: join(shots, 'jobs.png') });
  await page.click('#bulk-cancel');
  await page.click('#bulk-go');
  await page.waitForSelector('#bulk-result[data-done="cancel"]', { timeout: 60000 });
  const bulkText = await page.textContent('#bulk-result');
  if (!bulkText.includes('500 changed of 500')) throw new Error(`bulk said: ${bulkText}`);
  const left = await call(ADMIN, 'GET', '/v1/jobs?queue=bulk&state=queued&limit=10');
  if (left.jobs.length) throw new Error(`${left.jobs.length}+ bulk jobs still queued`);
  say('bulk-canceled', { text: bulkText });

  // 5. A job's page: its timeline, input and result.
  await page.goto(`${base}/ui/#/jobs/${job.id}`);
  await page.waitForSelector('#timeline tr[data-event="job.succeeded"]');
  await page.waitForFunction(() => document.querySelector('#job-result').textContent.includes('/r.pdf'));
  await page.waitForFunction(() => document.querySelector('#job-input').textContent.includes('acme-live'));
  const events = await page.$$eval('#timeline tr', (rs) => rs.map((r) => r.dataset.event));
  for (const e of ['job.accepted', 'job.started', 'job.progress', 'job.succeeded']) {
    if (!events.includes(e)) throw new Error(`the timeline lacks ${e}: ${events}`);
  }
  await page.screenshot({ path: join(shots, 'job.png'), fullPage: true });
  say('job-page', { events });

  // 6. Queues: figures and charts; pause stops leases, resume lets them go.
  await page.goto(`${base}/ui/#/queues`);
  await page.waitForSelector('article[data-queue="bulk"] dd[data-count="canceled"]');
  await page.waitForFunction(() => document.querySelector('article[data-queue="bulk"] dd[data-count="canceled"]').textContent === '500');
  await page.click('button[data-toggle="work"]');
  await page.waitForSelector('article.queue.paused[data-queue="work"]');
  const paused = await call(ACME, 'POST', '/v1/jobs', { queue: 'work', input: { while: 'paused' } });
  const none = await fetch(`${base}/v1/queues/work/lease`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${WORKER}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ worker: 'browser-test', wait: 1 }),
  });
  if (none.status !== 204) throw new Error(`a paused queue leased: ${none.status} ${await none.text()}`);
  await page.screenshot({ path: join(shots, 'queues.png'), fullPage: true });
  await page.click('button[data-toggle="work"]');
  await page.waitForSelector('article.queue:not(.paused)[data-queue="work"]');
  const after = await call(WORKER, 'POST', '/v1/queues/work/lease', { worker: 'browser-test', wait: 5 });
  if (after.job.id !== paused.id) throw new Error(`after resume leased ${JSON.stringify(after)}`);
  await call(WORKER, 'POST', `/v1/jobs/${paused.id}/complete`, { lease_id: after.lease_id, result: {} });
  say('queue-paused-and-resumed');

  // 7. A dead letter: a webhook whose only attempt failed; replayed from
  // the deliveries page, it is delivered.
  const hooked = await call(ACME, 'POST', '/v1/jobs', { queue: 'work', input: { hook: true }, webhook: { url: HOOK } });
  const l2 = await call(WORKER, 'POST', '/v1/queues/work/lease', { worker: 'browser-test', wait: 5 });
  if (l2.job.id !== hooked.id) throw new Error('leased another job');
  await call(WORKER, 'POST', `/v1/jobs/${hooked.id}/fail`, { lease_id: l2.lease_id, error: { code: 'boom', message: 'the upstream said no' }, retry: false });
  const dead = await until('a dead letter', async () => {
    const d = await call(ADMIN, 'GET', `/v1/jobs/${hooked.id}/deliveries`);
    return d.deliveries.find((x) => x.state === 'dead');
  });
  await page.goto(`${base}/ui/#/deliveries?state=dead`);
  await page.waitForSelector(`tr[data-delivery="${dead.id}"]`);
  await page.screenshot({ path: join(shots, 'deliveries.png'), fullPage: true });
  await page.click(`button[data-replay="${dead.id}"]`);
  await until('the replay delivered', async () => {
    const d = await call(ADMIN, 'GET', `/v1/jobs/${hooked.id}/deliveries`);
    return d.deliveries.find((x) => x.id === dead.id && x.state === 'delivered');
  });
  await page.goto(`${base}/ui/#/deliveries?state=delivered`);
  await page.waitForSelector(`tr[data-delivery="${dead.id}"][data-state="delivered"]`);
  say('dead-letter-replayed', { delivery: dead.id });

  // 8. A portal link to acme's view: acme's jobs only, read-only.
  const other = await call(GLOBEX, 'POST', '/v1/jobs', { queue: 'work', input: { customer: 'globex' } });
  await page.goto(`${base}/ui/#/share`);
  await page.fill('#share input[name="tenant"]', 'acme');
  await page.click('#share button[type="submit"]');
  await page.waitForSelector('#portal-url');
  const link = await page.inputValue('#portal-url');
  if (!link.includes('/ui/portal#pt_')) throw new Error(`portal link ${link}`);
  const stranger = await browser.newContext({ viewport: { width: 1360, height: 860 } });
  const portal = await stranger.newPage();
  portal.on('pageerror', (e) => problems.push(`portal error: ${e.message}`));
  await portal.goto(link);
  await portal.waitForFunction(() => document.querySelector('#main').dataset.loaded === '#/jobs');
  await portal.evaluate(() => (location.hash = '#/jobs?queue=work'));
  await portal.waitForFunction(() => document.querySelector('#main').dataset.loaded === '#/jobs?queue=work');
  if (!(await portal.$(`tr[data-id="${job.id}"]`))) throw new Error("the portal does not show its tenant's job");
  if (await portal.$(`tr[data-id="${other.id}"]`)) throw new Error("the portal shows another tenant's job");
  if (await portal.$('#bulk-cancel')) throw new Error('the portal offers bulk actions');
  if (portal.url().includes('pt_')) throw new Error('the pass stayed in the address bar');
  const identity = await portal.textContent('#identity');
  if (!identity.includes('acme') || !identity.includes('read-only')) throw new Error(`portal says ${identity}`);
  await portal.screenshot({ path: join(shots, 'portal.png') });
  await portal.goto(`${link.split('#')[0]}#/jobs/${other.id}`);
  await portal.waitForFunction(() => document.querySelector('main').textContent.includes('no such job'));
  say('portal', { identity });

  if (problems.length) throw new Error(problems.join('\n'));
  say('done');
} catch (e) {
  console.log(JSON.stringify({ step: 'failed', error: String(e && e.stack || e) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
