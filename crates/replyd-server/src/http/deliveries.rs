//! Deliveries (API.md §2): a job's deliveries (webhooks, and broker
//! replies) with their attempt log, the deliveries of the caller's tenant
//! by state (the dead letters), and replaying them.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use replyd_core::outbox::{AttemptRecord, Channel, Delivery, DeliveryState, ReplyTarget};
use replyd_proto as proto;
use serde::Deserialize;

use super::{AppState, JobRequest, page, query};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs/{id}/deliveries", get(of_job))
        .route("/v1/deliveries", get(list))
        .route("/v1/deliveries/{id}/retry", post(retry))
        .route("/v1/deliveries/retry", post(retry_dead))
}

fn wire(d: &Delivery, attempts: Option<&[AttemptRecord]>) -> proto::Delivery {
    let reply = (d.channel != Channel::Webhook)
        .then(|| ReplyTarget::decode(&d.target))
        .flatten();
    proto::Delivery {
        id: d.id.to_string(),
        job_id: d.job.id.to_string(),
        channel: d.channel.as_str().to_string(),
        event: d.kind.name().to_string(),
        url: (d.channel == Channel::Webhook).then(|| d.target.clone()),
        reply_to: reply.as_ref().map(|r| r.to.clone()),
        correlation_id: reply.and_then(|r| r.correlation_id),
        state: d.state.as_str().to_string(),
        attempts: d.attempts,
        next_attempt_at: (d.state == DeliveryState::Pending).then_some(d.next_at),
        created_at: d.created_at,
        updated_at: d.updated_at,
        last_error: d.last_error.clone(),
        attempt_log: attempts.map(|a| {
            a.iter()
                .map(|a| proto::DeliveryAttempt {
                    at: a.at,
                    status: a.status,
                    latency_ms: a.latency_ms,
                    error: a.error.clone(),
                })
                .collect()
        }),
    }
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A job's webhook deliveries, oldest first, each with its attempts.
#[utoipa::path(get, path = "/v1/jobs/{id}/deliveries", tag = "webhooks", operation_id = "job_deliveries",
    params(("id" = String, Path)),
    responses((status = 200, body = proto::DeliveryList),
              (status = 404, description = "Unknown job", body = proto::Problem)))]
pub async fn of_job(State(app): State<AppState>, r: JobRequest) -> ApiResult<Response> {
    app.job_for(&r.caller, Action::Deliveries, r.id).await?;
    let ds = app.store.deliveries(r.id).await?;
    let deliveries = ds.iter().map(|(d, a)| wire(d, Some(a))).collect();
    Ok(json(
        StatusCode::OK,
        &proto::DeliveryList {
            deliveries,
            next_cursor: None,
        },
    ))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// The caller's deliveries, newest first (`?state=dead`: the dead letters).
#[utoipa::path(get, path = "/v1/deliveries", tag = "webhooks", operation_id = "list_deliveries",
    params(("state" = Option<String>, Query, description = "pending, delivered, dead or held"),
           ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1-1000, default 50")),
    responses((status = 200, body = proto::DeliveryList),
              (status = 400, body = proto::Problem)))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(q)?;
    let caller = app.auth.identify(&headers, None)?;
    // A job token is refused here: it grants its own job only.
    caller.check(Action::Deliveries, None)?;
    let state = match p.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DeliveryState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state must be one of pending, delivered, dead, held; got {s:?}"
            ))
        })?),
    };
    let (limit, before) = page::<i64>(p.limit, p.cursor.as_deref())?;
    let ds = app
        .store
        .list_deliveries(caller.tenant().cloned(), state, before, limit)
        .await?;
    let next_cursor = (ds.len() == limit as usize)
        .then(|| ds.last().map(|d| d.id.to_string()))
        .flatten();
    Ok(json(
        StatusCode::OK,
        &proto::DeliveryList {
            deliveries: ds.iter().map(|d| wire(d, None)).collect(),
            next_cursor,
        },
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct RetryParams {
    /// Send a delivery that succeeded once more.
    #[serde(default)]
    redeliver: bool,
}

/// Replay one delivery now (a dead letter, or one still waiting for its
/// next attempt); its schedule starts again. One that succeeded is sent
/// again only with `?redeliver=true` (else 409).
#[utoipa::path(post, path = "/v1/deliveries/{id}/retry", tag = "webhooks", operation_id = "retry_delivery",
    params(("id" = String, Path),
           ("redeliver" = Option<bool>, Query, description = "Also send a delivery that succeeded")),
    responses((status = 202, description = "Queued again", body = proto::Delivery),
              (status = 404, description = "Unknown delivery", body = proto::Problem),
              (status = 409, description = "It succeeded already (ask with redeliver=true)", body = proto::Problem)))]
pub async fn retry(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    q: Result<Query<RetryParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(q)?;
    let caller = app.auth.identify(&headers, None)?;
    // A job token is refused here: it grants its own job only.
    caller.check(Action::Replay, None)?;
    let id: i64 = raw
        .parse()
        .map_err(|_| ApiError::not_found("no such delivery"))?;
    let d = app
        .store
        .replay_delivery(id, caller.tenant(), p.redeliver, app.now())
        .await
        .map_err(|e| match e {
            replyd_core::StoreError::NotFound => ApiError::not_found("no such delivery"),
            other => other.into(),
        })?;
    Ok(json(StatusCode::ACCEPTED, &wire(&d, None)))
}

/// Which dead letters to replay.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Only this queue's jobs.
    pub queue: Option<String>,
    /// Only deliveries that died at or after this time.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Only deliveries that died at or before this time (default: now).
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

/// Replay every dead delivery of the caller's tenant that died in a time
/// range (optionally of one queue).
#[utoipa::path(post, path = "/v1/deliveries/retry", tag = "webhooks", operation_id = "retry_dead_deliveries",
    request_body = ReplayRequest,
    responses((status = 202, description = "{\"replayed\": N}"),
              (status = 400, body = proto::Problem)))]
pub async fn retry_dead(
    State(app): State<AppState>,
    headers: HeaderMap,
    raw: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    // A job token is refused here: it grants its own job only.
    caller.check(Action::Replay, None)?;
    let bytes = super::body(raw, app.config.limits.max_body)?;
    let req: ReplayRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        super::parse_json(&headers, &bytes)?
    };
    let now = app.now();
    let from = req.from.unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let to = req.to.unwrap_or(now);
    if from > to {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    let n = app
        .store
        .replay_dead_deliveries(caller.tenant().cloned(), req.queue, from, to, now)
        .await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"replayed": n}),
    ))
}
