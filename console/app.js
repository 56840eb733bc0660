// The console's entry: who is signed in, the navigation, and the page the
// location's hash names. In a portal (portal.html), the pass comes in the
// link's fragment (never sent to a server or kept in history), is kept for
// this tab only, and every page is read-only.

import { api, useCsrf, usePass, Problem } from './api.js';
import { h, clear, route, toast, showError } from './dom.js';
import { jobsPage, jobPage } from './jobs.js';
import { queuesPage } from './queues.js';
import { deliveriesPage } from './deliveries.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const portal = document.documentElement.dataset.portal === '1';

let stop = null;
const setStop = (f) => {
  stop = f;
};

function signInForm(message) {
  const input = h('input', { type: 'password', name: 'key', id: 'key', autocomplete: 'current-password', placeholder: 'API key', required: true, size: 36 });
  const err = h('p', { class: 'error-text', id: 'sign-in-error' }, message || '');
  const form = h('form', { class: 'sign-in', id: 'sign-in' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'With an API key. It is kept in an HttpOnly cookie for this site only, never in this page.'),
    input, h('button', { type: 'submit' }, 'Sign in'), err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api('/ui/session', { method: 'POST', body: { key: input.value } });
      location.hash = '#/jobs';
      location.reload();
    } catch (x) {
      err.textContent = x.message;
    }
  });
  clear(nav);
  clear(who);
  clear(main, form);
  input.focus();
}

function links(session) {
  const operator = session.role === 'admin' && session.tenant === '*';
  const items = [['jobs', 'Jobs'], operator && ['queues', 'Queues'], ['deliveries', 'Deliveries'], !portal && session.role === 'admin' && ['share', 'Portal links']].filter(Boolean);
  const current = route().path[0] || 'jobs';
  clear(nav, items.map(([p, t]) => h('a', { href: `#/${p}`, class: p === current ? 'current' : '' }, t)));
}

async function sharePage(session) {
  const out = h('div', { id: 'portal-link' });
  const form = h('form', { class: 'filters', id: 'share' },
    session.tenant === '*' ? h('input', { name: 'tenant', placeholder: 'tenant', required: true }) : h('span', {}, `Tenant ${session.tenant}`),
    h('select', { name: 'ttl' }, [[3600, '1 hour'], [86400, '1 day'], [604800, '7 days']].map(([v, t]) => h('option', { value: v }, t))),
    h('button', { type: 'submit' }, 'Make link'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const d = new FormData(form);
    try {
      const body = { ttl: Number(d.get('ttl')) };
      if (d.get('tenant')) body.tenant = String(d.get('tenant'));
      const link = await api('/v1/portal-links', { method: 'POST', body });
      clear(out,
        h('p', {}, `A read-only view of ${link.tenant}'s jobs and deliveries, until ${new Date(link.expires_at).toISOString()}:`),
        h('input', { readonly: true, value: link.url, size: 90, id: 'portal-url' }),
        h('p', { class: 'muted' }, 'Anyone with the link sees that view until it expires. Embed it in an iframe from the origins in console.frame_ancestors.'));
    } catch (x) {
      showError(x);
    }
  });
  clear(main, h('h1', {}, 'Portal links'),
    h('p', { class: 'muted' }, "A signed, expiring link to one tenant's jobs and deliveries, read-only, for the people who receive its webhooks."),
    form, out);
}

async function render(session) {
  if (stop) {
    stop();
    stop = null;
  }
  links(session);
  const { path } = route();
  delete main.dataset.loaded;
  try {
    if (path[0] === 'jobs' && path[1]) await jobPage(main, session, path[1], setStop);
    else if (path[0] === 'queues') await queuesPage(main, session, setStop);
    else if (path[0] === 'deliveries') await deliveriesPage(main, session);
    else if (path[0] === 'share' && !portal) await sharePage(session);
    else await jobsPage(main, session, setStop);
  } catch (e) {
    if (e instanceof Problem && e.status === 401) return boot();
    clear(main, h('p', { class: 'error-text' }, e.message));
  }
}

async function boot() {
  if (portal) {
    const fromLink = location.hash.match(/^#(pt_[A-Za-z0-9_-]+)/);
    if (fromLink) {
      sessionStorage.setItem('replyd-portal', fromLink[1]);
      history.replaceState(null, '', `${location.pathname}#/jobs`);
    }
    usePass(sessionStorage.getItem('replyd-portal') || '');
  }
  let session;
  try {
    session = await api('/ui/session');
  } catch (e) {
    if (portal) {
      clear(main, h('p', { class: 'error-text', id: 'portal-error' }, 'This link has expired or is not valid. Ask for a new one.'));
      return;
    }
    return signInForm(e instanceof Problem && e.status !== 401 ? e.message : '');
  }
  useCsrf(session.csrf);
  document.body.dataset.role = session.role;
  clear(who,
    h('span', { id: 'identity' }, session.portal ? `${session.tenant} (read-only)` : `${session.tenant === '*' ? 'every tenant' : session.tenant} · ${session.role}`),
    !portal && session.csrf
      ? h('button', { type: 'button', class: 'subtle small', id: 'sign-out', onclick: async () => {
        await api('/ui/session', { method: 'DELETE' }).catch(() => {});
        location.reload();
      } }, 'Sign out')
      : null);
  window.onhashchange = () => render(session);
  await render(session);
  if (session.expires_at) {
    const left = new Date(session.expires_at).getTime() - Date.now();
    if (left < 2 ** 31) setTimeout(() => toast('Your session has expired: sign in again.', 'error'), Math.max(left, 0));
  }
}

boot();
