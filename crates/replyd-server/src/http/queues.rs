//! `/v1/queues`: every configured queue with its jobs by state, whether it
//! is paused, and its last hour a minute at a time (`crate::stats`); and
//! pausing and resuming one. Operator views: a key of every tenant (a
//! queue is shared by the tenants, and so are its figures and its pause).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use replyd_core::JobState;
use replyd_proto as proto;

use super::AppState;
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/queues", get(list))
        .route("/v1/queues/{queue}/pause", post(pause))
        .route("/v1/queues/{queue}/resume", post(resume))
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Every queue: jobs by state, pause, and its last hour.
#[utoipa::path(get, path = "/v1/queues", tag = "queues", operation_id = "list_queues",
    responses((status = 200, body = proto::QueueList),
              (status = 403, description = "Not a key of every tenant", body = proto::Problem)))]
pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    operator(&app, &caller)?;
    let mut names: Vec<&String> = app.config.queues.keys().collect();
    names.sort();
    let queues = views(&app, &names).await?;
    Ok(json(StatusCode::OK, &proto::QueueList { queues }))
}

/// The queues named, as the API shows them.
async fn views(app: &AppState, names: &[&String]) -> ApiResult<Vec<proto::Queue>> {
    let counts = app.stats.counts(&*app.store).await?;
    let paused = app.store.paused_queues().await?;
    let now = app.now();
    let mut out = Vec::with_capacity(names.len());
    for &name in names {
        let Some(q) = app.config.queues.get(name) else {
            continue;
        };
        let mut jobs = proto::StateCounts::default();
        for c in counts.iter().filter(|c| &c.queue == name) {
            *match c.state {
                JobState::Scheduled => &mut jobs.scheduled,
                JobState::Queued => &mut jobs.queued,
                JobState::Running => &mut jobs.running,
                JobState::Succeeded => &mut jobs.succeeded,
                JobState::Failed => &mut jobs.failed,
                JobState::Canceled => &mut jobs.canceled,
            } += c.count;
        }
        let paused_at = paused.iter().find(|(p, _)| p == name).map(|(_, at)| *at);
        out.push(proto::Queue {
            name: name.clone(),
            executor: serde_json::to_value(q.executor)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            paused: paused_at.is_some(),
            paused_at,
            jobs,
            max_running: q.max_running,
            rate: q.rate.clone(),
            minutes: app.stats.minutes(name, now),
        });
    }
    Ok(out)
}

/// Pause a queue: no job of it is leased, by any worker or executor on
/// any node, until it is resumed; submissions are still accepted.
#[utoipa::path(post, path = "/v1/queues/{queue}/pause", tag = "queues", operation_id = "pause_queue",
    params(("queue" = String, Path)),
    responses((status = 200, description = "Paused (or already paused)", body = proto::Queue),
              (status = 404, description = "No such queue", body = proto::Problem)))]
pub async fn pause(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(queue): Path<String>,
) -> ApiResult<Response> {
    set_paused(app, headers, queue, true).await
}

/// Resume a paused queue.
#[utoipa::path(post, path = "/v1/queues/{queue}/resume", tag = "queues", operation_id = "resume_queue",
    params(("queue" = String, Path)),
    responses((status = 200, description = "Resumed (or not paused)", body = proto::Queue),
              (status = 404, description = "No such queue", body = proto::Problem)))]
pub async fn resume(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(queue): Path<String>,
) -> ApiResult<Response> {
    set_paused(app, headers, queue, false).await
}

async fn set_paused(
    app: AppState,
    headers: HeaderMap,
    queue: String,
    paused: bool,
) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    operator(&app, &caller)?;
    if !app.config.queues.contains_key(&queue) {
        return Err(ApiError::not_found(format!(
            "no queue named {queue:?} is configured"
        )));
    }
    if app.store.pause_queue(&queue, paused, app.now()).await? {
        let what = if paused { "paused" } else { "resumed" };
        tracing::info!(queue = %queue, "queue {what}");
    }
    if !paused {
        // This node's waiting leases look again; other nodes' at their
        // next event or wait's end.
        app.hub.bells.ring_all();
    }
    let view = views(&app, &[&queue]).await?;
    Ok(json(StatusCode::OK, &view[0]))
}

/// Queues are everyone's: a key of every tenant (or open mode) only.
fn operator(app: &AppState, caller: &crate::auth::Caller) -> ApiResult<()> {
    if app.auth.is_open() {
        return Ok(());
    }
    caller.check(Action::Operate, None)
}
