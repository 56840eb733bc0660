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
use crate::error::ApiResult;

/// SNS's JSON around a message escapes it: room for a request of
/// `max_body` escaped twice over, and SNS's fields.
pub fn envelope_limit(max_body: usize) -> usize {
    max_body.saturating_mul(2).saturating_add(64 * 1024)
}

/// The push endpoints of `[sns.push.NAME]`: none configured, no route
/// (a stranger's body is then held to `limits.max_body` like any other,
/// and the path answers 404 as an unknown one does).
pub fn router(app: &AppState) -> Router<AppState> {
    let (Some(sns), Some(aws)) = (&app.config.sns, &app.config.sqs) else {
        return Router::new();
    };
    if sns.push.is_empty() {
        return Router::new();
    }
    let push = Arc::new(Push::new(sns, aws));
    let limit = DefaultBodyLimit::max(envelope_limit(app.config.limits.max_body));
    Router::new()
        .route("/v1/sns/{name}", post(receive).layer(limit))
        .layer(Extension(push))
}

async fn receive(
    State(app): State<AppState>,
    Extension(push): Extension<Arc<Push>>,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
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
