//! Webhook deliveries: what a job owes its endpoint, kept in the outbox.
//!
//! A job submitted with a webhook owes a delivery for each of its terminal
//! events, and for the other events its `events` list names. The store
//! writes that delivery in the same transaction as the event (the outbox),
//! so nothing owed lives only in memory; dispatchers claim due deliveries,
//! attempt them, and record each attempt.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::EventKind;
use crate::job::JobRecord;

/// Results up to this many bytes ride inline in a `job.succeeded` payload
/// (`data.result`, when they are JSON).
pub const INLINE_RESULT: usize = 64 * 1024;

/// The webhook a job was submitted with (kept in its record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSpec {
    pub url: String,
    /// Event names beyond the terminal ones (which are always sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

impl WebhookSpec {
    /// Whether `kind` is owed to the endpoint.
    pub fn wants(&self, kind: EventKind) -> bool {
        kind.is_terminal()
            || self
                .events
                .as_ref()
                .is_some_and(|e| e.iter().any(|n| n == kind.name()))
    }
}

impl JobRecord {
    /// The webhook URL this event is owed to, if any.
    pub fn webhook_for(&self, kind: EventKind) -> Option<String> {
        // Read in place: this runs for every event a hooked job appends.
        let spec = WebhookSpec::deserialize(self.webhook.as_ref()?).ok()?;
        spec.wants(kind).then_some(spec.url)
    }
}

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
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// One delivery owed to (or made to) a job's endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Stable across retries: the `webhook-id` is derived from it.
    pub id: i64,
    pub kind: EventKind,
    pub url: String,
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
    /// The `webhook-id` header: the same on every attempt.
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

    #[test]
    fn terminal_events_always_and_listed_ones_too() {
        let plain = WebhookSpec {
            url: "https://h.test/".into(),
            events: None,
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

    #[test]
    fn states_round_trip() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
        ] {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("x"), None);
    }
}
