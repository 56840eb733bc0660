// The pieces that need no server: the SSE parser, Retry-After, problems
// from bodies that are not problems, base URLs, results.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Client, JobResult, ProblemError } from '../dist/index.js';
import { normaliseBaseUrl, parseRetryAfter, problemFrom, routeUrl } from '../dist/http.js';
import { SseParser, readEvents } from '../dist/sse.js';
import { ROUTES } from '../dist/routes.js';

test('SSE: fields, multi-line data, ids that persist, retry, comments, CR/LF/CRLF split anywhere', () => {
  const stream = '\uFEFFretry: 250\r\n: keep-alive\r\n\r\nid: 7\nevent: job.progress\ndata: {"a":\ndata: 1}\n\nevent: x\ndata\r\rdata: y\nid\n\n';
  // Every split point gives the same events.
  for (let cut = 0; cut <= stream.length; cut++) {
    const parser = new SseParser();
    const frames = [...parser.push(stream.slice(0, cut)), ...parser.push(stream.slice(cut))];
    assert.deepEqual(
      frames,
      [
        { event: 'job.progress', data: '{"a":\n1}', id: '7', hasId: true },
        { event: 'x', data: '', id: '7', hasId: false },
        { event: 'message', data: 'y', id: '', hasId: true },
      ],
      `cut at ${cut}`,
    );
    assert.equal(parser.retry, 250);
  }
});

test('SSE: a body read as it arrives, and an idle stream given up', async () => {
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    start(c) {
      c.enqueue(encoder.encode('id: 1\nevent: job.accepted\nda'));
      c.enqueue(encoder.encode('ta: {}\n\n'));
      c.close();
    },
  });
  const got = [];
  for await (const frame of readEvents(body, new SseParser(), 5)) got.push(frame.event);
  assert.deepEqual(got, ['job.accepted']);
  const silent = new ReadableStream({ start() {} });
  await assert.rejects(async () => {
    for await (const _ of readEvents(silent, new SseParser(), 0.05));
  }, /nothing received/);
});

test('Retry-After: seconds, decimals, HTTP dates, nonsense', () => {
  assert.equal(parseRetryAfter('3'), 3);
  assert.equal(parseRetryAfter(' 1.5 '), 1.5);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter('soon'), undefined);
  const now = Date.parse('2026-12-07T10:00:00Z');
  assert.equal(parseRetryAfter('Mon, 07 Dec 2026 10:00:30 GMT', now), 30);
  assert.equal(parseRetryAfter('Mon, 07 Dec 2026 09:00:00 GMT', now), 0);
});

test('problems: problem+json as sent (extensions kept), and made up from other bodies', () => {
  const body = (s) => new TextEncoder().encode(s);
  const p = problemFrom(
    404,
    new Headers(),
    body('{"type":"urn:replyd:problem:not-found","title":"Not Found","status":404,"detail":"no job x","job":"x"}'),
  );
  assert.ok(p instanceof ProblemError);
  assert.equal(p.slug, 'not-found');
  assert.equal(p.problem.job, 'x');
  assert.equal(p.message, '404 Not Found: no job x');
  const proxy = problemFrom(502, new Headers({ 'retry-after': '2' }), body('<html>bad gateway</html>'));
  assert.deepEqual([proxy.type, proxy.title, proxy.status, proxy.detail, proxy.retryAfter], [
    'about:blank',
    'Bad Gateway',
    502,
    '<html>bad gateway</html>',
    2,
  ]);
});

test('base URLs keep a path prefix; path parameters are encoded', () => {
  const base = normaliseBaseUrl('https://example.com/replyd?x=1#y');
  assert.equal(base.href, 'https://example.com/replyd/');
  assert.equal(routeUrl(base, ROUTES.getJob, { params: { id: 'a/b c' } }).href, 'https://example.com/replyd/v1/jobs/a%2Fb%20c');
  assert.equal(
    routeUrl(base, ROUTES.listJobs, { query: { queue: 'q', state: undefined, limit: 2 } }).href,
    'https://example.com/replyd/v1/jobs?queue=q&limit=2',
  );
  assert.throws(() => new Client({ baseUrl: 'ftp://example.com' }), /http or https/);
  assert.throws(() => new Client({ baseUrl: 'not a url' }), /invalid replyd base URL/);
  assert.throws(() => new Client({ baseUrl: 'http://x', requestTimeout: 0 }), /requestTimeout/);
});

test('a refused connection is a ConnectionError, retried only for safe calls', async () => {
  let calls = 0;
  const client = new Client({
    baseUrl: 'http://127.0.0.1:9',
    maxRetries: 2,
    maxRetryDelay: 0.01,
    fetch: async () => {
      calls++;
      throw new TypeError('fetch failed');
    },
  });
  await assert.rejects(client.get('x'), (e) => e.name === 'ConnectionError');
  assert.equal(calls, 3, 'a GET is tried three times');
  calls = 0;
  await assert.rejects(client.cancel('x'), (e) => e.name === 'ConnectionError');
  assert.equal(calls, 1, 'a cancel is not repeated');
});

test('JobResult decodes JSON and +json, and refuses to decode other types as JSON', () => {
  const r = new JobResult('application/problem+json; charset=utf-8', new TextEncoder().encode('{"a":1}'));
  assert.equal(r.isJson, true);
  assert.deepEqual(r.json(), { a: 1 });
  assert.throws(() => new JobResult('text/plain', new Uint8Array()).json(), /not JSON/);
});
