//! `POST /v1/sns/{name}`: SNS's HTTP(S) push (`brokers::sns::push`, which
//! checks each message's signature: that is its only credential). Not in
//! the OpenAPI document: SNS, not a client, calls it, in SNS's format.
//! Each message counts in `replyd_sns_push_total{outcome}` (`accepted`,
//! `confirmed`, `unsubscribed`, `forbidden`, `unknown`, `later`,
//! `rejected`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{AppState, body};
use crate::brokers::sns::push::{Answer, Push};
use crate::error::{ApiError, ApiResult};

/// SNS's JSON around a message escapes it: room for a request of
/// `max_body` escaped twice over, and SNS's fields.
pub fn envelope_limit(max_body: usize) -> usize {
    max_body.saturating_mul(2).saturating_add(64 * 1024)
}

/// The push endpoints of `[sns.push.NAME]` (none: every name is 404).
pub fn router(app: &AppState) -> Router<AppState> {
    let push = match (&app.config.sns, &app.config.sqs) {
        (Some(sns), Some(aws)) if !sns.push.is_empty() => Some(Arc::new(Push::new(sns, aws))),
        _ => None,
    };
    let limit = DefaultBodyLimit::max(envelope_limit(app.config.limits.max_body));
    Router::new()
        .route("/v1/sns/{name}", post(receive).layer(limit))
        .layer(Extension(push))
}

async fn receive(
    State(app): State<AppState>,
    Extension(push): Extension<Option<Arc<Push>>>,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Some(push) = push else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no SNS push subscription is configured ([sns.push.NAME])",
        ));
    };
    let raw = body(raw, envelope_limit(app.config.limits.max_body))?;
    let answer = push.receive(&app, &name, &raw).await;
    let outcome = match &answer {
        Ok(Answer::Accepted) => "accepted",
        Ok(Answer::Confirmed) => "confirmed",
        Ok(Answer::Done) => "unsubscribed",
        Err(e) => match e.status {
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "unknown",
            StatusCode::SERVICE_UNAVAILABLE => "later",
            _ => "rejected",
        },
    };
    metrics::counter!("replyd_sns_push_total", "outcome" => outcome).increment(1);
    Ok(match answer? {
        Answer::Accepted | Answer::Done => StatusCode::NO_CONTENT.into_response(),
        Answer::Confirmed => (StatusCode::OK, "confirmed").into_response(),
    })
}
