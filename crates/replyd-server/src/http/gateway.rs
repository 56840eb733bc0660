//! Gateway mode: replyd in front of a slow API. A request to a configured
//! route (`[[routes]]`: a method and a path prefix) is answered at once
//! with `202 Accepted`, `Location: /v1/jobs/{id}` and `Retry-After`, as
//! `POST /v1/jobs` is; the request itself (method, path, query, the
//! route's allow-listed headers, body) is the job, and the route's queue
//! replays it to the upstream (`executors::http`). The upstream's answer
//! (status, allow-listed headers, body) is replayed at
//! `/v1/jobs/{id}/result`; a non-2xx answer fails the job with its status
//! and an excerpt. `Prefer: wait=N` answers with the upstream's answer
//! itself when it comes within N seconds; `Idempotency-Key` works as on
//! `POST /v1/jobs`.
//!
//! A route with `stream = true` answers at once with the upstream's answer
//! instead, passed through as it arrives when it streams (an LLM's
//! Server-Sent Events): the bytes are the job's output, recorded as they
//! come, and the answer names the job (`Replyd-Job-Id`, and
//! `Content-Location: /v1/jobs/{id}/output`). A client that drops the
//! connection leaves the upstream call running; it reattaches at the
//! output from the offset it reached, or repeats its request with the
//! same `Idempotency-Key` for the whole answer again. `Prefer:
//! respond-async` asks such a route for the 202.
//!
//! With API keys configured, a gateway request needs one: in
//! `X-Replyd-Key` (then the client's own `Authorization` may be forwarded,
//! if the route lists it), or as `Authorization: Bearer` (then it is
//! replyd's and never forwarded).

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use replyd_core::JobState;
use replyd_core::store::Submitted;
use replyd_proto as proto;

use super::jobs::{accepted, with_rate};
use super::{AppState, Client, body, prefer_wait, take_submit};
use crate::app::{Submission, request_hash};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};
use crate::executors::http::Captured;
use crate::limits::Held;

/// The header that carries a replyd key on a gateway request.
pub const KEY_HEADER: &str = "x-replyd-key";

/// Every request no other route took: a gateway route's, or 404.
pub async fn handle(
    State(app): State<AppState>,
    client: Client,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let path = uri.path().to_string();
    let Some(route) = app.config.route_for(method.as_str(), &path) else {
        return Err(ApiError::not_found("no such endpoint"));
    };
    // Matched as sent; a path that would leave the route when replayed is
    // refused, not normalised.
    crate::executors::http::contained_path(&path).map_err(ApiError::bad_request)?;
    let queue = route.queue_name();
    let forward = route.forward_headers.clone();
    // Whose request it is, and whether Authorization is the client's own.
    let (caller, authorization_is_ours) = match headers.get(KEY_HEADER) {
        Some(key) => {
            let key = key
                .to_str()
                .map_err(|_| ApiError::unauthorized("malformed X-Replyd-Key header"))?;
            (app.auth.identify_token(Some(key.trim()))?, false)
        }
        None if app.config.is_open() => (app.auth.identify_token(None)?, false),
        None => (app.auth.identify(&headers, None)?, true),
    };
    caller.check(Action::Submit, None)?;
    let tenant = caller.owner()?;
    let rate = take_submit(&app, &tenant, 1)?;
    let bytes = body(raw, app.config.limits.max_body)?;
    let captured = Captured {
        method: method.as_str().to_string(),
        path: route.upstream_path(&path).to_string(),
        query: uri.query().map(str::to_string),
        headers: forwarded(&headers, &forward, authorization_is_ours),
        body_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
    };
    let input = serde_json::to_value(&captured)
        .map_err(|e| ApiError::bad_request(format!("the request cannot be kept: {e}")))?;
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(crate::app::IDEMPOTENCY_KEY_RULE))
                .and_then(crate::app::idempotency_key)
        })
        .transpose()?;
    let hash = key.as_ref().map(|_| request_hash(&input));
    let wait = prefer_wait(&headers)?;
    // A streaming route answers with the upstream's stream as it comes,
    // unless the client asks for the 202.
    let passing = match route.stream && !prefers_respond_async(&headers) {
        true => Some(client.hold(&app, Held::Stream, Some(&tenant))?),
        false => None,
    };
    let _waiting = match wait {
        Some(w) if !w.is_zero() && passing.is_none() => {
            Some(client.hold(&app, Held::Wait, Some(&tenant))?)
        }
        _ => None,
    };
    let timeout = crate::config::secs(route.timeout);
    let submitted = app
        .submit(Submission {
            tenant,
            request: proto::SubmitRequest {
                queue,
                input,
                webhook: None,
                max_attempts: None,
                timeout: None,
                ttl: None,
                output: None,
                priority: None,
                delay: None,
                run_at: None,
                group: None,
            },
            idempotency_key: key,
            request_hash: hash,
            reply: None,
            trace: super::trace_of(&headers),
            via: "gateway",
        })
        .await?;
    let mut res = match passing {
        Some(permit) => pass_through(&app, submitted, timeout, permit).await?,
        None => accepted(&app, submitted, wait).await?,
    };
    with_rate(&mut res, rate);
    Ok(res)
}

/// Whether the client asked for the 202 (`Prefer: respond-async`).
fn prefers_respond_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// A streaming route's answer: the upstream's streamed answer as it comes
/// (the job's output, from its first byte; a repeat of the request with
/// its `Idempotency-Key` replays it from the start, with no second call
/// upstream). An answer that does not stream is replayed once the job
/// ends, as `Prefer: wait` would; a failure with the upstream's status (or
/// 502); a job still without either after the route's timeout is the 202.
async fn pass_through(
    app: &AppState,
    submitted: Submitted,
    timeout: std::time::Duration,
    permit: crate::limits::Permit,
) -> ApiResult<Response> {
    let job = match &submitted {
        Submitted::Created(j) | Submitted::Existing(j) => j.clone(),
    };
    // The stream may last as long as the upstream may take, and a while.
    let lifetime = timeout + std::time::Duration::from_secs(60);
    if let Some(res) = super::stream::pass_through(app, &job, timeout, lifetime, permit).await? {
        return Ok(res);
    }
    let now = app.store.get(job.id).await?.unwrap_or(job);
    let failed = |status: StatusCode, detail: String| {
        ApiError::new(status, "upstream-failed", detail)
            .with_header(header::LOCATION, job_location(&now))
    };
    match now.state {
        JobState::Succeeded => {
            let mut res = super::jobs::result_body(app, &now).await?;
            let h = res.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}/result", now.id)) {
                h.insert(header::CONTENT_LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&now.id.to_string()) {
                h.insert(proto::JOB_ID_HEADER, v);
            }
            Ok(res)
        }
        JobState::Failed => {
            let (status, detail) = match &now.error {
                Some(e) => (
                    e.status
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .filter(|s| s.is_client_error() || s.is_server_error())
                        .unwrap_or(StatusCode::BAD_GATEWAY),
                    e.message.clone(),
                ),
                None => (StatusCode::BAD_GATEWAY, "the job failed".to_string()),
            };
            Err(failed(status, detail))
        }
        JobState::Canceled => Err(failed(
            StatusCode::BAD_GATEWAY,
            "the job was canceled before the upstream answered".into(),
        )),
        _ => accepted(app, submitted, Some(std::time::Duration::ZERO)).await,
    }
}

fn job_location(job: &replyd_core::JobRecord) -> HeaderValue {
    HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)).unwrap_or(HeaderValue::from_static("/"))
}

/// The request headers the route passes on; never replyd's own key, nor
/// an `Authorization` that carried it.
fn forwarded(
    headers: &HeaderMap,
    allow: &[String],
    authorization_is_ours: bool,
) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| allow.iter().any(|a| a == k.as_str()))
        .filter(|(k, _)| k.as_str() != KEY_HEADER)
        .filter(|(k, _)| !(authorization_is_ours && *k == header::AUTHORIZATION))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_allow_listed_headers_go_on_and_never_replyds_key() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/csv"));
        h.insert("cookie", HeaderValue::from_static("session=1"));
        h.insert("authorization", HeaderValue::from_static("Bearer upstream"));
        h.insert(KEY_HEADER, HeaderValue::from_static("k-client"));
        let allow: Vec<String> = ["content-type", "authorization", KEY_HEADER]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut got = forwarded(&h, &allow, false);
        got.sort();
        assert_eq!(
            got,
            [
                ("authorization".to_string(), "Bearer upstream".to_string()),
                ("content-type".to_string(), "text/csv".to_string()),
            ]
        );
        let got = forwarded(&h, &allow, true);
        assert_eq!(got, [("content-type".to_string(), "text/csv".to_string())]);
    }
}
