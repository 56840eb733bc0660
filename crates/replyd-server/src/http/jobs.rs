//! `/v1/jobs`: submit, poll (with long polling), result, cancel, delete,
//! list (API.md §1).

use axum::Router;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use replyd_core::JobState;
use replyd_core::job::JobRecord;
use replyd_core::store::Submitted;
use replyd_proto as proto;
use serde::Deserialize;

use super::{
    AppState, Client, IfNoneMatch, JobRequest, body, etag, page, parse_json, prefer_wait, query,
    rate_headers, take_submit,
};
use crate::app::{Submission, request_hash};
use crate::auth::{Action, Caller};
use crate::error::{ApiError, ApiResult};
use crate::limits::Held;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs:batch", post(submit_batch))
        .route("/v1/jobs/{id}", get(status).delete(delete))
        .route("/v1/jobs/{id}/result", get(result))
        .route("/v1/jobs/{id}/input", get(input))
        .route("/v1/jobs/{id}/cancel", post(cancel))
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

fn set(res: &mut Response, name: header::HeaderName, value: impl AsRef<str>) {
    if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
        res.headers_mut().insert(name, v);
    }
}

/// The Idempotency-Key header, if any.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(crate::app::IDEMPOTENCY_KEY_RULE))
                .and_then(crate::app::idempotency_key)
        })
        .transpose()
}

/// Submit a job.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", operation_id = "submit_job",
    request_body = proto::SubmitRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the same job"),
           ("Prefer" = Option<String>, Header, description = "wait=N: answer 200 with the result if done within N s"),
           ("traceparent" = Option<String>, Header, description = "W3C Trace Context: the job joins this trace (its workers, webhooks and replies carry it on)"),
           ("tracestate" = Option<String>, Header, description = "W3C Trace Context: vendors' state, passed on with traceparent")),
    responses(
        (status = 202, description = "Accepted; durable", body = proto::Job),
        (status = 200, description = "Done within Prefer: wait; the body is the result"),
        (status = 400, description = "Malformed request", body = proto::Problem),
        (status = 404, description = "Unknown queue", body = proto::Problem),
        (status = 409, description = "The same Idempotency-Key is in flight", body = proto::Problem),
        (status = 413, description = "Body too large", body = proto::Problem),
        (status = 422, description = "Idempotency-Key reused with another body", body = proto::Problem)))]
pub async fn submit(
    State(app): State<AppState>,
    client: Client,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    caller.check(Action::Submit, None)?;
    let tenant = caller.owner()?;
    let rate = take_submit(&app, &tenant, 1)?;
    let bytes = body(raw, app.config.limits.max_body)?;
    let request: proto::SubmitRequest = parse_json(&headers, &bytes)?;
    let wait = prefer_wait(&headers)?;
    let key = idempotency_key(&headers)?;
    // The digest of the canonical body (serde_json's maps are sorted), so a
    // replay that spells the same request differently is still the same.
    let request_hash = key
        .as_ref()
        .map(|_| request_hash(&serde_json::from_slice(&bytes).unwrap_or_default()));
    let _waiting = match wait {
        Some(w) if !w.is_zero() => Some(client.hold(&app, Held::Wait, Some(&tenant))?),
        _ => None,
    };
    let submitted = app
        .submit(Submission {
            reply: None,
            tenant,
            request,
            idempotency_key: key,
            request_hash,
            trace: super::trace_of(&headers),
            via: "http",
        })
        .await?;
    let mut res = accepted(&app, submitted, wait).await?;
    with_rate(&mut res, rate);
    Ok(res)
}

/// The most jobs one `POST /v1/jobs:batch` carries.
pub const MAX_BATCH_JOBS: usize = 1000;

/// Submit many jobs at once: each is accepted as `POST /v1/jobs` would
/// accept it (its own idempotency key, its own checks), they are committed
/// together, and each is answered in order with its own status. The
/// batch counts as that many submissions against the tenant's rate; the
/// whole body is at most `limits.max_body`.
#[utoipa::path(post, path = "/v1/jobs:batch", tag = "jobs", operation_id = "submit_jobs",
    request_body = proto::BatchSubmitRequest,
    responses(
        (status = 200, description = "Each job's own status, in order", body = proto::BatchSubmitAnswer),
        (status = 400, description = "Malformed, empty, or more than 1000 jobs", body = proto::Problem),
        (status = 413, description = "Body too large", body = proto::Problem),
        (status = 429, description = "The tenant's submission rate is used up", body = proto::Problem)))]
pub async fn submit_batch(
    State(app): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    caller.check(Action::Submit, None)?;
    let tenant = caller.owner()?;
    let bytes = body(raw, app.config.limits.max_body)?;
    let request: proto::BatchSubmitRequest = parse_json(&headers, &bytes)?;
    let n = request.jobs.len();
    if n == 0 || n > MAX_BATCH_JOBS {
        return Err(ApiError::bad_request(format!(
            "jobs must hold 1 to {MAX_BATCH_JOBS} items"
        )));
    }
    let rate = take_submit(&app, &tenant, n as u32)?;
    // Every job of the batch is in the trace of the call.
    let trace = super::trace_of(&headers);
    // A job with a key is told from a reuse of its key by the digest of
    // what was sent for it, as `POST /v1/jobs` digests its body: the
    // item as it came, less its key (so that the two calls agree).
    let sent: Vec<serde_json::Value> = if request.jobs.iter().any(|j| j.idempotency_key.is_some()) {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|mut v| v.get_mut("jobs").map(serde_json::Value::take))
            .and_then(|v| match v {
                serde_json::Value::Array(items) => Some(items),
                _ => None,
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let submitted = request.jobs.into_iter().enumerate().map(|(i, item)| {
        let (app, tenant, trace) = (&app, &tenant, &trace);
        let mut as_sent = sent.get(i).cloned().unwrap_or_default();
        async move {
            let key = item
                .idempotency_key
                .as_deref()
                .map(crate::app::idempotency_key)
                .transpose()?;
            let request_hash = key.as_ref().map(|_| {
                if let Some(fields) = as_sent.as_object_mut() {
                    fields.remove("idempotency_key");
                }
                request_hash(&as_sent)
            });
            app.submit(Submission {
                reply: None,
                tenant: tenant.clone(),
                request: item.job,
                idempotency_key: key,
                request_hash,
                trace: trace.clone(),
                via: "http",
            })
            .await
        }
    });
    let jobs = futures::future::join_all(submitted)
        .await
        .into_iter()
        .map(|done| match done {
            Ok(s) => {
                let replayed = matches!(s, Submitted::Existing(_));
                let (Submitted::Created(job) | Submitted::Existing(job)) = s;
                proto::BatchSubmitted {
                    status: 202,
                    job: Some(app.render.job(&job)),
                    replayed,
                    problem: None,
                }
            }
            Err(e) => proto::BatchSubmitted {
                status: e.status.as_u16(),
                job: None,
                replayed: false,
                problem: Some(e.problem()),
            },
        })
        .collect();
    let mut res = json_response(StatusCode::OK, &proto::BatchSubmitAnswer { jobs });
    with_rate(&mut res, rate);
    Ok(res)
}

/// Tells the client its submission rate (`RateLimit-Policy`, `RateLimit`).
pub fn with_rate(res: &mut Response, rate: Option<crate::limits::RateState>) {
    if let Some(state) = rate {
        res.headers_mut().extend(rate_headers(&state));
    }
}

/// The answer to a submission: `202` with the job, its `Location` and
/// `Retry-After`; or, with `Prefer: wait=N` and a job that succeeded within
/// it, its result.
pub async fn accepted(
    app: &AppState,
    submitted: Submitted,
    wait: Option<std::time::Duration>,
) -> ApiResult<Response> {
    let replayed = matches!(submitted, Submitted::Existing(_));
    let mut job = match submitted {
        Submitted::Created(j) | Submitted::Existing(j) => j,
    };
    if let Some(w) = wait {
        job = app.wait_for(job, w, |j| j.state.is_terminal()).await?;
        if job.state == JobState::Succeeded {
            let mut res = result_body(app, &job).await?;
            set(
                &mut res,
                header::CONTENT_LOCATION,
                format!("/v1/jobs/{}/result", job.id),
            );
            set(
                &mut res,
                header::HeaderName::from_static("preference-applied"),
                format!("wait={}", w.as_secs()),
            );
            return Ok(res);
        }
    }
    let mut res = json_response(StatusCode::ACCEPTED, &app.render.job(&job));
    set(&mut res, header::LOCATION, format!("/v1/jobs/{}", job.id));
    set(
        &mut res,
        header::RETRY_AFTER,
        app.retry_after(&job).to_string(),
    );
    set(&mut res, header::ETAG, etag(job.version));
    if replayed {
        set(
            &mut res,
            header::HeaderName::from_static("idempotent-replayed"),
            "true",
        );
    }
    Ok(res)
}

/// The job's status: 202 while it runs, 303 to the result, 200 when it
/// failed or was canceled.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = String, Path), ("access_token" = Option<String>, Query, description = "A job token"),
           ("If-None-Match" = Option<String>, Header), ("Prefer" = Option<String>, Header, description = "wait=N: long poll")),
    responses(
        (status = 202, description = "Queued or running", body = proto::Job),
        (status = 303, description = "Succeeded; see the result", body = proto::Job),
        (status = 200, description = "Failed or canceled", body = proto::Job),
        (status = 304, description = "Unchanged"),
        (status = 404, description = "Unknown job", body = proto::Problem),
        (status = 410, description = "Expired", body = proto::Problem)))]
pub async fn status(
    State(app): State<AppState>,
    client: Client,
    r: JobRequest,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let wait = prefer_wait(&headers)?;
    let mut waiting = match wait {
        Some(w) if !w.is_zero() => Some(client.hold(&app, Held::Wait, None)?),
        _ => None,
    };
    let mut job = app.job_for(&r.caller, Action::Read, r.id).await?;
    if let Some(p) = waiting.as_mut() {
        p.add_tenant(&job.tenant)?;
    }
    let inm = IfNoneMatch::parse(&headers);
    if let Some(w) = wait {
        job = match &inm {
            Some(m) => {
                let seen = job.version;
                let m_matches = m.matches(seen);
                app.wait_for(job, w, move |j| !m_matches || j.version != seen)
                    .await?
            }
            None => app.wait_for(job, w, |j| j.state.is_terminal()).await?,
        };
    }
    let mut res = if inm.as_ref().is_some_and(|m| m.matches(job.version)) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if !job.state.is_terminal() {
            set(
                &mut r,
                header::RETRY_AFTER,
                app.retry_after(&job).to_string(),
            );
        }
        r
    } else {
        status_response(&app, &job, r.access_token.as_deref())
    };
    set(&mut res, header::ETAG, etag(job.version));
    if let Some(w) = wait {
        set(
            &mut res,
            header::HeaderName::from_static("preference-applied"),
            format!("wait={}", w.as_secs()),
        );
    }
    Ok(res)
}

fn status_response(app: &AppState, job: &JobRecord, query_token: Option<&str>) -> Response {
    let view = app.render.job(job);
    match job.state {
        JobState::Scheduled | JobState::Queued | JobState::Running => {
            let mut r = json_response(StatusCode::ACCEPTED, &view);
            set(
                &mut r,
                header::RETRY_AFTER,
                app.retry_after(job).to_string(),
            );
            r
        }
        JobState::Succeeded => {
            let mut r = json_response(StatusCode::SEE_OTHER, &view);
            // A caller who came with ?access_token= keeps it across the redirect.
            let location = match query_token {
                Some(_) => view.links.result.clone(),
                None => format!("/v1/jobs/{}/result", job.id),
            };
            set(&mut r, header::LOCATION, location);
            r
        }
        JobState::Failed | JobState::Canceled => json_response(StatusCode::OK, &view),
    }
}

/// The body of a succeeded job's result, with the worker's content type.
pub(crate) async fn result_body(app: &AppState, job: &JobRecord) -> ApiResult<Response> {
    let out = app
        .store
        .output(job.id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::GONE, "job-expired", "the result is gone"))?;
    // A worker that streamed its output and gave no result of its own:
    // the output is the result.
    if out.upstream.is_none()
        && &out.body[..] == b"null"
        && let Some(res) = super::stream::output_as_result(app, job).await?
    {
        return Ok(res);
    }
    // An upstream's answer (the gateway, the http executor) is replayed as
    // it came: its status and the headers kept.
    let status = out
        .upstream
        .as_ref()
        .and_then(|u| StatusCode::from_u16(u.status).ok())
        .filter(StatusCode::is_success)
        .unwrap_or(StatusCode::OK);
    let mut res = (status, out.body).into_response();
    for (k, v) in out.upstream.iter().flat_map(|u| &u.headers) {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            res.headers_mut().append(k, v);
        }
    }
    set(&mut res, header::CONTENT_TYPE, &out.content_type);
    Ok(res)
}

/// The result of a succeeded job.
#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs", operation_id = "get_result",
    params(("id" = String, Path), ("access_token" = Option<String>, Query)),
    responses(
        (status = 200, description = "The result, with the content type the worker gave it"),
        (status = 409, description = "Not finished, failed or canceled", body = proto::Problem),
        (status = 410, description = "Expired", body = proto::Problem),
        (status = 404, description = "Unknown job", body = proto::Problem)))]
pub async fn result(State(app): State<AppState>, r: JobRequest) -> ApiResult<Response> {
    let (id, job) = (r.id, app.job_for(&r.caller, Action::Read, r.id).await?);
    if job.state != JobState::Succeeded {
        let detail = match job.state {
            JobState::Failed | JobState::Canceled => format!(
                "the job is {}, so it has no result; see its error at /v1/jobs/{id}",
                job.state.as_str()
            ),
            s => format!("the job is {} and has no result yet", s.as_str()),
        };
        return Err(ApiError::conflict("no-result", detail));
    }
    result_body(&app, &job).await
}

/// Cancel a job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job",
    params(("id" = String, Path), ("access_token" = Option<String>, Query)),
    responses(
        (status = 200, description = "Canceled (it was queued)", body = proto::Job),
        (status = 202, description = "Cancel requested; the worker stops at its next heartbeat", body = proto::Job),
        (status = 409, description = "Already finished", body = proto::Problem),
        (status = 404, description = "Unknown job", body = proto::Problem)))]
pub async fn cancel(State(app): State<AppState>, r: JobRequest) -> ApiResult<Response> {
    let job = app.cancel(&r.caller, r.id).await?;
    let status = if job.state.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(json_response(status, &app.render.job(&job)))
}

/// A job's input, as submitted.
#[utoipa::path(get, path = "/v1/jobs/{id}/input", tag = "jobs", operation_id = "job_input",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The input (application/json)"),
        (status = 403, description = "A job token (it may be in a browser; the input may hold what only its submitter should see)", body = proto::Problem),
        (status = 404, description = "Unknown job", body = proto::Problem),
        (status = 410, description = "Expired: its input is gone", body = proto::Problem)))]
pub async fn input(State(app): State<AppState>, r: JobRequest) -> ApiResult<Response> {
    if let Caller::JobToken(_) = r.caller {
        return Err(ApiError::forbidden(
            "a job token cannot read its job's input",
        ));
    }
    app.job_for(&r.caller, Action::Read, r.id).await?;
    let Some(bytes) = app.store.input(r.id).await? else {
        return Err(ApiError::new(
            StatusCode::GONE,
            "job-expired",
            "the job's input is gone",
        ));
    };
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response())
}

/// Delete a finished job and its result.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "delete_job",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "Not finished", body = proto::Problem),
        (status = 404, description = "Unknown job", body = proto::Problem)))]
pub async fn delete(State(app): State<AppState>, r: JobRequest) -> ApiResult<Response> {
    let id = r.id;
    if let Caller::JobToken(_) = r.caller {
        return Err(ApiError::forbidden("a job token cannot delete its job"));
    }
    let job = app.job_for(&r.caller, Action::Cancel, id).await?;
    app.store.delete(id).await?;
    app.stats.removed(&job.queue, job.state);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    queue: Option<String>,
    state: Option<String>,
    since: Option<String>,
    until: Option<String>,
    q: Option<String>,
    idempotency_key: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// List the caller's jobs, newest first. A page with a filter on queue,
/// state or text reads at most 5,000 jobs: it may come back short (even
/// empty) with a `next_cursor` to go on from.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs",
    params(("queue" = Option<String>, Query), ("state" = Option<String>, Query),
           ("since" = Option<String>, Query, description = "Created at or after (RFC 3339)"),
           ("until" = Option<String>, Query, description = "Created before (RFC 3339)"),
           ("q" = Option<String>, Query, description = "Text in the input or the error message (ASCII case-insensitive)"),
           ("idempotency_key" = Option<String>, Query),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1-1000, default 50"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = proto::JobList), (status = 400, body = proto::Problem)))]
pub async fn list(
    State(app): State<AppState>,
    q: Result<Query<ListParams>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = query(q)?;
    let caller = app.auth.identify(&headers, None)?;
    // A job token is refused here: it grants its own job only.
    caller.check(Action::Read, None)?;
    let filter = proto::JobFilter {
        queue: p.queue,
        state: p.state,
        since: p.since,
        until: p.until,
        q: p.q,
        idempotency_key: p.idempotency_key,
    };
    let mut query = super::steer::list_query(&caller, &filter)?;
    (query.limit, query.before) = page::<replyd_core::JobId>(p.limit, p.cursor.as_deref())?;
    let page = app.store.list(query).await?;
    let now = app.now();
    let list = proto::JobList {
        jobs: page
            .jobs
            .iter()
            .filter(|j| !j.is_expired(now))
            .map(|j| app.render.job(j))
            .collect(),
        next_cursor: page.next.map(|id| id.to_string()),
    };
    Ok(json_response(StatusCode::OK, &list))
}
