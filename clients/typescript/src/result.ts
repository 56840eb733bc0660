/**
 * Results: what a client reads ({@link JobResult}) and what a worker
 * hands back when its result is not JSON ({@link RawResult}).
 *
 * @module
 */

import { UnexpectedResponseError } from './errors.js';

/** Whether a content type is JSON (`application/json` or `…+json`). */
export function isJsonType(contentType: string): boolean {
  const essence = (contentType.split(';')[0] ?? '').trim().toLowerCase();
  return essence === 'application/json' || essence.endsWith('+json');
}

/** A succeeded job's result: its bytes exactly as the worker gave them, with their content type. */
export class JobResult {
  /** The result's content type, as the worker gave it. */
  readonly contentType: string;
  /** The result's bytes. */
  readonly bytes: Uint8Array;
  /** The HTTP status it was served with: 200, or an upstream's own 2xx (gateway and `http` queues). */
  readonly status: number;

  constructor(contentType: string, bytes: Uint8Array, status = 200) {
    this.contentType = contentType;
    this.bytes = bytes;
    this.status = status;
  }

  /** Whether the result is JSON (`application/json` or `…+json`). */
  get isJson(): boolean {
    return isJsonType(this.contentType);
  }

  /** The result decoded as JSON. Throws when it is not JSON. */
  json<T = unknown>(): T {
    if (!this.isJson) {
      throw new UnexpectedResponseError(`the result is ${this.contentType}, not JSON: read .bytes or .text()`);
    }
    try {
      return JSON.parse(this.text()) as T;
    } catch (cause) {
      throw new UnexpectedResponseError('the result says it is JSON but does not parse', { cause });
    }
  }

  /** The result decoded as UTF-8 text. */
  text(): string {
    return new TextDecoder().decode(this.bytes);
  }
}

/**
 * A worker's result that is not JSON: bytes with their content type,
 * stored as they are and served with that type. A handler that returns a
 * bare `Uint8Array` gets `application/octet-stream`.
 */
export class RawResult {
  /** The bytes. */
  readonly body: Uint8Array;
  /** Their content type, e.g. `image/png`. */
  readonly contentType: string;

  constructor(body: Uint8Array | string, contentType: string) {
    this.body = typeof body === 'string' ? new TextEncoder().encode(body) : body;
    this.contentType = contentType;
  }
}
