// Jobs: the live list (filters, search, bulk actions on every match) and
// one job's page (its timeline, input, result, deliveries, actions).

import { api, sse } from './api.js';
import { h, clear, when, ago, badge, pretty, short, route, go, toast, showError } from './dom.js';

const STATES = ['scheduled', 'queued', 'running', 'succeeded', 'failed', 'canceled'];
const FILTERS = ['queue', 'state', 'since', 'until', 'q', 'idempotency_key'];
// The most rows a live list keeps.
const MAX_ROWS = 500;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// The filter in the route, as the API takes it.
function filterOf(params) {
  const f = {};
  for (const k of FILTERS) if (params.get(k)) f[k] = params.get(k);
  return f;
}

function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function fromLocalInput(v) {
  return v ? new Date(v).toISOString() : '';
}

// Whether a job (as an event shows it) belongs in a list with this filter:
// only what can be told from the job alone; a text or key search, or a
// range that ends, shows what the server found.
function fits(job, f) {
  if (f.q || f.idempotency_key || f.until) return false;
  if (f.queue && job.queue !== f.queue) return false;
  if (f.state && job.state !== f.state) return false;
  if (f.since && new Date(job.created_at) < new Date(f.since)) return false;
  return true;
}

function row(job) {
  const detail = job.error
    ? h('span', { class: 'error-text' }, `${job.error.code}: ${job.error.message}`)
    : job.progress
      ? `${job.progress.percent ?? ''}${job.progress.percent != null ? '% ' : ''}${job.progress.message ?? ''}`
      : '';
  return h(
    'tr',
    { dataset: { id: job.id, state: job.state } },
    h('td', { class: 'mono' }, h('a', { href: `#/jobs/${job.id}`, title: job.id }, short(job.id))),
    h('td', {}, job.queue),
    h('td', {}, badge(job.state)),
    h('td', { class: 'num' }, `${job.attempt}/${job.max_attempts}`),
    h('td', { title: when(job.created_at) }, ago(job.created_at)),
    h('td', { title: when(job.updated_at) }, ago(job.updated_at)),
    h('td', { class: 'detail' }, detail),
  );
}

export async function jobsPage(main, session, setStop) {
  const { params } = route();
  const f = filterOf(params);
  const canChange = !session.portal && ['admin', 'client'].includes(session.role);

  const queues = session.queues || [];
  const queueInput = queues.length
    ? h('select', { name: 'queue' }, h('option', { value: '' }, 'any queue'), queues.map((q) => h('option', { value: q, selected: q === f.queue }, q)))
    : h('input', { name: 'queue', placeholder: 'queue', value: f.queue || '' });
  const form = h(
    'form',
    { class: 'filters', id: 'job-filters' },
    queueInput,
    h('select', { name: 'state' }, h('option', { value: '' }, 'any state'), STATES.map((s) => h('option', { value: s, selected: s === f.state }, s))),
    h('label', {}, 'from ', h('input', { type: 'datetime-local', name: 'since', value: toLocalInput(f.since) })),
    h('label', {}, 'to ', h('input', { type: 'datetime-local', name: 'until', value: toLocalInput(f.until) })),
    h('input', { type: 'search', name: 'q', placeholder: 'job id, or text in input / error', value: f.q || '', size: 28 }),
    h('input', { name: 'idempotency_key', placeholder: 'idempotency key', value: f.idempotency_key || '' }),
    h('button', { type: 'submit' }, 'Filter'),
    h('a', { href: '#/jobs', class: 'button subtle' }, 'Clear'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const q = String(data.get('q') || '').trim();
    if (UUID.test(q)) return go(`jobs/${q.toLowerCase()}`);
    const p = new URLSearchParams();
    for (const k of FILTERS) {
      let v = String(data.get(k) || '').trim();
      if (k === 'since' || k === 'until') v = fromLocalInput(v);
      if (v) p.set(k, v);
    }
    go('jobs', p);
  });

  const tbody = h('tbody', { id: 'job-rows' });
  const status = h('span', { class: 'live', id: 'live' }, 'connecting…');
  const more = h('button', { type: 'button', class: 'subtle', id: 'more', hidden: true }, 'Load more');
  const note = h('p', { class: 'muted', id: 'list-note' });
  const bulk = canChange ? bulkBar(f) : null;
  clear(
    main,
    h('section', {}, h('div', { class: 'title-row' }, h('h1', {}, 'Jobs'), status), form, bulk),
    h(
      'table',
      { class: 'list', id: 'jobs' },
      h('thead', {}, h('tr', {}, ['Job', 'Queue', 'State', 'Attempt', 'Created', 'Updated', 'Progress / error'].map((t) => h('th', {}, t)))),
      tbody,
    ),
    note,
    more,
  );

  const rows = new Map();
  let cursor = null;
  const put = (job, top) => {
    const old = rows.get(job.id);
    const r = row(job);
    if (old) old.replaceWith(r);
    else if (top) tbody.prepend(r);
    else tbody.append(r);
    rows.set(job.id, r);
    // A busy system adds jobs faster than anyone reads them: the list
    // keeps the newest MAX_ROWS, and "Load more" goes on below them.
    while (top && rows.size > MAX_ROWS) {
      const last = tbody.lastElementChild;
      rows.delete(last.dataset.id);
      last.remove();
      cursor = tbody.lastElementChild.dataset.id;
      more.hidden = false;
    }
  };
  const load = async () => {
    const p = new URLSearchParams(f);
    p.set('limit', '50');
    if (cursor) p.set('cursor', cursor);
    const t0 = performance.now();
    const page = await api(`/v1/jobs?${p}`);
    for (const j of page.jobs) put(j, false);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    const took = Math.round(performance.now() - t0);
    note.textContent = rows.size
      ? `${rows.size} shown${cursor ? '; more may match' : ''} (${took} ms)`
      : cursor
        ? `No match among the newest jobs searched (${took} ms); load more to search further back.`
        : 'No jobs match.';
    // Which list is shown (what a test waits for after a navigation).
    main.dataset.loaded = location.hash;
    main.dataset.loadedAt = String(Math.round(performance.now()));
  };
  more.addEventListener('click', () => load().catch(showError));
  await load();

  // Live: every event of the caller's jobs (of the queue when one is
  // chosen) updates its row, or adds a new job that fits at the top.
  const path = f.queue ? `/v1/events?queue=${encodeURIComponent(f.queue)}` : '/v1/events';
  setStop(
    sse(
      path,
      ({ data }) => {
        if (!data || !data.id) return;
        if (rows.has(data.id)) {
          if (f.state && data.state !== f.state) {
            put(data, false);
            rows.get(data.id).classList.add('left-filter');
          } else put(data, false);
        } else if (fits(data, f)) put(data, true);
      },
      { onState: (s) => (status.textContent = s, status.dataset.state = s) },
    ),
  );
}

// The bar that acts on every job the filter matches, a slice per call,
// until the server says there is no more.
function bulkBar(f) {
  const out = h('span', { class: 'muted', id: 'bulk-result' });
  const confirmBox = h('div', { class: 'confirm', hidden: true, id: 'bulk-confirm' });
  const start = (action) => {
    const desc = Object.entries(f).map(([k, v]) => `${k}=${v}`).join(', ') || 'no filter: every job';
    clear(
      confirmBox,
      h('span', {}, `${action[0].toUpperCase()}${action.slice(1)} every job that matches (${desc}), not only those shown?`),
      h('button', { type: 'button', class: 'danger', id: 'bulk-go', onclick: () => run(action) }, `Yes, ${action} them`),
      h('button', { type: 'button', class: 'subtle', onclick: () => (confirmBox.hidden = true) }, 'Back'),
    );
    confirmBox.hidden = false;
  };
  const run = async (action) => {
    confirmBox.hidden = true;
    let cursor = null;
    let matched = 0;
    let changed = 0;
    const refused = [];
    try {
      do {
        const a = await api('/v1/jobs:bulk', { method: 'POST', body: { action, filter: f, cursor } });
        matched += a.matched;
        changed += a.changed;
        refused.push(...a.refused);
        cursor = a.next_cursor;
        out.textContent = `${action}: ${changed} changed of ${matched} matched${cursor ? '…' : ''}`;
      } while (cursor);
      out.textContent = `${action}: ${changed} changed of ${matched} matched` + (refused.length ? `; not changed: ${refused.length}+ (e.g. ${refused[0].detail})` : '');
      out.dataset.done = action;
      toast(out.textContent);
    } catch (e) {
      showError(e);
    }
  };
  return h(
    'div',
    { class: 'bulk' },
    h('span', { class: 'muted' }, 'All matching: '),
    h('button', { type: 'button', id: 'bulk-cancel', onclick: () => start('cancel') }, 'Cancel'),
    h('button', { type: 'button', id: 'bulk-retry', onclick: () => start('retry') }, 'Retry'),
    h('button', { type: 'button', id: 'bulk-delete', onclick: () => start('delete') }, 'Delete'),
    out,
    confirmBox,
  );
}

export async function jobPage(main, session, id, setStop) {
  const canChange = !session.portal && ['admin', 'client'].includes(session.role);
  let job;
  try {
    job = await api(`/v1/jobs/${id}`);
  } catch (e) {
    clear(main, h('h1', {}, 'Job'), h('p', { class: 'error-text' }, e.message));
    return;
  }
  const head = h('div', { id: 'job-head' });
  const actions = h('div', { class: 'actions', id: 'job-actions' });
  const timeline = h('tbody', { id: 'timeline' });
  const inputBox = h('pre', { class: 'code', id: 'job-input' }, '…');
  const resultBox = h('pre', { class: 'code', id: 'job-result' }, '');
  const deliveries = h('div', { id: 'job-deliveries' });
  clear(
    main,
    h('p', {}, h('a', { href: '#/jobs' }, '← Jobs')),
    head,
    actions,
    h('div', { class: 'columns' },
      h('section', {}, h('h2', {}, 'Input'), inputBox),
      h('section', {}, h('h2', {}, 'Result'), resultBox)),
    h('section', {}, h('h2', {}, 'Timeline'),
      h('table', { class: 'list' },
        h('thead', {}, h('tr', {}, ['Event id', 'Event', 'At', 'State', 'Attempt', 'Progress / error'].map((t) => h('th', {}, t)))),
        timeline)),
    h('section', {}, h('h2', {}, 'Deliveries and replies'), deliveries),
  );

  const show = (j) => {
    job = j;
    clear(
      head,
      h('div', { class: 'title-row' }, h('h1', { class: 'mono' }, j.id), badge(j.state)),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Queue'), h('dd', {}, j.queue),
        h('dt', {}, 'Attempt'), h('dd', {}, `${j.attempt} of ${j.max_attempts}`),
        j.priority ? [h('dt', {}, 'Priority'), h('dd', {}, String(j.priority))] : null,
        j.group && [h('dt', {}, 'Group'), h('dd', {}, j.group)],
        h('dt', {}, 'Created'), h('dd', {}, when(j.created_at)),
        j.run_at && [h('dt', {}, 'Due'), h('dd', {}, when(j.run_at))],
        h('dt', {}, 'Updated'), h('dd', {}, when(j.updated_at)),
        j.finished_at && [h('dt', {}, 'Finished'), h('dd', {}, when(j.finished_at))],
        j.expires_at && [h('dt', {}, 'Expires'), h('dd', {}, when(j.expires_at))],
        j.progress && [h('dt', {}, 'Progress'), h('dd', {}, h('progress', { max: 100, value: j.progress.percent ?? 0 }), ' ', j.progress.message || '')],
        j.error && [h('dt', {}, 'Error'), h('dd', { class: 'error-text' }, `${j.error.code}: ${j.error.message}`)],
        j.cancel_requested && [h('dt', {}, 'Cancel'), h('dd', {}, 'requested; the worker is told at its next call')],
      ),
    );
    const terminal = ['succeeded', 'failed', 'canceled'].includes(j.state);
    clear(
      actions,
      canChange && !terminal && h('button', { type: 'button', id: 'cancel', onclick: () => act('cancel') }, 'Cancel'),
      canChange && ['failed', 'canceled'].includes(j.state) && h('button', { type: 'button', id: 'retry', onclick: () => act('retry') }, 'Retry as a new job'),
      canChange && terminal && h('button', { type: 'button', class: 'danger', id: 'delete', onclick: () => act('delete') }, 'Delete'),
    );
    if (j.state === 'succeeded' && !resultBox.dataset.loaded) loadResult();
  };
  const act = async (what) => {
    try {
      if (what === 'cancel') show(await api(`/v1/jobs/${id}/cancel`, { method: 'POST' }));
      if (what === 'retry') {
        const n = await api(`/v1/jobs/${id}/retry`, { method: 'POST' });
        toast(`Retried as ${n.id}`);
        go(`jobs/${n.id}`);
      }
      if (what === 'delete') {
        await api(`/v1/jobs/${id}`, { method: 'DELETE' });
        toast('Deleted');
        go('jobs');
      }
    } catch (e) {
      showError(e);
    }
  };
  const loadResult = async () => {
    resultBox.dataset.loaded = '1';
    const res = await api(`/v1/jobs/${id}/result`, { raw: true });
    resultBox.textContent = res.ok ? pretty(await res.text()) : `(${res.status})`;
  };
  show(job);

  api(`/v1/jobs/${id}/input`, { raw: true })
    .then(async (res) => (inputBox.textContent = res.ok ? pretty(await res.text()) : `(${res.status}: not shown)`))
    .catch(() => (inputBox.textContent = '(not available)'));
  const loadDeliveries = async () => {
    try {
      const d = await api(`/v1/jobs/${id}/deliveries`);
      const { deliveryTable } = await import('./deliveries.js');
      clear(deliveries, d.deliveries.length ? deliveryTable(d.deliveries, session, loadDeliveries) : h('p', { class: 'muted' }, 'None: no webhook or reply was asked for.'));
    } catch (e) {
      clear(deliveries, h('p', { class: 'muted' }, e.message));
    }
  };
  loadDeliveries();

  // The timeline: the job's history, then its live events until the end.
  setStop(
    sse(
      `/v1/jobs/${id}/events`,
      ({ id: eid, event, data }) => {
        if (!data || !data.id) return;
        const e = data.error ? h('span', { class: 'error-text' }, `${data.error.code}: ${data.error.message}`)
          : data.progress ? `${data.progress.percent ?? ''}${data.progress.percent != null ? '% ' : ''}${data.progress.message ?? ''}` : '';
        timeline.append(h('tr', { dataset: { event } },
          h('td', { class: 'mono' }, eid), h('td', {}, event), h('td', {}, when(data.updated_at)),
          h('td', {}, badge(data.state)), h('td', { class: 'num' }, data.attempt), h('td', {}, e)));
        show(data);
        if (['job.succeeded', 'job.failed', 'job.canceled'].includes(event)) setTimeout(loadDeliveries, 1500);
      },
      {},
    ),
  );
}
