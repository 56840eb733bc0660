//! Recurring schedules: a job template submitted at each tick of a cron
//! expression in a time zone. The store keeps each schedule with the tick
//! it fires next; a node fires a due tick by submitting its job under an
//! idempotency key of the schedule and the tick (so that nodes firing the
//! same tick make one job), then moves the schedule on from that tick to
//! the next, if no node has yet (compare and set). The cron arithmetic
//! is the server's; here is what is kept.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::Tenant;

/// Where a schedule was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleSource {
    /// `[schedules.NAME]` in the configuration (kept as the file says at
    /// each start).
    Config,
    /// `PUT /v1/schedules/{name}`.
    Api,
}

impl ScheduleSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleSource::Config => "config",
            ScheduleSource::Api => "api",
        }
    }

    pub fn parse(s: &str) -> Option<ScheduleSource> {
        match s {
            "config" => Some(ScheduleSource::Config),
            "api" => Some(ScheduleSource::Api),
            _ => None,
        }
    }
}

/// A schedule as the stores keep it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    pub tenant: Tenant,
    /// Unique within its tenant.
    pub name: String,
    /// What the schedule is (its cron expression, time zone and job), as
    /// the wire has it: JSON the stores keep and do not read.
    pub spec: serde_json::Value,
    pub source: ScheduleSource,
    /// The tick it fires next.
    pub next_at: DateTime<Utc>,
    /// The last tick it fired.
    pub last_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ScheduleRecord {
    /// The idempotency key of the job of the tick at `tick`.
    pub fn tick_key(&self, tick: DateTime<Utc>) -> String {
        format!("schedule:{}:{}", self.name, tick.timestamp_millis())
    }
}
