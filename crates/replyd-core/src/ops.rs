//! What operators watch: dead letters by channel and tenant, endpoints that
//! keep failing (paused after too many dead letters in a row, their
//! deliveries held until resumed), and the operational events that tell of
//! them (`delivery.dead_lettered`, `endpoint.disabled`,
//! `endpoint.recovered`, `dlq.threshold_exceeded`).
//!
//! The stores keep all of it in the transaction that records the attempts
//! (`Store::record_attempts`), so an operational event is as durable as
//! the dead letter it tells of. Operational events are numbered in commit
//! order: a reader that resumes after an id misses none.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::Tenant;
use crate::outbox::{Channel, ReplyTarget};

/// How long operational events are kept.
pub const OPS_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the stores watch as they record attempts; 0 turns a watch off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watch {
    /// A webhook endpoint (tenant and URL) with this many dead letters in
    /// a row is paused: its deliveries are held, not attempted.
    pub disable_after: u32,
    /// A channel's dead letters of one tenant reaching this many raise
    /// `dlq.threshold_exceeded` (once per crossing).
    pub dlq_threshold: u64,
}

/// The kinds of operational events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpsKind {
    #[serde(rename = "delivery.dead_lettered")]
    DeliveryDeadLettered,
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
    #[serde(rename = "endpoint.recovered")]
    EndpointRecovered,
    #[serde(rename = "dlq.threshold_exceeded")]
    DlqThresholdExceeded,
}

impl OpsKind {
    pub const ALL: [OpsKind; 4] = [
        OpsKind::DeliveryDeadLettered,
        OpsKind::EndpointDisabled,
        OpsKind::EndpointRecovered,
        OpsKind::DlqThresholdExceeded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpsKind::DeliveryDeadLettered => "delivery.dead_lettered",
            OpsKind::EndpointDisabled => "endpoint.disabled",
            OpsKind::EndpointRecovered => "endpoint.recovered",
            OpsKind::DlqThresholdExceeded => "dlq.threshold_exceeded",
        }
    }

    pub fn parse(s: &str) -> Option<OpsKind> {
        OpsKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One operational event.
#[derive(Debug, Clone, PartialEq)]
pub struct OpsEvent {
    /// Rises in commit order.
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: OpsKind,
    /// The tenant it concerns.
    pub tenant: Tenant,
    /// What it tells: the delivery, the endpoint or the count.
    pub data: serde_json::Value,
}

/// Dead letters of one channel and tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetters {
    pub channel: Channel,
    pub tenant: Tenant,
    pub count: u64,
    /// When the oldest of them died.
    pub oldest: Option<DateTime<Utc>>,
}

/// A webhook endpoint that has failed: a tenant's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tenant: Tenant,
    pub channel: Channel,
    pub target: String,
    /// Dead letters in a row (a delivery that gets through resets it).
    pub dead_in_a_row: u32,
    /// Set while paused.
    pub paused_at: Option<DateTime<Utc>>,
    /// Deliveries held while it is paused.
    pub held: u64,
}

/// Where a delivery went, as operators read it: a webhook's URL, a broker
/// reply's destination.
pub fn destination(channel: Channel, target: &str) -> String {
    if channel == Channel::Webhook {
        return target.to_string();
    }
    ReplyTarget::decode(target).map_or_else(|| target.to_string(), |t| t.to)
}

/// The data of a `delivery.dead_lettered` event.
pub fn dead_lettered(
    delivery: i64,
    job: &str,
    channel: Channel,
    target: &str,
    event: &str,
    attempts: u32,
    last_error: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "delivery_id": delivery,
        "job_id": job,
        "channel": channel.as_str(),
        "destination": destination(channel, target),
        "event": event,
        "attempts": attempts,
        "last_error": last_error,
    })
}

/// The data of the endpoint events.
pub fn endpoint(channel: Channel, target: &str, dead_in_a_row: u32) -> serde_json::Value {
    serde_json::json!({
        "channel": channel.as_str(),
        "url": target,
        "dead_in_a_row": dead_in_a_row,
    })
}

/// The data of a `dlq.threshold_exceeded` event.
pub fn threshold(channel: Channel, count: u64, threshold: u64) -> serde_json::Value {
    serde_json::json!({
        "channel": channel.as_str(),
        "dead_letters": count,
        "threshold": threshold,
    })
}
