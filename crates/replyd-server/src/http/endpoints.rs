//! Webhook endpoints that fail (`replyd_core::ops`): the list of those
//! with dead letters in a row or paused, pausing one by hand (its
//! deliveries are then held), and resuming a paused one (its held
//! deliveries then flow, in order). Admin keys; a tenant's admin sees,
//! pauses and resumes its tenant's.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use replyd_core::Tenant;
use replyd_core::outbox::Channel;
use replyd_proto as proto;

use super::AppState;
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/endpoints", get(list))
        .route("/v1/endpoints/pause", post(pause))
        .route("/v1/endpoints/resume", post(resume))
}

/// Failing and paused webhook endpoints of the caller's tenant (every
/// tenant's for a `*` key).
#[utoipa::path(get, path = "/v1/endpoints", tag = "webhooks", operation_id = "list_endpoints",
    responses((status = 200, body = proto::EndpointList),
              (status = 403, description = "Not an admin key", body = proto::Problem)))]
pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    caller.check(Action::Endpoints, None)?;
    let endpoints = app.store.endpoints(caller.tenant().cloned()).await?;
    let endpoints = endpoints
        .into_iter()
        .map(|e| proto::Endpoint {
            tenant: e.tenant.0,
            channel: e.channel.as_str().to_string(),
            url: e.target,
            dead_in_a_row: e.dead_in_a_row,
            paused: e.paused_at.is_some(),
            paused_at: e.paused_at,
            held: e.held,
        })
        .collect();
    Ok((
        StatusCode::OK,
        axum::Json(proto::EndpointList { endpoints }),
    )
        .into_response())
}

/// Resume a paused endpoint: its held deliveries are due at once, in
/// order, their schedules started again.
#[utoipa::path(post, path = "/v1/endpoints/resume", tag = "webhooks", operation_id = "resume_endpoint",
    request_body = proto::ResumeEndpoint,
    responses((status = 200, description = "{\"resumed\": URL, \"released\": N held deliveries}"),
              (status = 400, body = proto::Problem),
              (status = 404, description = "No such paused endpoint", body = proto::Problem)))]
pub async fn resume(
    State(app): State<AppState>,
    headers: HeaderMap,
    raw: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let (tenant, req) = endpoint(&app, &headers, raw)?;
    let released = app
        .store
        .resume_endpoint(&tenant, Channel::Webhook, &req.url, app.now())
        .await
        .map_err(|e| match e {
            replyd_core::StoreError::NotFound => not_paused(),
            other => other.into(),
        })?;
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"resumed": req.url, "released": released})),
    )
        .into_response())
}

fn not_paused() -> ApiError {
    ApiError::not_found("no paused endpoint has this URL")
}

/// Pause an endpoint by hand: its deliveries are held until it is
/// resumed.
#[utoipa::path(post, path = "/v1/endpoints/pause", tag = "webhooks", operation_id = "pause_endpoint",
    request_body = proto::ResumeEndpoint,
    responses((status = 200, description = "{\"paused\": URL}"),
              (status = 400, body = proto::Problem),
              (status = 404, description = "Another tenant's endpoint", body = proto::Problem)))]
pub async fn pause(
    State(app): State<AppState>,
    headers: HeaderMap,
    raw: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let (tenant, req) = endpoint(&app, &headers, raw)?;
    if req.url.is_empty() || req.url.len() > 2048 {
        return Err(ApiError::bad_request("url must be 1 to 2048 bytes"));
    }
    app.store
        .pause_endpoint(&tenant, Channel::Webhook, &req.url, app.now())
        .await?;
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"paused": req.url})),
    )
        .into_response())
}

/// The endpoint a pause or resume names, and its tenant: the caller's own
/// (a key of every tenant names one).
fn endpoint(
    app: &AppState,
    headers: &HeaderMap,
    raw: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(Tenant, proto::ResumeEndpoint)> {
    let caller = app.auth.identify(headers, None)?;
    caller.check(Action::Endpoints, None)?;
    let bytes = super::body(raw, app.config.limits.max_body)?;
    let mut req: proto::ResumeEndpoint = super::parse_json(headers, &bytes)?;
    let tenant = match (caller.tenant(), req.tenant.take()) {
        (Some(own), None) => own.clone(),
        (Some(own), Some(t)) if own.0 == t => own.clone(),
        // Another tenant's endpoint is one this caller cannot see.
        (Some(_), Some(_)) => {
            return Err(ApiError::not_found(
                "this key sees its own tenant's endpoints only",
            ));
        }
        (None, Some(t)) if !t.is_empty() => Tenant(t),
        (None, _) => {
            return Err(ApiError::bad_request(
                "a key of every tenant must name the endpoint's tenant",
            ));
        }
    };
    Ok((tenant, req))
}
