// The client side against a real replyd: submit, get, result, cancel,
// delete, list; idempotency; Prefer: wait; auth errors; 429 retries.

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';

import { Client, JobResult, ProblemError } from '../dist/index.js';
import { KEYS, KEYS_TOML, startReplyd, suiteReplyd } from './support/replyd.mjs';

describe('jobs in open mode', { concurrency: true }, async () => {
  // Tests run at once: each that leases or lists has a queue of its own.
  const replyd = suiteReplyd('[queues.work]\n[queues.raw]\n[queues.listing]\n');
  let client;
  before(() => {
    client = new Client({ baseUrl: replyd.server.url });
  });

  test('submit answers the accepted job; get, result, delete follow it to the end', async () => {
    const job = await client.submit('demo', { seconds: 0 }, { maxAttempts: 2, ttl: 600, timeout: 30 });
    assert.equal(job.queue, 'demo');
    assert.equal(job.state, 'queued');
    assert.equal(job.max_attempts, 2);
    assert.match(job.links.events, /^\/v1\/jobs\/[^/]+\/events\?access_token=jt_/);
    const done = await client.wait(job.id, { timeout: 20 });
    assert.equal(done.state, 'succeeded');
    const got = await client.get(job.id);
    assert.equal(got.id, job.id);
    assert.equal(got.state, 'succeeded', 'a succeeded job answers 303 with its representation');
    const result = await client.result(job.id);
    assert.ok(result instanceof JobResult);
    assert.equal(result.isJson, true);
    assert.deepEqual(result.json(), { input: { seconds: 0 }, slept: 0 });
    await client.delete(job.id);
    await assert.rejects(client.get(job.id), (e) => e instanceof ProblemError && e.status === 404);
  });

  test('a raw result keeps its bytes and content type', async () => {
    const job = await client.submit('raw', { kind: 'png' });
    const [lease] = await client.lease('raw', { wait: 5 });
    assert.equal(lease.job.id, job.id);
    const bytes = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0, 255, 13, 10]);
    await client.complete(job.id, lease.lease_id, bytes);
    const result = await client.result(job.id);
    assert.equal(result.contentType, 'application/octet-stream');
    assert.deepEqual(result.bytes, bytes);
    assert.equal(result.isJson, false);
    assert.throws(() => result.json(), /not JSON/);
  });

  test('result of an unfinished job is a 409 problem naming its state', async () => {
    const job = await client.submit('work', { n: 1 });
    const error = await client.result(job.id).catch((e) => e);
    assert.ok(error instanceof ProblemError, String(error));
    assert.equal(error.status, 409);
    assert.match(error.type, /^urn:replyd:problem:/);
    assert.ok(error.title.length > 0);
    assert.match(error.detail, /queued/);
    await client.cancel(job.id);
  });

  test('cancel: a queued job is canceled at once; a finished one is 409; delete of an unfinished one is 409', async () => {
    const job = await client.submit('work', { n: 2 });
    const running = await client.submit('work', { n: 3 });
    await assert.rejects(client.delete(job.id), (e) => e instanceof ProblemError && e.status === 409);
    const canceled = await client.cancel(job.id);
    assert.equal(canceled.state, 'canceled');
    assert.equal(canceled.error?.code, 'canceled');
    await assert.rejects(client.cancel(job.id), (e) => e instanceof ProblemError && e.status === 409);
    await client.delete(job.id);
    await client.cancel(running.id);
  });

  test('unknown queue, malformed input and unknown job are problems', async () => {
    const unknownQueue = await client.submit('no-such-queue', {}).catch((e) => e);
    assert.ok(unknownQueue instanceof ProblemError);
    assert.equal(unknownQueue.status, 404);
    const bad = await client.submit('demo', {}, { maxAttempts: 0 }).catch((e) => e);
    assert.ok(bad instanceof ProblemError);
    assert.ok(bad.status === 400 || bad.status === 422, `status ${bad.status}`);
    const missing = await client.get('01a2b3c4-0000-7000-8000-000000000000').catch((e) => e);
    assert.ok(missing instanceof ProblemError);
    assert.equal(missing.status, 404);
    assert.equal(missing.problem.status, 404);
  });

  test('idempotency: the same key and body is the same job; another body is 422', async () => {
    const key = `order-${Date.now()}`;
    const a = await client.submit('work', { order: 1 }, { idempotencyKey: key });
    const b = await client.submit('work', { order: 1 }, { idempotencyKey: key });
    assert.equal(b.id, a.id);
    const conflict = await client.submit('work', { order: 2 }, { idempotencyKey: key }).catch((e) => e);
    assert.ok(conflict instanceof ProblemError);
    assert.equal(conflict.status, 422);
    // Without a key of one's own, each call gets a fresh one.
    const c = await client.submit('work', { order: 1 });
    const d = await client.submit('work', { order: 1 });
    assert.notEqual(c.id, d.id);
    for (const id of [a.id, c.id, d.id]) await client.cancel(id);
  });

  test('Prefer: wait answers the result when the job succeeds in time, else the accepted job', async () => {
    const quick = await client.submit('demo', { seconds: 0 }, { wait: 10 });
    assert.equal(quick.state, 'succeeded');
    assert.ok(quick.result instanceof JobResult);
    assert.deepEqual(quick.result.json(), { input: { seconds: 0 }, slept: 0 });
    const slow = await client.submit('work', { never: true }, { wait: 1 });
    assert.equal(slow.state, 'queued');
    assert.equal(slow.result, undefined);
    await client.cancel(slow.id);
  });

  test('list pages through jobs; listAll walks every page', async () => {
    const queue = 'listing';
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push((await client.submit(queue, { page: i })).id);
    const first = await client.list({ queue, state: 'queued', limit: 2 });
    assert.equal(first.jobs.length, 2);
    assert.ok(first.next_cursor, 'a full page has a next cursor');
    const second = await client.list({ queue, state: 'queued', limit: 2, cursor: first.next_cursor });
    assert.equal(second.jobs.length, 2);
    assert.equal(new Set([...first.jobs, ...second.jobs].map((j) => j.id)).size, 4);
    const all = [];
    for await (const job of client.listAll({ queue, state: 'queued', limit: 2 })) all.push(job.id);
    for (const id of ids) assert.ok(all.includes(id), `listAll has ${id}`);
    assert.equal(new Set(all).size, all.length, 'no job twice');
    for (const id of ids) await client.cancel(id);
  });
});

describe('auth', { concurrency: true }, async () => {
  const replyd = suiteReplyd(`${KEYS_TOML}\n[queues.work]\n`);

  test('no key and a wrong key are 401 problems', async () => {
    for (const apiKey of [undefined, 'k-wrong']) {
      const error = await new Client({ baseUrl: replyd.server.url, apiKey }).list().catch((e) => e);
      assert.ok(error instanceof ProblemError, String(error));
      assert.equal(error.status, 401);
      assert.match(error.type, /^urn:replyd:problem:/);
    }
  });

  test("another tenant's job is 404, as an unknown one; a client key may not lease (403)", async () => {
    const acme = new Client({ baseUrl: replyd.server.url, apiKey: KEYS.client });
    const globex = new Client({ baseUrl: replyd.server.url, apiKey: KEYS.otherClient });
    const job = await acme.submit('work', { secret: true });
    const error = await globex.get(job.id).catch((e) => e);
    assert.ok(error instanceof ProblemError);
    assert.equal(error.status, 404);
    const lease = await acme.lease('work').catch((e) => e);
    assert.ok(lease instanceof ProblemError);
    assert.equal(lease.status, 403);
    await acme.cancel(job.id);
  });

  test('a job token reads, follows and cancels its own job, and nothing else', async () => {
    const acme = new Client({ baseUrl: replyd.server.url, apiKey: KEYS.client });
    const job = await acme.submit('work', { token: true });
    const other = await acme.submit('work', { token: false });
    const token = new URL(job.links.self, replyd.server.url).searchParams.get('access_token');
    assert.match(token, /^jt_/);
    const holder = new Client({ baseUrl: replyd.server.url, token });
    assert.equal((await holder.get(job.id)).id, job.id);
    const first = await holder.events(job.id).next();
    assert.equal(first.value.type, 'job.accepted');
    await assert.rejects(holder.get(other.id), (e) => e instanceof ProblemError && [401, 403, 404].includes(e.status));
    await assert.rejects(holder.list(), (e) => e instanceof ProblemError && [401, 403].includes(e.status));
    assert.equal((await holder.cancel(job.id)).state, 'canceled');
    await acme.cancel(other.id);
    assert.throws(() => new Client({ baseUrl: replyd.server.url, apiKey: 'k', token }), /not both/);
  });
});

describe('limits', async () => {
  test('429 is retried after its Retry-After; without retries it is a problem carrying Retry-After', async (t) => {
    const server = await startReplyd(t, '[queues.work]\n[limits]\nsubmit_rate = 1\nsubmit_burst = 1\n');
    const patient = new Client({ baseUrl: server.url });
    const impatient = new Client({ baseUrl: server.url, maxRetries: 0 });
    await patient.submit('work', { n: 1 });
    const refused = await impatient.submit('work', { n: 2 }).catch((e) => e);
    assert.ok(refused instanceof ProblemError, String(refused));
    assert.equal(refused.status, 429);
    assert.ok(refused.retryAfter > 0, `Retry-After ${refused.retryAfter}`);
    const started = Date.now();
    const job = await patient.submit('work', { n: 3 });
    assert.equal(job.state, 'queued');
    assert.ok(Date.now() - started >= 500, 'the retry waited for the token bucket');
    const tooLong = new Client({ baseUrl: server.url, maxRetryDelay: 0.1 });
    await assert.rejects(tooLong.submit('work', { n: 4 }), (e) => e instanceof ProblemError && e.status === 429);
  });
});
