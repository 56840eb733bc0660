/**
 * The TypeScript/JavaScript SDK for replyd, an Asynchronous Request-Reply
 * server: `202 Accepted` at once, the work in the background, the result
 * by events, polling or webhooks.
 *
 * - {@link Client}: submit, get, result, cancel, delete, list, wait, events;
 *   the worker side's calls too.
 * - {@link Worker}: a pull worker (batch leases, heartbeats, progress,
 *   cancel as an `AbortSignal`, draining stop); {@link drainOnSignal}.
 * - {@link verifyWebhook}: Standard Webhooks signatures.
 * - {@link followJob}: a page follows a job with `EventSource` over its
 *   tokenised links.
 *
 * Durations are in seconds throughout, as on the wire. Runs on Node 20+
 * and in browsers, with no dependency: only `fetch`, streams,
 * `AbortController`, `crypto` and (for {@link followJob}) `EventSource`.
 *
 * @module
 */

export {
  Client,
  type ClientOptions,
  type LeasedJob,
  type LeaseOptions,
  type ListOptions,
  type SubmitOptions,
  type SubmittedJob,
} from './client.js';
export {
  ConnectionError,
  JobStoppedError,
  PermanentError,
  ProblemError,
  ReplydError,
  type StopReason,
  TimeoutError,
  UnexpectedResponseError,
  type WebhookFailure,
  WebhookVerificationError,
} from './errors.js';
export {
  type FollowOptions,
  type JobEvent,
  type JobEventType,
  type StreamEvent,
  type StreamResetEvent,
  isTerminal,
} from './events.js';
export { JobResult, RawResult, isJsonType } from './result.js';
export { ROUTES, type Route, type RouteName } from './routes.js';
export type * from './schema.js';
export { type JobStatus, type NotModified, type WaitOptions, type WaitTransport } from './wait.js';
export {
  type Handler,
  type JobContext,
  type StopOptions,
  Worker,
  type WorkerOptions,
  drainOnSignal,
} from './worker.js';
export { type VerifyOptions, type WebhookEvent, type WebhookHeaders, verifyWebhook } from './webhooks.js';
export {
  type EventSourceConstructor,
  type EventSourceLike,
  type EventSourceMessage,
  type FollowJobOptions,
  followJob,
} from './browser.js';
