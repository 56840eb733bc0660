/**
 * The one way this SDK makes requests: a route of {@link ROUTES}, its
 * parameters, a timeout, and bounded retries. Answers 429 and 503 are
 * retried after their `Retry-After` (when it is within the bound); network
 * errors and timeouts are retried for idempotent routes only. Redirects are
 * never followed: `303 See Other` is a job's status, not a hop.
 *
 * @internal
 * @module
 */

import { ConnectionError, ProblemError, ReplydError, TimeoutError, UnexpectedResponseError } from './errors.js';
import type { Route } from './routes.js';
import type { Problem } from './schema.js';

/** How requests are made: shared by a client and everything built on it. */
export interface TransportOptions {
  /** The server's base URL, with a trailing slash on its path. */
  readonly baseUrl: URL;
  readonly fetch: typeof globalThis.fetch;
  /** The `Authorization` header's value, when there are credentials. */
  readonly authorization: string | undefined;
  /** Seconds one request may take (answer and body) unless the call says otherwise. */
  readonly requestTimeout: number;
  /** How many times a request is sent again after a retryable failure. */
  readonly maxRetries: number;
  /** The longest pause (seconds) before a retry; a longer `Retry-After` is not waited for. */
  readonly maxRetryDelay: number;
}

/** What one call sends, beyond its route. */
export interface CallOptions {
  /** Values for the route's `{name}` path parameters. */
  params?: Record<string, string>;
  /** Query parameters; `undefined` and `null` ones are left out. */
  query?: Record<string, string | number | undefined | null>;
  headers?: Record<string, string>;
  /** A JSON body. */
  json?: unknown;
  /** A raw body, sent with `contentType`. */
  body?: Uint8Array;
  contentType?: string;
  /** Aborts the call; its reason is thrown as it is. */
  signal?: AbortSignal | undefined;
  /** Seconds this call may take (default: the client's `requestTimeout`). */
  timeout?: number | undefined;
  /** Whether an error answer is worth sending again (beyond 429 and 503). */
  retryOn?: (error: ProblemError) => boolean;
  /** Retries for this call (default: the client's `maxRetries`). */
  maxRetries?: number;
}

/** A whole answer: status, headers and body. */
export interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Uint8Array;
  /** `opaqueredirect` where a browser hides a redirect's answer; else `basic`, `cors`, `default`. */
  readonly type: string;
}

/** An answer whose body is still to be read (an event stream). */
export interface OpenAnswer {
  readonly response: Response;
  /** Unhooks the caller's signal; call it once the body is done with. */
  readonly release: () => void;
}

const FIRST_BACKOFF = 0.25;

/**
 * Sends `route`, retrying as the module says, and reads the whole answer.
 * An answer of 400 or more is thrown as a {@link ProblemError}.
 */
export async function call(t: TransportOptions, route: Route, opts: CallOptions = {}): Promise<Answer> {
  return withRetries(t, route, opts, async (response) => {
    const body = new Uint8Array(await response.arrayBuffer());
    return { status: response.status, headers: response.headers, body, type: response.type };
  });
}

/**
 * Sends `route` and answers once the headers are in; the timeout covers
 * only that, the caller's signal the whole body. Error answers are
 * thrown as for {@link call}.
 */
export async function open(t: TransportOptions, route: Route, opts: CallOptions = {}): Promise<OpenAnswer> {
  return withRetries(t, route, opts, async (response, release) => ({ response, release }), { keepSignal: true });
}

/** The absolute URL of `route` with its parameters. */
export function routeUrl(base: URL, route: Route, opts: Pick<CallOptions, 'params' | 'query'> = {}): URL {
  const path = route.path.replace(/\{([^}]+)\}/g, (_, name: string) => {
    const value = opts.params?.[name];
    if (value === undefined) throw new TypeError(`missing path parameter ${name} for ${route.path}`);
    if (value === '') throw new TypeError(`${name} must not be empty`);
    return encodeURIComponent(value);
  });
  const url = new URL(path.replace(/^\//, ''), base);
  for (const [key, value] of Object.entries(opts.query ?? {})) {
    if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
  }
  return url;
}

/** `baseUrl` checked (http or https) and made a base: no query or fragment, a trailing slash. */
export function normaliseBaseUrl(baseUrl: string | URL): URL {
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch (cause) {
    throw new TypeError(`invalid replyd base URL ${JSON.stringify(String(baseUrl))}`, { cause });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new TypeError(`the replyd base URL must be http or https, not ${url.protocol}`);
  }
  url.search = '';
  url.hash = '';
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

async function withRetries<T>(
  t: TransportOptions,
  route: Route,
  opts: CallOptions,
  read: (response: Response, release: () => void) => Promise<T>,
  mode: { keepSignal?: boolean } = {},
): Promise<T> {
  const url = routeUrl(t.baseUrl, route, opts);
  const headers = new Headers(opts.headers);
  if (t.authorization && !headers.has('authorization')) headers.set('authorization', t.authorization);
  let body: BodyInit | undefined;
  if (opts.json !== undefined) {
    headers.set('content-type', 'application/json');
    body = JSON.stringify(opts.json);
  } else if (opts.body !== undefined) {
    headers.set('content-type', opts.contentType ?? 'application/octet-stream');
    body = opts.body as Uint8Array<ArrayBuffer>;
  }
  const timeout = opts.timeout ?? t.requestTimeout;
  for (let attempt = 0; ; attempt++) {
    opts.signal?.throwIfAborted();
    const controller = new AbortController();
    const release = follow(opts.signal, controller);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new TimeoutError(`no answer from replyd within ${timeout} s (${route.method} ${route.path})`));
    }, timeout * 1000);
    let failure: ReplydError;
    let pause: number | undefined;
    try {
      const response = await t.fetch(url, {
        method: route.method,
        headers,
        body,
        redirect: 'manual',
        signal: controller.signal,
        cache: 'no-store',
      });
      if (response.status < 400) {
        if (mode.keepSignal) clearTimeout(timer);
        const value = await read(response, release);
        if (!mode.keepSignal) {
          clearTimeout(timer);
          release();
        }
        return value;
      }
      const problem = problemFrom(response.status, response.headers, new Uint8Array(await response.arrayBuffer()));
      clearTimeout(timer);
      release();
      const refused = problem.status === 429 || problem.status === 503;
      if (!refused && !opts.retryOn?.(problem)) throw problem;
      failure = problem;
      pause = problem.retryAfter;
    } catch (error) {
      clearTimeout(timer);
      release();
      if (opts.signal?.aborted) throw opts.signal.reason;
      if (error instanceof ProblemError) throw error;
      if (timedOut) {
        failure = controller.signal.reason as TimeoutError;
      } else if (error instanceof ReplydError) {
        throw error;
      } else {
        failure = new ConnectionError(`${route.method} ${url.pathname}: ${describe(error)}`, error);
      }
      if (!route.idempotent) throw failure;
    }
    if (attempt >= (opts.maxRetries ?? t.maxRetries)) throw failure;
    // A Retry-After past the bound is not waited for: asking sooner would be refused again.
    if (pause !== undefined && pause > t.maxRetryDelay) throw failure;
    const backoff = FIRST_BACKOFF * 2 ** attempt * (0.8 + Math.random() * 0.4);
    await sleep(pause ?? Math.min(t.maxRetryDelay, backoff), opts.signal);
  }
}

/** Aborts `controller` when `signal` aborts; answers the function that stops that. */
function follow(signal: AbortSignal | undefined, controller: AbortController): () => void {
  if (!signal) return () => {};
  const onAbort = () => controller.abort(signal.reason);
  if (signal.aborted) onAbort();
  signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    const why = cause instanceof Error ? `: ${cause.message}` : '';
    return `${error.message}${why}`;
  }
  return String(error);
}

/**
 * The {@link ProblemError} for an error answer: its problem+json, or one
 * made from the status and the body's text when the body is not a problem.
 */
export function problemFrom(status: number, headers: Headers, body: Uint8Array): ProblemError {
  const retryAfter = parseRetryAfter(headers.get('retry-after'));
  const text = new TextDecoder().decode(body);
  const fallbackTitle = STATUS_TITLES[status] ?? (status >= 500 ? 'Server Error' : 'Client Error');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
    const p = parsed as Record<string, unknown>;
    if ('type' in p || 'title' in p || 'detail' in p) {
      const problem: Problem & Record<string, unknown> = {
        ...p,
        type: typeof p.type === 'string' ? p.type : 'about:blank',
        title: typeof p.title === 'string' ? p.title : fallbackTitle,
        // The answer's status is authoritative (RFC 9457 §3.1.2).
        status,
        detail: typeof p.detail === 'string' ? p.detail : '',
      };
      return new ProblemError(problem, retryAfter);
    }
  }
  return new ProblemError({ type: 'about:blank', title: fallbackTitle, status, detail: text.trim().slice(0, 2000) }, retryAfter);
}

const STATUS_TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  410: 'Gone',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/**
 * `Retry-After` (RFC 9110 §10.2.3) in seconds: delay-seconds (a decimal
 * is tolerated) or an HTTP-date, turned into the time left until it.
 */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value == null) return undefined;
  const trimmed = value.trim();
  if (trimmed === '') return undefined;
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed);
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, (at - now) / 1000);
}

/** Waits `seconds`, or throws the signal's reason when it aborts first. */
export function sleep(seconds: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, Math.max(0, seconds * 1000));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Decodes a success answer's JSON body. */
export function json<T>(answer: Answer): T {
  const text = new TextDecoder().decode(answer.body);
  try {
    return JSON.parse(text) as T;
  } catch (cause) {
    throw new UnexpectedResponseError(`replyd's ${answer.status} answer is not JSON: ${text.slice(0, 200)}`, {
      status: answer.status,
      cause,
    });
  }
}
