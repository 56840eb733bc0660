//! A job's output as a Durable Stream, at `/v1/jobs/{id}/output`: read
//! with the protocol (catch-up, long-poll, SSE) by the job's tenant or
//! with its job token (`?access_token=`, for a browser); appended by the
//! worker that holds the job's lease (`Lease-Id`), the chunk as the body.
//! The first append makes the stream and fixes its content type; the
//! job's end closes it for readers.

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use replyd_core::LeaseId;
use replyd_core::stream::{Appended, Found, StreamKey, output_path};

use super::read::{Follow, Followed, Source, read, render};
use super::{append_request, appended, secure, streams_of, text};
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};
use crate::http::{AppState, Client, JobRequest};
use crate::limits::Permit;

pub(super) async fn handle(
    State(app): State<AppState>,
    client: Client,
    method: Method,
    r: JobRequest,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    secure(dispatch(&app, client, method, r, &headers, query, body).await)
}

async fn dispatch(
    app: &AppState,
    client: Client,
    method: Method,
    r: JobRequest,
    headers: &HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let now = app.now();
    match method {
        Method::GET | Method::HEAD => {
            let job = app.job_for(&r.caller, Action::Read, r.id).await?;
            let source = Source::Output {
                key: StreamKey {
                    tenant: job.tenant,
                    path: output_path(job.id),
                },
                job: job.id,
            };
            let mut q = crate::http::query(query)?;
            if method == Method::HEAD {
                // A HEAD reads as a catch-up read at the tail.
                q.retain(|(k, _)| k != "offset" && k != "live");
                q.push(("offset".into(), "now".into()));
            }
            read(app, &source, client, headers, &q, now).await
        }
        Method::POST => {
            let job = app.job_for(&r.caller, Action::Work, r.id).await?;
            // `Lease-Id`, or `Replyd-Lease-Id` as a raw complete takes it.
            let lease = match text(headers, "lease-id")? {
                Some(l) => Some(l),
                None => text(headers, replyd_proto::LEASE_ID_HEADER)?,
            }
            .filter(|l| !l.is_empty())
            .ok_or_else(|| ApiError::bad_request("an output append needs its Lease-Id header"))?;
            crate::http::take_rate(app, crate::limits::Rate::Append, &job.tenant, 1)?;
            let limits = app.config.durable_streams.limits();
            let body = crate::http::body(body, app.config.durable_streams.max_append)?;
            let body = super::held(app, &job.tenant, body)?;
            let req = append_request(headers, body, limits)?;
            let wrote = !req.body.is_empty();
            let key = StreamKey {
                tenant: job.tenant,
                path: output_path(job.id),
            };
            let lease = LeaseId(lease.to_string());
            match streams_of(app)?
                .output_append(&key, job.id, lease.clone(), req, now)
                .await?
            {
                Found::Live(answer) => {
                    if let Ok(Appended::Written { tail, .. }) = &answer {
                        app.outputs.appended(job.id, lease, *tail);
                    }
                    appended(answer, wrote)
                }
                Found::Missing | Found::Gone => Err(ApiError::job_not_found()),
            }
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "a job's output takes GET, HEAD and POST (by its worker)",
        )),
    }
}

/// A job's output as one response body, from its first byte, as it is
/// appended, until the job ends: the gateway's pass-through of a streamed
/// answer (the bytes exactly as the upstream sent them). Waits up to
/// `wait` for the first bytes; `None` if the job ended without output, or
/// none came in time. The body holds `permit` while it lasts, at most
/// `lifetime`.
pub(crate) async fn pass_through(
    app: &AppState,
    job: &replyd_core::JobRecord,
    wait: std::time::Duration,
    lifetime: std::time::Duration,
    permit: Permit,
) -> ApiResult<Option<Response>> {
    let source = Source::Output {
        key: StreamKey {
            tenant: job.tenant.clone(),
            path: output_path(job.id),
        },
        job: job.id,
    };
    let keepalive = crate::config::secs(app.config.streams.keepalive);
    let mut follow = Follow::new(app, &source, 0, lifetime);
    let deadline = tokio::time::Instant::now() + wait;
    let (s, first) = loop {
        match tokio::time::timeout_at(deadline, follow.next(keepalive)).await {
            Err(_) | Ok(Followed::Ended) => return Ok(None),
            Ok(Followed::Quiet) => {}
            Ok(Followed::Read(s, read)) if !read.chunks.is_empty() => break (s, read),
            Ok(Followed::Read(s, _)) if s.closed => return Ok(None),
            Ok(Followed::Read(..)) => {}
        }
    };
    let first = render(&s, &first);
    let state = (Some(first), follow, permit);
    let body = futures::stream::unfold(state, move |(first, mut follow, permit)| async move {
        if let Some(bytes) = first {
            return Some((
                Ok::<_, std::convert::Infallible>(bytes),
                (None, follow, permit),
            ));
        }
        loop {
            match follow.next(keepalive).await {
                Followed::Read(s, read) if !read.chunks.is_empty() => {
                    let bytes = render(&s, &read);
                    return Some((Ok(bytes), (None, follow, permit)));
                }
                Followed::Read(s, _) if s.closed => return None,
                Followed::Read(..) | Followed::Quiet => {}
                Followed::Ended => return None,
            }
        }
    });
    let mut res = Response::new(axum::body::Body::from_stream(body));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, super::content_type_value(&s));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}/output", job.id)) {
        h.insert(header::CONTENT_LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&job.id.to_string()) {
        h.insert(replyd_proto::JOB_ID_HEADER, v);
    }
    Ok(Some(res))
}

/// The most of a `job.output` event's part sent inline.
const INLINE: u64 = 64 * 1024;

/// The data of event `e` as the job's event streams send it (`cached`: its
/// rendering, if at hand): a `job.output` event also carries its part of
/// the output as `output.text` when the output is text and the part is
/// at most 64 KiB (else the client reads it from `links.output`).
pub(crate) async fn event_data(
    app: &AppState,
    e: &replyd_core::event::EventRecord,
    cached: Option<&Bytes>,
) -> Bytes {
    let plain = || cached.cloned().unwrap_or_else(|| app.render.event(e));
    let (replyd_core::event::EventKind::Output, Some(mark)) = (e.kind, e.job.output) else {
        return plain();
    };
    let Some(text) = output_part(app, &e.job, mark).await else {
        return plain();
    };
    let mut view = app.render.job(&e.job);
    if let Some(o) = &mut view.output {
        o.text = Some(text);
    }
    serde_json::to_vec(&view)
        .map(Bytes::from)
        .unwrap_or_else(|_| plain())
}

/// Bytes `mark.from..mark.to` of `job`'s output as text, if it is text and
/// small enough.
async fn output_part(
    app: &AppState,
    job: &replyd_core::JobRecord,
    mark: replyd_core::job::OutputMark,
) -> Option<String> {
    let len = mark.to.checked_sub(mark.from)?;
    if len > INLINE {
        return None;
    }
    let key = StreamKey {
        tenant: job.tenant.clone(),
        path: output_path(job.id),
    };
    let streams = app.store.streams()?;
    let Found::Live((s, read)) = streams
        .stream_read(&key, mark.from, len as usize, app.now())
        .await
        .ok()?
    else {
        return None;
    };
    if !replyd_core::stream::is_text(&s.content_type) {
        return None;
    }
    // Whole appends from `from`, cut at `to` (later appends may follow).
    let mut part = Vec::with_capacity(len as usize);
    let mut messages = Vec::new();
    for c in &read.chunks {
        if part.len() as u64 >= len {
            break;
        }
        part.extend_from_slice(c);
        messages.push(c.clone());
    }
    part.truncate(len as usize);
    if s.json() {
        let read = replyd_core::stream::ReadChunks {
            chunks: messages,
            next: mark.to,
        };
        return String::from_utf8(render(&s, &read).to_vec()).ok();
    }
    String::from_utf8(part).ok()
}
