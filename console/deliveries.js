// Deliveries of every channel in one view (webhooks, and replies over
// each broker), with their attempt logs; replaying one or every dead
// letter; and the webhook endpoints, paused by hand or for failing.

import { api } from './api.js';
import { h, clear, when, ago, badge, route, go, toast, short, showError } from './dom.js';

const STATES = ['dead', 'pending', 'held', 'delivered'];

function target(d) {
  return d.url || [d.reply_to, d.correlation_id && `(correlation ${d.correlation_id})`].filter(Boolean).join(' ');
}

function attemptLog(d) {
  if (!d.attempt_log) return null;
  if (!d.attempt_log.length) return h('p', { class: 'muted' }, 'No attempt yet.');
  return h(
    'table',
    { class: 'list attempts' },
    h('thead', {}, h('tr', {}, ['At', 'Status', 'Latency', 'Answer / error'].map((t) => h('th', {}, t)))),
    h('tbody', {}, d.attempt_log.map((a) => h('tr', {},
      h('td', {}, when(a.at)),
      h('td', { class: 'num' }, a.status ?? '—'),
      h('td', { class: 'num' }, `${a.latency_ms} ms`),
      h('td', { class: 'excerpt' }, a.error || (a.status && a.status < 300 ? 'delivered' : ''))))),
  );
}

// A table of deliveries (a job's: each with its attempt log).
export function deliveryTable(list, session, reload) {
  const canReplay = !session.portal && ['admin', 'client'].includes(session.role);
  const body = h('tbody', {});
  for (const d of list) {
    const replay = canReplay && d.state !== 'held'
      ? h('button', {
        type: 'button', class: 'small', dataset: { replay: d.id },
        onclick: async () => {
          try {
            await api(`/v1/deliveries/${d.id}/retry${d.state === 'delivered' ? '?redeliver=true' : ''}`, { method: 'POST' });
            toast(`Delivery ${d.id} queued again`);
            reload && reload();
          } catch (e) {
            showError(e);
          }
        },
      }, d.state === 'delivered' ? 'Send again' : 'Replay')
      : null;
    const tr = h('tr', { dataset: { delivery: d.id, state: d.state } },
      h('td', { class: 'mono' }, d.id),
      h('td', {}, d.channel),
      h('td', {}, d.event),
      h('td', { class: 'mono' }, h('a', { href: `#/jobs/${d.job_id}` }, short(d.job_id))),
      h('td', { class: 'target' }, target(d)),
      h('td', {}, badge(d.state)),
      h('td', { class: 'num' }, d.attempts),
      h('td', { class: 'excerpt' }, d.last_error || ''),
      h('td', { title: when(d.updated_at) }, ago(d.updated_at)),
      h('td', {}, replay));
    body.append(tr);
    const log = attemptLog(d);
    if (log) body.append(h('tr', { class: 'sub' }, h('td', { colspan: 10 }, log)));
  }
  return h('table', { class: 'list', id: 'deliveries' },
    h('thead', {}, h('tr', {}, ['Id', 'Channel', 'Event', 'Job', 'To', 'State', 'Attempts', 'Last error', 'Updated', ''].map((t) => h('th', {}, t)))),
    body);
}

export async function deliveriesPage(main, session) {
  const { params } = route();
  const state = params.has('state') ? params.get('state') : 'dead';
  const canReplay = !session.portal && ['admin', 'client'].includes(session.role);
  const isAdmin = !session.portal && session.role === 'admin';
  const pick = h('select', { id: 'delivery-state' },
    h('option', { value: '' , selected: state === '' }, 'every state'),
    STATES.map((s) => h('option', { value: s, selected: s === state }, s === 'dead' ? 'dead letters' : s)));
  pick.addEventListener('change', () => go('deliveries', new URLSearchParams({ state: pick.value })));
  const list = h('div', {});
  const more = h('button', { type: 'button', class: 'subtle', hidden: true }, 'Load more');
  // Replay every dead letter that matches: of one queue, dead in a time
  // range (none given: all of them).
  let replayAll = null;
  if (canReplay && state === 'dead') {
    replayAll = h('form', { class: 'filters', id: 'replay-all' },
      h('input', { name: 'queue', placeholder: 'queue (any)', size: 12 }),
      h('label', {}, 'died from ', h('input', { type: 'datetime-local', name: 'from' })),
      h('label', {}, 'to ', h('input', { type: 'datetime-local', name: 'to' })),
      h('button', { type: 'submit' }, 'Replay every dead letter that matches'));
    replayAll.addEventListener('submit', async (e) => {
      e.preventDefault();
      const d = new FormData(replayAll);
      const body = {};
      if (d.get('queue')) body.queue = String(d.get('queue'));
      for (const k of ['from', 'to']) if (d.get(k)) body[k] = new Date(String(d.get(k))).toISOString();
      try {
        const r = await api('/v1/deliveries/retry', { method: 'POST', body });
        toast(`${r.replayed} dead letters queued again`);
        setTimeout(() => deliveriesPage(main, session), 800);
      } catch (x) {
        showError(x);
      }
    });
  }
  const endpoints = h('section', { id: 'endpoints' });
  clear(main,
    h('div', { class: 'title-row' }, h('h1', {}, 'Deliveries'), pick),
    h('p', { class: 'muted' }, 'Webhooks and replies over every broker. A dead letter ran out of attempts; replaying it starts its schedule again.'),
    replayAll,
    list, more,
    isAdmin ? endpoints : null);

  let cursor = null;
  let all = [];
  const load = async () => {
    const p = new URLSearchParams({ limit: '50' });
    if (state) p.set('state', state);
    if (cursor) p.set('cursor', cursor);
    const page = await api(`/v1/deliveries?${p}`);
    all = all.concat(page.deliveries);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    clear(list, all.length ? deliveryTable(all, session, () => deliveriesPage(main, session)) : h('p', { class: 'muted', id: 'no-deliveries' }, 'None.'));
  };
  more.addEventListener('click', () => load().catch(showError));
  await load();
  if (isAdmin) await endpointsSection(endpoints, session);
}

async function endpointsSection(box, session) {
  const reload = () => endpointsSection(box, session);
  const { endpoints } = await api('/v1/endpoints');
  const call = async (what, e) => {
    try {
      await api(`/v1/endpoints/${what}`, { method: 'POST', body: session.tenant === '*' ? { url: e.url, tenant: e.tenant } : { url: e.url } });
      toast(`${e.url} ${what === 'pause' ? 'paused' : 'resumed'}`);
      reload();
    } catch (err) {
      showError(err);
    }
  };
  const form = h('form', { class: 'filters', id: 'pause-endpoint' },
    h('input', { name: 'url', placeholder: 'https://receiver.example/hook', size: 40, required: true }),
    session.tenant === '*' ? h('input', { name: 'tenant', placeholder: 'tenant', required: true }) : null,
    h('button', { type: 'submit' }, 'Pause endpoint'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const d = new FormData(form);
    call('pause', { url: String(d.get('url')), tenant: String(d.get('tenant') || '') });
  });
  clear(box,
    h('h2', {}, 'Webhook endpoints'),
    h('p', { class: 'muted' }, 'Endpoints with dead letters in a row, or paused. A paused endpoint holds its deliveries; resuming sends them, in order.'),
    endpoints.length
      ? h('table', { class: 'list' },
        h('thead', {}, h('tr', {}, ['Tenant', 'URL', 'Dead in a row', 'State', 'Held', ''].map((t) => h('th', {}, t)))),
        h('tbody', {}, endpoints.map((e) => h('tr', { dataset: { endpoint: e.url } },
          h('td', {}, e.tenant), h('td', { class: 'target' }, e.url), h('td', { class: 'num' }, e.dead_in_a_row),
          h('td', {}, e.paused ? h('span', { class: 'badge held' }, `paused ${ago(e.paused_at)}`) : 'failing'),
          h('td', { class: 'num' }, e.held),
          h('td', {}, e.paused
            ? h('button', { type: 'button', class: 'small', onclick: () => call('resume', e) }, 'Resume')
            : h('button', { type: 'button', class: 'small', onclick: () => call('pause', e) }, 'Pause'))))))
      : h('p', { class: 'muted' }, 'None failing or paused.'),
    form);
}
