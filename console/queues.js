// Queues: depth and running jobs, traffic in and out, latency and lease
// expiries over the last hour, and pausing one (workers get nothing while
// it is paused). An operator's view: a key of every tenant.

import { api } from './api.js';
import { h, clear, ago, toast, showError } from './dom.js';
import { lineChart } from './charts.js';

export async function queuesPage(main, session, setStop) {
  const canPause = session.role === 'admin';
  const box = h('div', { id: 'queues' });
  const stamp = h('span', { class: 'muted' });
  clear(main, h('div', { class: 'title-row' }, h('h1', {}, 'Queues'), stamp), box);
  const draw = async () => {
    let list;
    try {
      list = (await api('/v1/queues')).queues;
    } catch (e) {
      clear(box, h('p', { class: 'error-text' }, e.message));
      return;
    }
    stamp.textContent = `updated ${new Date().toLocaleTimeString()}`;
    clear(box, list.map((q) => card(q, canPause, draw)));
  };
  await draw();
  const timer = setInterval(draw, 5000);
  setStop(() => clearInterval(timer));
}

function card(q, canPause, redraw) {
  const m = q.minutes;
  const toggle = async () => {
    try {
      await api(`/v1/queues/${encodeURIComponent(q.name)}/${q.paused ? 'resume' : 'pause'}`, { method: 'POST' });
      toast(`${q.name} ${q.paused ? 'resumed' : 'paused'}`);
      redraw();
    } catch (e) {
      showError(e);
    }
  };
  return h('article', { class: `queue${q.paused ? ' paused' : ''}`, dataset: { queue: q.name } },
    h('header', {},
      h('h2', {}, h('a', { href: `#/jobs?queue=${encodeURIComponent(q.name)}` }, q.name)),
      h('span', { class: 'muted' }, q.executor),
      q.paused ? h('span', { class: 'badge held' }, `paused ${ago(q.paused_at)}`) : null,
      q.max_running ? h('span', { class: 'muted', dataset: { limit: 'max_running' } }, `at most ${q.max_running} at once`) : null,
      q.rate ? h('span', { class: 'muted', dataset: { limit: 'rate' } }, `at most ${q.rate}`) : null,
      canPause ? h('button', { type: 'button', class: 'small', dataset: { toggle: q.name }, onclick: toggle }, q.paused ? 'Resume' : 'Pause') : null),
    h('dl', { class: 'counts' },
      ['scheduled', 'queued', 'running', 'succeeded', 'failed', 'canceled'].map((s) => h('div', {},
        h('dt', {}, h('a', { href: `#/jobs?queue=${encodeURIComponent(q.name)}&state=${s}` }, s)),
        h('dd', { dataset: { count: s } }, q.jobs[s])))),
    h('div', { class: 'charts' },
      lineChart('Jobs per minute', [
        { name: 'in', cls: 's-in', values: m.map((x) => x.in) },
        { name: 'out', cls: 's-out', values: m.map((x) => x.out) },
        { name: 'failed', cls: 's-fail', values: m.map((x) => x.failed) },
      ]),
      lineChart('Submit to finish', [
        { name: 'p50', cls: 's-p50', values: m.map((x) => x.p50_ms) },
        { name: 'p95', cls: 's-p95', values: m.map((x) => x.p95_ms) },
        { name: 'p99', cls: 's-p99', values: m.map((x) => x.p99_ms) },
      ], { unit: ' ms' }),
      lineChart('Lease expiries', [
        { name: 'expired', cls: 's-fail', values: m.map((x) => x.lease_expiries) },
      ])));
}
