//! `[amqp]`: RabbitMQ (AMQP 0-9-1).
//!
//! ```toml
//! [amqp]
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"   # amqps:// for TLS
//! request_queues = ["replyd.requests"]           # requests arrive here
//! # tenant = "default"               # whose jobs they become
//! # queue = "report"                 # a request's job queue without x-replyd-queue
//! # dead_letter_queue = "replyd.dead"   # default: "<request queue>.dead"
//! # prefetch = 64                    # requests handled at once, per request queue
//! # reply_queue = "replyd.replies"   # where workers of `executor = "amqp"` queues reply
//! # concurrency = 64                 # replies in flight
//! # reply_retry_schedule = [0, 1, 2, 5, 10, 30, 60, 300, 900, 3600]
//! ```

use serde::Deserialize;

use super::DEFAULT_SCHEDULE;
use super::Shared;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// The broker: `amqp://user:password@host:port/vhost` (`amqps://` for
    /// TLS; the vhost `/` is `%2f`).
    pub url: String,
    /// Queues whose messages are requests (declared durable if absent).
    pub request_queues: Vec<String>,
    /// The tenant of the jobs that arrive this way.
    pub tenant: String,
    /// The job queue of a request without `x-replyd-queue`.
    pub queue: Option<String>,
    /// Where a request that cannot be accepted goes, with the reason in
    /// `x-replyd-error` (default: the request queue's name + `.dead`).
    pub dead_letter_queue: Option<String>,
    /// Requests handled (unacknowledged) at once, per request queue.
    pub prefetch: u16,
    /// Where the workers of `executor = "amqp"` queues reply (shared by
    /// every node).
    pub reply_queue: String,
    /// Replies in flight at once.
    pub concurrency: usize,
    /// Seconds before each attempt at a reply; after the last, the reply
    /// is dead (and can be replayed).
    pub reply_retry_schedule: Vec<f64>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            request_queues: Vec::new(),
            tenant: "default".into(),
            queue: None,
            dead_letter_queue: None,
            prefetch: 64,
            reply_queue: "replyd.replies".into(),
            concurrency: 64,
            reply_retry_schedule: DEFAULT_SCHEDULE.to_vec(),
        }
    }
}

/// AMQP names (queues, routing keys) are short strings: at most 255 bytes.
fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255
}

impl AmqpConfig {
    /// Checks the section; `queues` are the configured job queues.
    pub fn validate(&self, queues: &[&str]) -> Result<(), String> {
        let shared = Shared {
            section: "amqp",
            built: cfg!(feature = "amqp"),
            queue: self.queue.as_ref(),
            tenant: &self.tenant,
            prefetch: self.prefetch,
            reply_retry_schedule: &self.reply_retry_schedule,
        };
        shared.built()?;
        let scheme_ok = self.url.starts_with("amqp://") || self.url.starts_with("amqps://");
        if !scheme_ok || url::Url::parse(&self.url).is_err() {
            return Err("amqp.url must be an amqp:// or amqps:// URL".into());
        }
        for name in self
            .request_queues
            .iter()
            .chain(&self.dead_letter_queue)
            .chain([&self.reply_queue])
        {
            if !valid_name(name) {
                return Err(format!("amqp: queue name {name:?} must be 1 to 255 bytes"));
            }
        }
        if self.concurrency == 0 {
            return Err("amqp.concurrency must be at least 1".into());
        }
        shared.check(queues)
    }

    /// The dead-letter queue of requests that arrive on `source`.
    pub fn dead_letter_of(&self, source: &str) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{source}.dead"))
    }
}
