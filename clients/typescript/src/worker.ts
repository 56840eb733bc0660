/**
 * A pull worker (API.md §5): leases jobs of one queue in batches, runs a
 * handler for each while a heartbeat keeps the lease, and reports the
 * outcome. A cancel asked by a client (learnt from a heartbeat or a
 * progress report) aborts the handler's `signal`; so does a lost lease.
 * {@link Worker.stop} drains: no new leases, running handlers finish.
 *
 * The worker installs no signal handlers: {@link drainOnSignal} is the
 * opt-in wiring for `SIGTERM`.
 *
 * @module
 */

import type { Client, LeasedJob } from './client.js';
import { JobStoppedError, PermanentError, ProblemError } from './errors.js';
import { sleep } from './http.js';
import { RawResult } from './result.js';
import type { FailReason, Job } from './schema.js';

/** What a handler gets besides the job's input. */
export interface JobContext {
  /** The job as it was leased. */
  readonly job: Job;
  /** The lease's id (what {@link Client.heartbeat} and the like take). */
  readonly leaseId: string;
  /** This attempt's number, from 1. */
  readonly attempt: number;
  /**
   * Aborts when the handler should stop: the job was canceled, the lease
   * was lost, or the worker is shutting down past its grace. Its `reason`
   * is a {@link JobStoppedError} saying which.
   */
  readonly signal: AbortSignal;
  /**
   * W3C `traceparent` for the worker's span to hang below, when the job is
   * in a trace: replyd's span of this attempt, or (when replyd makes no
   * spans) the submitter's.
   */
  readonly traceparent: string | undefined;
  /** W3C `tracestate` that goes with it. */
  readonly tracestate: string | undefined;
  /**
   * Reports progress (percent 0 to 100, a message). The latest wins:
   * reports made while one is being sent are coalesced. Resolves once
   * this report (or a later one) was sent; never rejects (failures go to
   * `onError`).
   */
  progress(percent?: number | null, message?: string | null): Promise<void>;
}

/**
 * Runs one job. Its return value is the result: JSON (`undefined` is
 * `null`), a {@link RawResult}, or a `Uint8Array`
 * (`application/octet-stream`). A throw fails the attempt, which the server
 * retries while attempts remain; a {@link PermanentError} fails the job.
 */
export type Handler<I = unknown> = (input: I, ctx: JobContext) => unknown;

/** How a {@link Worker} works. Durations are in seconds. */
export interface WorkerOptions {
  /** Jobs run at once (default 1). */
  concurrency?: number | undefined;
  /** How long a lease lasts (default 30); a heartbeat renews it every third of that. */
  leaseSeconds?: number | undefined;
  /** Jobs leased per request, at most (default: `concurrency`, at most 100). Fewer when fewer slots are free. */
  batch?: number | undefined;
  /** How long one lease request waits for a job (long poll; default 20, at most 60). */
  waitSeconds?: number | undefined;
  /** A name for the worker, shown in the server's logs. */
  name?: string | undefined;
  /**
   * Told of what went wrong without stopping the worker: a lease request
   * that failed (it is retried with backoff), a heartbeat, progress or
   * outcome the server did not take. The worker prints nothing itself.
   */
  onError?: ((error: unknown, job?: Job) => void) | undefined;
}

/** Options of {@link Worker.stop}. */
export interface StopOptions {
  /**
   * Seconds running handlers may go on; then their `signal` aborts (reason
   * `shutdown`) and their outcome is still reported. Default: no limit.
   */
  grace?: number | undefined;
}

/**
 * A pull worker for one queue.
 *
 * ```ts
 * const worker = new Worker(client, 'report', async (input, ctx) => {
 *   await ctx.progress(50, 'half way');
 *   return { pages: 10 };
 * }, { concurrency: 4 });
 * drainOnSignal(worker);          // SIGTERM/SIGINT: stop leasing, finish what runs
 * await worker.start();           // until stopped
 * ```
 */
export class Worker<I = unknown> {
  private readonly client: Client;
  private readonly queue: string;
  private readonly handler: Handler<I>;
  private readonly concurrency: number;
  private readonly leaseSeconds: number;
  private readonly batch: number;
  private readonly waitSeconds: number;
  private readonly name: string;
  private readonly onError: (error: unknown, job?: Job) => void;
  /** Aborts the lease request in flight and the pause between failed ones. */
  private readonly stopping = new AbortController();
  /** Aborts every running handler's signal (the grace has run out). */
  private readonly shutdown = new AbortController();
  private readonly inFlight = new Set<Promise<void>>();
  private slotFreed: (() => void) | undefined;
  private started: Promise<void> | undefined;

  constructor(client: Client, queue: string, handler: Handler<I>, options: WorkerOptions = {}) {
    this.client = client;
    this.queue = queue;
    this.handler = handler;
    this.concurrency = Math.max(1, Math.floor(options.concurrency ?? 1));
    this.leaseSeconds = options.leaseSeconds ?? 30;
    if (!(this.leaseSeconds > 0)) throw new RangeError('leaseSeconds must be positive');
    this.batch = Math.min(100, Math.max(1, Math.floor(options.batch ?? this.concurrency)));
    this.waitSeconds = Math.min(60, Math.max(0, options.waitSeconds ?? 20));
    this.name = options.name ?? `replyd-ts-${globalThis.crypto.randomUUID().slice(0, 8)}`;
    this.onError = options.onError ?? (() => {});
  }

  /** Jobs running now. */
  get running(): number {
    return this.inFlight.size;
  }

  /** Whether {@link stop} was called. */
  get stopped(): boolean {
    return this.stopping.signal.aborted;
  }

  /**
   * Leases and runs jobs until {@link stop}; resolves once the last
   * running job is reported. Rejects, after draining, when the server
   * refuses to lease for good (unknown queue 404, bad key 401, a key
   * that may not lease 403).
   */
  start(): Promise<void> {
    this.started ??= this.loop();
    return this.started;
  }

  /**
   * Drains: no new leases (a lease request in flight is abandoned: a job
   * it might have been granted is requeued when its lease expires), and
   * running handlers finish and are reported. With `grace`, handlers
   * still running after that many seconds have their `signal` aborted.
   * Resolves when the worker has stopped.
   */
  async stop(options: StopOptions = {}): Promise<void> {
    if (!this.stopping.signal.aborted) this.stopping.abort(new JobStoppedError('shutdown'));
    this.slotFreed?.();
    let timer: ReturnType<typeof setTimeout> | undefined;
    if (options.grace !== undefined) {
      timer = setTimeout(() => this.shutdown.abort(new JobStoppedError('shutdown')), options.grace * 1000);
    }
    try {
      await (this.started ?? Promise.resolve()).catch(() => {});
      await Promise.allSettled([...this.inFlight]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async loop(): Promise<void> {
    const signal = this.stopping.signal;
    let failures = 0;
    let fatal: unknown;
    while (!signal.aborted) {
      if (this.inFlight.size >= this.concurrency) {
        await new Promise<void>((resolve) => (this.slotFreed = resolve));
        this.slotFreed = undefined;
        continue;
      }
      let leases: LeasedJob[];
      try {
        leases = await this.client.lease(this.queue, {
          batch: Math.min(this.batch, this.concurrency - this.inFlight.size),
          lease: this.leaseSeconds,
          wait: this.waitSeconds,
          worker: this.name,
          signal,
        });
      } catch (error) {
        if (signal.aborted) break;
        if (error instanceof ProblemError && [400, 401, 403, 404, 405, 409, 422].includes(error.status)) {
          fatal = error;
          break;
        }
        this.onError(error);
        failures++;
        try {
          await sleep(Math.min(30, 2 ** (failures - 1)), signal);
        } catch {
          break;
        }
        continue;
      }
      failures = 0;
      for (const lease of leases) {
        const run: Promise<void> = this.run(lease).finally(() => {
          this.inFlight.delete(run);
          this.slotFreed?.();
        });
        this.inFlight.add(run);
      }
    }
    await Promise.allSettled([...this.inFlight]);
    if (fatal !== undefined) throw fatal;
  }

  /** Runs the handler for one leased job and reports its outcome. */
  private async run(lease: LeasedJob): Promise<void> {
    const { job, lease_id: leaseId } = lease;
    const stop = new AbortController();
    const onShutdown = () => stop.abort(this.shutdown.signal.reason);
    if (this.shutdown.signal.aborted) onShutdown();
    this.shutdown.signal.addEventListener('abort', onShutdown, { once: true });
    const stopFrom = (error: unknown, call: string) => {
      if (error instanceof ProblemError && [404, 409, 410].includes(error.status)) {
        stop.abort(new JobStoppedError('lease-lost'));
      } else {
        this.onError(new Error(`${call} of job ${job.id} failed`, { cause: error }), job);
      }
    };
    const heartbeat = this.heartbeat(job, leaseId, stop, stopFrom);
    const progress = new ProgressSender(this.client, job.id, leaseId, stop, stopFrom);
    const ctx: JobContext = {
      job,
      leaseId,
      attempt: job.attempt,
      signal: stop.signal,
      traceparent: lease.traceparent ?? undefined,
      tracestate: lease.tracestate ?? undefined,
      progress: (percent, message) => progress.send(percent ?? null, message ?? null),
    };
    let outcome: { ok: true; value: unknown } | { ok: false; error: unknown };
    try {
      outcome = { ok: true, value: await this.handler(job.input as I, ctx) };
    } catch (error) {
      outcome = { ok: false, error };
    } finally {
      heartbeat.stop();
      this.shutdown.signal.removeEventListener('abort', onShutdown);
    }
    await progress.settled();
    if (lost(stop.signal)) {
      this.onError(new Error(`the lease on job ${job.id} was lost: its outcome is not reported`), job);
      return;
    }
    await this.report(job, leaseId, outcome);
  }

  /** Renews the lease every third of its length until stopped; tells the job of a cancel or a lost lease. */
  private heartbeat(
    job: Job,
    leaseId: string,
    stop: AbortController,
    stopFrom: (error: unknown, call: string) => void,
  ): { stop(): void } {
    const period = Math.max(0.2, this.leaseSeconds / 3);
    let timer: ReturnType<typeof setTimeout> | undefined;
    let done = false;
    const beat = async () => {
      try {
        const status = await this.client.heartbeat(job.id, leaseId, { lease: this.leaseSeconds });
        if (status.cancel_requested) stop.abort(new JobStoppedError('canceled'));
      } catch (error) {
        stopFrom(error, 'heartbeat');
      }
      if (!done && !lost(stop.signal)) timer = setTimeout(beat, period * 1000);
    };
    timer = setTimeout(beat, period * 1000);
    return {
      stop() {
        done = true;
        clearTimeout(timer);
      },
    };
  }

  /** Tells the server how the job ended. */
  private async report(
    job: Job,
    leaseId: string,
    outcome: { ok: true; value: unknown } | { ok: false; error: unknown },
  ): Promise<void> {
    try {
      if (outcome.ok && !serialisable(outcome.value)) {
        const message = 'the handler returned a value that is not JSON (a RawResult or Uint8Array is sent as bytes)';
        this.onError(new TypeError(message), job);
        await this.client.fail(job.id, leaseId, { code: 'result_not_json', message }, { retry: false });
        return;
      }
      if (outcome.ok) {
        try {
          await this.client.complete(job.id, leaseId, outcome.value);
        } catch (error) {
          if (!(error instanceof ProblemError) || error.status === 409 || error.status >= 500 || error.status === 429) {
            throw error;
          }
          // The server refused the result itself (too large, not JSON):
          // fail the job rather than leave it to its lease's expiry.
          this.onError(error, job);
          await this.client.fail(job.id, leaseId, { code: 'result_refused', message: error.message }, { retry: false });
        }
        return;
      }
      const { error } = outcome;
      const retry = !(error instanceof PermanentError);
      await this.client.fail(job.id, leaseId, failReason(error), { retry });
    } catch (error) {
      this.onError(error, job);
    }
  }
}

/** Whether `signal` aborted because the lease was lost (then nothing more is sent for the job). */
function lost(signal: AbortSignal): boolean {
  return signal.aborted && signal.reason instanceof JobStoppedError && signal.reason.reason === 'lease-lost';
}

/** Whether a handler's return value can be sent: bytes, or a value `JSON.stringify` takes. */
function serialisable(value: unknown): boolean {
  if (value instanceof RawResult || value instanceof Uint8Array || value === undefined) return true;
  try {
    return JSON.stringify(value) !== undefined;
  } catch {
    return false;
  }
}

/** What a handler's throw becomes on the wire. */
function failReason(error: unknown): FailReason {
  const message = (error instanceof Error ? error.message : String(error)).slice(0, 4000) || 'the handler failed';
  if (error instanceof PermanentError && error.code) return { code: error.code, message };
  if (error instanceof JobStoppedError) return { code: error.reason, message };
  return message;
}

/** Sends a job's progress reports one at a time, the latest winning. */
class ProgressSender {
  private pending: { percent: number | null; message: string | null } | undefined;
  private waiting: Array<() => void> = [];
  private sending: Promise<void> | undefined;

  constructor(
    private readonly client: Client,
    private readonly id: string,
    private readonly leaseId: string,
    private readonly stop: AbortController,
    private readonly stopFrom: (error: unknown, call: string) => void,
  ) {}

  send(percent: number | null, message: string | null): Promise<void> {
    this.pending = { percent, message };
    const sent = new Promise<void>((resolve) => this.waiting.push(resolve));
    this.sending ??= this.drain();
    return sent;
  }

  /** Resolves once nothing is being sent. */
  async settled(): Promise<void> {
    await this.sending;
  }

  private async drain(): Promise<void> {
    while (this.pending) {
      const { percent, message } = this.pending;
      const waiting = this.waiting;
      this.pending = undefined;
      this.waiting = [];
      if (!lost(this.stop.signal)) {
        try {
          const status = await this.client.progress(this.id, this.leaseId, percent, message);
          if (status.cancel_requested) this.stop.abort(new JobStoppedError('canceled'));
        } catch (error) {
          this.stopFrom(error, 'progress');
        }
      }
      waiting.forEach((resolve) => resolve());
    }
    this.sending = undefined;
  }
}

/** The part of Node's `process` that {@link drainOnSignal} uses. */
interface SignalSource {
  once(signal: string, listener: () => void): unknown;
  off(signal: string, listener: () => void): unknown;
}

/**
 * Opt-in wiring for Node: on the first of `signals` (default `SIGTERM`
 * and `SIGINT`), the worker drains ({@link Worker.stop}, with `grace`);
 * a second signal ends the process as usual. Answers a function that
 * removes the handlers. The library installs none by itself.
 */
export function drainOnSignal(
  worker: { stop(options?: StopOptions): Promise<void> },
  options: { signals?: readonly string[]; grace?: number } = {},
): () => void {
  const proc = (globalThis as { process?: SignalSource }).process;
  if (!proc || typeof proc.once !== 'function') throw new TypeError('drainOnSignal needs Node.js (process.once)');
  const signals = options.signals ?? ['SIGTERM', 'SIGINT'];
  const onSignal = () => {
    remove();
    void worker.stop({ grace: options.grace });
  };
  const remove = () => signals.forEach((s) => proc.off(s, onSignal));
  signals.forEach((s) => proc.once(s, onSignal));
  return remove;
}
