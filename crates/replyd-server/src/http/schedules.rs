//! `/v1/schedules`: a tenant's recurring jobs (`crate::schedules`), by
//! name. The schedules of the configuration are shown and not changed
//! here (409): the file is theirs.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use replyd_core::Tenant;
use replyd_core::schedule::ScheduleSource;
use replyd_proto as proto;

use super::{AppState, body, parse_json};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};
use crate::schedules;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/schedules", get(list))
        .route("/v1/schedules/{name}", get(one).put(put).delete(delete))
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The tenant whose schedule `name` a request is about: a caller who may
/// submit (credentials first, as for every request), a valid name.
fn owner(app: &AppState, headers: &HeaderMap, name: &str) -> ApiResult<Tenant> {
    let caller = app.auth.identify(headers, None)?;
    caller.check(Action::Submit, None)?;
    if !schedules::valid_name(name) {
        return Err(ApiError::bad_request(
            "a schedule's name is 1 to 128 letters, digits, '.', '_' or '-'",
        ));
    }
    caller.owner()
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "no schedule of that name",
    )
}

fn from_config() -> ApiError {
    ApiError::conflict(
        "schedule-in-config",
        "this schedule is defined in the configuration ([schedules.NAME]); change it there",
    )
}

/// The caller's schedules (a key of every tenant: everyone's).
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", operation_id = "list_schedules",
    responses((status = 200, body = proto::ScheduleList)))]
pub async fn list(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    caller.check(Action::Submit, None)?;
    let all = app.store.schedules(caller.tenant()).await?;
    let schedules = all.iter().filter_map(schedules::view).collect();
    Ok(json(StatusCode::OK, &proto::ScheduleList { schedules }))
}

/// One of the caller's schedules.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", operation_id = "get_schedule",
    params(("name" = String, Path)),
    responses((status = 200, body = proto::Schedule),
              (status = 404, description = "No such schedule", body = proto::Problem)))]
pub async fn one(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let tenant = owner(&app, &headers, &name)?;
    let s = app
        .store
        .schedule(&tenant, &name)
        .await?
        .ok_or_else(not_found)?;
    Ok(json(
        StatusCode::OK,
        &schedules::view(&s).ok_or_else(not_found)?,
    ))
}

/// Creates or replaces a schedule: it fires next at the first tick from
/// now.
#[utoipa::path(put, path = "/v1/schedules/{name}", tag = "schedules", operation_id = "put_schedule",
    params(("name" = String, Path)),
    request_body = proto::ScheduleRequest,
    responses((status = 201, description = "Created", body = proto::Schedule),
              (status = 200, description = "Replaced", body = proto::Schedule),
              (status = 400, description = "A cron, time zone or job that cannot be", body = proto::Problem),
              (status = 404, description = "Unknown queue", body = proto::Problem),
              (status = 409, description = "Defined in the configuration, or the tenant has limits.max_schedules already", body = proto::Problem)))]
pub async fn put(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let tenant = owner(&app, &headers, &name)?;
    let bytes = body(raw, app.config.limits.max_body)?;
    let req: proto::ScheduleRequest = parse_json(&headers, &bytes)?;
    let ticks = schedules::check(&app, &req)?;
    let old = app.store.schedule(&tenant, &name).await?;
    if old
        .as_ref()
        .is_some_and(|o| o.source == ScheduleSource::Config)
    {
        return Err(from_config());
    }
    // A tenant's schedules are bounded: each fires jobs of its own accord.
    let max = app.config.limits.max_schedules;
    if old.is_none() && app.store.schedules(Some(&tenant)).await?.len() >= max {
        return Err(ApiError::conflict(
            "schedule-limit",
            format!(
                "a tenant keeps at most {max} schedules (limits.max_schedules); delete one first"
            ),
        ));
    }
    let mut rec = schedules::record(tenant, &name, &req, &ticks, ScheduleSource::Api, app.now())?;
    if let Some(o) = &old {
        rec.created_at = o.created_at;
    }
    let created = app.store.put_schedule(rec.clone()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &schedules::view(&rec).ok_or_else(not_found)?))
}

/// Removes a schedule (its jobs already submitted stay).
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", operation_id = "delete_schedule",
    params(("name" = String, Path)),
    responses((status = 204, description = "Removed"),
              (status = 404, description = "No such schedule", body = proto::Problem),
              (status = 409, description = "Defined in the configuration", body = proto::Problem)))]
pub async fn delete(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let tenant = owner(&app, &headers, &name)?;
    match app.store.schedule(&tenant, &name).await? {
        None => Err(not_found()),
        Some(s) if s.source == ScheduleSource::Config => Err(from_config()),
        Some(_) => {
            app.store.delete_schedule(&tenant, &name).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}
