//! Server-Sent Events (API.md §3): `GET /v1/jobs/{id}/events`, one job's
//! history then its live events until the terminal one, and
//! `GET /v1/events`, the caller's jobs (optionally one queue's) from now on,
//! or from a `Last-Event-ID`.
//!
//! Both are a [`Feed`] (history, then live, each id once) written out as
//! `id:` / `event:` / `data:` frames. A quiet stream gets a keep-alive
//! comment; a stream whose client stops reading is cut off once its buffer
//! is full, with a `stream.overflow` event, and the client's EventSource
//! resumes from its `Last-Event-ID`.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{BufMut, Bytes, BytesMut};
use replyd_core::EventId;
use replyd_core::event::EventRecord;
use serde::Deserialize;
use tokio::time::{Instant, Sleep};

use super::stream::event_data;
use super::{AppState, Client, JobRequest, query};
use crate::auth::Action;
use crate::config::secs;
use crate::error::{ApiError, ApiResult};
use crate::limits::{Held, Permit};
use crate::live::{Feed, Listener, Live, Scope, Target};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/events", get(all_events))
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    /// Resume after this id, for a first connection (a reconnecting
    /// EventSource sends the `Last-Event-ID` header, which wins).
    pub last_event_id: Option<String>,
    /// `/v1/events` only: just this queue's jobs.
    pub queue: Option<String>,
    /// `/v1/events` only: the operational events instead (admin keys).
    #[serde(default)]
    pub operational: bool,
    pub access_token: Option<String>,
}

/// Where a stream resumes: `Last-Event-ID`, else `?last_event_id=`. An
/// empty value is no value (EventSource's own reset); anything but a
/// non-negative integer is 400.
pub fn resume_from(headers: &HeaderMap, param: Option<&str>) -> ApiResult<Option<EventId>> {
    let raw = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::bad_request("Last-Event-ID must be an event id"))?,
        None => param.unwrap_or(""),
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "malformed event id {:?}: event ids are non-negative integers",
            raw.chars().take(40).collect::<String>()
        ))
    })
}

/// A job's events.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "events", operation_id = "job_events",
    params(("id" = String, Path), ("access_token" = Option<String>, Query, description = "A job token"),
           ("last_event_id" = Option<String>, Query, description = "Resume after this event (first connection)"),
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "text/event-stream: the history, then live events until the terminal one"),
        (status = 204, description = "The stream already ended at or before Last-Event-ID"),
        (status = 400, description = "Malformed event id", body = replyd_proto::Problem),
        (status = 404, description = "Unknown job", body = replyd_proto::Problem),
        (status = 410, description = "Expired", body = replyd_proto::Problem)))]
pub async fn job_events(
    State(app): State<AppState>,
    client: Client,
    r: JobRequest,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let mut permit = client.hold(&app, Held::Stream, None)?;
    let q = query(q)?;
    let after = resume_from(&headers, q.last_event_id.as_deref())?;
    let job = app.job_for(&r.caller, Action::Read, r.id).await?;
    permit.add_tenant(&job.tenant)?;
    let target = Target::Job(job.id);
    let listener = app.hub.listen();
    listener.watch(0, target.clone());
    let (mut feed, _) = Feed::open(target, after, &app.hub, &*app.store).await?;
    // Read the first of the history now: a store error is a 503 rather
    // than a broken stream, and a reconnect after the end is a 204.
    let first = feed.next_backlog(&*app.store).await?;
    if first.is_none() && job.state.is_terminal() {
        return Ok(cors(StatusCode::NO_CONTENT.into_response()));
    }
    Ok(stream(app, listener, feed, first, None, permit))
}

/// All of the caller's jobs' events.
#[utoipa::path(get, path = "/v1/events", tag = "events", operation_id = "all_events",
    params(("queue" = Option<String>, Query, description = "Only this queue's jobs"),
           ("operational" = Option<bool>, Query, description = "The operational events instead (admin keys): delivery.dead_lettered, endpoint.disabled, endpoint.recovered, dlq.threshold_exceeded"),
           ("last_event_id" = Option<String>, Query, description = "Resume after this event (first connection)"),
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "text/event-stream: events from now on, or after the given id"),
        (status = 400, description = "Malformed event id", body = replyd_proto::Problem),
        (status = 401, description = "No credentials", body = replyd_proto::Problem),
        (status = 403, description = "A job token (it grants one job only)", body = replyd_proto::Problem)))]
pub async fn all_events(
    State(app): State<AppState>,
    client: Client,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let mut permit = client.hold(&app, Held::Stream, None)?;
    let q = query(q)?;
    let caller = app.auth.identify(&headers, q.access_token.as_deref())?;
    caller.check(
        if q.operational {
            Action::Endpoints
        } else {
            Action::Read
        },
        None,
    )?;
    if let Some(t) = caller.tenant() {
        permit.add_tenant(t)?;
    }
    let after = resume_from(&headers, q.last_event_id.as_deref())?;
    if q.operational {
        let after = match after {
            Some(id) => id.0,
            None => app.store.last_ops_event().await?,
        };
        return Ok(operational(app, caller.tenant().cloned(), after, permit));
    }
    if let Some(queue) = &q.queue {
        super::queue_filter(queue)?;
    }
    let target = Target::All(Scope {
        tenant: caller.tenant().cloned(),
        queue: q.queue,
    });
    let listener = app.hub.listen();
    listener.watch(0, target.clone());
    let (feed, reset) = Feed::open(target, after, &app.hub, &*app.store).await?;
    let reset = after.filter(|_| reset).map(reset_frame);
    Ok(stream(app, listener, feed, None, reset, permit))
}

/// How often an operational stream looks for new events (they are rare:
/// dead letters and endpoints).
const OPERATIONAL_POLL: Duration = Duration::from_secs(1);

/// The operational events of `tenant` (all for `None`) after `after`, then
/// as they come. Their ids are their own (rising in commit order), so
/// `Last-Event-ID` resumes exactly.
fn operational(
    app: AppState,
    tenant: Option<replyd_core::Tenant>,
    after: i64,
    permit: Permit,
) -> Response {
    struct State {
        app: AppState,
        tenant: Option<replyd_core::Tenant>,
        after: i64,
        head: Option<Bytes>,
        quiet: Duration,
        done: bool,
        _permit: Permit,
    }
    let head = format!("retry: {}\n\n", app.config.streams.retry_ms);
    let state = State {
        head: Some(head.into()),
        tenant,
        after,
        quiet: Duration::ZERO,
        done: false,
        _permit: permit,
        app,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(head) = st.head.take() {
            return Some((Ok::<Bytes, Infallible>(head), st));
        }
        let keepalive = secs(st.app.config.streams.keepalive);
        loop {
            match st
                .app
                .store
                .ops_events(st.after, st.tenant.clone(), 100)
                .await
            {
                Ok(events) if !events.is_empty() => {
                    let mut b = BytesMut::new();
                    for e in &events {
                        let data = serde_json::json!({
                            "type": e.kind.name(),
                            "timestamp": e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            "tenant": e.tenant.0,
                            "data": e.data,
                        });
                        b.put_slice(
                            format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, e.kind.name())
                                .as_bytes(),
                        );
                        st.after = e.id;
                    }
                    st.quiet = Duration::ZERO;
                    return Some((Ok(b.freeze()), st));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "an operational stream cannot read; closing it");
                    st.done = true;
                    let b = Bytes::from_static(
                        b": the store is unavailable; reconnect with Last-Event-ID\n\n",
                    );
                    return Some((Ok(b), st));
                }
            }
            tokio::select! {
                _ = st.app.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(OPERATIONAL_POLL) => {}
            }
            st.quiet += OPERATIONAL_POLL;
            if st.quiet >= keepalive {
                st.quiet = Duration::ZERO;
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st));
            }
        }
    });
    event_stream(Body::from_stream(body))
}

/// `stream.reset`: events after the client's id were removed from the log
/// (their jobs expired or were deleted); what is retained follows.
fn reset_frame(after: EventId) -> Bytes {
    let data = serde_json::json!({
        "last_event_id": after.to_string(),
        "detail": "events after this id are no longer retained; what is retained follows",
    });
    Bytes::from(format!("event: stream.reset\ndata: {data}\n\n"))
}

/// An event stream's response: its type, never cached or buffered by a
/// proxy, readable from any origin.
fn event_stream(body: Body) -> Response {
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    cors(res)
}

fn cors(mut res: Response) -> Response {
    // Streams are read with a job token or an API key, never with ambient
    // credentials (cookies), so any origin may read them.
    super::allow_any_origin(res.headers_mut(), "");
    res
}

fn stream(
    app: AppState,
    listener: Listener,
    feed: Feed,
    first: Option<EventRecord>,
    reset: Option<Bytes>,
    permit: Permit,
) -> Response {
    let streams = &app.config.streams;
    let keepalive = secs(streams.keepalive);
    let mut head = format!("retry: {}\n\n", streams.retry_ms).into_bytes();
    if let Some(reset) = reset {
        head.extend_from_slice(&reset);
    }
    let sse = Sse {
        keepalive_every: keepalive,
        keepalive: Box::pin(tokio::time::sleep(keepalive)),
        app,
        listener,
        feed,
        head: Some(head.into()),
        pending: first,
        done: false,
        _permit: permit,
    };
    metrics::gauge!("replyd_sse_streams").increment(1.0);
    let body = futures::stream::unfold(sse, |mut sse| async move {
        let chunk = sse.next_chunk().await?;
        let next = Instant::now() + sse.keepalive_every;
        sse.keepalive.as_mut().reset(next);
        Some((Ok::<Bytes, Infallible>(chunk), sse))
    });
    event_stream(Body::from_stream(body))
}

/// One open stream.
struct Sse {
    app: AppState,
    listener: Listener,
    feed: Feed,
    /// Sent first: `retry:`, and `stream.reset` if due.
    head: Option<Bytes>,
    /// The first event of the history, read before the response began.
    pending: Option<EventRecord>,
    keepalive_every: Duration,
    keepalive: Pin<Box<Sleep>>,
    done: bool,
    /// The stream's place in `limits.streams`.
    _permit: Permit,
}

impl Drop for Sse {
    fn drop(&mut self) {
        metrics::gauge!("replyd_sse_streams").decrement(1.0);
    }
}

impl Sse {
    /// The next bytes to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        if let Some(e) = self.pending.take() {
            return Some(frame(&e, &event_data(&self.app, &e, None).await));
        }
        loop {
            if self.feed.finished() {
                return None;
            }
            match self.feed.next_backlog(&*self.app.store).await {
                Ok(Some(e)) => return Some(frame(&e, &event_data(&self.app, &e, None).await)),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "an event stream cannot read the log; closing it");
                    self.done = true;
                    return Some(Bytes::from_static(
                        b": the store is unavailable; reconnect with Last-Event-ID\n\n",
                    ));
                }
            }
            tokio::select! {
                _ = self.app.shutdown.cancelled() => {
                    self.done = true;
                    return Some(Bytes::from_static(b": the server is shutting down\n\n"));
                }
                _ = self.keepalive.as_mut() => {
                    return Some(Bytes::from_static(b": keep-alive\n\n"));
                }
                live = self.listener.recv() => match live {
                    Some(Live::Event { event, .. }) => {
                        if self.feed.offer(&event.record) {
                            let cached = event.data(&self.app.render);
                            let data = event_data(&self.app, &event.record, Some(cached)).await;
                            return Some(frame(&event.record, &data));
                        }
                    }
                    Some(Live::Resync) => self.feed.resync(),
                    None => {
                        self.done = true;
                        if !self.listener.overflowed() {
                            return None;
                        }
                        return Some(Bytes::from_static(
                            b"event: stream.overflow\ndata: {\"detail\":\"this client read too slowly and \
                              its buffer filled; reconnect with Last-Event-ID to resume\"}\n\n",
                        ));
                    }
                },
            }
        }
    }
}

/// `id:` / `event:` / `data:`. The data is compact JSON: one line.
fn frame(e: &EventRecord, data: &[u8]) -> Bytes {
    let name = e.kind.name();
    let mut b = BytesMut::with_capacity(data.len() + name.len() + 40);
    b.put_slice(b"id: ");
    b.put_slice(e.id.to_string().as_bytes());
    b.put_slice(b"\nevent: ");
    b.put_slice(name.as_bytes());
    b.put_slice(b"\ndata: ");
    b.put_slice(data);
    b.put_slice(b"\n\n");
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(resume_from(&h, None).unwrap(), None);
        assert_eq!(resume_from(&h, Some("7")).unwrap(), Some(EventId(7)));
        assert_eq!(resume_from(&h, Some("")).unwrap(), None);
        h.insert("last-event-id", HeaderValue::from_static("9"));
        assert_eq!(
            resume_from(&h, Some("7")).unwrap(),
            Some(EventId(9)),
            "the header wins"
        );
        for bad in ["x", "-1", "1.5", "99999999999999999999"] {
            h.insert("last-event-id", HeaderValue::from_str(bad).unwrap());
            let e = resume_from(&h, None).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
