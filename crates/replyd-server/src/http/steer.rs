//! Steering jobs an operator picked: `POST /v1/jobs/{id}/retry` (a failed
//! or canceled job submitted again, as a new job), and `POST
//! /v1/jobs:bulk`, an action on every job a filter matches, not only the
//! ones on a screen: each call handles a slice and says where the next
//! goes on, so that a million matches never hold one request or one
//! transaction, and an interrupted run resumes.
//!
//! A filter ([`proto::JobFilter`]) is the same as `GET /v1/jobs`'s query;
//! [`list_query`] turns one into the store's [`ListQuery`].

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::job::{Command, JobRecord, JobState, TransitionError};
use replyd_core::store::{ListQuery, Move};
use replyd_core::{JobId, StoreError};
use replyd_proto as proto;

use super::{AppState, JobRequest, body, parse_json};
use crate::auth::{Action, Caller};
use crate::error::{ApiError, ApiResult};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs:bulk", post(bulk))
        .route("/v1/jobs/{id}/retry", post(retry))
}

/// The most matches one bulk call handles.
const SLICE: usize = 1_000;
/// How long one bulk call works before it answers with where to go on.
const SLICE_TIME: Duration = Duration::from_secs(5);
/// Jobs read (and changed together) at a time.
const PAGE: u32 = 200;
/// Refusals told in one answer.
const REFUSALS_TOLD: usize = 20;
/// The longest search text.
const MAX_TEXT: usize = 200;

/// The store's query for `filter` as `caller` may see it: the caller's
/// tenant only, unless it is a key of every tenant.
pub fn list_query(caller: &Caller, f: &proto::JobFilter) -> ApiResult<ListQuery> {
    if let Some(q) = &f.queue {
        super::queue_filter(q)?;
    }
    let state = match f.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state must be one of queued, running, succeeded, failed, canceled; got {s:?}"
            ))
        })?),
    };
    let time = |name: &str, v: &Option<String>| -> ApiResult<Option<DateTime<Utc>>> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "{name} must be an RFC 3339 time, such as 2026-12-07T10:00:00Z"
                    ))
                }),
        }
    };
    let text = f.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if text.is_some_and(|t| t.len() > MAX_TEXT) {
        return Err(ApiError::bad_request(format!(
            "q is longer than {MAX_TEXT} bytes"
        )));
    }
    let key = f.idempotency_key.as_deref().filter(|k| !k.is_empty());
    if key.is_some_and(|k| k.len() > 255) {
        return Err(ApiError::bad_request(
            "idempotency_key is longer than 255 bytes",
        ));
    }
    Ok(ListQuery {
        tenant: caller.tenant().cloned(),
        queue: f.queue.clone().filter(|q| !q.is_empty()),
        state,
        since: time("since", &f.since)?,
        until: time("until", &f.until)?,
        idempotency_key: key.map(str::to_string),
        text: text.map(str::to_string),
        ..Default::default()
    })
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Submit a failed or canceled job again, as a new job.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", operation_id = "retry_job",
    params(("id" = String, Path)),
    responses(
        (status = 202, description = "The new job", body = proto::Job),
        (status = 404, description = "Unknown job, or its queue is no longer configured", body = proto::Problem),
        (status = 409, description = "The job has not failed or been canceled", body = proto::Problem),
        (status = 429, description = "The tenant submits faster than its limits.submit_rate", body = proto::Problem)))]
pub async fn retry(State(app): State<AppState>, r: JobRequest) -> ApiResult<Response> {
    if let Caller::JobToken(_) = r.caller {
        return Err(ApiError::forbidden("a job token cannot submit jobs"));
    }
    // A retry is a submission: the tenant's submit rate applies.
    let old = app.job_for(&r.caller, Action::Submit, r.id).await?;
    super::take_submit(&app, &old.tenant, 1)?;
    let job = app.retry(old).await?;
    let mut res = json(StatusCode::ACCEPTED, &app.render.job(&job));
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        res.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(res)
}

/// Cancel, retry or delete every job a filter matches.
#[utoipa::path(post, path = "/v1/jobs:bulk", tag = "jobs", operation_id = "bulk_jobs",
    request_body = proto::BulkRequest,
    responses(
        (status = 200, description = "What this slice did; call again with next_cursor until it is null", body = proto::BulkAnswer),
        (status = 400, body = proto::Problem)))]
pub async fn bulk(
    State(app): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    let req: proto::BulkRequest = parse_json(&headers, &body(raw, app.config.limits.max_body)?)?;
    let action = match req.action {
        proto::BulkAction::Retry => Action::Submit,
        proto::BulkAction::Cancel | proto::BulkAction::Delete => Action::Cancel,
    };
    caller.check(action, None)?;
    let mut q = list_query(&caller, &req.filter)?;
    q.before = match req.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<JobId>()
                .map_err(|_| ApiError::bad_request("malformed cursor"))?,
        ),
    };
    q.limit = PAGE;
    let started = Instant::now();
    let mut answer = proto::BulkAnswer {
        matched: 0,
        changed: 0,
        refused: Vec::new(),
        created: Vec::new(),
        next_cursor: None,
    };
    loop {
        let mut page = app.store.list(q.clone()).await?;
        // An expired job is gone to the API (410), as it is to a listing.
        let now = app.now();
        page.jobs.retain(|j| !j.is_expired(now));
        answer.matched += page.jobs.len() as u64;
        let outcomes = act(&app, &caller, req.action, &page.jobs).await?;
        for (job, outcome) in page.jobs.iter().zip(outcomes) {
            match outcome {
                Ok(Some(new)) => {
                    answer.changed += 1;
                    answer.created.push(new.to_string());
                }
                Ok(None) => answer.changed += 1,
                Err(detail) if answer.refused.len() < REFUSALS_TOLD => {
                    answer.refused.push(proto::BulkRefusal {
                        id: job.id.to_string(),
                        detail,
                    });
                }
                Err(_) => {}
            }
        }
        q.before = page.next;
        if page.next.is_none()
            || answer.matched as usize >= SLICE
            || started.elapsed() >= SLICE_TIME
        {
            answer.next_cursor = page.next.map(|c| c.to_string());
            return Ok(json(StatusCode::OK, &answer));
        }
    }
}

/// Does `action` to each of `ids`: for each, `Ok` with the new job a retry
/// made, or why it did not change. An `Err` of the whole is the store's.
async fn act(
    app: &AppState,
    caller: &Caller,
    action: proto::BulkAction,
    jobs: &[JobRecord],
) -> ApiResult<Vec<Result<Option<JobId>, String>>> {
    let mut out = Vec::with_capacity(jobs.len());
    match action {
        proto::BulkAction::Cancel => {
            let moves = jobs
                .iter()
                .map(|j| Move {
                    id: j.id,
                    cmd: Command::Cancel,
                    output: None,
                })
                .collect();
            for r in app
                .store
                .apply_many(caller.tenant(), moves, app.now())
                .await?
            {
                out.push(r.map(|_| None).map_err(|e| refusal(&e)));
            }
        }
        proto::BulkAction::Delete => {
            for j in jobs {
                out.push(match app.store.delete(j.id).await {
                    Ok(()) => {
                        app.stats.removed(&j.queue, j.state);
                        Ok(None)
                    }
                    Err(e @ (StoreError::Unavailable(_) | StoreError::Backend(_))) => {
                        return Err(e.into());
                    }
                    Err(e) => Err(refusal(&e)),
                });
            }
        }
        proto::BulkAction::Retry => {
            for j in jobs {
                if let Err(e) = super::take_submit(app, &j.tenant, 1) {
                    out.push(Err(e.detail));
                    continue;
                }
                out.push(match app.retry(j.clone()).await {
                    Ok(job) => Ok(Some(job.id)),
                    Err(e) if e.status.is_server_error() => return Err(e),
                    Err(e) => Err(e.detail),
                });
            }
        }
    }
    Ok(out)
}

fn refusal(e: &StoreError) -> String {
    match e {
        StoreError::Transition(TransitionError::AlreadyFinished(s)) => {
            format!("it has {} already", s.as_str())
        }
        StoreError::Transition(t) => t.to_string(),
        StoreError::NotFound => "it is gone".to_string(),
        other => other.to_string(),
    }
}
