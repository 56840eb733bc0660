//! What a job owes and where: the channels a delivery leaves by, a
//! webhook's and a broker requester's targets, kept in the job's record.
//! (The record decides what each event owes: `JobRecord::owed`.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kind::EventKind;

/// How a delivery leaves: the dispatcher that works it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// An HTTP POST to a URL (API.md §2).
    Webhook,
    /// A reply over RabbitMQ (AMQP 0-9-1).
    Amqp,
    /// A reply over MQTT 5.
    Mqtt,
    /// A reply over NATS.
    Nats,
    /// A reply over AWS SQS.
    Sqs,
    /// A reply over Apache Kafka.
    Kafka,
    /// A reply to a request that came through AWS SNS (a topic, or SNS's
    /// push to replyd): to an SNS topic or an SQS queue.
    Sns,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Webhook,
        Channel::Amqp,
        Channel::Mqtt,
        Channel::Nats,
        Channel::Sqs,
        Channel::Kafka,
        Channel::Sns,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Amqp => "amqp",
            Channel::Mqtt => "mqtt",
            Channel::Nats => "nats",
            Channel::Sqs => "sqs",
            Channel::Kafka => "kafka",
            Channel::Sns => "sns",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The webhook a job was submitted with (kept in its record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSpec {
    pub url: String,
    /// Event names beyond the terminal ones (which are always sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Each delivery also carries a `webhook-jwt` token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jwt: bool,
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

/// Where a broker reply goes: the request's `reply_to` and the correlation
/// id it asked the reply to carry. An outbox row of a broker channel keeps
/// this, as JSON, for its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTarget {
    /// The destination named by the request (a queue, a subject, a topic…).
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// What else the reply carries back from its request, in its broker's
    /// terms (Kafka: the record's key, the reply partition).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub echo: BTreeMap<String, String>,
}

impl ReplyTarget {
    /// The outbox row's target text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(target: &str) -> Option<ReplyTarget> {
        serde_json::from_str(target).ok()
    }
}

/// The reply a job that came over a broker owes (kept in its record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplySpec {
    pub channel: Channel,
    #[serde(flatten)]
    pub target: ReplyTarget,
    /// A reply for each progress report too, not only the terminal one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress: bool,
}

impl ReplySpec {
    /// Whether `kind` is owed to the requester.
    pub fn wants(&self, kind: EventKind) -> bool {
        kind.is_terminal() || (self.progress && kind == EventKind::Progress)
    }
}

/// The most reply targets a running job remembers for duplicates of its
/// request; past it the oldest is forgotten (the newest requester is the
/// one most likely still waiting).
pub const MORE_REPLIES: usize = 16;

/// What a job does when a duplicate of its request asks for the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyAsked {
    /// It has finished: this terminal event is owed to the target now.
    Now(EventKind),
    /// It runs: the target is remembered in its record, and its terminal
    /// event will be owed there too.
    Remembered,
    /// It runs and owes its reply to that target already.
    Owed,
}
