//! Durable Streams (protocol v1.0) at `/v1/stream/{path}`: `PUT` creates
//! (or forks), `POST` appends or closes, `GET` reads from an offset (catch
//! up, `live=long-poll`, `live=sse`), `HEAD` tells the tail, `DELETE`
//! removes. Streams belong to the caller's tenant: another tenant's path
//! is another stream. Every rule of a write is `replyd_core::stream`'s;
//! this file parses headers into requests and answers into headers.
//!
//! `Stream-Seq` is scoped per stream. Deleted paths may be created again
//! (a new stream: offsets of the old one do not carry over). Subscriptions
//! (`__ds/…`) are not served.

use axum::Router;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::stream::{
    Append, AppendRefusal, Appended, CreateRefusal, CreateStream, Expiry, ForkRequest, Found,
    Producer, StreamKey, StreamLimits, StreamState, encode_offset, parse_offset,
};

use super::{AppState, Client};
use replyd_core::store::StreamStore;

mod output;
mod read;
pub(crate) use output::{event_data, pass_through};

use crate::auth::Action;
use crate::error::{ApiError, ApiResult};

/// The prefix of stream URLs (a fork names its source by such a path).
pub const PREFIX: &str = "/v1/stream/";

/// The longest stream path.
const MAX_PATH: usize = 1024;

pub fn router(max_append: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/stream/{*path}",
            any(handle).layer(DefaultBodyLimit::max(max_append)),
        )
        .route(
            "/v1/jobs/{id}/output",
            any(output::handle).layer(DefaultBodyLimit::max(max_append)),
        )
}

mod h {
    pub const NEXT_OFFSET: &str = "stream-next-offset";
    pub const UP_TO_DATE: &str = "stream-up-to-date";
    pub const CLOSED: &str = "stream-closed";
    pub const CURSOR: &str = "stream-cursor";
    pub const SEQ: &str = "stream-seq";
    pub const TTL: &str = "stream-ttl";
    pub const EXPIRES_AT: &str = "stream-expires-at";
    pub const FORKED_FROM: &str = "stream-forked-from";
    pub const FORK_OFFSET: &str = "stream-fork-offset";
    pub const FORK_SUB_OFFSET: &str = "stream-fork-sub-offset";
    pub const SSE_ENCODING: &str = "stream-sse-data-encoding";
    pub const PRODUCER_ID: &str = "producer-id";
    pub const PRODUCER_EPOCH: &str = "producer-epoch";
    pub const PRODUCER_SEQ: &str = "producer-seq";
    pub const EXPECTED_SEQ: &str = "producer-expected-seq";
    pub const RECEIVED_SEQ: &str = "producer-received-seq";
}

/// Every answer, errors too, with what a browser must not sniff or embed.
fn secure(res: ApiResult<Response>) -> Response {
    let mut res = res.unwrap_or_else(IntoResponse::into_response);
    let hs = res.headers_mut();
    hs.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    hs.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    super::allow_any_origin(
        hs,
        "stream-next-offset, stream-cursor, stream-up-to-date, stream-closed, \
         stream-sse-data-encoding, producer-epoch, producer-seq, producer-expected-seq, \
         producer-received-seq, etag, location, content-type",
    );
    res
}

async fn handle(
    State(app): State<AppState>,
    client: Client,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    secure(dispatch(&app, client, method, path, &headers, query, body).await)
}

async fn dispatch(
    app: &AppState,
    client: Client,
    method: Method,
    path: String,
    headers: &HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    if method == Method::OPTIONS {
        return Ok(preflight());
    }
    let action = match method {
        Method::GET | Method::HEAD => Action::Read,
        Method::PUT | Method::POST | Method::DELETE => Action::Submit,
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "a stream takes PUT, POST, GET, HEAD and DELETE",
            ));
        }
    };
    let caller = app.auth.identify(headers, None)?;
    caller.may(action, false)?;
    let tenant = caller.owner()?;
    if path.is_empty()
        || path.len() > MAX_PATH
        || path.starts_with("__")
        || path.chars().any(char::is_control)
    {
        return Err(not_found());
    }
    let streams = streams_of(app)?;
    let key = StreamKey { tenant, path };
    let now = app.now();
    let limits = app.config.durable_streams.limits();
    let mut rate = None;
    if matches!(method, Method::PUT | Method::POST) {
        rate = super::take_rate(app, crate::limits::Rate::Append, &key.tenant, 1)?;
    }
    let max = max_append(app);
    let mut res = match method {
        Method::PUT => {
            let body = held(app, &key.tenant, super::body(body, max)?)?;
            create(streams, &key, headers, body, limits, now).await?
        }
        Method::POST => {
            let body = held(app, &key.tenant, super::body(body, max)?)?;
            append(streams, &key, headers, body, limits, now).await?
        }
        Method::DELETE => delete(streams, &key, now).await?,
        Method::HEAD => head(streams, &key, now).await?,
        _ => {
            let q = super::query(query)?;
            read::read(
                app,
                &read::Source::Stream(key.clone()),
                client,
                headers,
                &q,
                now,
            )
            .await?
        }
    };
    if let Some(state) = rate {
        res.headers_mut().extend(super::rate_headers(&state));
    }
    Ok(res)
}

/// Job `job`'s output as its result, if it has any: all of it, read a
/// chunk at a time as the body goes out (a JSON output's messages as one
/// array).
pub async fn output_as_result(
    app: &AppState,
    job: &replyd_core::JobRecord,
) -> ApiResult<Option<Response>> {
    let Some(streams) = app.store.streams() else {
        return Ok(None);
    };
    let key = StreamKey {
        tenant: job.tenant.clone(),
        path: replyd_core::stream::output_path(job.id),
    };
    let budget = app.config.durable_streams.read_chunk;
    let (s, first) = match streams.stream_read(&key, 0, budget, app.now()).await? {
        Found::Live((s, first)) if s.tail > 0 => (s, first),
        _ => return Ok(None),
    };
    let (json, tail) = (s.json(), s.tail);
    let content_type = content_type_value(&s);
    // (the read to send next; whether a JSON message was sent)
    let state = (Some(first), false, app.clone());
    let body = futures::stream::unfold(state, move |(read, mut wrote, app)| {
        let key = key.clone();
        async move {
            let read = read?;
            let mut out = bytes::BytesMut::new();
            if json && !wrote {
                out.extend_from_slice(b"[");
            }
            for c in &read.chunks {
                if json && wrote {
                    out.extend_from_slice(b",");
                }
                out.extend_from_slice(c);
                wrote = true;
            }
            if read.next >= tail || read.chunks.is_empty() {
                if json {
                    out.extend_from_slice(b"]");
                }
                return Some((Ok(out.freeze()), (None, wrote, app)));
            }
            // A read that fails cuts the body off (the client sees it
            // incomplete), rather than ending it short.
            let next = match app.store.streams() {
                Some(s) => s.stream_read(&key, read.next, budget, app.now()).await,
                None => {
                    return Some((Err(std::io::Error::other("no streams")), (None, wrote, app)));
                }
            };
            match next {
                Ok(Found::Live((_, next))) => Some((Ok(out.freeze()), (Some(next), wrote, app))),
                _ => {
                    let e = std::io::Error::other("the output cannot be read");
                    Some((Err(e), (None, wrote, app)))
                }
            }
        }
    });
    let mut res = Response::new(axum::body::Body::from_stream(body));
    res.headers_mut().insert(header::CONTENT_TYPE, content_type);
    Ok(Some(res))
}

/// `body`, once counted against what `tenant`'s streams may hold in all
/// (`durable_streams.max_tenant_bytes`), or 403.
pub(crate) fn held(app: &AppState, tenant: &replyd_core::Tenant, body: Bytes) -> ApiResult<Bytes> {
    app.stream_bytes
        .take(tenant, body.len() as u64)
        .map_err(|now| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "quota-exceeded",
                app.stream_bytes.refusal(now),
            )
        })?;
    Ok(body)
}

/// The store's streams, or 501 where it keeps none.
fn streams_of(app: &AppState) -> ApiResult<&dyn StreamStore> {
    app.store.streams().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not-implemented",
            "this store does not keep Durable Streams",
        )
    })
}

fn max_append(app: &AppState) -> usize {
    app.config.durable_streams.max_append
}

fn preflight() -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let hs = res.headers_mut();
    hs.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, HEAD, OPTIONS"),
    );
    hs.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "authorization, content-type, if-none-match, stream-seq, stream-ttl, \
             stream-expires-at, stream-closed, producer-id, producer-epoch, producer-seq, \
             stream-forked-from, stream-fork-offset, stream-fork-sub-offset",
        ),
    );
    hs.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    res
}

fn not_found() -> ApiError {
    ApiError::not_found("no such stream")
}

fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "gone",
        "the stream was deleted (forks of it still read its data)",
    )
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::bad_request(format!("{name} must be ASCII"))),
    }
}

/// `Stream-Closed: true` (any case); any other value is no value.
fn closed_flag(headers: &HeaderMap) -> bool {
    headers
        .get(h::CLOSED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A non-negative decimal integer with no sign, leading zero or point.
fn strict_uint(raw: &str) -> Option<u64> {
    let ok = !raw.is_empty()
        && raw.bytes().all(|b| b.is_ascii_digit())
        && (raw == "0" || !raw.starts_with('0'));
    ok.then(|| raw.parse().ok()).flatten()
}

/// A `Content-Type` that names a media type, else none.
fn content_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?.trim();
    let (kind, sub) = ct.split(';').next()?.trim().split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    (token(kind) && token(sub)).then(|| ct.to_string())
}

fn offset_value(position: u64) -> HeaderValue {
    HeaderValue::from_str(&encode_offset(position)).expect("ASCII")
}

fn set(res: &mut Response, name: &'static str, value: HeaderValue) {
    res.headers_mut()
        .insert(HeaderName::from_static(name), value);
}

fn set_true(res: &mut Response, name: &'static str) {
    set(res, name, HeaderValue::from_static("true"));
}

fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

fn content_type_value(s: &StreamState) -> HeaderValue {
    HeaderValue::from_str(&s.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

async fn create(
    streams: &dyn StreamStore,
    key: &StreamKey,
    headers: &HeaderMap,
    body: Bytes,
    limits: StreamLimits,
    now: DateTime<Utc>,
) -> ApiResult<Response> {
    let ttl = text(headers, h::TTL)?;
    let at = text(headers, h::EXPIRES_AT)?;
    let expiry = match (ttl, at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give Stream-TTL or Stream-Expires-At, not both",
            ));
        }
        (Some(t), None) => Expiry::Ttl(strict_uint(t).ok_or_else(|| {
            ApiError::bad_request(
                "Stream-TTL must be a whole number of seconds (no sign, no leading zero)",
            )
        })?),
        (None, Some(a)) => Expiry::At(
            DateTime::parse_from_rfc3339(a)
                .map_err(|_| ApiError::bad_request("Stream-Expires-At must be an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
        (None, None) => Expiry::Never,
    };
    let source = text(headers, h::FORKED_FROM)?;
    let fork_offset = text(headers, h::FORK_OFFSET)?;
    let sub = text(headers, h::FORK_SUB_OFFSET)?;
    let fork = match source {
        None => {
            if sub.is_some() || fork_offset.is_some() {
                return Err(ApiError::bad_request(
                    "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From",
                ));
            }
            None
        }
        Some(src) => {
            let offset = match fork_offset {
                None => None,
                Some(o) => Some(parse_offset(o).ok_or_else(|| {
                    ApiError::bad_request("Stream-Fork-Offset is not an offset of this server")
                })?),
            };
            let sub = match sub {
                None => 0,
                Some(s) => strict_uint(s).ok_or_else(|| {
                    ApiError::bad_request("Stream-Fork-Sub-Offset must be a non-negative integer")
                })?,
            };
            if sub > 0 && offset.is_none() {
                return Err(ApiError::bad_request(
                    "Stream-Fork-Sub-Offset needs Stream-Fork-Offset",
                ));
            }
            let Some(path) = src
                .strip_prefix(PREFIX)
                .filter(|p| !p.is_empty() && !p.starts_with("__"))
            else {
                return Err(ApiError::not_found(format!(
                    "Stream-Forked-From must name a stream of this server ({PREFIX}…)"
                )));
            };
            Some(ForkRequest {
                source: path.to_string(),
                offset,
                sub,
            })
        }
    };
    let req = CreateStream {
        content_type: content_type(headers),
        expiry,
        closed: closed_flag(headers),
        body,
        fork,
        limits,
    };
    let created = match streams.stream_create(key, req, now).await? {
        Ok(c) => c,
        Err(refusal) => {
            let detail = refusal.to_string();
            return Err(match refusal {
                CreateRefusal::NoSource => ApiError::not_found(detail),
                CreateRefusal::OffsetBeyondTail
                | CreateRefusal::SubOffsetBeyond
                | CreateRefusal::BadBody(_) => ApiError::bad_request(detail),
                CreateRefusal::TooMany(_) => {
                    ApiError::new(StatusCode::FORBIDDEN, "quota-exceeded", detail)
                }
                CreateRefusal::TooLarge(n) => {
                    ApiError::too_large(usize::try_from(n).unwrap_or(usize::MAX))
                }
                CreateRefusal::Conflict
                | CreateRefusal::DeletedWithForks
                | CreateRefusal::SourceDeleted
                | CreateRefusal::ContentType => ApiError::conflict("stream-conflict", detail),
            });
        }
    };
    let s = &created.state;
    let mut res = if created.new {
        let mut r = StatusCode::CREATED.into_response();
        let host = text(headers, "host")?.unwrap_or("localhost");
        if let Ok(loc) = HeaderValue::from_str(&format!("http://{host}{PREFIX}{}", key.path)) {
            r.headers_mut().insert(header::LOCATION, loc);
        }
        r
    } else {
        StatusCode::OK.into_response()
    };
    res.headers_mut()
        .insert(header::CONTENT_TYPE, content_type_value(s));
    set(&mut res, h::NEXT_OFFSET, offset_value(s.tail));
    if s.closed {
        set_true(&mut res, h::CLOSED);
    }
    Ok(res)
}

fn producer(headers: &HeaderMap) -> ApiResult<Option<Producer>> {
    let id = text(headers, h::PRODUCER_ID)?;
    let epoch = text(headers, h::PRODUCER_EPOCH)?;
    let seq = text(headers, h::PRODUCER_SEQ)?;
    const MAX: u64 = (1 << 53) - 1;
    let int = |name: &str, v: &str| {
        strict_uint(v).filter(|n| *n <= MAX).ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be an integer from 0 to 2^53-1"))
        })
    };
    match (id, epoch, seq) {
        (None, None, None) => Ok(None),
        (Some(id), Some(epoch), Some(seq)) => {
            if id.is_empty() {
                return Err(ApiError::bad_request("Producer-Id must not be empty"));
            }
            Ok(Some(Producer {
                id: id.to_string(),
                epoch: int("Producer-Epoch", epoch)?,
                seq: int("Producer-Seq", seq)?,
            }))
        }
        _ => Err(ApiError::bad_request(
            "Producer-Id, Producer-Epoch and Producer-Seq go together",
        )),
    }
}

async fn append(
    streams: &dyn StreamStore,
    key: &StreamKey,
    headers: &HeaderMap,
    body: Bytes,
    limits: StreamLimits,
    now: DateTime<Utc>,
) -> ApiResult<Response> {
    let req = append_request(headers, body, limits)?;
    let wrote = !req.body.is_empty();
    match streams.stream_append(key, req, now).await? {
        Found::Missing => Err(not_found()),
        Found::Gone => Err(gone()),
        Found::Live(answer) => appended(answer, wrote),
    }
}

/// A `POST`'s headers and body as an append.
fn append_request(headers: &HeaderMap, body: Bytes, limits: StreamLimits) -> ApiResult<Append> {
    let close = closed_flag(headers);
    let ct = content_type(headers);
    if !body.is_empty() && ct.is_none() {
        return Err(ApiError::bad_request("an append needs a Content-Type"));
    }
    if body.is_empty() && !close {
        return Err(ApiError::bad_request(
            "an append needs a body (an empty one only with Stream-Closed: true)",
        ));
    }
    Ok(Append {
        content_type: ct,
        body,
        close,
        seq: text(headers, h::SEQ)?.map(str::to_string),
        producer: producer(headers)?,
        limits,
    })
}

/// An append's answer (`wrote`: it carried data).
fn appended(answer: Result<Appended, AppendRefusal>, wrote: bool) -> ApiResult<Response> {
    match answer {
        Ok(Appended::Written {
            tail,
            closed,
            producer,
        }) => {
            // 200 for a producer's new data; 204 for anything else.
            let mut res = if producer.is_some() && wrote {
                StatusCode::OK.into_response()
            } else {
                StatusCode::NO_CONTENT.into_response()
            };
            set(&mut res, h::NEXT_OFFSET, offset_value(tail));
            if closed {
                set_true(&mut res, h::CLOSED);
            }
            if let Some(p) = producer {
                set(&mut res, h::PRODUCER_EPOCH, number(p.epoch));
                set(&mut res, h::PRODUCER_SEQ, number(p.seq));
            }
            Ok(res)
        }
        Ok(Appended::Duplicate {
            tail,
            closed,
            producer,
        }) => {
            let mut res = StatusCode::NO_CONTENT.into_response();
            set(&mut res, h::NEXT_OFFSET, offset_value(tail));
            if closed {
                set_true(&mut res, h::CLOSED);
            }
            set(&mut res, h::PRODUCER_EPOCH, number(producer.epoch));
            set(&mut res, h::PRODUCER_SEQ, number(producer.seq));
            Ok(res)
        }
        Err(refusal) => {
            let detail = refusal.to_string();
            let header = |e: ApiError, name: &'static str, v: HeaderValue| {
                e.with_header(HeaderName::from_static(name), v)
            };
            Err(match refusal {
                AppendRefusal::Closed { tail } => header(
                    header(
                        ApiError::conflict("stream-closed", detail),
                        h::CLOSED,
                        HeaderValue::from_static("true"),
                    ),
                    h::NEXT_OFFSET,
                    offset_value(tail),
                ),
                AppendRefusal::ContentType | AppendRefusal::SeqRegression => {
                    ApiError::conflict("stream-conflict", detail)
                }
                AppendRefusal::StaleEpoch { current } => header(
                    ApiError::forbidden(detail),
                    h::PRODUCER_EPOCH,
                    number(current),
                ),
                AppendRefusal::SeqGap { expected, received } => header(
                    header(
                        ApiError::conflict("producer-seq-gap", detail),
                        h::EXPECTED_SEQ,
                        number(expected),
                    ),
                    h::RECEIVED_SEQ,
                    number(received),
                ),
                AppendRefusal::TooLarge(n) => {
                    ApiError::too_large(usize::try_from(n).unwrap_or(usize::MAX))
                }
                AppendRefusal::NotLeased => ApiError::conflict("stale-lease", detail),
                AppendRefusal::EpochStart
                | AppendRefusal::EmptyBody
                | AppendRefusal::BadBody(_) => ApiError::bad_request(detail),
            })
        }
    }
}

async fn delete(
    streams: &dyn StreamStore,
    key: &StreamKey,
    now: DateTime<Utc>,
) -> ApiResult<Response> {
    match streams.stream_delete(key, now).await? {
        Found::Live(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Found::Missing => Err(not_found()),
        Found::Gone => Err(gone()),
    }
}

fn etag(s: &StreamState, from: &str, next: u64, closed: bool) -> HeaderValue {
    let c = if closed { ":c" } else { "" };
    HeaderValue::from_str(&format!("\"{}:{from}:{}{c}\"", s.id, encode_offset(next)))
        .expect("ASCII")
}

async fn head(
    streams: &dyn StreamStore,
    key: &StreamKey,
    now: DateTime<Utc>,
) -> ApiResult<Response> {
    let s = match streams.stream_head(key, false, now).await? {
        Found::Live(s) => s,
        Found::Missing => return Err(not_found()),
        Found::Gone => return Err(gone()),
    };
    let mut res = StatusCode::OK.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, content_type_value(&s));
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    set(&mut res, h::NEXT_OFFSET, offset_value(s.tail));
    res.headers_mut()
        .insert(header::ETAG, etag(&s, "-1", s.tail, s.closed));
    match &s.expiry {
        Expiry::Never => {}
        Expiry::Ttl(t) => set(&mut res, h::TTL, number(*t)),
        Expiry::At(at) => {
            if let Ok(v) =
                HeaderValue::from_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            {
                set(&mut res, h::EXPIRES_AT, v);
            }
        }
    }
    if s.closed {
        set_true(&mut res, h::CLOSED);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_strict() {
        assert_eq!(strict_uint("0"), Some(0));
        assert_eq!(strict_uint("3600"), Some(3600));
        for bad in ["", "+1", "01", "1.0", "3.6e3", "-1", " 1"] {
            assert_eq!(strict_uint(bad), None, "{bad}");
        }
    }
}
