// How the console talks to replyd: the same API as any client. Signed in,
// the browser sends the session cookie (HttpOnly: this script never sees
// it) and this script adds the CSRF token to every request that changes
// something. A portal sends its pass as a Bearer token instead (it may be
// in a frame, where a SameSite=Strict cookie would not be sent).

let csrf = '';
let pass = '';

export function useCsrf(token) {
  csrf = token || '';
}

export function usePass(token) {
  pass = token || '';
}

export class Problem extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function headers(extra, method) {
  const h = new Headers(extra || {});
  if (pass) h.set('Authorization', `Bearer ${pass}`);
  if (csrf && method !== 'GET' && method !== 'HEAD') h.set('X-CSRF-Token', csrf);
  return h;
}

// A JSON call: the parsed body, or a Problem.
export async function api(path, { method = 'GET', body, raw = false } = {}) {
  const init = { method, headers: headers(body !== undefined ? { 'Content-Type': 'application/json' } : {}, method), credentials: 'same-origin' };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  if (raw) return res;
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok && res.status !== 202 && res.status !== 303) throw new Problem(res.status, data);
  return data;
}

// Server-Sent Events over fetch (so that a portal can send its pass as a
// header): calls onEvent({id, event, data}) for each, and reconnects after
// a drop with Last-Event-ID, so no event is missed or seen twice. Returns a
// function that stops it.
export function sse(path, onEvent, { onState } = {}) {
  const ctl = new AbortController();
  let last = '';
  let delay = 1000;
  let stopped = false;
  const run = async () => {
    while (!stopped) {
      try {
        const h = headers({ Accept: 'text/event-stream' }, 'GET');
        if (last) h.set('Last-Event-ID', last);
        const res = await fetch(path, { headers: h, signal: ctl.signal, credentials: 'same-origin' });
        if (res.status === 204) return onState && onState('ended');
        if (!res.ok) throw new Problem(res.status, null);
        onState && onState('live');
        delay = 1000;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        let ev = { id: '', event: 'message', data: [] };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).replace(/\r$/, '');
            buf = buf.slice(nl + 1);
            if (line === '') {
              if (ev.data.length) {
                if (ev.id) last = ev.id;
                let data = ev.data.join('\n');
                try {
                  data = JSON.parse(data);
                } catch {
                  /* not JSON */
                }
                onEvent({ id: ev.id, event: ev.event, data });
              }
              ev = { id: '', event: 'message', data: [] };
            } else if (!line.startsWith(':')) {
              const i = line.indexOf(':');
              const field = i < 0 ? line : line.slice(0, i);
              const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
              if (field === 'data') ev.data.push(val);
              else if (field === 'event') ev.event = val;
              else if (field === 'id') ev.id = val;
            }
          }
        }
        if (path.includes('/v1/jobs/')) return onState && onState('ended');
      } catch (e) {
        if (stopped || e.name === 'AbortError') return;
        if (e instanceof Problem && (e.status === 401 || e.status === 403 || e.status === 404)) {
          onState && onState('refused');
          return;
        }
      }
      onState && onState('reconnecting');
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  };
  run();
  return () => {
    stopped = true;
    ctl.abort();
  };
}
