//! The outbox: what a job owes the outside world, and its delivery.
//!
//! A job submitted with a webhook owes a delivery to its URL for each of its
//! terminal events, and for the other events its `events` list names. A job
//! that came over a message broker with a `reply_to` owes a reply there for
//! its terminal event (and for its progress, if the request asked). The
//! store writes each delivery in the same transaction as the event that owes
//! it, so nothing owed lives only in memory; each channel's dispatcher
//! claims due deliveries, attempts them, and records each attempt.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::job::JobRecord;
use crate::kind::EventKind;
pub use crate::reply::{Channel, MORE_REPLIES, ReplyAsked, ReplySpec, ReplyTarget, WebhookSpec};

/// Results up to this many bytes ride inline in a `job.succeeded` delivery
/// (a webhook's `data.result` when they are JSON, a broker reply's body).
pub const INLINE_RESULT: usize = 64 * 1024;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Owed: due at `next_at`.
    Pending,
    Delivered,
    /// Given up on (schedule spent, `410 Gone`, or a refused URL); can be
    /// replayed.
    Dead,
    /// Owed to an endpoint that is paused: sent, in order, once it is
    /// resumed.
    Held,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            DeliveryState::Held => "held",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
            DeliveryState::Held,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// One delivery owed to (or made to) a job's endpoint or requester.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Stable across retries: the `webhook-id` (or a reply's message id) is
    /// derived from it.
    pub id: i64,
    pub channel: Channel,
    pub kind: EventKind,
    /// Where it goes: a webhook's URL, or a broker reply's [`ReplyTarget`]
    /// as JSON.
    pub target: String,
    /// The job as it was right after the event (its id, tenant and queue
    /// are the delivery's).
    pub job: JobRecord,
    pub state: DeliveryState,
    /// Attempts made since it was (re)queued: the position in the schedule.
    pub attempts: u32,
    pub next_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

impl Delivery {
    /// The `webhook-id` header (a reply's message id): the same on every
    /// attempt.
    pub fn message_id(&self) -> String {
        format!("msg_{}_{}", self.job.id.0.simple(), self.id)
    }
}

/// One attempt, as the attempt log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    Delivered,
    RetryAt(DateTime<Utc>),
    Dead,
}

impl AfterAttempt {
    /// The delivery's state after an attempt made at `at`, and its
    /// `next_at` (for a finished delivery: when it finished).
    pub fn state_and_next(self, at: DateTime<Utc>) -> (DeliveryState, DateTime<Utc>) {
        match self {
            AfterAttempt::Delivered => (DeliveryState::Delivered, at),
            AfterAttempt::RetryAt(t) => (DeliveryState::Pending, t),
            AfterAttempt::Dead => (DeliveryState::Dead, at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{JobId, Tenant};
    use crate::job::NewJob;

    fn job(webhook: Option<serde_json::Value>, reply: Option<ReplySpec>) -> JobRecord {
        NewJob {
            id: JobId::new(),
            tenant: Tenant("t".into()),
            queue: "q".into(),
            input: bytes::Bytes::new(),
            max_attempts: 1,
            timeout: std::time::Duration::from_secs(1),
            ttl: std::time::Duration::from_secs(1),
            webhook,
            reply,
            idempotency_key: None,
            request_hash: None,
            output_type: None,
            trace: None,
            priority: 0,
            head_start: std::time::Duration::ZERO,
            group: None,
            run_at: None,
        }
        .into_record(Utc::now())
        .0
    }

    /// Every channel is in `ALL` (which `parse` reads rows with) and its
    /// name reads back as itself. The match fails to compile when a
    /// channel is added: add it to `ALL` too.
    #[test]
    fn every_channel_is_listed_and_parses() {
        let listed = |c: Channel| match c {
            Channel::Webhook
            | Channel::Amqp
            | Channel::Mqtt
            | Channel::Nats
            | Channel::Sqs
            | Channel::Kafka
            | Channel::Sns => Channel::ALL.contains(&c),
        };
        for c in [
            Channel::Webhook,
            Channel::Amqp,
            Channel::Mqtt,
            Channel::Nats,
            Channel::Sqs,
            Channel::Kafka,
            Channel::Sns,
        ] {
            assert!(listed(c), "{c:?} is not in Channel::ALL");
            assert_eq!(Channel::parse(c.as_str()), Some(c));
        }
    }

    #[test]
    fn terminal_events_always_and_listed_ones_too() {
        let plain = WebhookSpec {
            url: "https://h.test/".into(),
            events: None,
            jwt: false,
        };
        assert!(plain.wants(EventKind::Succeeded));
        assert!(plain.wants(EventKind::Failed));
        assert!(plain.wants(EventKind::Canceled));
        assert!(!plain.wants(EventKind::Progress));
        let more = WebhookSpec {
            events: Some(vec!["job.progress".into(), "job.started".into()]),
            ..plain
        };
        assert!(more.wants(EventKind::Progress));
        assert!(more.wants(EventKind::Started));
        assert!(!more.wants(EventKind::Accepted));
        assert!(more.wants(EventKind::Succeeded));
    }

    fn spec(to: &str, correlation: &str, progress: bool) -> ReplySpec {
        ReplySpec {
            channel: Channel::Amqp,
            target: ReplyTarget {
                to: to.into(),
                correlation_id: Some(correlation.into()),
                echo: Default::default(),
            },
            progress,
        }
    }

    #[test]
    fn a_duplicate_of_a_running_job_is_remembered_and_owed_the_outcome() {
        let first = spec("callback-1", "c-1", true);
        let mut running = job(None, Some(first.clone()));
        // The request's own target is owed already.
        assert_eq!(running.ask_reply(first.clone()), ReplyAsked::Owed);
        // A requester back with another callback queue is remembered once,
        // for the outcome only (its progress goes to the first).
        let second = spec("callback-2", "c-2", true);
        assert_eq!(running.ask_reply(second.clone()), ReplyAsked::Remembered);
        assert_eq!(running.ask_reply(second.clone()), ReplyAsked::Owed);
        assert_eq!(running.more_replies.len(), 1);
        assert!(!running.more_replies[0].progress);
        let progress: Vec<_> = running.owed(EventKind::Progress).collect();
        assert_eq!(progress, [(Channel::Amqp, first.target.encode())]);
        let outcome: Vec<_> = running.owed(EventKind::Failed).collect();
        assert_eq!(
            outcome,
            [
                (Channel::Amqp, first.target.encode()),
                (Channel::Amqp, second.target.encode()),
            ]
        );
        // The same queue with another correlation id is another target.
        assert_eq!(
            running.ask_reply(spec("callback-2", "c-3", false)),
            ReplyAsked::Remembered
        );
        // Bounded: the oldest is forgotten past MORE_REPLIES.
        for i in 0..MORE_REPLIES {
            running.ask_reply(spec(&format!("q-{i}"), "c", false));
        }
        assert_eq!(running.more_replies.len(), MORE_REPLIES);
        assert_eq!(running.more_replies[0].target.to, "q-0");
        // A finished job owes its terminal event now, to any target.
        running.state = crate::job::JobState::Canceled;
        assert_eq!(
            running.ask_reply(first),
            ReplyAsked::Now(EventKind::Canceled)
        );
        // The record round-trips with its remembered targets; a record
        // without them is read as before.
        let text = serde_json::to_string(&running).unwrap();
        let back: JobRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.more_replies, running.more_replies);
        let plain = serde_json::to_string(&job(None, None)).unwrap();
        assert!(!plain.contains("more_replies"), "{plain}");
    }

    #[test]
    fn a_job_owes_its_webhook_and_its_reply() {
        let reply = ReplySpec {
            channel: Channel::Amqp,
            target: ReplyTarget {
                to: "amq.rabbitmq.reply-to.g1h2".into(),
                correlation_id: Some("c-1".into()),
                echo: Default::default(),
            },
            progress: false,
        };
        let both = job(
            Some(serde_json::json!({"url": "https://h.test/"})),
            Some(reply.clone()),
        );
        let owed: Vec<_> = both.owed(EventKind::Succeeded).collect();
        assert_eq!(
            owed,
            [
                (Channel::Webhook, "https://h.test/".to_string()),
                (Channel::Amqp, reply.target.encode()),
            ]
        );
        assert!(!both.owes(EventKind::Progress));
        let progress = job(
            None,
            Some(ReplySpec {
                progress: true,
                ..reply.clone()
            }),
        );
        assert_eq!(progress.owed(EventKind::Progress).count(), 1);
        assert!(!progress.owes(EventKind::Started));
        assert!(!job(None, None).owes(EventKind::Succeeded));
        assert_eq!(
            ReplyTarget::decode(&reply.target.encode()),
            Some(reply.target)
        );
    }

    #[test]
    fn names_round_trip() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
        ] {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("x"), None);
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
        }
        assert_eq!(Channel::parse("smtp"), None);
    }
}
