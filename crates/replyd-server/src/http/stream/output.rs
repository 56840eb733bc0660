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
use replyd_core::stream::{Found, StreamKey, output_path};

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
            let req = append_request(headers, body, limits)?;
            let wrote = !req.body.is_empty();
            let key = StreamKey {
                tenant: job.tenant,
                path: output_path(job.id),
            };
            match streams_of(app)?
                .output_append(&key, job.id, LeaseId(lease.to_string()), req, now)
                .await?
            {
                Found::Live(answer) => appended(answer, wrote),
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
