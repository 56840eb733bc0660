//! The worker API (API.md §5): lease with long polling, heartbeat, progress,
//! complete (JSON or a raw body), fail. Every call after the lease carries
//! the lease id: a stale one is 409 (fencing).

use replyd_core::trace::SpanOf;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use replyd_core::LeaseId;
use replyd_core::job::{Command, JobError, JobRecord, Progress};
use replyd_core::store::{JobOutput, LeaseQuery, Leased, Move};
use replyd_proto as proto;
use serde::Deserialize;

use super::{AppState, Client, WorkerCall, body, is_json, job_id, parse_json, query};
use crate::app::App;
use crate::auth::{Action, Caller};
use crate::config::{Executor, secs};
use crate::error::{ApiError, ApiResult};
use crate::render::wire_state;

/// The most jobs one lease call hands out.
pub const MAX_BATCH: u32 = 100;
/// The most outcomes one `POST /v1/workers/complete` carries.
pub const MAX_OUTCOMES: usize = 1000;

pub fn router(max_result: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/queues/{queue}/lease",
            post(lease).layer(DefaultBodyLimit::max(max_result)),
        )
        .route("/v1/jobs/{id}/heartbeat", post(heartbeat))
        .route("/v1/jobs/{id}/progress", post(progress))
        .route(
            "/v1/jobs/{id}/complete",
            post(complete).layer(DefaultBodyLimit::max(max_result)),
        )
        .route("/v1/jobs/{id}/fail", post(fail))
        .route(
            "/v1/workers/complete",
            post(complete_many).layer(DefaultBodyLimit::max(max_result)),
        )
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

fn worker(app: &App, headers: &HeaderMap) -> ApiResult<Caller> {
    let caller = app.auth.identify(headers, None)?;
    caller.check(Action::Work, None)?;
    Ok(caller)
}

/// A duration in seconds from a request, checked against a range.
fn seconds(name: &str, v: Option<f64>, default: Duration, max: f64) -> ApiResult<Duration> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s >= 0.0 && s <= max => Ok(secs(s)),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be a number of seconds between 0 and {max}"
        ))),
    }
}

/// The job as a worker receives it: the representation plus its input.
pub fn leased_view(app: &App, l: &Leased) -> proto::Lease {
    let mut job = app.render.job(&l.job);
    job.input = Some(serde_json::from_slice(&l.input).unwrap_or(serde_json::Value::Null));
    let trace = app
        .telemetry
        .outgoing(&l.job, SpanOf::Attempt(l.job.attempt));
    proto::Lease {
        job,
        traceparent: trace.as_ref().map(|t| t.traceparent.clone()),
        tracestate: trace.and_then(|t| t.tracestate),
        lease_id: l.lease_id.0.clone(),
        lease_expires_at: l
            .job
            .lease
            .as_ref()
            .map(|x| x.expires_at)
            .unwrap_or(l.job.updated_at),
    }
}

/// Lease the oldest ready job(s) of a queue.
#[utoipa::path(post, path = "/v1/queues/{queue}/lease", tag = "workers", operation_id = "lease",
    params(("queue" = String, Path)),
    request_body = proto::LeaseRequest,
    responses(
        (status = 200, description = "A job (or, with `batch`, a LeaseBatch)", body = proto::LeaseAnswer),
        (status = 204, description = "Nothing to do within `wait`"),
        (status = 404, description = "Unknown queue", body = proto::Problem),
        (status = 409, description = "The queue is not served by pull workers", body = proto::Problem)))]
pub async fn lease(
    State(app): State<AppState>,
    client: Client,
    Path(queue): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = worker(&app, &headers)?;
    // It may carry a batch's outcomes: as large as `POST
    // /v1/workers/complete` may be.
    let bytes = body(raw, app.config.limits.max_result)?;
    let req: proto::LeaseRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        proto::LeaseRequest::default()
    } else {
        parse_json(&headers, &bytes)?
    };
    let q = app.config.queues.get(&queue).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-queue",
            format!("no queue named {queue:?} is configured"),
        )
    })?;
    if q.executor != Executor::Pull {
        return Err(ApiError::conflict(
            "not-a-pull-queue",
            format!("queue {queue:?} is run by its built-in executor, not by pull workers"),
        ));
    }
    let length =
        seconds("lease", req.lease, secs(q.timeout.min(30.0)), 3600.0)?.max(Duration::from_secs(1));
    let wait = seconds("wait", req.wait, Duration::ZERO, 60.0)?;
    let max = req.batch.unwrap_or(1);
    if !(1..=MAX_BATCH).contains(&max) {
        return Err(ApiError::bad_request(format!(
            "batch must be between 1 and {MAX_BATCH}"
        )));
    }
    if !req.outcomes.is_empty() && req.batch.is_none() {
        return Err(ApiError::bad_request(
            "outcomes need batch: their answers come back in the batch's answer",
        ));
    }
    if req.outcomes.len() > MAX_OUTCOMES {
        return Err(ApiError::bad_request(format!(
            "outcomes must hold at most {MAX_OUTCOMES} items"
        )));
    }
    let _waiting = if wait.is_zero() {
        None
    } else {
        Some(client.hold(&app, crate::limits::Held::Wait, caller.tenant())?)
    };
    let worker_name = req.worker.unwrap_or_else(|| "anonymous".into());
    if worker_name.len() > 200 {
        return Err(ApiError::bad_request(
            "worker must be at most 200 characters",
        ));
    }
    let query = LeaseQuery {
        queue,
        tenant: caller.tenant().cloned(),
        worker: worker_name,
        length,
        max,
        limits: Default::default(),
    };
    // The outcomes and the lease go to the store together (on SQLite, in
    // one commit): neither waits for the other.
    let carried = !req.outcomes.is_empty();
    let (outcomes, leased) = tokio::join!(
        async {
            match carried {
                true => apply_outcomes(&app, &caller, req.outcomes).await,
                false => Ok(Vec::new()),
            }
        },
        app.lease(query, wait)
    );
    let (outcomes, leased) = (outcomes?, leased?);
    if leased.is_empty() && !carried {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let views: Vec<proto::Lease> = leased.iter().map(|l| leased_view(&app, l)).collect();
    Ok(match req.batch {
        Some(_) => json(
            StatusCode::OK,
            &proto::LeaseBatch {
                leases: views,
                outcomes,
            },
        ),
        None => json(StatusCode::OK, &views[0]),
    })
}

fn lease_status(job: &JobRecord) -> proto::LeaseStatus {
    proto::LeaseStatus {
        cancel_requested: job.cancel_requested,
        lease_expires_at: job
            .lease
            .as_ref()
            .map(|l| l.expires_at)
            .unwrap_or(job.updated_at),
    }
}

/// Extend a lease; learn whether the job was canceled.
#[utoipa::path(post, path = "/v1/jobs/{id}/heartbeat", tag = "workers",
    params(("id" = String, Path)), request_body = proto::HeartbeatRequest,
    responses((status = 200, body = proto::LeaseStatus),
              (status = 409, description = "The lease is stale (fencing)", body = proto::Problem)))]
pub async fn heartbeat(
    State(app): State<AppState>,
    call: WorkerCall<proto::HeartbeatRequest>,
) -> ApiResult<Response> {
    let WorkerCall {
        id,
        caller,
        body: req,
    } = call;
    let length = match req.lease {
        None => None,
        lease => Some(seconds("lease", lease, Duration::ZERO, 3600.0)?.max(Duration::from_secs(1))),
    };
    let cmd = Command::Heartbeat {
        lease_id: LeaseId(req.lease_id),
        length,
    };
    let job = app.worker_apply(&caller, id, cmd, None).await?;
    Ok(json(StatusCode::OK, &lease_status(&job)))
}

/// Report progress (also extends the lease).
#[utoipa::path(post, path = "/v1/jobs/{id}/progress", tag = "workers",
    params(("id" = String, Path)), request_body = proto::ProgressRequest,
    responses((status = 200, body = proto::LeaseStatus),
              (status = 409, description = "The lease is stale (fencing)", body = proto::Problem)))]
pub async fn progress(
    State(app): State<AppState>,
    call: WorkerCall<proto::ProgressRequest>,
) -> ApiResult<Response> {
    let WorkerCall {
        id,
        caller,
        body: req,
    } = call;
    if let Some(p) = req.percent
        && !(p.is_finite() && (0.0..=100.0).contains(&p))
    {
        return Err(ApiError::bad_request("percent must be between 0 and 100"));
    }
    if req.message.as_ref().is_some_and(|m| m.len() > 4096) {
        return Err(ApiError::bad_request("message must be at most 4096 bytes"));
    }
    let cmd = Command::Progress {
        lease_id: LeaseId(req.lease_id),
        progress: Progress {
            percent: req.percent,
            message: req.message,
        },
    };
    let job = app.worker_apply(&caller, id, cmd, None).await?;
    Ok(json(StatusCode::OK, &lease_status(&job)))
}

#[derive(Debug, Deserialize)]
pub struct RawParams {
    lease_id: Option<String>,
}

/// Deliver the result: `{"lease_id", "result"}` as JSON, or any other
/// content type as the raw result with the lease id in the
/// `Replyd-Lease-Id` header or `?lease_id=`.
#[utoipa::path(post, path = "/v1/jobs/{id}/complete", tag = "workers",
    params(("id" = String, Path), ("lease_id" = Option<String>, Query, description = "For a raw result"),
           ("Replyd-Lease-Id" = Option<String>, Header, description = "For a raw result")),
    request_body = proto::CompleteRequest,
    responses((status = 200, body = proto::Job),
              (status = 409, description = "Stale lease, or the job was canceled", body = proto::Problem),
              (status = 413, description = "Result too large", body = proto::Problem)))]
pub async fn complete(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    q: Result<Query<RawParams>, QueryRejection>,
    headers: HeaderMap,
    raw_body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let id = job_id(&raw)?;
    let caller = worker(&app, &headers)?;
    let bytes = body(raw_body, app.config.limits.max_result)?;
    let (lease_id, output) = if is_json(&headers) {
        let req: proto::CompleteRequest = parse_json(&headers, &bytes)?;
        (req.lease_id, json_output(&req.result))
    } else {
        let params = query(q)?;
        let from_header = headers
            .get(proto::LEASE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let lease_id = from_header.or(params.lease_id).ok_or_else(|| {
            ApiError::bad_request(
                "a raw result needs its lease id in the Replyd-Lease-Id header or ?lease_id=",
            )
        })?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 255)
            .ok_or_else(|| ApiError::bad_request("malformed Content-Type"))?
            .to_string();
        (
            lease_id,
            JobOutput {
                content_type,
                body: bytes,
                upstream: None,
            },
        )
    };
    let cmd = Command::Complete {
        lease_id: LeaseId(lease_id),
    };
    let job = app.worker_apply(&caller, id, cmd, Some(output)).await?;
    Ok(json(StatusCode::OK, &app.render.job(&job)))
}

/// Give up on the attempt, asking for a retry or not.
#[utoipa::path(post, path = "/v1/jobs/{id}/fail", tag = "workers",
    params(("id" = String, Path)), request_body = proto::FailRequest,
    responses((status = 200, body = proto::Job),
              (status = 409, description = "The lease is stale (fencing)", body = proto::Problem)))]
pub async fn fail(
    State(app): State<AppState>,
    call: WorkerCall<proto::FailRequest>,
) -> ApiResult<Response> {
    let WorkerCall {
        id,
        caller,
        body: req,
    } = call;
    let error = job_error(req.error)?;
    let cmd = Command::Fail {
        lease_id: LeaseId(req.lease_id),
        error,
        retry: req.retry,
    };
    let job = app.worker_apply(&caller, id, cmd, None).await?;
    Ok(json(StatusCode::OK, &app.render.job(&job)))
}

/// A JSON result as a job's output.
fn json_output(result: &serde_json::Value) -> JobOutput {
    JobOutput {
        content_type: "application/json".into(),
        body: serde_json::to_vec(result).unwrap_or_default().into(),
        upstream: None,
    }
}

/// A worker's error, checked as `fail` checks it.
fn job_error(reason: proto::FailReason) -> ApiResult<JobError> {
    let error = match reason {
        proto::FailReason::Message(m) => JobError::new("worker_error", m),
        proto::FailReason::Error { code, message } => {
            JobError::new(code.as_deref().unwrap_or("worker_error"), message)
        }
    };
    if error.code.len() > 100 || error.message.len() > 8192 {
        return Err(ApiError::bad_request(
            "error.code must be at most 100 bytes and error.message 8192",
        ));
    }
    Ok(error)
}

/// Many jobs' outcomes (results or failures) in one call: each is applied
/// as `complete` or `fail` would apply it, fenced by its own lease, and
/// answered in order with the status that call would have had. They are
/// applied at once, so the store commits them together. The whole body is
/// at most `limits.max_result`.
#[utoipa::path(post, path = "/v1/workers/complete", tag = "workers",
    request_body = proto::OutcomesRequest,
    responses((status = 200, description = "Each outcome's own status, in order", body = proto::OutcomesAnswer),
              (status = 400, description = "Malformed, empty, or more than 1000 outcomes", body = proto::Problem),
              (status = 413, description = "Body too large", body = proto::Problem)))]
pub async fn complete_many(
    State(app): State<AppState>,
    headers: HeaderMap,
    raw_body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = worker(&app, &headers)?;
    let bytes = body(raw_body, app.config.limits.max_result)?;
    let req: proto::OutcomesRequest = parse_json(&headers, &bytes)?;
    if req.outcomes.is_empty() {
        return Err(ApiError::bad_request(format!(
            "outcomes must hold 1 to {MAX_OUTCOMES} items"
        )));
    }
    let outcomes = apply_outcomes(&app, &caller, req.outcomes).await?;
    Ok(json(StatusCode::OK, &proto::OutcomesAnswer { outcomes }))
}

/// Applies a worker's outcomes, each as `complete` or `fail` would,
/// fenced by its own lease, all in one store call (so one commit on
/// SQLite), and answers each in order: 200 with the job's state, or the
/// problem the one-job call would have had. `Err` when the batch is too
/// large, or the store failed (then none is known to have been applied).
async fn apply_outcomes(
    app: &App,
    caller: &Caller,
    outcomes: Vec<proto::Outcome>,
) -> ApiResult<Vec<proto::OutcomeAnswer>> {
    if outcomes.len() > MAX_OUTCOMES {
        return Err(ApiError::bad_request(format!(
            "outcomes must hold at most {MAX_OUTCOMES} items"
        )));
    }
    // Each outcome is checked on its own: a malformed one is its own
    // answer, the rest still go.
    let mut answers: Vec<proto::OutcomeAnswer> = Vec::with_capacity(outcomes.len());
    let mut moves = Vec::with_capacity(outcomes.len());
    let mut slots = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let checked = job_id(&o.job_id).and_then(|id| {
            let lease_id = LeaseId(o.lease_id);
            Ok(match o.error {
                Some(reason) => Move {
                    id,
                    cmd: Command::Fail {
                        lease_id,
                        error: job_error(reason)?,
                        retry: o.retry,
                    },
                    output: None,
                },
                None => Move {
                    id,
                    cmd: Command::Complete { lease_id },
                    output: Some(json_output(&o.result)),
                },
            })
        });
        match checked {
            Ok(m) => {
                slots.push(answers.len());
                moves.push(m);
                answers.push(outcome_answer(o.job_id, Ok(None)));
            }
            Err(e) => answers.push(outcome_answer(o.job_id, Err(e))),
        }
    }
    if !moves.is_empty() {
        let applied = app.worker_apply_many(caller, moves).await?;
        for (slot, result) in slots.into_iter().zip(applied) {
            let job_id = std::mem::take(&mut answers[slot].job_id);
            answers[slot] = outcome_answer(job_id, result.map(Some).map_err(ApiError::from));
        }
    }
    Ok(answers)
}

fn outcome_answer(job_id: String, r: ApiResult<Option<JobRecord>>) -> proto::OutcomeAnswer {
    match r {
        Ok(job) => proto::OutcomeAnswer {
            job_id,
            status: 200,
            state: job.map(|j| wire_state(j.state)),
            problem: None,
        },
        Err(e) => proto::OutcomeAnswer {
            job_id,
            status: e.status.as_u16(),
            state: None,
            problem: Some(e.problem()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_range_checked() {
        assert!(seconds("x", Some(-1.0), Duration::ZERO, 10.0).is_err());
        assert!(seconds("x", Some(f64::NAN), Duration::ZERO, 10.0).is_err());
        assert!(seconds("x", Some(11.0), Duration::ZERO, 10.0).is_err());
        assert_eq!(
            seconds("x", Some(2.5), Duration::ZERO, 10.0).unwrap(),
            Duration::from_millis(2500)
        );
    }
}
