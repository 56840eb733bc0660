#!/usr/bin/env node
// Drives a real browser EventSource (Debian's headless Chromium, through
// playwright-core) against replyd's Server-Sent Events endpoint.
//
//   node eventsource.mjs <origin> <events path> [timeout ms]
//
//   origin       e.g. http://127.0.0.1:8080 (scheme, host and port only)
//   events path  e.g. /v1/jobs/ID/events?access_token=jt_... (path and query)
//   timeout ms   optional; else env TIMEOUT_MS; else 60000
//
// A page is served ON THE SERVER'S ORIGIN (intercepted, it never reaches the
// server) at <origin>/__replyd_test_page, so the EventSource is same-origin.
// The page opens `new EventSource(eventsPath)`, shows state, a progress bar and
// the progress message, and on a terminal event closes the EventSource; on
// job.succeeded it then fetches data.links.result and shows the body. Reconnects
// (with Last-Event-ID) are left entirely to the browser.
//
// stdout: one JSON object per line, written as it happens:
//   {"kind":"open"}
//   {"kind":"event","id":"12","event":"job.progress","state":"running","percent":40}
//   {"kind":"error","readyState":0}          (0 = reconnecting, 2 = browser gave up)
//   {"kind":"result","status":200}           (after the fetch of links.result)
//   {"kind":"done","dom_state":"succeeded","dom_progress":"100% done",
//    "dom_result":"<body text>","result_status":200,"events":[{id,event,state,percent},...]}
// "done" is read back from the page's DOM. Exit 0 after "done".
// Exit non-zero with a message on stderr on timeout, on the browser giving up
// before a terminal event, on a page error, or on any other failure.
//
// Env:
//   TIMEOUT_MS                 overall deadline (ms), default 60000
//   CHROMIUM                   browser binary, default /usr/lib/chromium/chromium
//                              (what Debian's /usr/bin/chromium wraps), else /usr/bin/chromium
//   KEEP_OPEN_AFTER_TERMINAL=1 do not close the EventSource on the terminal
//                              event: let the browser reconnect and expect the
//                              server's 204, which makes the browser give up
//                              ({"kind":"error","readyState":2}); "done" follows.
//   SCREENSHOT=/path.png       save a screenshot of the page before exiting
//   DEBUG=1                    page console messages to stderr

import { launch } from './chromium.mjs';

const TERMINAL = ['job.succeeded', 'job.failed', 'job.canceled'];
const EVENT_NAMES = [
  'job.accepted',
  'job.started',
  'job.progress',
  'job.retrying',
  'job.cancel_requested',
  ...TERMINAL,
  'stream.reset',
];
const PAGE_PATH = '/__replyd_test_page';

function usage(msg) {
  process.stderr.write(
    `eventsource.mjs: ${msg}\n` +
      'usage: node eventsource.mjs <origin e.g. http://127.0.0.1:PORT> <events path incl. ?access_token=...> [timeout ms]\n',
  );
  process.exit(64);
}

const [originArg, eventsPath, timeoutArg] = process.argv.slice(2);
if (!originArg || !eventsPath) usage('missing arguments');
let origin;
try {
  origin = new URL(originArg).origin;
} catch {
  usage(`bad origin: ${originArg}`);
}
if (!eventsPath.startsWith('/')) usage(`events path must start with '/': ${eventsPath}`);
const timeoutMs = Number(timeoutArg ?? process.env.TIMEOUT_MS ?? 60000);
if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) usage(`bad timeout: ${timeoutArg ?? process.env.TIMEOUT_MS}`);
const keepOpen = process.env.KEEP_OPEN_AFTER_TERMINAL === '1';
const debug = process.env.DEBUG === '1';

// Pipes and files are written synchronously by Node on Linux, so each line is
// out before the next happening is handled.
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const config = { eventsPath, eventNames: EVENT_NAMES, terminal: TERMINAL, keepOpen };
const pageHtml = `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>replyd job</title>
<style>
  body { font: 15px system-ui, sans-serif; margin: 2em; max-width: 48em; }
  progress { width: 100%; height: 1.4em; }
  #state { font-weight: bold; }
  pre { background: #f4f4f4; padding: .6em; white-space: pre-wrap; word-break: break-all; }
  #log { font: 12px monospace; }
</style>
</head>
<body>
<h1>Job <span id="job-id">…</span></h1>
<p>State: <span id="state">connecting</span> · connection: <span id="conn">connecting</span></p>
<progress id="bar" max="100" value="0"></progress>
<p id="progress"></p>
<h2>Result</h2>
<pre id="result"></pre>
<h2>Events</h2>
<ol id="log"></ol>
<script>
const CONFIG = ${JSON.stringify(config).replace(/</g, '\\u003c')};
const $ = (id) => document.getElementById(id);
const report = (obj) => window.__replyd_report(obj);
let es = null;
let finished = false;

function finish() {
  if (finished) return;
  finished = true;
  report({ kind: '__finished' });
}

function showProgress(job) {
  const p = job && job.progress;
  let percent = p && typeof p.percent === 'number' ? p.percent : null;
  if (percent === null && job && job.state === 'succeeded') percent = 100;
  if (percent !== null) $('bar').value = percent;
  const message = p && p.message ? String(p.message) : '';
  if (percent !== null || message) {
    $('progress').textContent = (percent !== null ? percent + '%' : '') + (percent !== null && message ? ' ' : '') + message;
  }
}

async function fetchResult(job) {
  const url = job && job.links && job.links.result;
  if (!url) {
    $('result').textContent = '(no links.result)';
    $('result').dataset.status = '0';
    report({ kind: 'result', status: 0, error: 'no links.result' });
    return;
  }
  try {
    const res = await fetch(url, { headers: { accept: 'application/json' } });
    const text = await res.text();
    $('result').textContent = text;
    $('result').dataset.status = String(res.status);
    report({ kind: 'result', status: res.status });
  } catch (err) {
    $('result').textContent = '(fetch failed: ' + err + ')';
    $('result').dataset.status = '0';
    report({ kind: 'result', status: 0, error: String(err) });
  }
}

function onEvent(e) {
  let job = null;
  let dataError;
  try {
    job = JSON.parse(e.data);
  } catch (err) {
    dataError = String(err);
  }
  const rec = {
    id: e.lastEventId,
    event: e.type,
    state: job && typeof job.state === 'string' ? job.state : null,
    percent: job && job.progress && typeof job.progress.percent === 'number' ? job.progress.percent : null,
  };
  const li = document.createElement('li');
  li.dataset.json = JSON.stringify(rec);
  li.textContent = '#' + rec.id + ' ' + rec.event + ' ' + (rec.state ?? '') + (rec.percent !== null ? ' ' + rec.percent + '%' : '');
  $('log').appendChild(li);
  report(dataError === undefined ? { kind: 'event', ...rec } : { kind: 'event', ...rec, data_error: dataError });
  if (job) {
    if (job.id) $('job-id').textContent = job.id;
    if (job.state) $('state').textContent = job.state;
    showProgress(job);
  }
  if (CONFIG.terminal.includes(e.type)) {
    $('log').dataset.terminal = e.type;
    if (!CONFIG.keepOpen) es.close();
    $('conn').textContent = CONFIG.keepOpen ? 'waiting for the server to end the stream' : 'closed';
    const after = e.type === 'job.succeeded' ? fetchResult(job) : Promise.resolve();
    after.then(() => {
      $('log').dataset.resultDone = '1';
      if (!CONFIG.keepOpen || es.readyState === EventSource.CLOSED) finish();
    });
  }
}

window.start = () => {
  es = new EventSource(CONFIG.eventsPath);
  es.onopen = () => {
    $('conn').textContent = 'open';
    report({ kind: 'open' });
  };
  es.onerror = () => {
    const rs = es.readyState;
    $('conn').textContent = rs === EventSource.CLOSED ? 'closed' : 'reconnecting';
    report({ kind: 'error', readyState: rs });
    if (rs === EventSource.CLOSED) {
      if ($('log').dataset.terminal) {
        if ($('log').dataset.resultDone) finish();
      } else {
        finished = true;
        report({ kind: '__gave_up' });
      }
    }
  };
  for (const name of CONFIG.eventNames) es.addEventListener(name, onEvent);
  // Default-named events ("message") would mean the server left out "event:".
  es.onmessage = onEvent;
};
</script>
</body>
</html>
`;

class Known extends Error {}

let browser = null;
let exiting = false;

async function fail(msg, code = 1) {
  if (exiting) return;
  exiting = true;
  process.stderr.write(`eventsource.mjs: ${msg}\n`);
  await shutdown();
  process.exit(code);
}

async function shutdown() {
  if (!browser) return;
  const b = browser;
  browser = null;
  await Promise.race([b.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => fail(`killed by ${sig}`, 130));
}

const deadline = setTimeout(() => fail(`timeout after ${timeoutMs} ms without a terminal event`, 2), timeoutMs);

async function main() {
  browser = await launch();
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (err) => fail(`page error: ${err}`));
  page.on('crash', () => fail('page crashed'));
  // Only observed, for messages: the status of each events request.
  let lastEventsResponse = 'none';
  const eventsUrl = new URL(eventsPath, origin).href;
  page.on('response', (r) => {
    if (r.url() === eventsUrl) lastEventsResponse = `HTTP ${r.status()}`;
  });
  page.on('requestfailed', (r) => {
    if (r.url() === eventsUrl) lastEventsResponse = `failed: ${r.failure()?.errorText}`;
  });
  if (debug) page.on('console', (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));

  let resolveFinished, rejectFinished;
  const finishedP = new Promise((res, rej) => {
    resolveFinished = res;
    rejectFinished = rej;
  });
  await page.exposeFunction('__replyd_report', (obj) => {
    if (obj.kind === '__finished') resolveFinished();
    else if (obj.kind === '__gave_up')
      rejectFinished(
        new Known(`the browser closed the EventSource before a terminal event (last events response: ${lastEventsResponse})`),
      );
    else emit(obj);
  });

  // Serve the page on the server's origin; nothing else is intercepted, and
  // routing is switched off before the EventSource opens, so its requests go
  // over the browser's own network stack untouched.
  await page.route(origin + PAGE_PATH, (route) =>
    route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: pageHtml }),
  );
  await page.goto(origin + PAGE_PATH, { waitUntil: 'load' });
  await page.unrouteAll({ behavior: 'wait' });
  await page.evaluate(() => window.start());

  await finishedP;

  const dom = await page.evaluate(() => ({
    dom_state: document.getElementById('state').textContent,
    dom_progress: document.getElementById('progress').textContent,
    dom_result: document.getElementById('result').textContent,
    result_status: document.getElementById('result').dataset.status
      ? Number(document.getElementById('result').dataset.status)
      : null,
    events: [...document.querySelectorAll('#log > li')].map((li) => JSON.parse(li.dataset.json)),
  }));
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  clearTimeout(deadline);
  emit({ kind: 'done', ...dom });
  exiting = true;
  await shutdown();
  process.exit(0);
}

main().catch((err) => fail(err instanceof Known ? err.message : err && err.stack ? err.stack : String(err)));
