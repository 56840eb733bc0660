/**
 * Following one job over Server-Sent Events (API.md §3):
 * `GET /v1/jobs/{id}/events` replays the job's history, then its live
 * events, and closes after the terminal one. {@link followEvents} reads
 * it over `fetch`, resumes with `Last-Event-ID` after a dropped
 * connection (waiting the `retry:` the server asked for, longer after
 * repeated failures), and never yields an event id twice.
 *
 * @module
 */

import { ConnectionError, ProblemError, ReplydError, TimeoutError, UnexpectedResponseError } from './errors.js';
import { type TransportOptions, open, sleep } from './http.js';
import { ROUTES } from './routes.js';
import type { Job, JobState } from './schema.js';
import { IdleStreamError, SseParser, readEvents } from './sse.js';

/** The names of a job's events. A newer server may add others, which are passed on as they come. */
export type JobEventType =
  | 'job.accepted'
  | 'job.started'
  | 'job.progress'
  | 'job.output'
  | 'job.retrying'
  | 'job.cancel_requested'
  | 'job.succeeded'
  | 'job.failed'
  | 'job.canceled';

/** One event of a job: what happened, and the job right after it. */
export interface JobEvent {
  /** The event's name, e.g. `job.progress`. */
  readonly type: JobEventType;
  /**
   * The event id (a non-negative integer, as a string: ids may pass
   * 2^53). Pass it as `after` to resume right after this event.
   */
  readonly id: string;
  /** The job's representation after the event. */
  readonly job: Job;
}

/**
 * Events after the id resumed from were removed from the server's log
 * (their jobs expired or were deleted): what is retained follows, and
 * something may have been missed.
 */
export interface StreamResetEvent {
  readonly type: 'stream.reset';
  /** The id the stream was resumed from. */
  readonly lastEventId: string;
  /** The server's explanation. */
  readonly detail: string;
}

/** What {@link Client.events} yields. */
export type StreamEvent = JobEvent | StreamResetEvent;

/** How {@link followEvents} follows a stream. */
export interface FollowOptions {
  /** Resume after this event id (the job's whole history without it). */
  after?: string | undefined;
  /** Stops following: the iterator throws the signal's reason. */
  signal?: AbortSignal | undefined;
  /** Failed or broken connections in a row after which the error is thrown (default 8). */
  maxFailures?: number | undefined;
  /** Called before each reconnection, with the id it resumes after. */
  onReconnect?: ((lastEventId: string | undefined) => void) | undefined;
}

/** The states after which a job does not change again. */
const TERMINAL: ReadonlySet<JobState> = new Set(['succeeded', 'failed', 'canceled']);

/** Whether `state` is final: succeeded, failed or canceled. */
export function isTerminal(state: JobState): boolean {
  return TERMINAL.has(state);
}

/** Seconds the answer to `GET .../events` may take to begin. */
const OPEN_TIMEOUT = 30;
/** A stream with no bytes for this long is taken as dead: the server sends a keep-alive every 15 s. */
const IDLE_TIMEOUT = 45;
/** The pause before a reconnection when the server has not said (`retry:`), in seconds. */
const DEFAULT_RECONNECT = 1;
/** The longest pause between two connection attempts, in seconds. */
const MAX_RECONNECT = 5;

/**
 * A job's events over Server-Sent Events, resuming across dropped
 * connections, until its terminal event (or, resumed at or after it, at
 * once: the server answers 204).
 *
 * Throws a {@link ProblemError} for a refusal that would come again
 * (unknown job 404, 401, 403, a malformed id 400), an
 * {@link UnexpectedResponseError} for an answer that is not an event
 * stream or an event that cannot be read, and the last failure once
 * `maxFailures` connections in a row broke off or could not be made.
 */
export async function* followEvents(
  t: TransportOptions,
  id: string,
  opts: FollowOptions = {},
): AsyncGenerator<StreamEvent, void, undefined> {
  const { signal } = opts;
  const maxFailures = opts.maxFailures ?? 8;
  let last = opts.after;
  if (last !== undefined && !/^\d+$/.test(last)) throw new TypeError(`an event id is a non-negative integer, not ${JSON.stringify(last)}`);
  let failures = 0;
  let retry: number | undefined;
  /** The `Retry-After` of a refusal (429, 503) to open the stream, in seconds. */
  let refusedFor: number | undefined;
  let connected = false;
  for (;;) {
    if (failures > 0) {
      const base = retry !== undefined ? retry / 1000 : DEFAULT_RECONNECT;
      const backoff = Math.min(MAX_RECONNECT, Math.max(base, 0.05) * 2 ** (failures - 1));
      await sleep(Math.max(backoff, refusedFor ?? 0), signal);
      refusedFor = undefined;
    }
    if (connected) opts.onReconnect?.(last);
    let opened;
    try {
      opened = await open(t, ROUTES.events, {
        params: { id },
        headers: {
          accept: 'text/event-stream',
          ...(last !== undefined ? { 'last-event-id': last } : {}),
        },
        signal,
        timeout: OPEN_TIMEOUT,
        maxRetries: 0,
      });
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      if (!transient(error) || ++failures >= maxFailures) throw error;
      if (error instanceof ProblemError) refusedFor = error.retryAfter;
      continue;
    }
    const { response, release } = opened;
    try {
      if (response.status === 204) return;
      if (response.status !== 200 || !response.body) {
        throw new UnexpectedResponseError(`the events endpoint answered ${response.status}, not an event stream`, {
          status: response.status,
        });
      }
      const type = response.headers.get('content-type') ?? '';
      if (type.split(';')[0]?.trim().toLowerCase() !== 'text/event-stream') {
        throw new UnexpectedResponseError(`the events endpoint answered ${JSON.stringify(type)}, not text/event-stream`, {
          status: response.status,
        });
      }
      connected = true;
      const parser = new SseParser();
      let broken: ReplydError = new ConnectionError(`the event stream of job ${id} closed before the job finished`, undefined);
      try {
        for await (const frame of readEvents(response.body, parser, IDLE_TIMEOUT)) {
          if (frame.event === 'stream.overflow') {
            broken = new ConnectionError('the server dropped the event stream: this reader fell behind', undefined);
            break;
          }
          if (frame.event === 'stream.reset') {
            yield resetEvent(frame.data, last);
            continue;
          }
          if (!frame.event.startsWith('job.')) continue;
          const event = jobEvent(frame.event, frame.id, frame.data);
          if (last !== undefined && BigInt(event.id) <= BigInt(last)) continue;
          last = event.id;
          failures = 0;
          yield event;
          if (isTerminal(event.job.state)) return;
        }
      } catch (error) {
        if (signal?.aborted) throw signal.reason;
        if (error instanceof UnexpectedResponseError) throw error;
        broken =
          error instanceof IdleStreamError
            ? new TimeoutError(error.message)
            : new ConnectionError(`the event stream of job ${id} broke off`, error);
      }
      // The reconnection time the stream asked for (`retry:`), however it ended.
      retry = parser.retry ?? retry;
      if (++failures >= maxFailures) throw broken;
    } finally {
      release();
    }
  }
}

/** Whether a failure to open a stream may pass if tried again. */
function transient(error: unknown): boolean {
  if (error instanceof ProblemError) return [429, 500, 502, 503, 504].includes(error.status);
  return error instanceof ConnectionError || error instanceof TimeoutError;
}

function jobEvent(type: string, id: string, data: string): JobEvent {
  if (!/^\d+$/.test(id)) {
    throw new UnexpectedResponseError(`event ${type} has no usable id (${JSON.stringify(id)})`);
  }
  let job: unknown;
  try {
    job = JSON.parse(data);
  } catch (cause) {
    throw new UnexpectedResponseError(`event ${type} (${id}) does not carry JSON`, { cause });
  }
  if (!job || typeof job !== 'object' || typeof (job as Job).id !== 'string' || typeof (job as Job).state !== 'string') {
    throw new UnexpectedResponseError(`event ${type} (${id}) does not carry a job`);
  }
  return { type: type as JobEventType, id, job: job as Job };
}

function resetEvent(data: string, last: string | undefined): StreamResetEvent {
  let parsed: { last_event_id?: unknown; detail?: unknown } = {};
  try {
    parsed = JSON.parse(data) as typeof parsed;
  } catch {
    // The reset itself is what matters.
  }
  return {
    type: 'stream.reset',
    lastEventId: typeof parsed.last_event_id === 'string' ? parsed.last_event_id : (last ?? ''),
    detail: typeof parsed.detail === 'string' ? parsed.detail : data,
  };
}
