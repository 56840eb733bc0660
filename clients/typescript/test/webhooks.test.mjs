// verifyWebhook: the Standard Webhooks example, refusals (tampered,
// wrong secret, stale, missing headers), and real deliveries from replyd
// to a receiver on 127.0.0.1, signed with two secrets during a rotation.

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { describe, test } from 'node:test';

import { Client, WebhookVerificationError, verifyWebhook } from '../dist/index.js';
import { startReplyd } from './support/replyd.mjs';

const secret = () => `whsec_${randomBytes(32).toString('base64')}`;

/** Signs like a Standard Webhooks sender (node:crypto, independent of the SDK). */
function sign(key, id, timestamp, body) {
  const mac = createHmac('sha256', Buffer.from(key.replace(/^whsec_/, ''), 'base64'));
  return `v1,${mac.update(`${id}.${timestamp}.${body}`).digest('base64')}`;
}

const refused = (reason) => (e) => e instanceof WebhookVerificationError && e.reason === reason;

describe('verifyWebhook', () => {
  test("the Standard Webhooks specification's example verifies", async () => {
    const event = await verifyWebhook(
      '{"test": 2432232314}',
      {
        'webhook-id': 'msg_p5jXN8AQM9LWM0D4loKWxJek',
        'webhook-timestamp': '1614265330',
        'webhook-signature': 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
      },
      'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
      { now: 1614265330 * 1000 },
    );
    assert.deepEqual(event, { test: 2432232314 });
  });

  test('good, tampered, wrong secret, stale, future, missing headers, several signatures', async () => {
    const key = secret();
    const id = 'msg_1';
    const now = Math.floor(Date.now() / 1000);
    const body = JSON.stringify({ type: 'job.succeeded', timestamp: new Date().toISOString(), data: { id: 'j1' } });
    const headers = (ts, sig) => ({ 'webhook-id': id, 'webhook-timestamp': String(ts), 'webhook-signature': sig });
    const good = headers(now, sign(key, id, now, body));
    assert.equal((await verifyWebhook(body, good, key)).type, 'job.succeeded');
    assert.equal((await verifyWebhook(new TextEncoder().encode(body), new Headers(good), key)).data.id, 'j1');
    await assert.rejects(verifyWebhook(body.replace('j1', 'j2'), good, key), refused('no-matching-signature'));
    await assert.rejects(verifyWebhook(body, good, secret()), refused('no-matching-signature'));
    const stale = now - 301;
    await assert.rejects(verifyWebhook(body, headers(stale, sign(key, id, stale, body)), key), refused('timestamp-too-old'));
    const ahead = now + 301;
    await assert.rejects(verifyWebhook(body, headers(ahead, sign(key, id, ahead, body)), key), refused('timestamp-too-new'));
    // A signature for another timestamp does not pass with this one.
    await assert.rejects(verifyWebhook(body, headers(now, sign(key, id, now - 1, body)), key), refused('no-matching-signature'));
    await assert.rejects(verifyWebhook(body, { 'webhook-id': id }, key), refused('missing-header'));
    await assert.rejects(verifyWebhook(body, headers('soon', 'v1,AAAA'), key), refused('bad-timestamp'));
    await assert.rejects(verifyWebhook(body, good, 'whsec_!!'), refused('bad-secret'));
    const other = secret();
    const both = headers(now, `v1a,bm90IGVkMjU1MTk= ${sign(other, id, now, body)} ${sign(key, id, now, body)}`);
    assert.equal((await verifyWebhook(body, both, key)).type, 'job.succeeded', 'any of several signatures');
    assert.equal((await verifyWebhook(body, both, [secret(), other])).type, 'job.succeeded', 'any of several secrets');
    await assert.rejects(verifyWebhook('not json', headers(now, sign(key, id, now, 'not json')), key), refused('bad-payload'));
  });

  test("replyd's own deliveries verify, under the current and the previous secret, and fail tampered or under another", async (t) => {
    const current = secret();
    const previous = secret();
    const deliveries = [];
    let delivered;
    const arrived = new Promise((resolve) => (delivered = resolve));
    const receiver = createServer((req, res) => {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        deliveries.push({ headers: req.headers, body: Buffer.concat(chunks) });
        res.writeHead(204).end();
        delivered();
      });
    });
    await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise((resolve) => receiver.close(resolve)));
    const server = await startReplyd(
      t,
      `[webhooks]\nsecret = "${current}"\nprevious_secrets = ["${previous}"]\nallow_networks = ["127.0.0.0/8"]\n`,
    );
    const client = new Client({ baseUrl: server.url });
    const job = await client.submit('demo', { seconds: 0 }, { webhook: `http://127.0.0.1:${receiver.address().port}/hook` });
    await arrived;
    const [{ headers, body }] = deliveries;
    assert.match(headers['webhook-signature'], /^v1,\S+ v1,\S+$/, 'two signatures during the rotation');
    const event = await verifyWebhook(body, headers, current);
    assert.equal(event.type, 'job.succeeded');
    assert.equal(event.data.id, job.id);
    assert.equal(event.data.state, 'succeeded');
    assert.deepEqual(event.data.result, { input: { seconds: 0 }, slept: 0 }, 'a small JSON result is inline');
    assert.equal((await verifyWebhook(new Uint8Array(body), headers, previous)).data.id, job.id);
    await assert.rejects(verifyWebhook(body, headers, secret()), refused('no-matching-signature'));
    const tampered = Buffer.from(body.toString().replace('succeeded', 'failed!!!'));
    await assert.rejects(verifyWebhook(tampered, headers, current), refused('no-matching-signature'));
    const later = (Number(headers['webhook-timestamp']) + 301) * 1000;
    await assert.rejects(verifyWebhook(body, headers, current, { now: later }), refused('timestamp-too-old'));
  });
});
