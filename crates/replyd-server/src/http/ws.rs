//! WebSocket (API.md §4): `GET /v1/ws`, JSON text frames with a `type`.
//!
//! Client → server: `submit {ref, job, idempotency_key?, subscribe?}`,
//! `subscribe {ref, job_id | all: true, queue?, after?}`,
//! `unsubscribe {ref, job_id | all: true}`, `cancel {ref, job_id}`, `ping {ref?}`.
//! Server → client: `ack {ref, job?}`, `event {ref, id, event, job}` (the
//! ids of SSE; `ref` is the subscription's), `error {ref, error}`, `pong {ref}`.
//!
//! Each subscription is a [`Feed`] on one [`Listener`] per connection, so a
//! WebSocket delivers exactly what SSE does. The server pings every
//! `streams.ping_interval` and drops a peer that answers none of two; a bad
//! frame gets an `error` and the connection stays; an oversized frame
//! closes it with 1009; a connection whose buffer fills (it reads too
//! slowly) is closed with 1008 and resumes with `after`.

use replyd_core::trace::TraceContext;
use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use replyd_core::event::EventRecord;
use replyd_core::store::Submitted;
use replyd_core::{EventId, Tenant};
use replyd_proto as proto;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, Client, TokenParam, job_id, query};
use crate::app::{Submission, idempotency_key, request_hash};
use crate::auth::{Action, Caller};
use crate::config::secs;
use crate::error::{ApiError, ApiResult};
use crate::limits::{Held, Permit};
use crate::live::{Feed, Listener, Live, Scope, Target};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/ws", get(upgrade))
}

/// Room for a submission's body plus the frame around it.
const FRAME_OVERHEAD: usize = 16 * 1024;

/// The longest `ref` string a client may give (a number is always small).
pub const MAX_REF: usize = 128;

/// Open a WebSocket.
#[utoipa::path(get, path = "/v1/ws", tag = "events", operation_id = "websocket",
    params(("access_token" = Option<String>, Query, description = "A job token, for clients that cannot set headers (API keys go in Authorization)")),
    responses(
        (status = 101, description = "Switching protocols"),
        (status = 401, description = "No or unknown credentials", body = proto::Problem)))]
pub async fn upgrade(
    State(app): State<AppState>,
    client: Client,
    headers: HeaderMap,
    q: Result<Query<TokenParam>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let mut permit = client.hold(&app, Held::WebSocket, None)?;
    let q = query(q)?;
    // Credentials are checked before the 101: a key that may read, or a
    // valid job token (which then opens its own job only, frame by frame).
    let caller = app.auth.identify(&headers, q.access_token.as_deref())?;
    let names_a_job = matches!(caller, Caller::JobToken(_));
    caller.may(Action::Read, names_a_job)?;
    if let Some(t) = caller.tenant() {
        permit.add_tenant(t)?;
    }
    let ws = ws.map_err(|e| {
        ApiError::new(
            e.status(),
            "websocket-upgrade",
            format!("this endpoint speaks WebSocket: {}", e.body_text()),
        )
    })?;
    let max = app.config.limits.max_body + FRAME_OVERHEAD;
    let trace = super::trace_of(&headers);
    Ok(ws
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(max * 4)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            metrics::gauge!("replyd_websockets").increment(1.0);
            Session::new(app, caller, client, permit, trace)
                .run(socket)
                .await;
            metrics::gauge!("replyd_websockets").decrement(1.0);
        })
        .into_response())
}

/// A client frame's body, by `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Submit {
        #[serde(rename = "ref")]
        _ref: Option<Value>,
        job: Value,
        idempotency_key: Option<String>,
        /// Also subscribe to the new job, under the same ref.
        #[serde(default)]
        subscribe: bool,
        /// W3C Trace Context of the submission (else the upgrade
        /// request's).
        traceparent: Option<String>,
        tracestate: Option<String>,
    },
    Subscribe {
        #[serde(rename = "ref")]
        _ref: Option<Value>,
        job_id: Option<String>,
        #[serde(default)]
        all: bool,
        queue: Option<String>,
        after: Option<WireEventId>,
    },
    Unsubscribe {
        #[serde(rename = "ref")]
        _ref: Option<Value>,
        job_id: Option<String>,
        #[serde(default)]
        all: bool,
    },
    Cancel {
        #[serde(rename = "ref")]
        _ref: Option<Value>,
        job_id: String,
    },
    Ping {
        #[serde(rename = "ref")]
        _ref: Option<Value>,
    },
}

/// An event id as a number or a numeric string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WireEventId {
    Number(i64),
    Text(String),
}

impl WireEventId {
    fn parse(&self) -> ApiResult<EventId> {
        let bad = || ApiError::bad_request("after must be an event id (a non-negative integer)");
        match self {
            WireEventId::Number(n) if *n >= 0 => Ok(EventId(*n)),
            WireEventId::Number(_) => Err(bad()),
            WireEventId::Text(s) => s.parse().map_err(|_| bad()),
        }
    }
}

struct Subscription {
    reference: Value,
    feed: Feed,
    /// Its place in `limits.subscriptions`.
    _permit: Permit,
}

/// Why a connection ends.
enum End {
    /// The peer closed or vanished: nothing to send.
    Quiet,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

struct Session {
    app: AppState,
    /// Who opened the connection; every frame acts as them.
    caller: Caller,
    /// From where, for the subscriptions' limits.
    client: Client,
    /// The session's place in `limits.websockets`.
    _permit: Permit,
    listener: Listener,
    subs: HashMap<u32, Subscription>,
    next_tag: u32,
    /// The upgrade request's trace: a submission's unless it names its own.
    trace: Option<TraceContext>,
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

impl Session {
    fn new(
        app: AppState,
        caller: Caller,
        client: Client,
        permit: Permit,
        trace: Option<TraceContext>,
    ) -> Session {
        let listener = app.hub.listen();
        Session {
            app,
            caller,
            client,
            _permit: permit,
            listener,
            subs: HashMap::new(),
            next_tag: 0,
            trace,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let every = secs(self.app.config.streams.ping_interval);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut unanswered = 0u32;
        let end = loop {
            let step = tokio::select! {
                _ = self.app.shutdown.cancelled() => Err(End::Close(close_code::AWAY, "the server is shutting down")),
                _ = ping.tick() => {
                    if unanswered >= 2 {
                        Err(End::Close(close_code::AWAY, "no answer to two pings"))
                    } else {
                        unanswered += 1;
                        self.send(&mut sink, Message::Ping(Default::default())).await
                    }
                }
                frame = stream.next() => match frame {
                    None | Some(Ok(Message::Close(_))) => Err(End::Quiet),
                    Some(Err(e)) => Err(read_error(e)),
                    Some(Ok(Message::Pong(_))) => { unanswered = 0; Ok(()) }
                    Some(Ok(Message::Ping(_))) => Ok(()),
                    Some(Ok(Message::Text(text))) => self.on_text(&mut sink, text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        let e = ApiError::bad_request("send JSON text frames, not binary ones");
                        self.send_error(&mut sink, Value::Null, &e).await
                    }
                },
                live = self.listener.recv() => match live {
                    Some(Live::Event { tag, event }) => self.on_live(&mut sink, tag, &event.record, Some(event.data(&self.app.render))).await,
                    Some(Live::Resync) => self.resync(&mut sink).await,
                    None if self.listener.overflowed() => Err(End::Close(
                        close_code::POLICY,
                        "slow consumer: the buffer filled; reconnect and subscribe with after",
                    )),
                    None => Err(End::Close(close_code::AWAY, "the server is shutting down")),
                },
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            // The closing handshake: send Close, then read until the
            // peer's Close (or give up after a second), so that a peer
            // still reading what came before sees the Close too.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                sink.send(Message::Close(Some(frame))).await.ok()?;
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
                Some(())
            })
            .await;
        }
    }

    /// Sends one frame; a peer that does not take it within
    /// `streams.write_timeout` is dropped.
    async fn send(&self, sink: &mut Sink, msg: Message) -> Result<(), End> {
        let limit = secs(self.app.config.streams.write_timeout);
        match tokio::time::timeout(limit, sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Quiet),
            Err(_) => Err(End::Quiet),
        }
    }

    async fn send_json(&self, sink: &mut Sink, v: &Value) -> Result<(), End> {
        self.send(sink, Message::Text(v.to_string().into())).await
    }

    async fn send_error(&self, sink: &mut Sink, reference: Value, e: &ApiError) -> Result<(), End> {
        let problem = serde_json::to_value(e.problem()).unwrap_or_default();
        self.send_json(
            sink,
            &json!({"type": "error", "ref": reference, "error": problem}),
        )
        .await
    }

    async fn on_text(&mut self, sink: &mut Sink, text: &str) -> Result<(), End> {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let e = ApiError::invalid_json(format!("malformed JSON: {e}"));
                return self.send_error(sink, Value::Null, &e).await;
            }
        };
        let reference = value.get("ref").cloned().unwrap_or(Value::Null);
        // A ref is echoed on every frame of its subscription and kept as
        // long as it lasts: it must be small.
        let small = match &reference {
            Value::Null | Value::Number(_) => true,
            Value::String(s) => s.len() <= MAX_REF,
            _ => false,
        };
        if !small {
            let e = ApiError::bad_request(format!(
                "ref must be a string of at most {MAX_REF} bytes or a number"
            ));
            return self.send_error(sink, Value::Null, &e).await;
        }
        let frame: ClientFrame = match serde_json::from_value(value) {
            Ok(f) => f,
            Err(e) => {
                let e = ApiError::bad_request(format!(
                    "invalid message: {e} (types: submit, subscribe, unsubscribe, cancel, ping)"
                ));
                return self.send_error(sink, reference, &e).await;
            }
        };
        match self.handle(sink, frame, reference.clone()).await {
            Ok(r) => r,
            Err(e) => self.send_error(sink, reference, &e).await,
        }
    }

    /// Acts on a frame. An `ApiError` becomes an `error` frame; an `End`
    /// (inside the Ok) ends the connection.
    async fn handle(
        &mut self,
        sink: &mut Sink,
        frame: ClientFrame,
        reference: Value,
    ) -> ApiResult<Result<(), End>> {
        match frame {
            ClientFrame::Ping { .. } => Ok(self
                .send_json(sink, &json!({"type": "pong", "ref": reference}))
                .await),
            ClientFrame::Submit {
                job,
                idempotency_key: key,
                subscribe,
                traceparent,
                tracestate,
                ..
            } => {
                let caller = self.caller.clone();
                caller.check(Action::Submit, None)?;
                let tenant = caller.owner()?;
                super::take_submit(&self.app, &tenant, 1)?;
                let key = key.as_deref().map(idempotency_key).transpose()?;
                let request: proto::SubmitRequest = serde_json::from_value(job.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid job: {e}")))?;
                let submitted = self
                    .app
                    .submit(Submission {
                        reply: None,
                        tenant,
                        request_hash: key.as_ref().map(|_| request_hash(&job)),
                        request,
                        idempotency_key: key,
                        trace: match traceparent {
                            Some(p) => TraceContext::parse(&p, tracestate.as_deref()),
                            None => self.trace.clone(),
                        },
                        via: "ws",
                    })
                    .await?;
                let replayed = matches!(submitted, Submitted::Existing(_));
                let job = submitted.job().clone();
                let ack = json!({"type": "ack", "ref": reference, "job": self.app.render.job(&job), "replayed": replayed});
                if let Err(end) = self.send_json(sink, &ack).await {
                    return Ok(Err(end));
                }
                if !subscribe {
                    return Ok(Ok(()));
                }
                self.subscribe(
                    sink,
                    reference,
                    Target::Job(job.id),
                    None,
                    Some(&job.tenant),
                )
                .await
            }
            ClientFrame::Subscribe {
                job_id: id,
                all,
                queue,
                after,
                ..
            } => {
                let after = after.as_ref().map(WireEventId::parse).transpose()?;
                let (target, tenant) = match (id, all) {
                    (Some(_), true) | (None, false) => {
                        return Err(ApiError::bad_request(
                            "subscribe to one job (job_id) or to all (\"all\": true)",
                        ));
                    }
                    (Some(id), false) => {
                        let id = job_id(&id)?;
                        let job = self.app.job_for(&self.caller, Action::Read, id).await?;
                        (Target::Job(id), Some(job.tenant))
                    }
                    (None, true) => {
                        self.caller.check(Action::Read, None)?;
                        if let Some(q) = &queue {
                            super::queue_filter(q)?;
                        }
                        let tenant = self.caller.tenant().cloned();
                        let scope = Scope {
                            tenant: tenant.clone(),
                            queue,
                        };
                        (Target::All(scope), tenant)
                    }
                };
                self.subscribe(sink, reference, target, after, tenant.as_ref())
                    .await
            }
            ClientFrame::Unsubscribe {
                job_id: id, all, ..
            } => {
                let target = match (id, all) {
                    (Some(id), false) => Some(job_id(&id)?),
                    (None, true) => None,
                    _ => {
                        return Err(ApiError::bad_request(
                            "unsubscribe from one job (job_id) or from all (\"all\": true)",
                        ));
                    }
                };
                let tags: Vec<u32> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| match (&s.feed.target, target) {
                        (Target::Job(a), Some(b)) => *a == b,
                        (Target::All(_), None) => true,
                        _ => false,
                    })
                    .map(|(t, _)| *t)
                    .collect();
                if tags.is_empty() {
                    return Err(ApiError::not_found("no such subscription"));
                }
                for tag in tags {
                    self.drop_sub(tag);
                }
                Ok(self
                    .send_json(sink, &json!({"type": "ack", "ref": reference}))
                    .await)
            }
            ClientFrame::Cancel { job_id: id, .. } => {
                let id = job_id(&id)?;
                let caller = self.caller.clone();
                let job = self.app.cancel(&caller, id).await?;
                Ok(self
                    .send_json(
                        sink,
                        &json!({"type": "ack", "ref": reference, "job": self.app.render.job(&job)}),
                    )
                    .await)
            }
        }
    }

    /// Adds a subscription: acknowledges it, replays its history, then it
    /// is live.
    async fn subscribe(
        &mut self,
        sink: &mut Sink,
        reference: Value,
        target: Target,
        after: Option<EventId>,
        tenant: Option<&Tenant>,
    ) -> ApiResult<Result<(), End>> {
        let limit = self.app.config.streams.max_subscriptions;
        if self.subs.len() >= limit {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too-many-subscriptions",
                format!("a connection may hold {limit} subscriptions; unsubscribe first"),
            ));
        }
        let permit = self.client.hold(&self.app, Held::Subscription, tenant)?;
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        self.listener.watch(tag, target.clone());
        let opened = Feed::open(target, after, &self.app.hub, &*self.app.store).await;
        let (feed, reset) = match opened {
            Ok(o) => o,
            Err(e) => {
                self.listener.unwatch(tag);
                return Err(e.into());
            }
        };
        self.subs.insert(
            tag,
            Subscription {
                reference: reference.clone(),
                feed,
                _permit: permit,
            },
        );
        if let Err(end) = self
            .send_json(sink, &json!({"type": "ack", "ref": reference}))
            .await
        {
            return Ok(Err(end));
        }
        if reset {
            let frame = json!({"type": "event", "ref": reference, "event": "stream.reset",
                "detail": "events after this id are no longer retained; what is retained follows"});
            if let Err(end) = self.send_json(sink, &frame).await {
                return Ok(Err(end));
            }
        }
        Ok(self.catch_up(sink, tag).await)
    }

    /// Sends a subscription's history until it has caught up.
    async fn catch_up(&mut self, sink: &mut Sink, tag: u32) -> Result<(), End> {
        loop {
            let Some(sub) = self.subs.get_mut(&tag) else {
                return Ok(());
            };
            let next = match sub.feed.next_backlog(&*self.app.store).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "a WebSocket subscription cannot read the log");
                    return Err(End::Close(
                        close_code::AGAIN,
                        "the store is unavailable; reconnect and subscribe with after",
                    ));
                }
            };
            match next {
                Some(e) => self.deliver(sink, tag, &e, None).await?,
                None => return Ok(()),
            }
        }
    }

    async fn on_live(
        &mut self,
        sink: &mut Sink,
        tag: u32,
        e: &EventRecord,
        data: Option<&bytes::Bytes>,
    ) -> Result<(), End> {
        let taken = self.subs.get_mut(&tag).is_some_and(|s| s.feed.offer(e));
        if taken {
            self.deliver(sink, tag, e, data).await
        } else {
            Ok(())
        }
    }

    /// Sends an event the subscription `tag` has taken; a job subscription
    /// ends with its job's terminal event.
    async fn deliver(
        &mut self,
        sink: &mut Sink,
        tag: u32,
        e: &EventRecord,
        data: Option<&bytes::Bytes>,
    ) -> Result<(), End> {
        let Some(sub) = self.subs.get(&tag) else {
            return Ok(());
        };
        let finished = sub.feed.finished();
        let reference = sub.reference.clone();
        let data = crate::http::stream::event_data(&self.app, e, data).await;
        let data = &data;
        let text = format!(
            r#"{{"type":"event","ref":{},"id":{},"event":"{}","job":{}}}"#,
            reference,
            e.id,
            e.kind.name(),
            String::from_utf8_lossy(data)
        );
        if finished {
            self.drop_sub(tag);
        }
        self.send(sink, Message::Text(text.into())).await
    }

    fn drop_sub(&mut self, tag: u32) {
        self.subs.remove(&tag);
        self.listener.unwatch(tag);
    }

    async fn resync(&mut self, sink: &mut Sink) -> Result<(), End> {
        let tags: Vec<u32> = self.subs.keys().copied().collect();
        for tag in tags {
            if let Some(sub) = self.subs.get_mut(&tag) {
                sub.feed.resync();
            }
            self.catch_up(sink, tag).await?;
        }
        Ok(())
    }
}

/// A read error: an oversized frame is closed with 1009, anything else
/// means the peer is gone.
fn read_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(close_code::SIZE, "frame too large"),
        _ => End::Quiet,
    }
}
