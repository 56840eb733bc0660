//! The wire types of steering many jobs and queues at once (the console's
//! and an operator's): bulk actions on every job a filter matches, queues
//! with their depth, rates and pause, and per-tenant portal links.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which jobs: every field narrows (all of them together). The same as
/// `GET /v1/jobs`'s query parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Created at or after (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Created before (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Text in the input or the error message (ASCII case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// What a bulk request does to each job it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// Cancel (a running job at its worker's next call).
    Cancel,
    /// Submit a failed or canceled job again, as a new job.
    Retry,
    /// Delete a finished job.
    Delete,
}

/// `POST /v1/jobs:bulk`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    pub action: BulkAction,
    #[serde(default)]
    pub filter: JobFilter,
    /// `next_cursor` of the previous answer: go on from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A job a bulk action did not change, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkRefusal {
    pub id: String,
    pub detail: String,
}

/// What one bulk request did. Each request handles a slice of the jobs
/// that match, oldest cursor last; `next_cursor` says where the next one
/// goes on (none: every match has been handled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkAnswer {
    /// Jobs that matched in this slice.
    pub matched: u64,
    /// Of them, those the action changed.
    pub changed: u64,
    /// The first few it did not change (a finished job is not canceled,
    /// a running one not deleted), with why.
    pub refused: Vec<BulkRefusal>,
    /// New jobs made by `retry`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<String>,
    pub next_cursor: Option<String>,
}

/// Jobs of a queue by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateCounts {
    #[serde(default)]
    pub scheduled: u64,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub canceled: u64,
}

/// One minute of a queue's traffic, as this node's counters saw the
/// cluster's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Minute {
    /// The minute's start.
    pub at: DateTime<Utc>,
    /// Jobs accepted.
    #[serde(rename = "in")]
    pub accepted: u64,
    /// Jobs finished (succeeded, failed or canceled).
    pub out: u64,
    pub failed: u64,
    /// Leases that ran out.
    pub lease_expiries: u64,
    /// Submit-to-finish latency of the jobs finished in the minute, ms.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

/// `GET /v1/queues`: one queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Queue {
    pub name: String,
    pub executor: String,
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<DateTime<Utc>>,
    /// Jobs by state (the caller's tenant's, or every tenant's).
    pub jobs: StateCounts,
    /// Jobs that may run at once, across the cluster (`max_running`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Jobs that may start per second, minute or hour (`rate`: `"100/s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// The last hour, a minute each, oldest first (every tenant's traffic:
    /// operator keys only; empty otherwise).
    pub minutes: Vec<Minute>,
}

/// `GET /v1/queues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<Queue>,
}

/// `POST /v1/portal-links`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalLinkRequest {
    /// The tenant the portal shows (a tenant's admin key: its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Seconds the link works, 60 to 604800; default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// A portal link: a read-only view of one tenant's jobs and deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PortalLink {
    pub url: String,
    pub tenant: String,
    pub expires_at: DateTime<Utc>,
}

/// The console's session (`GET /ui/session`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleSession {
    /// `*` for a key of every tenant.
    pub tenant: String,
    pub role: String,
    /// Sent back as `X-CSRF-Token` on every request that changes
    /// something.
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
    /// A portal: one tenant's jobs and deliveries, read-only.
    pub portal: bool,
    /// The configured queues' names.
    pub queues: Vec<String>,
}

/// `PUT /v1/schedules/{name}`: a job submitted at each tick of a cron
/// expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cron": "0 9 * * MON-FRI", "timezone": "Europe/Paris", "job": {"queue": "reports", "input": {"kind": "daily"}}}))]
pub struct ScheduleRequest {
    /// Five fields (minute, hour, day of month, month, day of week), or
    /// six with seconds first; names (`MON`, `JAN`), ranges, steps and
    /// lists as in crontab, and `@hourly`, `@daily`, `@weekly`…
    #[schema(min_length = 1, max_length = 256)]
    pub cron: String,
    /// An IANA time zone (default `UTC`): the ticks are its wall-clock
    /// times, daylight saving included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The job each tick submits, as `POST /v1/jobs` takes it (without
    /// `delay` or `run_at`).
    pub job: crate::SubmitRequest,
}

/// A recurring schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub job: crate::SubmitRequest,
    /// `config` (`[schedules.NAME]`: changed in the file only) or `api`.
    pub source: String,
    /// The tick it fires next.
    pub next_at: DateTime<Utc>,
    /// The last tick it fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}
