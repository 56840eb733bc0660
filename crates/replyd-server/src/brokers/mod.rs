//! Message brokers (API.md §6): requests arrive on a broker and each reply
//! goes where its request said, carrying the request's correlation id; jobs
//! of a queue whose executor is a broker go out to workers over it, and the
//! workers' replies complete them.
//!
//! Every broker implements one small trait, [`Broker`]: receive from a
//! source, publish with the broker's confirmation, open a private inbox.
//! Everything else is written once, here, for every broker:
//! - [`ingress`]: requests become jobs. Parsed, deduplicated by message id,
//!   acknowledged only once the job is durable; what cannot be parsed is
//!   dead-lettered with the reason.
//! - [`replies`]: the outbox [`Sender`](crate::outbox::Sender) of a broker's
//!   channel: replies are written with the job's event (outbox) and
//!   published with confirms, retried on the channel's schedule.
//! - [`executor`]: a broker-executor queue's jobs are published to its work
//!   destination; the worker's reply completes (or fails) the job; no reply
//!   within the lease, and the job is retried.
//!
//! Each broker lives in a folder of its own with the same files:
//! `client.rs` (its [`Broker`], behind its cargo feature) and `mod.rs`
//! (which turns its section into a [`Setup`] and starts it with [`run`]);
//! its configuration section is in `config::brokers` (always compiled, so
//! that a configuration naming it gets a clear error). `amqp/` is RabbitMQ,
//! `kafka/` Apache Kafka, `mqtt/` MQTT 5, `nats/` NATS, `sqs/` AWS SQS,
//! `sns/` AWS SNS (on SQS's queues, and SNS's signed HTTP push).

pub mod amqp;
pub mod executor;
pub mod ingress;
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod replies;
pub mod sns;
pub mod sqs;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use replyd_core::outbox::Channel;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::app::App;

/// Message metadata, by the names of API.md §6 (each broker maps them to
/// its own properties or headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Where the reply goes.
    pub reply_to: Option<String>,
    pub content_type: Option<String>,
    /// Application headers (`x-replyd-queue`, `x-replyd-job-id`, …), as
    /// text.
    pub headers: BTreeMap<String, String>,
    /// What a reply must carry back from its request beyond the
    /// correlation id, in the broker's own terms (Kafka: the record's key
    /// and the reply partition). A request's are kept with its reply's
    /// target and given to the reply; brokers with no such thing leave it
    /// empty.
    pub echo: BTreeMap<String, String>,
}

impl Props {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Props {
        self.headers.insert(name.to_string(), value.into());
        self
    }

    /// With the W3C `traceparent` and `tracestate` headers, if any.
    pub fn with_trace(self, trace: Option<crate::telemetry::Outgoing>) -> Props {
        let Some(t) = trace else { return self };
        let props = self.with_header(headers::TRACEPARENT, t.traceparent);
        match t.tracestate {
            Some(state) => props.with_header(headers::TRACESTATE, state),
            None => props,
        }
    }

    /// The trace a message came in: its `traceparent` and `tracestate`
    /// headers (ignored when malformed).
    pub fn trace(&self) -> Option<replyd_core::trace::TraceContext> {
        replyd_core::trace::TraceContext::parse(
            self.header(headers::TRACEPARENT)?,
            self.header(headers::TRACESTATE),
        )
    }
}

/// A message: a body and its metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub body: Bytes,
    pub props: Props,
}

/// A message received, to be settled once it is handled: until then the
/// broker keeps it, and gives it to another consumer if this one goes away.
pub struct Received {
    pub message: Message,
    /// Whether the broker delivered it before (to this or another
    /// consumer).
    pub redelivered: bool,
    pub settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

/// How a received message is settled.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Handled: the broker may forget it.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Not handled now: give it back, to be delivered again.
    async fn requeue(self: Box<Self>) -> Result<(), BrokerError>;
}

/// What the broker said of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// It has the message (a publisher confirm).
    Accepted,
    /// It could route it nowhere: the destination does not exist (a reply
    /// whose requester is gone).
    Unroutable,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now (or the connection dropped): try
    /// again later.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// It refused the operation (a publish it did not confirm, a queue it
    /// would not declare).
    #[error("the broker refused: {0}")]
    Refused(String),
}

/// A message broker, as replyd uses one.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The outbox channel of its replies.
    fn channel(&self) -> Channel;

    /// Receives the messages of `source` (a durable queue, declared if need
    /// be), at most `prefetch` unsettled at once, until the connection
    /// drops: then the receiver ends, and the caller subscribes again.
    async fn subscribe(
        &self,
        source: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Received>, BrokerError>;

    /// Makes sure `destination` exists (a durable queue), so that what is
    /// published there is kept until someone takes it.
    async fn declare(&self, destination: &str) -> Result<(), BrokerError>;

    /// A private, temporary destination and what arrives there (an RPC
    /// client's reply inbox).
    async fn inbox(&self) -> Result<(String, mpsc::Receiver<Received>), BrokerError>;

    /// Publishes `message` to `to` (a destination: a queue's name, a reply
    /// address) and waits for the broker's confirmation.
    async fn publish(&self, to: &str, message: Message) -> Result<Published, BrokerError>;
}

/// A correlation id as text, from the bytes a broker carries (MQTT's
/// `Correlation Data`, Kafka's `kafka_correlationId`): UTF-8 as it is,
/// anything else as base64 after a marker, so that [`correlation_bytes`]
/// gives the reply the very bytes of its request.
pub fn correlation_text(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) if !s.starts_with(BINARY_CORRELATION) => s.to_string(),
        _ => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            format!("{BINARY_CORRELATION}{b64}")
        }
    }
}

/// The bytes of a correlation id [`correlation_text`] made (text as its
/// UTF-8 bytes).
pub fn correlation_bytes(text: &str) -> Vec<u8> {
    use base64::Engine;
    text.strip_prefix(BINARY_CORRELATION)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_else(|| text.as_bytes().to_vec())
}

/// Marks a correlation id that is not UTF-8 (or would read as marked).
const BINARY_CORRELATION: &str = "\u{0}base64:";

/// Header names (API.md §6 and replyd's own).
pub mod headers {
    /// Request: the job's queue.
    pub const QUEUE: &str = "x-replyd-queue";
    /// Request: `max_attempts`, `timeout` (s), `ttl` (s).
    pub const MAX_ATTEMPTS: &str = "x-replyd-max-attempts";
    pub const TIMEOUT: &str = "x-replyd-timeout";
    pub const TTL: &str = "x-replyd-ttl";
    /// Request: `priority` (0 to 9), `delay` (s) or `run_at` (RFC 3339).
    pub const PRIORITY: &str = "x-replyd-priority";
    pub const DELAY: &str = "x-replyd-delay";
    pub const RUN_AT: &str = "x-replyd-run-at";
    /// Request: the group the job shares its queue fairly by.
    pub const GROUP: &str = "x-replyd-group";
    /// Request (SQS, SNS): the message group of its replies in a FIFO
    /// queue or topic (default: the correlation id). Kept in
    /// `Props::echo` under this name.
    pub const REPLY_GROUP: &str = "x-replyd-reply-group";
    /// Request: `true` for a reply on each progress report too.
    pub const PROGRESS: &str = "x-replyd-progress";
    /// Reply (and work message): the job.
    pub const JOB_ID: &str = "x-replyd-job-id";
    /// Reply: the job's state after the event (`succeeded`, `failed`,
    /// `canceled`, `running`, or `rejected` for a request that made no
    /// job). Worker reply: `succeeded` (the default), `failed`,
    /// `running` (progress) or `output` (a chunk of the job's output).
    pub const STATE: &str = "x-replyd-state";
    /// Reply: the event (`job.succeeded`, …).
    pub const EVENT: &str = "x-replyd-event";
    /// Dead letter and rejection: why.
    pub const ERROR: &str = "x-replyd-error";
    /// Work message: the attempt.
    pub const ATTEMPT: &str = "x-replyd-attempt";
    /// Worker reply with state `running`: percent and message.
    pub const PERCENT: &str = "x-replyd-percent";
    pub const MESSAGE: &str = "x-replyd-message";
    /// Worker reply with state `failed`: `true` to ask for another attempt.
    pub const RETRY: &str = "x-replyd-retry";
    /// Worker reply with state `output`: the chunk's number in its
    /// attempt, from 0.
    pub const SEQ: &str = "x-replyd-seq";
    /// Every message: W3C Trace Context (the request's trace in; a reply's
    /// delivery span, a work message's attempt span out).
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

/// Starts every configured broker's tasks: ingress, the reply dispatcher,
/// the executors.
pub fn start(app: &Arc<App>, tasks: &mut JoinSet<()>) {
    amqp::start(app, tasks);
    kafka::start(app, tasks);
    mqtt::start(app, tasks);
    nats::start(app, tasks);
    sqs::start(app, tasks);
    sns::start(app, tasks);
}

/// What a broker's section says, in the terms every broker shares.
#[cfg_attr(
    not(any(
        feature = "amqp",
        feature = "kafka",
        feature = "mqtt",
        feature = "nats",
        feature = "sqs"
    )),
    allow(dead_code)
)]
pub(crate) struct Setup {
    pub broker: Arc<dyn Broker>,
    /// Each request source, with how its requests become jobs.
    pub requests: Vec<(String, ingress::Settings)>,
    /// Replies in flight at once.
    pub concurrency: usize,
    /// Seconds before each attempt at a reply.
    pub reply_schedule: Vec<f64>,
    /// Where the workers of this broker's executor queues reply.
    pub reply_source: String,
    /// The executor that names this broker.
    pub executor: crate::config::Executor,
    /// A queue's work destination when it names none.
    pub default_work: fn(&str) -> String,
}

/// Each request source of a broker's section, with how its requests become
/// jobs (`dead_letter_of` names a source's dead-letter destination).
#[cfg_attr(
    not(any(
        feature = "amqp",
        feature = "kafka",
        feature = "mqtt",
        feature = "nats",
        feature = "sqs"
    )),
    allow(dead_code)
)]
pub(crate) fn request_sources(
    sources: &[String],
    tenant: &str,
    default_queue: Option<&String>,
    prefetch: u16,
    dead_letter_of: impl Fn(&str) -> String,
) -> Vec<(String, ingress::Settings)> {
    sources
        .iter()
        .map(|source| {
            let settings = ingress::Settings {
                tenant: replyd_core::Tenant(tenant.to_string()),
                default_queue: default_queue.cloned(),
                dead_letter: dead_letter_of(source),
                prefetch,
            };
            (source.clone(), settings)
        })
        .collect()
}

/// Starts one broker's tasks: a consumer per request source, the reply
/// dispatcher of its outbox channel, and its executor queues (with the
/// consumer of their workers' replies).
#[cfg_attr(
    not(any(
        feature = "amqp",
        feature = "kafka",
        feature = "mqtt",
        feature = "nats",
        feature = "sqs"
    )),
    allow(dead_code)
)]
pub(crate) fn run(app: &Arc<App>, tasks: &mut JoinSet<()>, setup: Setup) {
    use crate::config::secs;
    use crate::outbox::{Limits, Schedule};

    let Setup {
        broker,
        requests,
        concurrency,
        reply_schedule,
        reply_source,
        executor,
        default_work,
    } = setup;
    for (source, settings) in requests {
        tasks.spawn(ingress::run(app.clone(), broker.clone(), source, settings));
    }
    let replies = Arc::new(replies::Replies {
        broker: broker.clone(),
        store: app.store.clone(),
        render: app.render.clone(),
        telemetry: app.telemetry.clone(),
        limits: Limits {
            concurrency,
            per_endpoint: concurrency,
            attempt_timeout: replies::CONFIRM_TIMEOUT,
            schedule: Schedule {
                delays: reply_schedule.iter().map(|d| secs(*d)).collect(),
                max_retry_after: std::time::Duration::ZERO,
                jitter: 0.1,
            },
        },
    });
    tasks.spawn(crate::outbox::dispatch::run(app.outbox(), replies));
    let mut executors = app
        .config
        .queues
        .iter()
        .filter(|(_, q)| q.executor == executor)
        .peekable();
    if executors.peek().is_some() {
        tasks.spawn(executor::consume_replies(
            app.clone(),
            broker.clone(),
            reply_source.clone(),
        ));
    }
    for (name, q) in executors {
        let settings = executor::Settings {
            queue: name.clone(),
            work: q.work_queue.clone().unwrap_or_else(|| default_work(name)),
            replies: reply_source.clone(),
            concurrency: q.concurrency as usize,
        };
        tasks.spawn(executor::run(app.clone(), broker.clone(), settings));
    }
}

/// Consumes `source` until shutdown, subscribing again (with backoff)
/// whenever the connection drops, and hands each message to `handle`, at
/// most `prefetch` at once. While it is subscribed,
/// `replyd_broker_consuming{broker,source}` is 1 (an operator's alert, and
/// how a test knows replyd listens). `what` names the messages in logs.
pub(crate) async fn consume<F, Fut>(
    app: Arc<App>,
    broker: Arc<dyn Broker>,
    source: String,
    prefetch: u16,
    what: &'static str,
    handle: F,
) where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let name = broker.channel().as_str();
    let consuming =
        metrics::gauge!("replyd_broker_consuming", "broker" => name, "source" => source.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(usize::from(prefetch.max(1))));
    let mut backoff = Backoff::default();
    loop {
        let subscribed = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            s = broker.subscribe(&source, prefetch) => s,
        };
        match subscribed {
            Ok(mut rx) => {
                backoff.reset();
                consuming.set(1.0);
                tracing::info!(broker = name, source = %source, "consuming {what}");
                loop {
                    let r = tokio::select! {
                        _ = app.shutdown.cancelled() => break,
                        r = rx.recv() => r,
                    };
                    let Some(r) = r else { break };
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        break;
                    };
                    let handled = handle(r);
                    tokio::spawn(async move {
                        handled.await;
                        drop(slot);
                    });
                }
                consuming.set(0.0);
                if app.shutdown.is_cancelled() {
                    break;
                }
                tracing::warn!(broker = name, source = %source, "the {what} consumer ended; subscribing again");
            }
            Err(e) => {
                tracing::warn!(broker = name, source = %source, error = %e, "cannot consume {what}");
            }
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff.next()) => {}
        }
    }
    consuming.set(0.0);
}

/// Retries with capped exponential backoff: 100 ms, 200 ms, … 5 s.
#[derive(Debug, Default)]
pub(crate) struct Backoff(u32);

impl Backoff {
    pub fn next(&mut self) -> std::time::Duration {
        let ms = 100u64 << self.0.min(6);
        self.0 += 1;
        std::time::Duration::from_millis(ms.min(5_000))
    }

    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever bytes a requester's correlation id is, its reply carries
    /// the same bytes: UTF-8 text, binary (a Spring UUID), and text that
    /// looks like the binary marker.
    #[test]
    fn correlation_ids_come_back_byte_for_byte() {
        let spring_uuid: [u8; 16] = [
            0x9f, 0x1c, 0x2b, 0x00, 0xe4, 0x51, 0x4a, 0x8d, 0xb0, 0x11, 0xff, 0x80, 0x00, 0x7a,
            0x13, 0xc2,
        ];
        let marked = format!("{BINARY_CORRELATION}abc");
        let cases: [&[u8]; 5] = [
            b"c-1",
            &spring_uuid,
            b"",
            marked.as_bytes(),
            "ünï".as_bytes(),
        ];
        for raw in cases {
            let text = correlation_text(raw);
            assert_eq!(correlation_bytes(&text), raw, "{text:?}");
        }
        assert_eq!(correlation_text(b"c-1"), "c-1", "text stays readable");
    }
}
