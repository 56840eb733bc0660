// followJob in headless Chromium: a page served by this test (another
// origin than replyd, both on 127.0.0.1) imports the built dist/ ESM and
// follows a job through its tokenised links, from a replyd that requires
// API keys: the page holds no key, only the job's token.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer, request } from 'node:http';
import { join, normalize } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { Client, Worker } from '../dist/index.js';
import { KEYS, KEYS_TOML, gate, suiteReplyd } from './support/replyd.mjs';

const DIST = fileURLToPath(new URL('../dist/', import.meta.url));
const CHROMIUM = '/usr/bin/chromium';
// Debian's /usr/bin/chromium is a wrapper that adds Google API keys and
// background lookups: launch the binary it wraps when it is there.
const EXECUTABLE = existsSync('/usr/lib/chromium/chromium') ? '/usr/lib/chromium/chromium' : CHROMIUM;
const skip = existsSync(CHROMIUM) ? false : `no system browser at ${CHROMIUM} (apt-get install chromium)`;

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>report</title>
<script type="module">
  import { Client, followJob } from '/sdk/index.js';
  window.follow = async (which) => {
    const { replyd, links } = await (await fetch('/job/' + which)).json();
    const events = [];
    window.events = events;
    try {
      const job = await followJob(links, { baseUrl: replyd, onEvent: (e) => events.push({ type: e.type, id: e.id, state: e.job?.state, progress: e.job?.progress ?? null }) });
      return { job, events };
    } catch (e) {
      return { error: String(e), name: e.name, events };
    }
  };
  // The Client in the page, with the job's token, through this origin
  // (the app's server passes /v1/ on to replyd).
  window.clientCalls = async (which) => {
    const { links } = await (await fetch('/job/' + which)).json();
    const self = new URL(links.self, location.href);
    const client = new Client({ baseUrl: location.origin, token: self.searchParams.get('access_token') });
    const id = self.pathname.split('/')[3];
    try {
      const job = await client.get(id);
      const waited = await client.wait(id, { timeout: 10 });
      const result = await client.result(id);
      return { state: job.state, waited: waited.state, result: result.json() };
    } catch (e) {
      return { error: String(e) };
    }
  };
  window.tryFetch = async (path) => {
    const { replyd, links } = await (await fetch('/job/running')).json();
    try {
      const res = await fetch(new URL(links[path], replyd));
      return { status: res.status, body: await res.json() };
    } catch (e) {
      return { error: String(e) };
    }
  };
</script>`;

describe('followJob in headless Chromium', { skip }, () => {
  const replyd = suiteReplyd(`${KEYS_TOML}\n[queues.page]\n`);
  let browser;
  let app;
  let client;
  const jobs = {};

  before(async () => {
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({
      executablePath: EXECUTABLE,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
        '--disable-component-update',
        '--disable-sync',
        '--disable-domain-reliability',
        '--dns-prefetch-disable',
        '--no-pings',
      ],
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
    });
    client = new Client({ baseUrl: replyd.server.url, apiKey: KEYS.client });
    // The app's backend: the page, the SDK's built files, and the links
    // of the jobs it submitted with its API key.
    app = createServer(async (req, res) => {
      const path = new URL(req.url, 'http://x').pathname;
      if (path === '/') return send(res, 200, 'text/html', PAGE);
      if (path.startsWith('/job/')) {
        const job = jobs[path.slice(5)];
        if (!job) return send(res, 404, 'text/plain', 'no such job');
        return send(res, 200, 'application/json', JSON.stringify({ replyd: replyd.server.url, links: job.links }));
      }
      if (path.startsWith('/v1/')) return forward(req, res, replyd.server.port);
      if (path.startsWith('/sdk/')) {
        const file = normalize(join(DIST, path.slice(5)));
        if (!file.startsWith(DIST)) return send(res, 403, 'text/plain', 'no');
        try {
          return send(res, 200, 'text/javascript', await readFile(file));
        } catch {
          return send(res, 404, 'text/plain', 'not built');
        }
      }
      return send(res, 404, 'text/plain', 'not found');
    });
    await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
  });

  after(async () => {
    await browser?.close();
    app?.closeAllConnections();
    await new Promise((resolve) => (app ? app.close(resolve) : resolve()));
  });

  async function openPage() {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${app.address().port}/`);
    await page.waitForFunction(() => typeof window.follow === 'function');
    return page;
  }

  test('a page on another origin follows a running job live with its job token and gets the finished job', async (t) => {
    jobs.running = await client.submit('page', { pages: 2 });
    const page = await openPage();
    t.after(() => page.close());
    const following = page.evaluate(() => window.follow('running'));
    // The worker starts once the page has seen the job accepted, so that
    // what follows arrives live.
    await page.waitForFunction(() => window.events?.length >= 1);
    const finish = gate();
    const worker = new Worker(
      new Client({ baseUrl: replyd.server.url, apiKey: KEYS.worker }),
      'page',
      async (input, ctx) => {
        await ctx.progress(30, 'page 1 of 2');
        await ctx.progress(60, 'page 2 of 2');
        await finish.promise;
        return { pages: input.pages };
      },
      { waitSeconds: 1 },
    );
    const working = worker.start();
    await page.waitForFunction(() => window.events.some((e) => e.progress?.percent === 60));
    finish.open();
    const { job, events, error } = await following;
    await worker.stop();
    await working;
    assert.equal(error, undefined);
    assert.equal(job.id, jobs.running.id);
    assert.equal(job.state, 'succeeded');
    const types = events.map((e) => e.type);
    assert.deepEqual(types, ['job.accepted', 'job.started', 'job.progress', 'job.progress', 'job.succeeded'], types.join());
    assert.deepEqual(
      events.filter((e) => e.type === 'job.progress').map((e) => e.progress.message),
      ['page 1 of 2', 'page 2 of 2'],
    );
    // What else the token grants a page on another origin: replyd answers
    // a request with the token in its URL with Access-Control-Allow-Origin: *,
    // so the page reads the result too (the job's own link redirects there).
    for (const link of ['self', 'result']) {
      const answer = await page.evaluate((l) => window.tryFetch(l), link);
      assert.deepEqual(answer, { status: 200, body: { pages: 2 } }, `links.${link}: ${JSON.stringify(answer)}`);
    }
  });

  test('a job that finished before the page came is replayed and resolves at once; a bad token rejects', async (t) => {
    jobs.finished = await client.submit('page', { pages: 0 });
    const [lease] = await new Client({ baseUrl: replyd.server.url, apiKey: KEYS.worker }).lease('page', { wait: 5 });
    await new Client({ baseUrl: replyd.server.url, apiKey: KEYS.worker }).complete(lease.job.id, lease.lease_id, { ok: 1 });
    const forged = (link) => link.replace(/access_token=jt_[^&]+/, 'access_token=jt_forged');
    jobs.forged = { links: Object.fromEntries(Object.entries(jobs.finished.links).map(([k, v]) => [k, forged(v)])) };
    const page = await openPage();
    t.after(() => page.close());
    const done = await page.evaluate(() => window.follow('finished'));
    assert.equal(done.error, undefined);
    assert.equal(done.job.state, 'succeeded');
    assert.deepEqual(
      done.events.map((e) => e.type),
      ['job.accepted', 'job.started', 'job.succeeded'],
    );
    // On replyd's origin (here: behind the app's), the Client works in the
    // page too; a succeeded job's 303 is read as its status even though
    // the browser hides a redirect's body.
    assert.deepEqual(await page.evaluate(() => window.clientCalls('finished')), {
      state: 'succeeded',
      waited: 'succeeded',
      result: { ok: 1 },
    });
    const refused = await page.evaluate(() => window.follow('forged'));
    assert.equal(refused.name, 'ReplydError', JSON.stringify(refused));
    assert.match(refused.error, /closed before it finished/);
  });
});

/** Passes a request on to replyd on 127.0.0.1:`port`, streaming its answer. */
function forward(req, res, port) {
  const upstream = request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
    res.writeHead(answer.statusCode, answer.headers);
    answer.pipe(res);
  });
  upstream.on('error', () => res.destroy());
  req.pipe(upstream);
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}
