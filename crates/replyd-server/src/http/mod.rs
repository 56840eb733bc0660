//! The HTTP surface: one file per resource, each with its handlers and its
//! `router()`, and here what they share: request parsing that turns every
//! bad input into a precise problem, `Prefer` and `If-None-Match` parsing;
//! what every request passes through (metrics, panics, body limits, the
//! console's guard) is [`front`].

pub mod console;
pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod front;
pub mod gateway;
pub mod jobs;
pub mod openapi;
pub mod ops;
pub mod queues;
pub mod schedules;
pub mod serve;
#[cfg(feature = "sns")]
pub mod sns;
pub mod steer;
pub mod stream;
pub mod workers;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use replyd_core::JobId;
use serde::de::DeserializeOwned;

use crate::app::{App, MAX_WAIT};
use crate::auth::{Action, Caller};
use crate::error::{ApiError, ApiResult};

pub type AppState = Arc<App>;

/// The whole HTTP API: the routes, inside what every request passes
/// through ([`front`]).
pub fn router(app: AppState) -> front::Api {
    let api = Router::new()
        .merge(jobs::router())
        .merge(steer::router())
        .merge(queues::router())
        .merge(schedules::router())
        .merge(events::router())
        .merge(deliveries::router())
        .merge(endpoints::router())
        .merge(ws::router())
        .merge(workers::router(app.config.limits.max_result))
        .merge(ops::router())
        .merge(stream::router(app.config.durable_streams.max_append))
        .merge(console::router(&app));
    #[cfg(feature = "sns")]
    let api = api.merge(sns::router(&app));
    let routes = api
        // The gateway's routes, or 404.
        .fallback(gateway::handle)
        .layer(front::Observe)
        .with_state(app.clone());
    front::wrap(app, routes)
}

/// A request method as a metrics label: one of RFC 9110's (and PATCH), or
/// `other`.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::OPTIONS => "OPTIONS",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "other",
    }
}

/// The client's address (`None` for a request that did not come over a
/// socket, as in an in-memory test).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Client, Self::Rejection> {
        Ok(Client(
            parts.extensions.get::<serve::ClientAddr>().map(|c| c.0),
        ))
    }
}

impl Client {
    /// Holds one `held` for this client (and `tenant`, when known).
    pub fn hold(
        self,
        app: &App,
        held: crate::limits::Held,
        tenant: Option<&replyd_core::Tenant>,
    ) -> ApiResult<crate::limits::Permit> {
        Ok(app.limits.hold(held, self.0, tenant)?)
    }
}

/// Takes `n` submissions from `tenant`'s bucket: its state, to tell the
/// client in `RateLimit` headers (`None`: no limit), or 429.
pub fn take_submit(
    app: &App,
    tenant: &replyd_core::Tenant,
    n: u32,
) -> ApiResult<Option<crate::limits::RateState>> {
    take_rate(app, crate::limits::Rate::Submit, tenant, n)
}

/// Takes `n` from `tenant`'s bucket of `rate`, as [`take_submit`].
pub fn take_rate(
    app: &App,
    rate: crate::limits::Rate,
    tenant: &replyd_core::Tenant,
    n: u32,
) -> ApiResult<Option<crate::limits::RateState>> {
    let (what, setting) = match rate {
        crate::limits::Rate::Submit => ("jobs", "submit"),
        crate::limits::Rate::Append => ("appends", "append"),
    };
    match app.limits.take(rate, tenant, n, std::time::Instant::now()) {
        None => Ok(None),
        Some(Ok(state)) => Ok(Some(state)),
        Some(Err(state)) if u64::from(n) > state.quota => Err(ApiError::bad_request(format!(
            "a batch of {n} {what} is more than this tenant may make at once ({}: \
             limits.{setting}_burst); send smaller batches",
            state.quota
        ))),
        Some(Err(state)) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!(
                    "this tenant makes more than its {} {what} per {} s \
                     (limits.{setting}_rate, {setting}_burst); try again in {} s",
                    state.quota,
                    state.window,
                    state.retry_in.max(1)
                ),
            )
            .with_retry_after(state.retry_in.max(1));
            for (name, value) in rate_headers(&state) {
                e = e.with_header(name, value);
            }
            Err(e)
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub fn rate_headers(
    state: &crate::limits::RateState,
) -> [(header::HeaderName, header::HeaderValue); 2] {
    let value = |s: String| header::HeaderValue::from_str(&s).expect("ASCII");
    [
        (
            header::HeaderName::from_static("ratelimit-policy"),
            value(state.policy()),
        ),
        (
            header::HeaderName::from_static("ratelimit"),
            value(state.current()),
        ),
    ]
}

/// A job id from a path. A malformed id is a job that does not exist: 404.
pub fn job_id(raw: &str) -> ApiResult<JobId> {
    raw.parse().map_err(|_| ApiError::job_not_found())
}

async fn path_job_id(parts: &mut Parts, app: &AppState) -> ApiResult<JobId> {
    let Path(raw) = Path::<String>::from_request_parts(parts, app)
        .await
        .map_err(|_| ApiError::job_not_found())?;
    job_id(&raw)
}

/// The `access_token` query parameter: a job token, for clients that cannot
/// set headers (a browser's EventSource, a link).
#[derive(Debug, Default, serde::Deserialize)]
pub struct TokenParam {
    pub access_token: Option<String>,
}

/// A request about one job: its id from the path (a malformed one is 404)
/// and the caller, from the Authorization header or `?access_token=`.
#[derive(Debug)]
pub struct JobRequest {
    pub id: JobId,
    pub caller: Caller,
    /// The job token the caller sent as `?access_token=`, kept across the
    /// redirect to the result.
    pub access_token: Option<String>,
}

impl FromRequestParts<AppState> for JobRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> ApiResult<JobRequest> {
        // Who asks comes first: without credentials every job id, existing
        // or not, well-formed or not, gets the same 401.
        let token: TokenParam = query(Query::try_from_uri(&parts.uri))?;
        let caller = app
            .auth
            .identify(&parts.headers, token.access_token.as_deref())?;
        if caller == Caller::Anonymous {
            caller.may(Action::Read, true)?;
        }
        let id = path_job_id(parts, app).await?;
        Ok(JobRequest {
            id,
            caller,
            access_token: token.access_token,
        })
    }
}

/// A worker's call about a job it leased: the job id, a caller allowed to
/// work, and the JSON body.
#[derive(Debug)]
pub struct WorkerCall<T> {
    pub id: JobId,
    pub caller: Caller,
    pub body: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for WorkerCall<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> ApiResult<WorkerCall<T>> {
        let (mut parts, raw) = req.into_parts();
        let caller = app.auth.identify(&parts.headers, None)?;
        caller.check(Action::Work, None)?;
        let id = path_job_id(&mut parts, app).await?;
        let headers = parts.headers.clone();
        let bytes = Bytes::from_request(Request::from_parts(parts, raw), app).await;
        let body = parse_json(&headers, &body(bytes, app.config.limits.max_body)?)?;
        Ok(WorkerCall { id, caller, body })
    }
}

/// Lets a page of any origin read an answer (`Access-Control-Allow-Origin:
/// *`), with the headers in `expose` (a comma-separated list, or empty).
/// Only for requests that carry their own credential (a bearer, a job
/// token in the URL): `*` never lets a browser send ambient ones (the
/// console's cookie), and the console's guard refuses them cross-site.
pub fn allow_any_origin(headers: &mut HeaderMap, expose: &'static str) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    if !expose.is_empty() {
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::HeaderValue::from_static(expose),
        );
    }
}

/// The W3C Trace Context a request came in (`traceparent`, and every
/// `tracestate` header joined), if well formed.
pub fn trace_of(headers: &HeaderMap) -> Option<replyd_core::trace::TraceContext> {
    let parent = headers.get("traceparent")?.to_str().ok()?;
    let states: Vec<&str> = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let state = (!states.is_empty()).then(|| states.join(","));
    replyd_core::trace::TraceContext::parse(parent, state.as_deref())
}

/// The body, or 413 past the limit, or 408 when it came too slowly.
pub fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> ApiResult<Bytes> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else if caused_by::<front::BodyTimedOut>(&e) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                front::BodyTimedOut.to_string(),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })
}

/// Whether an `E` is somewhere in `e`'s chain of causes.
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<E>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether the request says its body is JSON. A missing Content-Type is
/// taken as JSON (curl -d sends a form type; that is refused with a hint).
pub fn is_json(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => true,
        Some(Ok(v)) => {
            let mime = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        }
        Some(Err(_)) => false,
    }
}

/// Parses a JSON body into `T`; the problem names what is wrong and where.
pub fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> ApiResult<T> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send the body as JSON with Content-Type: application/json",
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_json(
            "the request body is empty; expected a JSON object",
        ));
    }
    let problem = |path: String, e: serde_json::Error| {
        use serde_json::error::Category;
        match e.classify() {
            // Where in the request, when it is a member's value.
            Category::Data if path != "." => {
                ApiError::bad_request(format!("invalid request: {path}: {e}"))
            }
            Category::Data => ApiError::bad_request(format!("invalid request: {e}")),
            _ => ApiError::invalid_json(format!("malformed JSON: {e}")),
        }
    };
    // A good body is parsed once, at full speed; a bad one again, with
    // the path tracked, to say where it is wrong.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| problem(e.path().to_string(), e.into_inner()))?;
    de.end().map_err(|e| problem(".".into(), e))?;
    Ok(value)
}

/// A queue name given as a filter (`?queue=`, a subscription's `queue`):
/// any name a queue could have, or 400. (An unknown queue simply matches
/// nothing.)
pub fn queue_filter(q: &str) -> ApiResult<()> {
    if crate::config::valid_queue_name(q) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "queue must be 1 to 64 letters, digits, '.', '_' or '-'",
        ))
    }
}

/// Query parameters, or 400 naming the bad one.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
}

/// A listing's page: `limit` (1-1000, default 50) and the `cursor` the
/// previous page's `next_cursor` gave.
pub fn page<C: std::str::FromStr>(
    limit: Option<u32>,
    cursor: Option<&str>,
) -> ApiResult<(u32, Option<C>)> {
    let limit = limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let cursor = match cursor {
        None | Some("") => None,
        Some(c) => Some(
            c.parse()
                .map_err(|_| ApiError::bad_request("malformed cursor"))?,
        ),
    };
    Ok((limit, cursor))
}

/// `Prefer: wait=N` (RFC 7240), capped at 60 s. Other preferences are
/// ignored; a malformed wait is 400.
pub fn prefer_wait(headers: &HeaderMap) -> ApiResult<Option<Duration>> {
    for value in headers.get_all("prefer") {
        let Ok(v) = value.to_str() else { continue };
        for pref in v.split([',', ';']) {
            let mut kv = pref.splitn(2, '=');
            let name = kv.next().unwrap_or("").trim();
            if !name.eq_ignore_ascii_case("wait") {
                continue;
            }
            let raw = kv.next().unwrap_or("").trim().trim_matches('"');
            let secs: f64 = raw
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| {
                    ApiError::bad_request("Prefer: wait must be a non-negative number of seconds")
                })?;
            return Ok(Some(Duration::from_secs_f64(
                secs.min(MAX_WAIT.as_secs_f64()),
            )));
        }
    }
    Ok(None)
}

/// The version an `If-None-Match` names (`"7"`, `W/"7"`), if any. `*`
/// matches every version.
pub enum IfNoneMatch {
    Any,
    Versions(Vec<u64>),
}

impl IfNoneMatch {
    pub fn parse(headers: &HeaderMap) -> Option<IfNoneMatch> {
        let raw = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
        if raw.trim() == "*" {
            return Some(IfNoneMatch::Any);
        }
        let versions = raw
            .split(',')
            .filter_map(|t| {
                let t = t.trim();
                let t = t.strip_prefix("W/").unwrap_or(t);
                t.trim_matches('"').parse().ok()
            })
            .collect();
        Some(IfNoneMatch::Versions(versions))
    }

    pub fn matches(&self, version: u64) -> bool {
        match self {
            IfNoneMatch::Any => true,
            IfNoneMatch::Versions(v) => v.contains(&version),
        }
    }
}

pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    /// A good body parses; a bad member is named with where it is; bad
    /// JSON and trailing bytes are malformed.
    #[test]
    fn a_bodys_problem_says_what_and_where() {
        let h = json_headers();
        let ok: replyd_proto::SubmitRequest =
            parse_json(&h, br#"{"queue": "q", "input": {"n": 1}, "priority": 3}"#).unwrap();
        assert_eq!(ok.priority, Some(3));
        let bad = parse_json::<replyd_proto::SubmitRequest>(
            &h,
            br#"{"queue": "q", "input": {}, "webhook": {"url": 7}}"#,
        )
        .unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.detail.contains("webhook.url"), "{}", bad.detail);
        for malformed in [&br#"{"queue": "q""#[..], br#"{"queue": "q", "input": 1} x"#] {
            let e = parse_json::<replyd_proto::SubmitRequest>(&h, malformed).unwrap_err();
            assert!(e.detail.contains("malformed JSON"), "{}", e.detail);
        }
    }
}
