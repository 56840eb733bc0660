/**
 * Reading a job's status (`GET /v1/jobs/{id}`: 202 pending, 303
 * succeeded, 200 failed or canceled, 304 unchanged) and waiting until it
 * finishes: its event stream first, long polling where the server does
 * not stream or the stream keeps failing.
 *
 * @module
 */

import { ProblemError, TimeoutError, UnexpectedResponseError } from './errors.js';
import { type TransportOptions, call, json, parseRetryAfter, sleep } from './http.js';
import { type JobEvent, followEvents, isTerminal } from './events.js';
import { ROUTES } from './routes.js';
import type { Job } from './schema.js';

/** A job as `GET /v1/jobs/{id}` answered it, with what its headers add. */
export interface JobStatus {
  readonly job: Job;
  /** `ETag`, verbatim (quotes included), for `If-None-Match`. */
  readonly etag: string | undefined;
  /** `Retry-After` in seconds: when the server suggests asking again. */
  readonly retryAfter: number | undefined;
}

/** The answer to a conditional `GET /v1/jobs/{id}` whose `ETag` still matched (304). */
export interface NotModified {
  readonly job: undefined;
  /** `Retry-After` in seconds, when the server gave one. */
  readonly retryAfter: number | undefined;
}

/** How {@link Client.wait} follows the job. */
export type WaitTransport = 'events' | 'polling';

/** Options of {@link Client.wait}. */
export interface WaitOptions {
  /** Seconds to wait at most; then a {@link TimeoutError} carrying the job as last seen. */
  timeout?: number | undefined;
  /** Stops waiting: the wait throws the signal's reason. */
  signal?: AbortSignal | undefined;
  /** Called with the job after each change seen (each event, or each changed poll). */
  onUpdate?: ((job: Job, event?: JobEvent) => void) | undefined;
  /**
   * `events` or `polling` only; by default events, falling back to
   * polling when the server does not stream or the stream keeps failing.
   */
  transport?: WaitTransport | undefined;
}

/** Seconds one long poll asks the server to hold (`Prefer: wait=30`). */
const LONG_POLL = 30;
/** Seconds a held request may take beyond its hold. */
const HOLD_GRACE = 30;
/** The pause between polls when the server gives no `Retry-After`. */
const DEFAULT_POLL_PAUSE = 1;
/** The shortest pause between polls, so that `Retry-After: 0` cannot spin. */
const MIN_POLL_PAUSE = 0.1;
/** The longest pause between polls, whatever `Retry-After` says (the server says at most 30). */
const MAX_POLL_PAUSE = 30;

/**
 * `GET /v1/jobs/{id}`, optionally conditional (`If-None-Match: etag`) and
 * held (`Prefer: wait=hold`): {@link NotModified} when the job is unchanged (304).
 */
export async function getStatus(
  t: TransportOptions,
  id: string,
  opts: { etag?: string | undefined; hold?: number | undefined; signal?: AbortSignal | undefined } = {},
): Promise<JobStatus | NotModified> {
  const headers: Record<string, string> = {};
  if (opts.etag !== undefined) headers['if-none-match'] = opts.etag;
  const hold = opts.hold === undefined ? undefined : Math.min(60, Math.max(1, Math.round(opts.hold)));
  if (hold !== undefined) headers.prefer = `wait=${hold}`;
  const answer = await call(t, ROUTES.getJob, {
    params: { id },
    headers,
    signal: opts.signal,
    timeout: hold === undefined ? undefined : hold + HOLD_GRACE,
  });
  if (answer.status === 304) {
    return { job: undefined, retryAfter: parseRetryAfter(answer.headers.get('retry-after')) };
  }
  if (answer.type === 'opaqueredirect') {
    // A browser hides a 303's body: the job succeeded; its history ends
    // with its representation.
    return { job: await lastJobOfHistory(t, id, opts.signal), etag: undefined, retryAfter: undefined };
  }
  if (answer.status !== 200 && answer.status !== 202 && answer.status !== 303) {
    throw new UnexpectedResponseError(`GET /v1/jobs/{id} answered ${answer.status}`, { status: answer.status });
  }
  return {
    job: json<Job>(answer),
    etag: answer.headers.get('etag') ?? undefined,
    retryAfter: parseRetryAfter(answer.headers.get('retry-after')),
  };
}

async function lastJobOfHistory(t: TransportOptions, id: string, signal: AbortSignal | undefined): Promise<Job> {
  let job: Job | undefined;
  for await (const event of followEvents(t, id, { signal })) {
    if (event.type !== 'stream.reset') job = event.job;
  }
  if (!job) throw new UnexpectedResponseError(`job ${id}: the server redirected and its history is empty`);
  return job;
}

/** Waits until job `id` is finished and answers it; see {@link Client.wait}. */
export async function waitForJob(t: TransportOptions, id: string, opts: WaitOptions = {}): Promise<Job> {
  const outer = opts.signal;
  outer?.throwIfAborted();
  const controller = new AbortController();
  const deadlineReason = new TimeoutError(`job ${id} did not finish within ${opts.timeout} s`);
  const onAbort = () => controller.abort(outer?.reason);
  outer?.addEventListener('abort', onAbort, { once: true });
  const timer =
    opts.timeout === undefined ? undefined : setTimeout(() => controller.abort(deadlineReason), opts.timeout * 1000);
  const deadline = opts.timeout === undefined ? undefined : Date.now() + opts.timeout * 1000;
  const signal = controller.signal;
  let seen: Job | undefined;
  const update = (job: Job, event?: JobEvent) => {
    seen = job;
    try {
      opts.onUpdate?.(job, event);
    } catch (error) {
      throw new CallbackFailed(error);
    }
  };
  try {
    if (opts.transport !== 'polling') {
      try {
        for await (const event of followEvents(t, id, { signal })) {
          if (event.type === 'stream.reset') continue;
          update(event.job, event);
          if (isTerminal(event.job.state)) return event.job;
        }
        // The stream had ended before we came (204): read the job.
      } catch (error) {
        if (signal.aborted || opts.transport === 'events' || !fallsBack(error)) throw error;
        // Else the stream failed: poll instead.
      }
    }
    return await poll(t, id, { signal, deadline, seen, update });
  } catch (error) {
    if (error instanceof CallbackFailed) throw error.cause;
    if (signal.aborted && signal.reason === deadlineReason) {
      throw new TimeoutError(deadlineReason.message, seen ?? (await lastKnown(t, id, outer)));
    }
    if (outer?.aborted) throw outer.reason;
    throw error;
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener('abort', onAbort);
  }
}

/** What `onUpdate` threw, carried out of the wait as it is. */
class CallbackFailed {
  constructor(readonly cause: unknown) {}
}

/** Whether a stream failure leaves polling worth a try (an unknown job or a refused key would fail alike). */
function fallsBack(error: unknown): boolean {
  if (error instanceof CallbackFailed) return false;
  if (error instanceof ProblemError) return ![400, 401, 403, 404, 410].includes(error.status);
  return true;
}

async function lastKnown(t: TransportOptions, id: string, signal: AbortSignal | undefined): Promise<Job | undefined> {
  try {
    return (await getStatus(t, id, { signal })).job;
  } catch {
    return undefined;
  }
}

/**
 * Long polls the job (`If-None-Match` with its last `ETag`, `Prefer:
 * wait=30`) until it is finished. Where the server answers without
 * holding the request, pauses as its `Retry-After` says.
 */
async function poll(
  t: TransportOptions,
  id: string,
  ctx: {
    signal: AbortSignal;
    deadline: number | undefined;
    seen: Job | undefined;
    update: (job: Job) => void;
  },
): Promise<Job> {
  const first = await getStatus(t, id, { signal: ctx.signal });
  if (!first.job) throw new UnexpectedResponseError(`an unconditional GET of job ${id} answered 304`);
  let last: JobStatus = first;
  if (!sameJob(ctx.seen, last.job)) ctx.update(last.job);
  let pause = false;
  for (;;) {
    if (isTerminal(last.job.state)) return last.job;
    const remaining = ctx.deadline === undefined ? undefined : (ctx.deadline - Date.now()) / 1000;
    if (pause || last.etag === undefined) {
      const wanted = Math.min(MAX_POLL_PAUSE, Math.max(MIN_POLL_PAUSE, last.retryAfter ?? DEFAULT_POLL_PAUSE));
      await sleep(remaining === undefined ? wanted : Math.min(wanted, Math.max(0, remaining)), ctx.signal);
    }
    const hold = Math.max(1, Math.min(LONG_POLL, remaining ?? LONG_POLL));
    const started = Date.now();
    const fresh =
      last.etag !== undefined
        ? await getStatus(t, id, { etag: last.etag, hold, signal: ctx.signal })
        : await getStatus(t, id, { signal: ctx.signal });
    const held = (Date.now() - started) / 1000 + 1 >= hold;
    if (fresh.job && (fresh.etag !== last.etag || !sameJob(fresh.job, last.job))) {
      ctx.update(fresh.job);
      last = fresh;
      pause = false;
    } else {
      last = { ...last, retryAfter: fresh.retryAfter };
      pause = !held;
    }
  }
}

function sameJob(a: Job | undefined, b: Job): boolean {
  return a !== undefined && a.state === b.state && a.updated_at === b.updated_at && a.attempt === b.attempt;
}
