/**
 * Verifying replyd's webhook deliveries (API.md §2), per Standard
 * Webhooks: `webhook-signature` holds one or more `v1,<base64
 * HMAC-SHA256>` over `{webhook-id}.{webhook-timestamp}.{body}` under a
 * `whsec_<base64 key>` secret. Uses `crypto.subtle`, so it runs in Node,
 * browsers, Deno, Bun and edge runtimes alike.
 *
 * @module
 */

import { WebhookVerificationError } from './errors.js';
import type { Job } from './schema.js';

/** A delivery's body, once verified. */
export interface WebhookEvent {
  /** The event: `job.succeeded`, `job.failed`, `job.canceled`, or another a webhook asked for. */
  readonly type: string;
  /** When the event happened (RFC 3339). */
  readonly timestamp: string;
  /** The job after the event, with its `result` inline when that is JSON and small. */
  readonly data: Job & { result?: unknown };
}

/** Request headers as a `Headers` or as Node's `req.headers` (lower-case names). */
export type WebhookHeaders = Headers | Readonly<Record<string, string | readonly string[] | undefined>>;

/** Options of {@link verifyWebhook}. */
export interface VerifyOptions {
  /** Seconds a delivery's timestamp may be away from now, either way (default 300). */
  tolerance?: number | undefined;
  /** What "now" is (for tests). */
  now?: Date | number | undefined;
}

/**
 * Checks that a delivery comes from replyd and is fresh, then answers its
 * parsed body. `payload` must be the body exactly as received (verify
 * before any JSON parsing); `secret` is the `whsec_…` secret, or several
 * during a rotation (any one may match). Throws a
 * {@link WebhookVerificationError} whose `reason` says why not:
 * `missing-header`, `bad-timestamp`, `timestamp-too-old`,
 * `timestamp-too-new`, `bad-secret`, `no-matching-signature`, `bad-payload`.
 *
 * Retries of one delivery carry the same `webhook-id`: drop ids you have
 * already handled.
 */
export async function verifyWebhook(
  payload: string | Uint8Array | ArrayBuffer,
  headers: WebhookHeaders,
  secret: string | readonly string[],
  options: VerifyOptions = {},
): Promise<WebhookEvent> {
  const id = header(headers, 'webhook-id');
  const timestamp = header(headers, 'webhook-timestamp');
  const signatures = header(headers, 'webhook-signature');
  if (id === undefined || timestamp === undefined || signatures === undefined) {
    const missing = [
      id === undefined && 'webhook-id',
      timestamp === undefined && 'webhook-timestamp',
      signatures === undefined && 'webhook-signature',
    ].filter(Boolean);
    throw new WebhookVerificationError('missing-header', `missing header ${missing.join(', ')}`);
  }
  if (!/^\d{1,15}$/.test(timestamp.trim())) {
    throw new WebhookVerificationError('bad-timestamp', `webhook-timestamp ${JSON.stringify(timestamp)} is not a Unix time`);
  }
  const sent = Number(timestamp.trim());
  const now = Math.floor(Number(options.now ?? Date.now()) / 1000);
  const tolerance = options.tolerance ?? 300;
  if (now - sent > tolerance) {
    throw new WebhookVerificationError('timestamp-too-old', `the delivery is ${now - sent} s old (tolerance ${tolerance} s)`);
  }
  if (sent - now > tolerance) {
    throw new WebhookVerificationError('timestamp-too-new', `the delivery is dated ${sent - now} s ahead (tolerance ${tolerance} s)`);
  }
  const body = bytesOf(payload);
  const prefix = new TextEncoder().encode(`${id}.${timestamp.trim()}.`);
  const content = new Uint8Array(prefix.length + body.length);
  content.set(prefix, 0);
  content.set(body, prefix.length);
  const offered = signatures
    .split(' ')
    .map((s) => s.trim())
    .filter((s) => s.startsWith('v1,'))
    .map((s) => decodeBase64(s.slice(3)))
    .filter((s): s is Uint8Array => s !== undefined);
  const secrets = typeof secret === 'string' ? [secret] : secret;
  if (secrets.length === 0) throw new WebhookVerificationError('bad-secret', 'no secret to verify with');
  let matched = false;
  for (const s of secrets) {
    const expected = await hmac(keyOf(s), content);
    for (const candidate of offered) {
      // Every candidate is compared, match or not, in constant time.
      if (timingSafeEqual(expected, candidate)) matched = true;
    }
  }
  if (!matched) {
    throw new WebhookVerificationError('no-matching-signature', 'no signature matches the body under the secret(s)');
  }
  let event: unknown;
  try {
    event = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
  } catch {
    throw new WebhookVerificationError('bad-payload', 'the body is not JSON');
  }
  if (!event || typeof event !== 'object' || Array.isArray(event)) {
    throw new WebhookVerificationError('bad-payload', 'the body is not a JSON object');
  }
  return event as WebhookEvent;
}

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
  const record = headers as Readonly<Record<string, string | readonly string[] | undefined>>;
  const key = Object.keys(record).find((k) => k.toLowerCase() === name);
  const value = key === undefined ? undefined : record[key];
  if (value === undefined) return undefined;
  return typeof value === 'string' ? value : value.join(' ');
}

function bytesOf(payload: string | Uint8Array | ArrayBuffer): Uint8Array {
  if (typeof payload === 'string') return new TextEncoder().encode(payload);
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  return payload;
}

/** The key bytes of a `whsec_…` secret (the prefix is optional, as the spec's libraries have it). */
function keyOf(secret: string): Uint8Array {
  const key = decodeBase64(secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret);
  if (!key || key.length === 0) {
    throw new WebhookVerificationError('bad-secret', 'a webhook secret is whsec_ followed by base64');
  }
  return key;
}

async function hmac(key: Uint8Array, content: Uint8Array): Promise<Uint8Array> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new TypeError('crypto.subtle is not available (a browser needs a secure context)');
  const cryptoKey = await subtle.importKey('raw', key as Uint8Array<ArrayBuffer>, { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  return new Uint8Array(await subtle.sign('HMAC', cryptoKey, content as Uint8Array<ArrayBuffer>));
}

function decodeBase64(text: string): Uint8Array | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 === 1) return undefined;
  try {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  } catch {
    return undefined;
  }
}

/** Whether `a` and `b` are equal, in time that depends on their length only. */
function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a[i] as number) ^ (b[i] as number);
  return diff === 0;
}
