//! The job's event log: every visible move of a job appends one event. SSE,
//! WebSocket, webhooks and broker replies all read this one log, so a client
//! sees the same event ids on every channel.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, Tenant};
use crate::job::JobRecord;

/// A position in the event log: the resume token of `Last-Event-ID`.
///
/// Positions are assigned in commit order, so "after position P" never skips
/// an event that committed later with a smaller number. The embedded store
/// gets that from its single writer; a store with concurrent writers must
/// assign positions at commit (see ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId(pub i64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A string that is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an event id: expected a non-negative integer")]
pub struct BadEventId;

impl FromStr for EventId {
    type Err = BadEventId;

    fn from_str(s: &str) -> Result<EventId, BadEventId> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadEventId);
        }
        s.parse().map(EventId).map_err(|_| BadEventId)
    }
}

/// What happened to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Accepted,
    Started,
    Progress,
    /// An attempt failed or lost its lease; the job is queued again.
    Retrying,
    /// A cancel was asked of a running job; the worker learns it next.
    CancelRequested,
    Succeeded,
    Failed,
    Canceled,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Accepted,
        EventKind::Started,
        EventKind::Progress,
        EventKind::Retrying,
        EventKind::CancelRequested,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Canceled,
    ];

    /// The event's name on every channel (SSE `event:`, webhook `type`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Accepted => "job.accepted",
            EventKind::Started => "job.started",
            EventKind::Progress => "job.progress",
            EventKind::Retrying => "job.retrying",
            EventKind::CancelRequested => "job.cancel_requested",
            EventKind::Succeeded => "job.succeeded",
            EventKind::Failed => "job.failed",
            EventKind::Canceled => "job.canceled",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Succeeded | EventKind::Failed | EventKind::Canceled
        )
    }

    /// The event that ended a job in `state`, if it has ended.
    pub fn ending(state: crate::job::JobState) -> Option<EventKind> {
        use crate::job::JobState;
        match state {
            JobState::Succeeded => Some(EventKind::Succeeded),
            JobState::Failed => Some(EventKind::Failed),
            JobState::Canceled => Some(EventKind::Canceled),
            JobState::Queued | JobState::Running => None,
        }
    }
}

/// One entry of the log: the event and the job as it was right after it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: EventId,
    pub job_id: JobId,
    pub tenant: Tenant,
    pub queue: String,
    pub kind: EventKind,
    pub at: DateTime<Utc>,
    pub job: JobRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_parse_strictly() {
        assert_eq!("42".parse::<EventId>(), Ok(EventId(42)));
        for bad in ["", "-1", "1e3", " 1", "99999999999999999999", "0x10"] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.name()), Some(k));
        }
    }
}
