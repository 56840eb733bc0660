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
use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use replyd_core::stream::{
    Append, AppendRefusal, Appended, CreateRefusal, CreateStream, Expiry, ForkRequest, Found,
    Producer, ReadChunks, StreamKey, StreamLimits, StreamState, StreamStore, encode_offset,
    is_text, parse_offset,
};

use super::{AppState, Client};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};
use crate::limits::Held;

/// The prefix of stream URLs (a fork names its source by such a path).
pub const PREFIX: &str = "/v1/stream/";

/// The longest stream path.
const MAX_PATH: usize = 1024;

pub fn router(max_append: usize) -> Router<AppState> {
    Router::new().route(
        "/v1/stream/{*path}",
        any(handle).layer(DefaultBodyLimit::max(max_append)),
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

/// Every answer, errors too: what a browser must not sniff or embed.
fn secure(mut res: Response) -> Response {
    let hs = res.headers_mut();
    hs.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    hs.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    hs.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    hs.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "stream-next-offset, stream-cursor, stream-up-to-date, stream-closed, \
             stream-sse-data-encoding, producer-epoch, producer-seq, producer-expected-seq, \
             producer-received-seq, etag, location, content-type",
        ),
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
    let res = match dispatch(&app, client, method, path, &headers, query, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    secure(res)
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
        || path.split('/').next() == Some("__ds")
        || path.chars().any(char::is_control)
    {
        return Err(not_found());
    }
    let Some(streams) = app.store.streams() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not-implemented",
            "this store does not keep Durable Streams",
        ));
    };
    let key = StreamKey { tenant, path };
    let now = app.now();
    let limits = app.config.durable_streams.limits();
    let mut rate = None;
    if matches!(method, Method::PUT | Method::POST) {
        rate = super::take_rate(app, crate::limits::Rate::Append, &key.tenant, 1)?;
    }
    let max = max_append(app);
    let mut res = match method {
        Method::PUT => create(streams, &key, headers, super::body(body, max)?, limits, now).await?,
        Method::POST => {
            append(streams, &key, headers, super::body(body, max)?, limits, now).await?
        }
        Method::DELETE => delete(streams, &key, now).await?,
        Method::HEAD => head(streams, &key, now).await?,
        _ => {
            let q = super::query(query)?;
            read(app, streams, client, &key, headers, &q, now).await?
        }
    };
    if let Some(state) = rate {
        res.headers_mut().extend(super::rate_headers(&state));
    }
    Ok(res)
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
            let Some(path) = src.strip_prefix(PREFIX).filter(|p| !p.is_empty()) else {
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
    let wrote = !body.is_empty();
    let req = Append {
        content_type: ct,
        body,
        close,
        seq: text(headers, h::SEQ)?.map(str::to_string),
        producer: producer(headers)?,
        limits,
    };
    let (_, answer) = match streams.stream_append(key, req, now).await? {
        Found::Missing => return Err(not_found()),
        Found::Gone => return Err(gone()),
        Found::Live(found) => found,
    };
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

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Start,
    Now,
    At(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    No,
    LongPoll,
    Sse,
}

fn read_params(q: &[(String, String)]) -> ApiResult<(Option<From>, Live, Option<String>)> {
    let mut offset = None;
    let mut live = Live::No;
    let mut cursor = None;
    for (k, v) in q {
        match k.as_str() {
            "offset" => {
                if offset.is_some() {
                    return Err(ApiError::bad_request("give one offset"));
                }
                offset = Some(match v.as_str() {
                    "-1" => From::Start,
                    "now" => From::Now,
                    "" => return Err(ApiError::bad_request("offset must not be empty")),
                    raw => From::At(parse_offset(raw).ok_or_else(|| {
                        ApiError::bad_request(
                            "malformed offset: use -1, now, or an offset this server gave",
                        )
                    })?),
                });
            }
            "live" => {
                live = match v.as_str() {
                    "long-poll" => Live::LongPoll,
                    "sse" => Live::Sse,
                    "false" | "" => Live::No,
                    _ => return Err(ApiError::bad_request("live must be long-poll or sse")),
                }
            }
            "cursor" => cursor = Some(v.clone()),
            _ => {}
        }
    }
    if live != Live::No && offset.is_none() {
        return Err(ApiError::bad_request("a live read needs an offset"));
    }
    Ok((offset, live, cursor))
}

/// The cursor of a live answer: 20-second intervals since 2024-10-09, and
/// always past the client's (by 1 to 180 intervals of jitter), so that
/// caches never loop on one key.
fn cursor(client: Option<&str>, now: DateTime<Utc>) -> HeaderValue {
    const EPOCH_MS: i64 = 1_728_432_000_000;
    let current = (now.timestamp_millis() - EPOCH_MS).max(0) / 20_000;
    let value = match client.and_then(|c| c.parse::<i64>().ok()) {
        Some(c) if c >= current => c.saturating_add(rand::random_range(1..=180)),
        _ => current,
    };
    HeaderValue::from(value)
}

/// A read's bytes as the answer's body: the bytes, or for JSON the
/// messages as one array.
fn render(s: &StreamState, read: &ReadChunks) -> Bytes {
    if !s.json() {
        let mut out = BytesMut::new();
        for c in &read.chunks {
            out.put_slice(c);
        }
        return out.freeze();
    }
    let mut out =
        BytesMut::with_capacity(2 + read.chunks.iter().map(|c| c.len() + 1).sum::<usize>());
    out.put_u8(b'[');
    for (i, c) in read.chunks.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(c);
    }
    out.put_u8(b']');
    out.freeze()
}

async fn read(
    app: &AppState,
    streams: &dyn StreamStore,
    client: Client,
    key: &StreamKey,
    headers: &HeaderMap,
    q: &[(String, String)],
    now: DateTime<Utc>,
) -> ApiResult<Response> {
    let (offset, live, client_cursor) = read_params(q)?;
    let budget = app.config.durable_streams.read_chunk;
    let from = match offset.unwrap_or(From::Start) {
        From::Start => 0,
        From::At(p) => p,
        From::Now => u64::MAX,
    };
    if live == Live::Sse {
        return sse(app, streams, client, key, from, client_cursor).await;
    }
    let (s, chunk) = match streams.stream_read(key, from, budget, now).await? {
        Found::Live(found) => found,
        Found::Missing => return Err(not_found()),
        Found::Gone => return Err(gone()),
    };
    let at_now = offset == Some(From::Now);
    if live == Live::No && at_now {
        let mut res = Response::new(Body::from(if s.json() { "[]" } else { "" }));
        res.headers_mut()
            .insert(header::CONTENT_TYPE, content_type_value(&s));
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        set(&mut res, h::NEXT_OFFSET, offset_value(s.tail));
        set_true(&mut res, h::UP_TO_DATE);
        if s.closed {
            set_true(&mut res, h::CLOSED);
        }
        return Ok(res);
    }
    if live == Live::LongPoll && chunk.chunks.is_empty() {
        return long_poll(app, streams, client, key, s, chunk.next, client_cursor).await;
    }
    let start = offset_label(offset);
    Ok(answer(
        &s,
        &chunk,
        &start,
        headers,
        (live == Live::LongPoll).then(|| cursor(client_cursor.as_deref(), now)),
    ))
}

fn offset_label(offset: Option<From>) -> String {
    match offset {
        None | Some(From::Start) => "-1".into(),
        Some(From::Now) => "now".into(),
        Some(From::At(p)) => encode_offset(p),
    }
}

/// A `200` with a read's data (catch-up, or a long poll that found some).
fn answer(
    s: &StreamState,
    read: &ReadChunks,
    start: &str,
    headers: &HeaderMap,
    cursor: Option<HeaderValue>,
) -> Response {
    let up_to_date = read.next >= s.tail;
    let closed = s.closed && up_to_date;
    let tag = etag(s, start, read.next, closed);
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes())
    {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().insert(header::ETAG, tag);
        return res;
    }
    let body = render(s, read);
    let mut res = Response::new(Body::from(body));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, content_type_value(s));
    res.headers_mut().insert(header::ETAG, tag);
    // Data at a position never changes, so a chunk may be kept; the tail's
    // empty answer may not (it would hide what comes next).
    let cache = if read.chunks.is_empty() {
        "no-store"
    } else {
        "private, max-age=60, stale-while-revalidate=300"
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    set(&mut res, h::NEXT_OFFSET, offset_value(read.next));
    if up_to_date {
        set_true(&mut res, h::UP_TO_DATE);
    }
    if closed {
        set_true(&mut res, h::CLOSED);
    }
    if let Some(c) = cursor {
        set(&mut res, h::CURSOR, c);
    }
    res
}

/// A long poll at the tail: waits for the stream to move, up to
/// `durable_streams.long_poll`.
async fn long_poll(
    app: &AppState,
    streams: &dyn StreamStore,
    client: Client,
    key: &StreamKey,
    mut s: StreamState,
    at: u64,
    client_cursor: Option<String>,
) -> ApiResult<Response> {
    let timeout = crate::config::secs(app.config.durable_streams.long_poll);
    let deadline = tokio::time::Instant::now() + timeout;
    let _permit = client.hold(app, Held::Wait, Some(&key.tenant))?;
    let watch = app.tails.watch(s.id);
    loop {
        if s.closed {
            let mut res = StatusCode::NO_CONTENT.into_response();
            set(&mut res, h::NEXT_OFFSET, offset_value(s.tail));
            set_true(&mut res, h::UP_TO_DATE);
            set_true(&mut res, h::CLOSED);
            return Ok(res);
        }
        let woken = watch.notify().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let read = match streams
            .stream_read(key, at, app.config.durable_streams.read_chunk, app.now())
            .await?
        {
            Found::Live(found) => found,
            Found::Missing => return Err(not_found()),
            Found::Gone => return Err(gone()),
        };
        s = read.0;
        if !read.1.chunks.is_empty() {
            let c = cursor(client_cursor.as_deref(), app.now());
            return Ok(answer(
                &s,
                &read.1,
                &encode_offset(at),
                &HeaderMap::new(),
                Some(c),
            ));
        }
        if s.closed {
            continue;
        }
        let expired = tokio::select! {
            () = &mut woken => false,
            () = tokio::time::sleep_until(deadline) => true,
            () = app.shutdown.cancelled() => true,
        };
        if expired {
            let mut res = StatusCode::NO_CONTENT.into_response();
            set(&mut res, h::NEXT_OFFSET, offset_value(at));
            set_true(&mut res, h::UP_TO_DATE);
            set(
                &mut res,
                h::CURSOR,
                cursor(client_cursor.as_deref(), app.now()),
            );
            return Ok(res);
        }
    }
}

/// One SSE event: `event:` then each line of `data` as its own `data:`
/// line (CR, LF and CRLF all end a line in SSE, so a payload can never
/// end an event or start another).
fn sse_event(out: &mut BytesMut, event: &str, data: &[u8]) {
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    let mut rest = data;
    loop {
        let cut = rest.iter().position(|b| *b == b'\n' || *b == b'\r');
        let (line, next) = match cut {
            None => (rest, None),
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                (&rest[..i], Some(&rest[i + skip..]))
            }
        };
        // One space after the colon only when the line starts with one:
        // a reader strips exactly one.
        out.put_slice(if line.first() == Some(&b' ') {
            b"data: "
        } else {
            b"data:"
        });
        out.put_slice(line);
        out.put_u8(b'\n');
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    out.put_u8(b'\n');
}

struct SseState {
    app: AppState,
    key: StreamKey,
    at: u64,
    cursor: Option<String>,
    watch: crate::tails::Watch,
    base64: bool,
    /// Sent the first control event (a quiet stream's first answer).
    started: bool,
    done: bool,
    ends: tokio::time::Instant,
    _permit: crate::limits::Permit,
}

impl SseState {
    /// The next frames: data then control, or a control after a wait; `None`
    /// once the stream closed, the connection's lifetime ran out, or the
    /// stream went away.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let keepalive = crate::config::secs(self.app.config.streams.keepalive);
        loop {
            let streams = self.app.store.streams()?;
            let woken = self.watch.notify().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let budget = self.app.config.durable_streams.read_chunk;
            let (s, read) = match streams
                .stream_read(&self.key, self.at, budget, self.app.now())
                .await
            {
                Ok(Found::Live(found)) => found,
                _ => {
                    self.done = true;
                    return None;
                }
            };
            let mut out = BytesMut::new();
            if !read.chunks.is_empty() {
                let data = render(&s, &read);
                if self.base64 {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
                    sse_event(&mut out, "data", b64.as_bytes());
                } else {
                    sse_event(&mut out, "data", &data);
                }
                self.at = read.next;
            }
            let at_tail = self.at >= s.tail;
            if !read.chunks.is_empty() || !self.started || (s.closed && at_tail) {
                self.started = true;
                let mut control = serde_json::Map::new();
                control.insert("streamNextOffset".into(), encode_offset(self.at).into());
                if s.closed && at_tail {
                    control.insert("streamClosed".into(), true.into());
                    control.insert("upToDate".into(), true.into());
                    self.done = true;
                } else {
                    let c = cursor(self.cursor.as_deref(), self.app.now());
                    control.insert(
                        "streamCursor".into(),
                        c.to_str().unwrap_or_default().to_string().into(),
                    );
                    if at_tail {
                        control.insert("upToDate".into(), true.into());
                    }
                }
                let json = serde_json::Value::Object(control).to_string();
                sse_event(&mut out, "control", json.as_bytes());
                return Some(out.freeze());
            }
            let tick = tokio::time::Instant::now() + keepalive;
            tokio::select! {
                () = &mut woken => continue,
                () = tokio::time::sleep_until(tick.min(self.ends)) => {
                    if tokio::time::Instant::now() >= self.ends {
                        self.done = true;
                        return None;
                    }
                    return Some(Bytes::from_static(b": keep-alive\n\n"));
                }
                () = self.app.shutdown.cancelled() => {
                    self.done = true;
                    return None;
                }
            }
        }
    }
}

async fn sse(
    app: &AppState,
    streams: &dyn StreamStore,
    client: Client,
    key: &StreamKey,
    from: u64,
    client_cursor: Option<String>,
) -> ApiResult<Response> {
    let permit = client.hold(app, Held::Stream, Some(&key.tenant))?;
    let s = match streams.stream_head(key, true, app.now()).await? {
        Found::Live(s) => s,
        Found::Missing => return Err(not_found()),
        Found::Gone => return Err(gone()),
    };
    let base64 = !is_text(&s.content_type);
    let state = SseState {
        app: app.clone(),
        key: key.clone(),
        at: from.min(s.tail),
        cursor: client_cursor,
        watch: app.tails.watch(s.id),
        base64,
        started: false,
        done: false,
        ends: tokio::time::Instant::now()
            + crate::config::secs(app.config.durable_streams.sse_lifetime),
        _permit: permit,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        let chunk = st.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), st))
    });
    let mut res = Response::new(Body::from_stream(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if base64 {
        set(
            &mut res,
            h::SSE_ENCODING,
            HeaderValue::from_static("base64"),
        );
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(data: &[u8]) -> String {
        let mut out = BytesMut::new();
        sse_event(&mut out, "data", data);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn payload_line_breaks_never_end_an_sse_event() {
        assert_eq!(
            events(b"a\r\n\r\nevent: x"),
            "event: data\ndata:a\ndata:\ndata:event: x\n\n"
        );
        assert_eq!(events(b"a\rb"), "event: data\ndata:a\ndata:b\n\n");
        assert_eq!(events(b" a"), "event: data\ndata:  a\n\n");
        assert_eq!(events(b""), "event: data\ndata:\n\n");
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(strict_uint("0"), Some(0));
        assert_eq!(strict_uint("3600"), Some(3600));
        for bad in ["", "+1", "01", "1.0", "3.6e3", "-1", " 1"] {
            assert_eq!(strict_uint(bad), None, "{bad}");
        }
    }

    #[test]
    fn cursors_never_go_back() {
        let now = Utc::now();
        let current: i64 = cursor(None, now).to_str().unwrap().parse().unwrap();
        let next: i64 = cursor(Some(&current.to_string()), now)
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(next > current);
        let ahead = current + 1000;
        let past_ahead: i64 = cursor(Some(&ahead.to_string()), now)
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(past_ahead > ahead);
    }
}
