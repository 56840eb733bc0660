/**
 * {@link Client}: one replyd server, with an API key or a job token. The
 * client side of jobs (API.md §1 and §3) and the worker side's calls
 * (§5), on which {@link Worker} is built.
 *
 * @module
 */

import { UnexpectedResponseError } from './errors.js';
import { type TransportOptions, call, json, normaliseBaseUrl } from './http.js';
import { type FollowOptions, type StreamEvent, followEvents } from './events.js';
import { JobResult, RawResult } from './result.js';
import { ROUTES } from './routes.js';
import type {
  FailReason,
  Job,
  JobList,
  JobState,
  Lease,
  LeaseBatch,
  LeaseStatus,
  SubmitRequest,
  WebhookSpec,
} from './schema.js';
import { type WaitOptions, getStatus, waitForJob } from './wait.js';

/** How to reach replyd. */
export interface ClientOptions {
  /** The server, e.g. `http://127.0.0.1:8202` (a path prefix is kept: `https://example.com/replyd/`). */
  baseUrl: string | URL;
  /** An API key, sent as `Authorization: Bearer`. Never put in a URL. */
  apiKey?: string | undefined;
  /**
   * A job token (`jt_…`, from a job's links) instead of a key: it reads,
   * follows and cancels that one job.
   */
  token?: string | undefined;
  /** The `fetch` to use (default: the platform's). */
  fetch?: typeof globalThis.fetch | undefined;
  /** Seconds one request may take, answer and body (default 30). Held requests get their hold on top. */
  requestTimeout?: number | undefined;
  /** Times a refused (429, 503) or, for safe calls, failed request is sent again (default 3). */
  maxRetries?: number | undefined;
  /** The longest pause before a retry, in seconds (default 30): a longer `Retry-After` is not waited for. */
  maxRetryDelay?: number | undefined;
}

/** Options of {@link Client.submit}. Durations are in seconds, as on the wire. */
export interface SubmitOptions {
  /** Where the job's terminal event is POSTed (a URL, or the whole spec with `events`, `jwt`). */
  webhook?: string | WebhookSpec | undefined;
  /** Attempts before the job fails (the queue's default otherwise). */
  maxAttempts?: number | undefined;
  /** Seconds one attempt may take. */
  timeout?: number | undefined;
  /** Seconds the finished job is kept. */
  ttl?: number | undefined;
  /**
   * `Idempotency-Key`: a repeat with the same key and body answers the same
   * job. Default: a fresh `crypto.randomUUID()`, which makes this call's
   * own retries safe; pass your own to make a resubmission after a crash
   * safe too.
   */
  idempotencyKey?: string | undefined;
  /**
   * `Prefer: wait=N` (1 to 60): if the job succeeds within N seconds the
   * answer carries its result ({@link SubmittedJob.result}).
   */
  wait?: number | undefined;
  /** W3C trace context of the caller (`traceparent` header), continued by the job's workers. */
  traceparent?: string | undefined;
  /** W3C `tracestate`, sent with `traceparent`. */
  tracestate?: string | undefined;
  /** Aborts the call; the promise rejects with the signal's reason. */
  signal?: AbortSignal | undefined;
}

/** The job {@link Client.submit} made. */
export interface SubmittedJob extends Job {
  /** With `wait`: the result, when the job succeeded within the wait. */
  readonly result?: JobResult;
}

/** Options of {@link Client.list}. */
export interface ListOptions {
  /** Only this queue's jobs. */
  queue?: string | undefined;
  /** Only jobs in this state. */
  state?: JobState | undefined;
  /** At most this many per page (1 to 1000, server default 50). */
  limit?: number | undefined;
  /** The `next_cursor` of the previous page. */
  cursor?: string | undefined;
  signal?: AbortSignal | undefined;
}

/** Options of {@link Client.lease}. */
export interface LeaseOptions {
  /** Jobs at most (1 to 100). */
  batch?: number | undefined;
  /** Seconds the lease lasts before a heartbeat must renew it. */
  lease?: number | undefined;
  /** Seconds to wait for a job when none is ready (long poll, at most 60). */
  wait?: number | undefined;
  /** A name for the worker, shown in the server's logs. */
  worker?: string | undefined;
  signal?: AbortSignal | undefined;
}

/**
 * A leased job: the job with its input, the lease's id and expiry, and the
 * W3C trace context the worker should continue (`traceparent`,
 * `tracestate`) when the job is in a trace.
 */
export type LeasedJob = Lease;

/** Seconds a held request (`Prefer: wait`, a lease's `wait`) may take beyond its hold. */
const HOLD_GRACE = 30;

/**
 * A connection to one replyd server. Holds no connections or timers of
 * its own: make one per server and share it.
 *
 * ```ts
 * const client = new Client({ baseUrl: 'http://127.0.0.1:8202', apiKey: process.env.REPLYD_API_KEY });
 * const job = await client.submit('report', { month: '2026-11' });
 * const done = await client.wait(job.id, { timeout: 300 });
 * if (done.state === 'succeeded') console.log((await client.result(done.id)).json());
 * ```
 */
export class Client {
  /** How requests are made. A private field: the credentials in it never show in a log of the client. */
  readonly #transport: TransportOptions;

  constructor(options: ClientOptions) {
    if (options.apiKey && options.token) throw new TypeError('give an apiKey or a job token, not both');
    const secret = options.apiKey || options.token;
    if (typeof (options.fetch ?? globalThis.fetch) !== 'function') throw new TypeError('no fetch here: pass options.fetch');
    this.#transport = {
      baseUrl: normaliseBaseUrl(options.baseUrl),
      // Called unbound, a browser's fetch throws "Illegal invocation".
      fetch: options.fetch ?? ((input, init) => globalThis.fetch(input, init)),
      authorization: secret ? `Bearer ${secret}` : undefined,
      requestTimeout: positive(options.requestTimeout, 30, 'requestTimeout'),
      maxRetries: Math.floor(nonNegative(options.maxRetries, 3, 'maxRetries')),
      maxRetryDelay: nonNegative(options.maxRetryDelay, 30, 'maxRetryDelay'),
    };
  }

  /** The server's base URL. */
  get baseUrl(): URL {
    return new URL(this.#transport.baseUrl);
  }

  /**
   * `POST /v1/jobs`: submits a job to `queue` with `input` (any JSON) and
   * answers it as accepted (202; the job is durable). With `wait`, a job
   * that succeeded within it comes back with its `result`.
   * Throws a `ProblemError`: 404 unknown queue, 400 bad input, 413
   * too large, 422 the idempotency key was used with another body.
   */
  async submit(queue: string, input: unknown, options: SubmitOptions = {}): Promise<SubmittedJob> {
    const body: SubmitRequest = { queue, input: input === undefined ? null : input };
    if (options.webhook !== undefined) {
      body.webhook = typeof options.webhook === 'string' ? { url: options.webhook } : options.webhook;
    }
    if (options.maxAttempts !== undefined) body.max_attempts = options.maxAttempts;
    if (options.timeout !== undefined) body.timeout = options.timeout;
    if (options.ttl !== undefined) body.ttl = options.ttl;
    const headers: Record<string, string> = {
      'idempotency-key': options.idempotencyKey ?? globalThis.crypto.randomUUID(),
    };
    if (options.traceparent) headers.traceparent = options.traceparent;
    if (options.tracestate) headers.tracestate = options.tracestate;
    let hold: number | undefined;
    if (options.wait !== undefined) {
      hold = Math.min(60, Math.max(0, Math.floor(options.wait)));
      headers.prefer = `wait=${hold}`;
    }
    const answer = await call(this.#transport, ROUTES.submit, {
      json: body,
      headers,
      signal: options.signal,
      timeout: hold === undefined ? undefined : hold + this.#transport.requestTimeout,
      retryOn: (e) => e.status === 409 && e.slug === 'idempotency-key-in-flight',
    });
    if (answer.status === 202) return json<Job>(answer);
    if (answer.status >= 200 && answer.status < 300) {
      // The result itself, named by Content-Location.
      const location = answer.headers.get('content-location') ?? '';
      const id = /\/v1\/jobs\/([^/?#]+)/.exec(location)?.[1];
      if (!id) {
        throw new UnexpectedResponseError(`submit answered ${answer.status} without a Content-Location naming the job`, {
          status: answer.status,
        });
      }
      const type = answer.headers.get('content-type') ?? 'application/octet-stream';
      const result = new JobResult(type, answer.body, answer.status);
      const job = await this.get(decodeURIComponent(id), { signal: options.signal });
      return { ...job, result };
    }
    throw new UnexpectedResponseError(`submit answered ${answer.status}`, { status: answer.status });
  }

  /** `GET /v1/jobs/{id}`: the job, whatever its state. 404 unknown (or another tenant's), 410 expired. */
  async get(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<Job> {
    const status = await getStatus(this.#transport, id, { signal: options.signal });
    if (!status.job) throw new UnexpectedResponseError(`GET of job ${id} answered 304 unasked`, { status: 304 });
    return status.job;
  }

  /**
   * `GET /v1/jobs/{id}/result`: a succeeded job's result. 409 when the job
   * has not succeeded (the problem names its state), 410 expired.
   */
  async result(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<JobResult> {
    const answer = await call(this.#transport, ROUTES.result, { params: { id }, signal: options.signal });
    if (answer.status < 200 || answer.status >= 300) {
      throw new UnexpectedResponseError(`result answered ${answer.status}`, { status: answer.status });
    }
    return new JobResult(answer.headers.get('content-type') ?? 'application/octet-stream', answer.body, answer.status);
  }

  /**
   * `POST /v1/jobs/{id}/cancel`: a queued job is canceled at once; a
   * running job's worker is asked to stop (the job then shows
   * `cancel_requested` until it ends `canceled`). 409 when it had finished.
   */
  async cancel(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<Job> {
    const answer = await call(this.#transport, ROUTES.cancel, { params: { id }, signal: options.signal });
    return json<Job>(answer);
  }

  /** `DELETE /v1/jobs/{id}`: removes a finished job and its result. 409 when it has not finished. */
  async delete(id: string, options: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    await call(this.#transport, ROUTES.deleteJob, { params: { id }, signal: options.signal });
  }

  /**
   * `GET /v1/jobs`: one page of the caller's jobs, newest first. A page may
   * come back short (even empty) with a `next_cursor` to go on with:
   * {@link listAll} walks every page.
   */
  async list(options: ListOptions = {}): Promise<JobList> {
    const answer = await call(this.#transport, ROUTES.listJobs, {
      query: { queue: options.queue, state: options.state, limit: options.limit, cursor: options.cursor },
      signal: options.signal,
    });
    return json<JobList>(answer);
  }

  /** Every job that {@link list} would show, page after page, as an async iterator. */
  async *listAll(options: Omit<ListOptions, 'cursor'> = {}): AsyncGenerator<Job, void, undefined> {
    let cursor: string | undefined;
    do {
      const page = await this.list({ ...options, cursor });
      yield* page.jobs;
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
  }

  /**
   * Waits until the job is finished (succeeded, failed or canceled) and
   * answers it. Follows the job's event stream, resuming exactly where it
   * was (`Last-Event-ID`) when the connection drops; where the server does
   * not stream, or the stream keeps failing, long polls
   * (`If-None-Match` + `Prefer: wait`), pausing as `Retry-After` says when
   * a poll is not held. Throws a {@link TimeoutError} (with the job as
   * last seen) once `timeout` seconds have passed.
   */
  wait(id: string, options: WaitOptions = {}): Promise<Job> {
    return waitForJob(this.#transport, id, options);
  }

  /**
   * The job's events as an async iterator: its history (after `after`,
   * an event id, when given), then live events, ending after the terminal
   * one. Dropped connections are resumed with `Last-Event-ID`: no event
   * is skipped or repeated. `break` out of the loop to stop following.
   *
   * ```ts
   * for await (const event of client.events(job.id)) {
   *   if (event.type === 'job.progress') console.log(event.job.progress);
   * }
   * ```
   */
  events(id: string, options: Omit<FollowOptions, 'maxFailures'> = {}): AsyncGenerator<StreamEvent, void, undefined> {
    return followEvents(this.#transport, id, options);
  }

  /**
   * `POST /v1/queues/{queue}/lease` with a batch size: up to `batch` jobs
   * (none when nothing came within `wait`). Each comes with its input
   * (`job.input`) and its `lease_id`. {@link Worker} is the loop built on it.
   */
  async lease(queue: string, options: LeaseOptions = {}): Promise<LeasedJob[]> {
    const wait = options.wait ?? 0;
    const answer = await call(this.#transport, ROUTES.lease, {
      params: { queue },
      json: { batch: options.batch ?? 1, lease: options.lease, wait, worker: options.worker },
      signal: options.signal,
      timeout: wait + HOLD_GRACE,
    });
    if (answer.status === 204) return [];
    return json<LeaseBatch>(answer).leases as LeasedJob[];
  }

  /** `POST /v1/jobs/{id}/heartbeat`: renews the lease (by `lease` seconds, or its own length); says whether a cancel was asked. 409: the lease is lost. */
  async heartbeat(id: string, leaseId: string, options: { lease?: number; signal?: AbortSignal } = {}): Promise<LeaseStatus> {
    const answer = await call(this.#transport, ROUTES.heartbeat, {
      params: { id },
      json: { lease_id: leaseId, lease: options.lease },
      signal: options.signal,
    });
    return json<LeaseStatus>(answer);
  }

  /** `POST /v1/jobs/{id}/progress`: how far the job has come (also renews the lease). */
  async progress(
    id: string,
    leaseId: string,
    percent: number | null | undefined,
    message?: string | null,
    options: { signal?: AbortSignal } = {},
  ): Promise<LeaseStatus> {
    const answer = await call(this.#transport, ROUTES.progress, {
      params: { id },
      json: { lease_id: leaseId, percent: percent ?? null, message: message ?? null },
      signal: options.signal,
    });
    return json<LeaseStatus>(answer);
  }

  /**
   * `POST /v1/jobs/{id}/complete`: the job succeeded with `result`, JSON,
   * or a {@link RawResult} (bytes with their content type; a bare
   * `Uint8Array` is `application/octet-stream`). 409: the lease is lost,
   * or the job was canceled.
   */
  async complete(id: string, leaseId: string, result: unknown, options: { signal?: AbortSignal } = {}): Promise<Job> {
    const raw = result instanceof Uint8Array ? new RawResult(result, 'application/octet-stream') : result;
    const answer =
      raw instanceof RawResult
        ? await call(this.#transport, ROUTES.complete, {
            params: { id },
            headers: { 'replyd-lease-id': leaseId },
            body: raw.body,
            contentType: raw.contentType,
            signal: options.signal,
          })
        : await call(this.#transport, ROUTES.complete, {
            params: { id },
            json: { lease_id: leaseId, result: raw === undefined ? null : raw },
            signal: options.signal,
          });
    return json<Job>(answer);
  }

  /**
   * `POST /v1/jobs/{id}/fail`: the attempt failed. With `retry`, the job is
   * tried again (after a backoff) while attempts remain.
   */
  async fail(
    id: string,
    leaseId: string,
    error: FailReason,
    options: { retry?: boolean; signal?: AbortSignal } = {},
  ): Promise<void> {
    await call(this.#transport, ROUTES.fail, {
      params: { id },
      json: { lease_id: leaseId, error, retry: options.retry ?? false },
      signal: options.signal,
    });
  }
}

function nonNegative(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`${name} must be a non-negative number`);
  return value;
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number`);
  return value;
}
