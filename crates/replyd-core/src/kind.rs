//! What a move of a job was: the kinds of event, with their names on
//! every channel. The bottom of the domain: every other module uses it.

use serde::{Deserialize, Serialize};

/// What happened to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Accepted,
    /// A scheduled job came due: it waits in its queue for a worker.
    Queued,
    Started,
    Progress,
    /// More of the job's output: the part since the last such event
    /// (many appends in one event).
    Output,
    /// An attempt failed or lost its lease; the job is queued again.
    Retrying,
    /// A cancel was asked of a running job; the worker learns it next.
    CancelRequested,
    Succeeded,
    Failed,
    Canceled,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Accepted,
        EventKind::Queued,
        EventKind::Started,
        EventKind::Progress,
        EventKind::Output,
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
            EventKind::Queued => "job.queued",
            EventKind::Started => "job.started",
            EventKind::Progress => "job.progress",
            EventKind::Output => "job.output",
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.name()), Some(k));
        }
    }
}
