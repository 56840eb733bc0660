// Following jobs against a real replyd: typed events and exact resume,
// wait over SSE, over polling (chosen, and as the fallback when the
// events endpoint is not served), timeouts, and a stream that resumes
// across a restart of the server mid-job.

import assert from 'node:assert/strict';
import { createServer, request } from 'node:http';
import { before, describe, test } from 'node:test';

import { Client, ProblemError, TimeoutError } from '../dist/index.js';
import { startReplyd, suiteReplyd } from './support/replyd.mjs';

describe('events and wait', { concurrency: true }, () => {
  const replyd = suiteReplyd('[queues.idle]\n[queues.stepped]\n');
  let client;
  before(() => {
    client = new Client({ baseUrl: replyd.server.url });
  });

  test('events: the history then live, typed, in id order, ending after the terminal one; `after` resumes exactly', async () => {
    const job = await client.submit('demo', { seconds: 1 });
    const events = [];
    for await (const event of client.events(job.id)) events.push(event);
    const types = events.map((e) => e.type);
    assert.equal(types[0], 'job.accepted');
    assert.ok(types.includes('job.started'), types.join());
    assert.equal(types.at(-1), 'job.succeeded');
    assert.equal(events.at(-1).job.state, 'succeeded');
    const ids = events.map((e) => BigInt(e.id));
    for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1], 'ids increase');
    const tail = [];
    for await (const event of client.events(job.id, { after: events[0].id })) tail.push(event);
    assert.deepEqual(
      tail.map((e) => e.id),
      events.slice(1).map((e) => e.id),
    );
    const none = [];
    for await (const event of client.events(job.id, { after: events.at(-1).id })) none.push(event);
    assert.deepEqual(none, [], 'resumed at the terminal event: nothing (204)');
    await assert.rejects(async () => {
      for await (const _ of client.events('01a2b3c4-0000-7000-8000-000000000000'));
    }, (e) => e instanceof ProblemError && e.status === 404);
  });

  test('wait over SSE calls back with each change and answers the finished job', async () => {
    const job = await client.submit('demo', { seconds: 2 });
    const updates = [];
    const done = await client.wait(job.id, { timeout: 20, onUpdate: (j, e) => updates.push([e?.type, j.state, j.progress]) });
    assert.equal(done.state, 'succeeded');
    assert.equal(updates[0][0], 'job.accepted');
    assert.ok(updates.some(([type, , p]) => type === 'job.progress' && p && p.percent > 0), JSON.stringify(updates));
    assert.equal(updates.at(-1)[1], 'succeeded');
    const boom = new Error('the callback broke');
    for (const transport of ['events', 'polling', undefined]) {
      const thrown = await client.wait(job.id, { transport, onUpdate: () => { throw boom; } }).catch((e) => e);
      assert.equal(thrown, boom, `the callback's error comes out as it is (${transport})`);
    }
  });

  test('wait over polling (chosen) long polls until the end', async () => {
    const job = await client.submit('demo', { seconds: 1 });
    const states = [];
    const done = await client.wait(job.id, { transport: 'polling', timeout: 20, onUpdate: (j, e) => states.push([j.state, e]) });
    assert.equal(done.state, 'succeeded');
    assert.equal(states.at(-1)[0], 'succeeded');
    assert.ok(states.every(([, e]) => e === undefined), 'polling has no events');
  });

  test('wait times out with the job as last seen; a signal aborts it with its reason', async () => {
    const job = await client.submit('idle', { forever: true });
    const started = Date.now();
    const error = await client.wait(job.id, { timeout: 0.5 }).catch((e) => e);
    assert.ok(error instanceof TimeoutError, String(error));
    assert.equal(error.job?.id, job.id);
    assert.equal(error.job?.state, 'queued');
    assert.ok(Date.now() - started < 5000);
    const polled = await client.wait(job.id, { timeout: 0.5, transport: 'polling' }).catch((e) => e);
    assert.ok(polled instanceof TimeoutError, String(polled));
    const reason = new Error('the page was closed');
    const aborted = await client.wait(job.id, { signal: AbortSignal.abort(reason) }).catch((e) => e);
    assert.equal(aborted, reason);
    const controller = new AbortController();
    const pending = client.wait(job.id, { signal: controller.signal });
    setTimeout(() => controller.abort(reason), 100);
    assert.equal(await pending.catch((e) => e), reason);
    await client.cancel(job.id);
  });

  test('the polling fallback: an events endpoint that is not served; Retry-After paces polls the server did not hold', async (t) => {
    // An intermediary in front of replyd that serves no event streams
    // (501) and drops Prefer, so that no poll is held.
    const polls = [];
    const proxy = await startProxy(t, replyd.server.port, (req) => {
      if (req.url.includes('/events')) return { status: 501 };
      if (req.method === 'GET') polls.push({ at: Date.now(), inm: req.headers['if-none-match'] });
      delete req.headers.prefer;
      return undefined;
    }, (req, status) => {
      if (req.method === 'GET') polls.find((p) => p.status === undefined).status = status;
    });
    const viaProxy = new Client({ baseUrl: proxy });
    const job = await viaProxy.submit('demo', { seconds: 2 });
    const done = await viaProxy.wait(job.id, { timeout: 30 });
    assert.equal(done.state, 'succeeded');
    assert.ok(polls.length >= 2, `polled ${polls.length} times`);
    assert.ok(polls.slice(1).every((p) => p.inm), 'later polls are conditional (If-None-Match)');
    // replyd says Retry-After: 1 for a young job: after a 304 it did not
    // hold, the next poll waits that long.
    assert.ok(polls.some((p) => p.status === 304), JSON.stringify(polls));
    assert.ok(polls.length <= 10, `${polls.length} polls for a 2 s job`);
    for (let i = 1; i < polls.length; i++) {
      if (polls[i - 1].status !== 304) continue;
      const gap = polls[i].at - polls[i - 1].at;
      assert.ok(gap >= 900, `poll ${i} came ${gap} ms after an unheld 304`);
    }
    const sse = await new Client({ baseUrl: proxy }).wait(job.id, { transport: 'events' }).catch((e) => e);
    assert.ok(sse instanceof ProblemError && sse.status === 501, 'events only: the failure is the error');
  });
});

describe('resume across a restart', () => {
  test('an event stream resumes after the server restarts on the same port and database, mid-job, missing and repeating nothing', async (t) => {
    const server = await startReplyd(t, '[queues.work]\n[streams]\nretry_ms = 250\n');
    const client = new Client({ baseUrl: server.url });
    const job = await client.submit('work', { pages: 2 });
    const [lease] = await client.lease('work', { wait: 5, lease: 60 });
    await client.progress(job.id, lease.lease_id, 10, 'page 1');

    const seen = [];
    const reconnects = [];
    let sawFirstPage;
    const firstPage = new Promise((resolve) => (sawFirstPage = resolve));
    const following = (async () => {
      for await (const event of client.events(job.id, { onReconnect: (last) => reconnects.push({ at: Date.now(), last }) })) {
        seen.push(event);
        if (event.job.progress?.percent === 10) sawFirstPage();
      }
    })();
    await firstPage;
    const restartAt = Date.now();
    await server.restart();
    await client.progress(job.id, lease.lease_id, 60, 'page 2');
    await client.complete(job.id, lease.lease_id, { pages: 2 });
    await following;

    assert.ok(reconnects.length >= 1, 'the stream was resumed');
    assert.equal(reconnects[0].last, seen.find((e) => e.job.progress?.percent === 10).id, 'resumed after the last event seen');
    assert.ok(reconnects[0].at - restartAt < 950, `first reconnect ${reconnects[0].at - restartAt} ms after the restart began: retry: 250 honoured`);
    const history = [];
    for await (const event of client.events(job.id)) history.push(event);
    assert.deepEqual(
      seen.map((e) => [e.id, e.type]),
      history.map((e) => [e.id, e.type]),
      'the events seen across the restart are the whole history, each once',
    );
    assert.ok(seen.some((e) => e.job.progress?.message === 'page 2'), 'saw the progress made after the restart');
    assert.equal(seen.at(-1).type, 'job.succeeded');
  });
});

/**
 * A forwarding proxy on 127.0.0.1 in front of replyd. `rule(req)` may
 * answer itself ({ status }) or edit the request and let it through;
 * `onAnswer(req, status)` hears replyd's answer to each forwarded one.
 */
async function startProxy(t, port, rule, onAnswer = () => {}) {
  const proxy = createServer((req, res) => {
    const own = rule(req);
    if (own) {
      res.writeHead(own.status, { 'content-type': 'application/problem+json' });
      res.end(JSON.stringify({ type: 'about:blank', title: 'Not Implemented', status: own.status, detail: 'no streams here' }));
      return;
    }
    const upstream = request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      onAnswer(req, answer.statusCode);
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => proxy.close(resolve)));
  t.after(() => proxy.closeAllConnections());
  return `http://127.0.0.1:${proxy.address().port}`;
}
