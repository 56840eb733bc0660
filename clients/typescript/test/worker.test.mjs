// The worker against a real replyd: batch leases, progress, JSON and raw
// results, failures with and without retry, a cancel reaching the
// handler's signal, stop() draining, SIGTERM wiring, trace context.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { Client, JobStoppedError, PermanentError, ProblemError, RawResult, Worker } from '../dist/index.js';
import { gate, suiteReplyd } from './support/replyd.mjs';

const QUEUES = ['batch', 'raw', 'retry', 'permanent', 'badresult', 'cancel', 'drain', 'signal', 'trace', 'lost'];

describe('worker', { concurrency: true }, () => {
  // Tests run at once, each on a queue of its own.
  const replyd = suiteReplyd(QUEUES.map((q) => `[queues.${q}]\n`).join(''));
  let client;
  before(() => {
    client = new Client({ baseUrl: replyd.server.url });
  });

  /** A worker whose start() is awaited (and stopped) when the test ends. */
  function worker(t, queue, handler, options = {}) {
    const errors = [];
    const w = new Worker(options.client ?? client, queue, handler, {
      waitSeconds: 1,
      onError: (e) => errors.push(e),
      ...options,
    });
    const running = w.start();
    t.after(async () => {
      await w.stop();
      await running;
    });
    return { worker: w, running, errors };
  }

  test('leases in batches, runs them at once, reports progress and completes with the return value', async (t) => {
    const leaseAnswers = [];
    const counting = new Client({
      baseUrl: replyd.server.url,
      fetch: async (input, init) => {
        const res = await fetch(input, init);
        if (String(input).endsWith('/lease') && res.status === 200) {
          leaseAnswers.push((await res.clone().json()).leases.length);
        }
        return res;
      },
    });
    const jobs = [];
    for (let n = 1; n <= 3; n++) jobs.push(await client.submit('batch', { n }));
    const allStarted = gate();
    let started = 0;
    worker(
      t,
      'batch',
      async (input, ctx) => {
        if (++started === 3) allStarted.open();
        await allStarted.promise;
        await ctx.progress(50, `half of ${input.n}`);
        return { doubled: input.n * 2, attempt: ctx.attempt };
      },
      { client: counting, concurrency: 3, batch: 3 },
    );
    const done = await Promise.all(jobs.map((j) => client.wait(j.id, { timeout: 20 })));
    assert.deepEqual(
      done.map((j) => j.state),
      ['succeeded', 'succeeded', 'succeeded'],
    );
    assert.equal(leaseAnswers[0], 3, `one lease request took all three jobs (answers: ${leaseAnswers})`);
    for (const job of jobs) {
      const n = (await client.result(job.id)).json();
      assert.equal(n.attempt, 1);
      const progress = [];
      for await (const e of client.events(job.id)) if (e.type === 'job.progress') progress.push(e.job.progress);
      assert.equal(progress.length, 1);
      assert.equal(progress[0].percent, 50);
      assert.equal(progress[0].message, `half of ${n.doubled / 2}`);
    }
  });

  test('a RawResult is stored with its content type; a Uint8Array as octet-stream', async (t) => {
    const svg = await client.submit('raw', { as: 'svg' });
    const bin = await client.submit('raw', { as: 'bytes' });
    worker(t, 'raw', (input) =>
      input.as === 'svg' ? new RawResult('<svg xmlns="http://www.w3.org/2000/svg"/>', 'image/svg+xml') : new Uint8Array([1, 2, 3]),
    );
    await client.wait(svg.id, { timeout: 20 });
    await client.wait(bin.id, { timeout: 20 });
    const a = await client.result(svg.id);
    assert.equal(a.contentType, 'image/svg+xml');
    assert.equal(a.text(), '<svg xmlns="http://www.w3.org/2000/svg"/>');
    const b = await client.result(bin.id);
    assert.equal(b.contentType, 'application/octet-stream');
    assert.deepEqual([...b.bytes], [1, 2, 3]);
  });

  test('a throw fails the attempt and the server retries it; the next attempt succeeds', async (t) => {
    const job = await client.submit('retry', { flaky: true }, { maxAttempts: 3 });
    const attempts = [];
    worker(t, 'retry', (input, ctx) => {
      attempts.push(ctx.attempt);
      if (ctx.attempt === 1) throw new Error('the database blinked');
      return { ok: true };
    });
    const done = await client.wait(job.id, { timeout: 20 });
    assert.equal(done.state, 'succeeded');
    assert.equal(done.attempt, 2);
    assert.deepEqual(attempts, [1, 2]);
    const types = [];
    for await (const e of client.events(job.id)) types.push(e.type);
    assert.ok(types.includes('job.retrying'), types.join());
  });

  test('a PermanentError fails the job at once, with its code and message', async (t) => {
    const job = await client.submit('permanent', { month: '13' }, { maxAttempts: 5 });
    worker(t, 'permanent', () => {
      throw new PermanentError('no such month', { code: 'bad_input' });
    });
    const done = await client.wait(job.id, { timeout: 20 });
    assert.equal(done.state, 'failed');
    assert.equal(done.attempt, 1);
    assert.equal(done.error.code, 'bad_input');
    assert.equal(done.error.message, 'no such month');
  });

  test('a return value that is not JSON fails the job for good instead of leaving it to its lease', async (t) => {
    const job = await client.submit('badresult', {}, { maxAttempts: 3 });
    const { errors } = worker(t, 'badresult', () => ({ total: 10n }));
    const done = await client.wait(job.id, { timeout: 20 });
    assert.equal(done.state, 'failed');
    assert.equal(done.attempt, 1);
    assert.equal(done.error.code, 'result_not_json');
    assert.ok(errors.some((e) => e instanceof TypeError));
  });

  test("a cancel reaches the running handler's signal; the job ends canceled", async (t) => {
    const job = await client.submit('cancel', { long: true });
    const started = gate();
    let reason;
    worker(
      t,
      'cancel',
      async (input, ctx) => {
        started.open();
        await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve, { once: true }));
        reason = ctx.signal.reason;
        throw reason;
      },
      { leaseSeconds: 1.5 },
    );
    await started.promise;
    const asked = await client.cancel(job.id);
    assert.equal(asked.state, 'running');
    assert.equal(asked.cancel_requested, true);
    const done = await client.wait(job.id, { timeout: 20 });
    assert.equal(done.state, 'canceled');
    assert.ok(reason instanceof JobStoppedError, String(reason));
    assert.equal(reason.reason, 'canceled');
  });

  test('stop() drains: no new leases, the running job finishes and is reported before it resolves', async (t) => {
    const first = await client.submit('drain', { n: 1 });
    const second = await client.submit('drain', { n: 2 });
    const started = gate();
    const release = gate();
    const { worker: w, running } = worker(t, 'drain', async (input) => {
      started.open();
      await release.promise;
      return { n: input.n };
    });
    await started.promise;
    let stopped = false;
    const stopping = w.stop().then(() => (stopped = true));
    assert.equal(w.stopped, true);
    await Promise.resolve();
    assert.equal(stopped, false, 'stop() waits for the running job');
    release.open();
    await stopping;
    await running;
    assert.equal(w.running, 0);
    assert.equal((await client.get(first.id)).state, 'succeeded', 'reported before stop() resolved');
    assert.equal((await client.get(second.id)).state, 'queued', 'nothing leased after stop()');
    await client.cancel(second.id);
  });

  test('drainOnSignal: SIGTERM drains a worker process, which exits 0 after its running job', async (t) => {
    const first = await client.submit('signal', { n: 1 });
    const second = await client.submit('signal', { n: 2 });
    const child = spawn(process.execPath, [fileURLToPath(new URL('./fixtures/signal-worker.mjs', import.meta.url))], {
      env: { ...process.env, REPLYD_URL: replyd.server.url, QUEUE: 'signal' },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    t.after(() => child.kill('SIGKILL'));
    const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
    const lines = createInterface({ input: child.stdout });
    const said = [];
    const heard = (what) =>
      new Promise((resolve) => {
        const check = (line) => {
          said.push(line);
          if (line.startsWith(what)) resolve(line);
        };
        lines.on('line', check);
      });
    const startedLine = await heard('started');
    assert.equal(startedLine, `started ${first.id}`);
    const gotSignal = heard('sigterm');
    child.kill('SIGTERM');
    await gotSignal;
    child.stdin.write('go\n');
    assert.equal(await exited, 0, said.join('\n'));
    assert.ok(said.includes('stopped'), said.join('\n'));
    assert.equal((await client.get(first.id)).state, 'succeeded');
    assert.equal((await client.get(second.id)).state, 'queued');
    await client.cancel(second.id);
  });

  test('a lost lease aborts the handler (reason lease-lost); its outcome is not reported, the next attempt is', async (t) => {
    const job = await client.submit('lost', { n: 1 }, { maxAttempts: 3 });
    // The worker's heartbeats do not get through until the lease has
    // expired and the job was requeued; the next one is then refused (409).
    let blocked = true;
    const flaky = new Client({
      baseUrl: replyd.server.url,
      maxRetries: 0,
      fetch: (input, init) =>
        blocked && String(input).endsWith('/heartbeat') ? Promise.reject(new TypeError('network down')) : fetch(input, init),
    });
    const reasons = [];
    const { errors } = worker(
      t,
      'lost',
      async (input, ctx) => {
        if (ctx.attempt > 1) return { attempt: ctx.attempt };
        await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve, { once: true }));
        reasons.push(ctx.signal.reason);
        return { late: true };
      },
      { client: flaky, leaseSeconds: 1 },
    );
    for await (const e of client.events(job.id)) {
      if (e.type === 'job.retrying') break;
    }
    blocked = false;
    const done = await client.wait(job.id, { timeout: 20 });
    assert.equal(done.state, 'succeeded');
    assert.deepEqual((await client.result(job.id)).json(), { attempt: 2 }, 'the lost attempt reported nothing');
    assert.equal(reasons.length, 1);
    assert.ok(reasons[0] instanceof JobStoppedError);
    assert.equal(reasons[0].reason, 'lease-lost');
    assert.ok(errors.some((e) => /lease on job .* was lost/.test(e.message)), errors.map(String).join('; '));
  });

  test('an unknown queue stops the worker with the 404 problem', async () => {
    const w = new Worker(client, 'no-such-queue', () => null, { waitSeconds: 1 });
    const error = await w.start().catch((e) => e);
    assert.ok(error instanceof ProblemError, String(error));
    assert.equal(error.status, 404);
  });

  test('ctx.traceparent continues the trace submitted with the job; a job in no trace has none', async (t) => {
    const trace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const traced = await client.submit('trace', {}, { traceparent: `00-${trace}-00f067aa0ba902b7-01`, tracestate: 'acme=1' });
    const untraced = await client.submit('trace', {});
    const contexts = new Map();
    worker(t, 'trace', (input, ctx) => {
      contexts.set(ctx.job.id, { traceparent: ctx.traceparent, tracestate: ctx.tracestate });
      return null;
    });
    await client.wait(traced.id, { timeout: 20 });
    await client.wait(untraced.id, { timeout: 20 });
    // The same trace; with no [telemetry] replyd makes no spans of its
    // own, so the worker's span hangs below the submitter's.
    assert.deepEqual(contexts.get(traced.id), { traceparent: `00-${trace}-00f067aa0ba902b7-01`, tracestate: 'acme=1' });
    assert.deepEqual(contexts.get(untraced.id), { traceparent: undefined, tracestate: undefined });
  });
});
