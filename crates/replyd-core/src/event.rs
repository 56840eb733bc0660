//! The job's event log: every visible move of a job appends one event. SSE,
//! WebSocket, webhooks and broker replies all read this one log, so a client
//! sees the same event ids on every channel.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, Tenant};
use crate::job::JobRecord;
pub use crate::kind::EventKind;

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
}
