/**
 * Every HTTP route this SDK calls, in one table. Requests are made only
 * through {@link ROUTES} (see `http.ts`), and a test checks that each
 * (method, path) here exists in `clients/openapi.json`, so the SDK cannot
 * call a route the server does not document.
 *
 * @module
 */

/** One route: its method, its path template, and whether repeating it is safe. */
export interface Route {
  readonly method: 'GET' | 'POST' | 'DELETE';
  /** The path as the OpenAPI document spells it, with `{name}` parameters. */
  readonly path: string;
  /**
   * Whether sending the request twice has the effect of sending it once,
   * so that it may be retried after a network error (a request that was
   * never answered may have been carried out). Answers that refuse a
   * request outright (429, 503) are retried for every route.
   */
  readonly idempotent: boolean;
}

/** The routes, by the SDK's name for each. */
export const ROUTES = {
  /** Submit a job. Retried safely because every submission carries an `Idempotency-Key`. */
  submit: { method: 'POST', path: '/v1/jobs', idempotent: true },
  listJobs: { method: 'GET', path: '/v1/jobs', idempotent: true },
  getJob: { method: 'GET', path: '/v1/jobs/{id}', idempotent: true },
  deleteJob: { method: 'DELETE', path: '/v1/jobs/{id}', idempotent: true },
  result: { method: 'GET', path: '/v1/jobs/{id}/result', idempotent: true },
  /** Not retried after a network error: a repeat of a cancel that landed answers 409. */
  cancel: { method: 'POST', path: '/v1/jobs/{id}/cancel', idempotent: false },
  events: { method: 'GET', path: '/v1/jobs/{id}/events', idempotent: true },
  /** Not retried after a network error: a lease that was granted but not heard of expires and is requeued. */
  lease: { method: 'POST', path: '/v1/queues/{queue}/lease', idempotent: false },
  heartbeat: { method: 'POST', path: '/v1/jobs/{id}/heartbeat', idempotent: true },
  progress: { method: 'POST', path: '/v1/jobs/{id}/progress', idempotent: true },
  complete: { method: 'POST', path: '/v1/jobs/{id}/complete', idempotent: true },
  fail: { method: 'POST', path: '/v1/jobs/{id}/fail', idempotent: true },
} as const satisfies Record<string, Route>;

/** The name of a route in {@link ROUTES}. */
export type RouteName = keyof typeof ROUTES;
