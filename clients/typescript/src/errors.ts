/**
 * What can go wrong, as error classes. Every error this SDK throws is a
 * {@link ReplydError}, except the caller's own abort (the `signal`'s
 * reason is thrown as it is).
 *
 * @module
 */

import type { Job, Problem } from './schema.js';

/** The base class of every error this SDK throws. */
export class ReplydError extends Error {
  /** The HTTP status of the answer that caused the error, when there was one. */
  readonly status: number | undefined;

  constructor(message: string, options?: { status?: number; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ReplydError';
    this.status = options?.status;
  }
}

/**
 * The server answered 4xx or 5xx. Carries its RFC 9457 problem
 * (`application/problem+json`): {@link type}, {@link title},
 * {@link status}, {@link detail}. A body that is not a problem is turned
 * into one (`type` `about:blank`, `detail` the body's text).
 */
export class ProblemError extends ReplydError {
  /** A URI naming the kind of problem, e.g. `urn:replyd:problem:not-found`. */
  readonly type: string;
  /** A short summary of the kind of problem. */
  readonly title: string;
  /** What went wrong with this request. */
  readonly detail: string;
  /** The whole problem object as sent, with any extension members. */
  readonly problem: Problem & Record<string, unknown>;
  /** `Retry-After` of the answer, in seconds, when it had one. */
  readonly retryAfter: number | undefined;
  declare readonly status: number;

  constructor(problem: Problem & Record<string, unknown>, retryAfter?: number) {
    super(`${problem.status} ${problem.title}: ${problem.detail || problem.type}`, { status: problem.status });
    this.name = 'ProblemError';
    this.type = problem.type;
    this.title = problem.title;
    this.detail = problem.detail;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }

  /** The last part of a `urn:replyd:problem:<slug>` type, e.g. `not-found`; else the type. */
  get slug(): string {
    const prefix = 'urn:replyd:problem:';
    return this.type.startsWith(prefix) ? this.type.slice(prefix.length) : this.type;
  }
}

/** The request could not be sent or its answer not read (connection refused, reset, DNS). */
export class ConnectionError extends ReplydError {
  constructor(message: string, cause: unknown) {
    super(message, { cause });
    this.name = 'ConnectionError';
  }
}

/**
 * Time ran out: a request got no answer within its timeout, or
 * {@link Client.wait} gave up. For a wait, {@link job} is the last state
 * seen.
 */
export class TimeoutError extends ReplydError {
  /** The job as last seen, for a wait that timed out. */
  readonly job: Job | undefined;

  constructor(message: string, job?: Job) {
    super(message);
    this.name = 'TimeoutError';
    this.job = job;
  }
}

/**
 * An answer this SDK cannot use: a success status with a body that is not
 * what the contract says, a status the call does not expect, or an event
 * stream that is malformed or keeps breaking off.
 */
export class UnexpectedResponseError extends ReplydError {
  constructor(message: string, options?: { status?: number; cause?: unknown }) {
    super(message, options);
    this.name = 'UnexpectedResponseError';
  }
}

/** Why {@link verifyWebhook} refused a delivery. */
export type WebhookFailure =
  | 'missing-header'
  | 'bad-timestamp'
  | 'timestamp-too-old'
  | 'timestamp-too-new'
  | 'bad-secret'
  | 'no-matching-signature'
  | 'bad-payload';

/** A webhook delivery that is not authentic, not fresh, or not readable. */
export class WebhookVerificationError extends ReplydError {
  /** Why, as a stable code. */
  readonly reason: WebhookFailure;

  constructor(reason: WebhookFailure, message: string) {
    super(message);
    this.name = 'WebhookVerificationError';
    this.reason = reason;
  }
}

/**
 * Thrown by a worker's handler: the job failed and must not be tried
 * again. Any other error fails the attempt and lets the server retry it
 * (while attempts remain).
 */
export class PermanentError extends Error {
  /** A short machine-readable code recorded with the failure (`error.code`). */
  readonly code: string | undefined;

  constructor(message: string, options?: { code?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'PermanentError';
    this.code = options?.code;
  }
}

/** Why a worker's handler was asked to stop (the reason of its `signal`). */
export type StopReason = 'canceled' | 'lease-lost' | 'shutdown';

/**
 * The reason a handler's `signal` carries when it aborts: the job was
 * canceled, its lease was lost, or the worker is shutting down.
 */
export class JobStoppedError extends ReplydError {
  /** Why the handler should stop. */
  readonly reason: StopReason;

  constructor(reason: StopReason) {
    super(
      reason === 'canceled'
        ? 'the job was canceled'
        : reason === 'lease-lost'
          ? 'the lease on the job was lost'
          : 'the worker is shutting down',
    );
    this.name = 'JobStoppedError';
    this.reason = reason;
  }
}
