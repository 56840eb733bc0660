#!/usr/bin/env node
// A page in a real browser (Debian's headless Chromium, through
// playwright-core) follows a job's output with the Durable Streams client
// (@durable-streams/client, from ../durable-streams/node_modules), keeping
// what it has shown and its offset in localStorage; the harness reloads the
// page mid-stream, and the page goes on from its saved offset.
//
//   node output_reload.mjs <origin> <output path> [timeout ms]
//
//   origin       e.g. http://127.0.0.1:8080
//   output path  the job's links.output (path and ?access_token=...)
//
// The page and the client's modules are served on the server's origin
// (intercepted: /__replyd_output_page, /__replyd_test/*); the client's
// reads go to replyd untouched.
//
// stdout: one JSON object per line:
//   {"kind":"load","loads":1,"offset":"-1","length":0}
//   {"kind":"chunk","offset":"0000…_…","length":7,"closed":false}
//   {"kind":"reload","after_chunks":15}
//   {"kind":"done","text":"<what the page shows>","loads":2}
// Exit 0 after "done"; non-zero with a message on stderr otherwise.
//
// Env: RELOAD_AFTER (chunks before the reload, default 10), TIMEOUT_MS,
// CHROMIUM, SCREENSHOT=/path.png, DEBUG=1.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, '../durable-streams/node_modules');
const PAGE_PATH = '/__replyd_output_page';

const [originArg, outputPath, timeoutArg] = process.argv.slice(2);
if (!originArg || !outputPath || !outputPath.startsWith('/')) {
  process.stderr.write('usage: node output_reload.mjs <origin> <output path> [timeout ms]\n');
  process.exit(64);
}
const origin = new URL(originArg).origin;
const timeoutMs = Number(timeoutArg ?? process.env.TIMEOUT_MS ?? 60000);
const reloadAfter = Number(process.env.RELOAD_AFTER ?? 10);

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// The client is an ES module that imports one CommonJS package (fastq, which
// requires reusify): both are wrapped into an ES module here.
function commonjs(source, requires) {
  return `(() => { const module = { exports: {} }; const exports = module.exports;
    const require = (name) => { const m = ${requires}[name]; if (!m) throw new Error('no module ' + name); return m; };
    const process = { nextTick: (fn, ...args) => queueMicrotask(() => fn(...args)), env: {} };
    ${source}
    ;return module.exports; })()`;
}
const reusify = readFileSync(join(modules, 'reusify/reusify.js'), 'utf8');
const fastq = readFileSync(join(modules, 'fastq/queue.js'), 'utf8');
const fastqModule = `const __reusify = ${commonjs(reusify, '{}')};
export default ${commonjs(fastq, '{ reusify: __reusify }')};`;
const client = readFileSync(join(modules, '@durable-streams/client/dist/index.js'), 'utf8');

const config = { outputUrl: new URL(outputPath, origin).href };
const pageHtml = `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>replyd: a job's output</title>
<style>
  body { font: 15px system-ui, sans-serif; margin: 2em; max-width: 48em; }
  pre { background: #f4f4f4; padding: .6em; white-space: pre-wrap; word-break: break-word; min-height: 6em; }
  .meta { color: #555; }
</style>
<script type="importmap">{"imports": {"fastq": "/__replyd_test/fastq.js"}}</script>
</head>
<body>
<h1>A job's output, live</h1>
<p class="meta">Page load <span id="loads">…</span> · offset <code id="offset">…</code> · <span id="state">connecting</span></p>
<pre id="out"></pre>
<script type="module">
import { stream } from '/__replyd_test/client.js';
const CONFIG = ${JSON.stringify(config).replace(/</g, '\\u003c')};
const $ = (id) => document.getElementById(id);
const report = (obj) => window.__replyd_report(obj);
const saved = JSON.parse(localStorage.getItem('replyd-output') || 'null');
let text = saved ? saved.text : '';
let offset = saved ? saved.offset : '-1';
const loads = Number(sessionStorage.getItem('replyd-loads') || '0') + 1;
sessionStorage.setItem('replyd-loads', String(loads));
$('loads').textContent = String(loads);
$('offset').textContent = offset;
$('out').textContent = text;
report({ kind: 'load', loads, offset, length: text.length });
const res = await stream({ url: CONFIG.outputUrl, offset, live: 'sse' });
$('state').textContent = 'reading';
res.subscribeText((chunk) => {
  text += chunk.text;
  offset = chunk.offset;
  // What is shown and where it ends, together: a reload goes on from here.
  localStorage.setItem('replyd-output', JSON.stringify({ text, offset }));
  $('out').textContent = text;
  $('offset').textContent = offset;
  report({ kind: 'chunk', offset, length: chunk.text.length, closed: chunk.streamClosed });
  if (chunk.streamClosed) {
    $('state').textContent = 'the job has ended';
    report({ kind: '__done' });
  }
});
</script>
</body>
</html>
`;

let browser = null;
let exiting = false;

async function fail(msg, code = 1) {
  if (exiting) return;
  exiting = true;
  process.stderr.write(`output_reload.mjs: ${msg}\n`);
  if (browser) await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
  process.exit(code);
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => fail(`killed by ${sig}`, 130));
const deadline = setTimeout(() => fail(`timeout after ${timeoutMs} ms before the output closed`, 2), timeoutMs);

async function main() {
  browser = await launch();
  const page = await (await browser.newContext()).newPage();
  page.on('pageerror', (err) => fail(`page error: ${err}`));
  page.on('crash', () => fail('page crashed'));
  if (process.env.DEBUG === '1') page.on('console', (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));

  let chunks = 0;
  let reloaded = false;
  let loads = 0;
  let resolveDone;
  const done = new Promise((r) => (resolveDone = r));
  await page.exposeFunction('__replyd_report', (obj) => {
    if (obj.kind === '__done') return resolveDone();
    if (obj.kind === 'load') loads = obj.loads;
    emit(obj);
    if (obj.kind === 'chunk' && obj.length > 0) chunks += 1;
    if (!reloaded && chunks >= reloadAfter) {
      reloaded = true;
      emit({ kind: 'reload', after_chunks: chunks });
      page.reload({ waitUntil: 'load' }).catch((err) => fail(`reload: ${err}`));
    }
  });
  await page.route(origin + PAGE_PATH, (route) =>
    route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: pageHtml }),
  );
  await page.route(origin + '/__replyd_test/client.js', (route) =>
    route.fulfill({ status: 200, contentType: 'text/javascript', body: client }),
  );
  await page.route(origin + '/__replyd_test/fastq.js', (route) =>
    route.fulfill({ status: 200, contentType: 'text/javascript', body: fastqModule }),
  );
  await page.goto(origin + PAGE_PATH, { waitUntil: 'load' });
  await done;
  const text = await page.evaluate(() => document.getElementById('out').textContent);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  clearTimeout(deadline);
  emit({ kind: 'done', text, loads });
  exiting = true;
  await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
  process.exit(0);
}

main().catch((err) => fail(err && err.stack ? err.stack : String(err)));
