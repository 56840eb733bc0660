/**
 * For a page that a backend handed a job's links to: follow the job with
 * the browser's own `EventSource`. The links carry the job's token
 * (`?access_token=jt_…`), which grants reading that one job, so the page
 * holds no API key. replyd answers event streams with
 * `Access-Control-Allow-Origin: *`, so the page may be served from
 * another origin than replyd.
 *
 * @module
 */

import { ReplydError } from './errors.js';
import { type JobEvent, type JobEventType, type StreamEvent, isTerminal } from './events.js';
import type { Job, Links } from './schema.js';

/** Options of {@link followJob}. */
export interface FollowJobOptions {
  /**
   * Where replyd is, to resolve the links (which are paths such as
   * `/v1/jobs/…`). Default: the page's own location.
   */
  baseUrl?: string | URL | undefined;
  /** Called with each event: the job's history first, then live ones. */
  onEvent?: ((event: StreamEvent) => void) | undefined;
  /** Stops following: the promise rejects with the signal's reason. */
  signal?: AbortSignal | undefined;
  /** The `EventSource` class to use (default: the global one). */
  EventSource?: EventSourceConstructor | undefined;
}

/** What {@link followJob} needs of an event of an `EventSource`. */
export interface EventSourceMessage {
  readonly type: string;
  readonly data: string;
  readonly lastEventId: string;
}

/** What {@link followJob} needs of an `EventSource` (the browser's fits). */
export interface EventSourceLike {
  /** 0 connecting, 1 open, 2 closed for good. */
  readonly readyState: number;
  addEventListener(type: string, listener: (event: EventSourceMessage) => void): void;
  close(): void;
}

/** What {@link followJob} needs of an `EventSource` class. */
export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** Every event a job's stream can carry. */
const JOB_EVENTS: readonly JobEventType[] = [
  'job.accepted',
  'job.started',
  'job.progress',
  'job.output',
  'job.retrying',
  'job.cancel_requested',
  'job.succeeded',
  'job.failed',
  'job.canceled',
];

/**
 * Follows a job with `EventSource` over `links.events` (tokenised) and
 * resolves with the job once it has finished (succeeded, failed or
 * canceled). The browser reconnects by itself with `Last-Event-ID` when
 * the connection drops, and the server resumes right after it. Rejects
 * with a {@link ReplydError} when the stream is closed for good before
 * the end (an expired or unknown job, a refused token).
 *
 * ```js
 * const { links } = await (await fetch('/api/reports', { method: 'POST' })).json();
 * const job = await followJob(links, {
 *   baseUrl: 'https://replyd.example.com',
 *   onEvent: (e) => { if (e.type === 'job.progress') bar.value = e.job.progress?.percent ?? 0; },
 * });
 * ```
 */
export function followJob(jobOrLinks: Pick<Job, 'links'> | Links, options: FollowJobOptions = {}): Promise<Job> {
  const links: Links = 'links' in jobOrLinks ? jobOrLinks.links : jobOrLinks;
  const Source = options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
  if (!Source) {
    return Promise.reject(new TypeError('no EventSource here: pass options.EventSource, or use Client.wait'));
  }
  const base = options.baseUrl ?? (globalThis as { location?: { href: string } }).location?.href;
  if (base === undefined) return Promise.reject(new TypeError('followJob needs options.baseUrl outside a page'));
  const url = new URL(links.events, base);
  const { signal } = options;
  return new Promise<Job>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const source = new Source(url.href);
    let last: Job | undefined;
    const finish = (outcome: () => void) => {
      source.close();
      signal?.removeEventListener('abort', onAbort);
      outcome();
    };
    const onAbort = () => finish(() => reject(signal?.reason));
    signal?.addEventListener('abort', onAbort, { once: true });
    const onJobEvent = (message: EventSourceMessage) => {
      let job: Job;
      try {
        job = JSON.parse(message.data) as Job;
      } catch (cause) {
        finish(() => reject(new ReplydError(`event ${message.type} does not carry JSON`, { cause })));
        return;
      }
      last = job;
      const event: JobEvent = { type: message.type as JobEventType, id: message.lastEventId, job };
      try {
        options.onEvent?.(event);
      } catch (error) {
        finish(() => reject(error));
        return;
      }
      if (isTerminal(job.state)) finish(() => resolve(job));
    };
    for (const name of JOB_EVENTS) source.addEventListener(name, onJobEvent);
    source.addEventListener('stream.reset', (e) => {
      const data = parseObject(e.data);
      options.onEvent?.({
        type: 'stream.reset',
        lastEventId: typeof data.last_event_id === 'string' ? data.last_event_id : '',
        detail: typeof data.detail === 'string' ? data.detail : '',
      });
    });
    source.addEventListener('error', () => {
      // CONNECTING: the browser is reconnecting by itself. CLOSED: for good
      // (a 204 after the end, 401/404/410, an answer that is no stream).
      if (source.readyState !== 2) return;
      const seen = last ? ` (last seen ${last.state})` : '';
      finish(() => reject(new ReplydError(`the event stream of the job was closed before it finished${seen}`)));
    });
  });
}

function parseObject(data: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(data);
    return value && typeof value === 'object' ? (value as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}
