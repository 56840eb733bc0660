//! What both stores do alike and without SQL: how a job record, a time and
//! an upstream's answer are kept in a row, and what one transition writes.
//! Each store only reads rows and executes what is decided here, so the
//! two cannot come to disagree (the rules themselves are
//! `JobRecord::apply`'s, in replyd-core).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::Tenant;
use replyd_core::event::EventKind;
use replyd_core::job::{Command, JobRecord, JobState, RetryPolicy, TransitionError};
use replyd_core::store::{JobOutput, StoreError, StoreResult, Upstream};

/// Times are kept as milliseconds since the epoch.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

pub(crate) fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::backend(e)
}

/// A job record is kept as JSON beside the columns derived from it.
pub(crate) fn encode(job: &JobRecord) -> StoreResult<String> {
    serde_json::to_string(job).map_err(json_err)
}

pub(crate) fn decode(text: &str) -> StoreResult<JobRecord> {
    serde_json::from_str(text).map_err(json_err)
}

/// An upstream's answer (status and headers) is kept as JSON.
/// A delivery whose attempt was just recorded, as each store's
/// `ops::watch` needs it.
pub(crate) struct Recorded {
    pub id: i64,
    pub tenant: String,
    pub channel: replyd_core::outbox::Channel,
    pub target: String,
    pub job: String,
    pub kind: String,
    pub attempts: u32,
}

/// An operational event read back.
pub(crate) fn ops_event(
    id: i64,
    at: i64,
    kind: &str,
    tenant: String,
    data: &str,
) -> StoreResult<replyd_core::ops::OpsEvent> {
    Ok(replyd_core::ops::OpsEvent {
        id,
        at: from_ms(at),
        kind: replyd_core::ops::OpsKind::parse(kind).ok_or_else(|| {
            StoreError::Backend(format!("unknown operational event {kind:?}").into())
        })?,
        tenant: Tenant(tenant),
        data: serde_json::from_str(data).map_err(json_err)?,
    })
}

pub(crate) fn encode_upstream(u: &Upstream) -> String {
    serde_json::to_string(u).unwrap_or_default()
}

pub(crate) fn decode_upstream(text: &str) -> Option<Upstream> {
    serde_json::from_str(text).ok()
}

/// What a transition writes: the record after it (and its JSON), the event
/// it appends (which owes what `JobRecord::owed` says), and the result to
/// keep.
#[derive(Debug)]
pub(crate) struct Transition {
    pub job: JobRecord,
    pub text: String,
    pub event: Option<EventKind>,
    /// The result, for a completion that succeeded the job.
    pub output: Option<JobOutput>,
    /// A command the rules refused as data (the record may still change,
    /// as a completion after a cancel request cancels the job).
    pub refused: Option<TransitionError>,
}

/// Decides one transition of `job` (as loaded, locked where the store
/// locks): `cmd` at `now`, by a caller of tenant `scope` if named. Refuses
/// before anything would be written: an expired job and another tenant's
/// are not found; a command the rules refuse outright is an error.
pub(crate) fn transition(
    mut job: JobRecord,
    scope: Option<&Tenant>,
    cmd: Command,
    output: Option<JobOutput>,
    now: DateTime<Utc>,
    retry: &RetryPolicy,
) -> StoreResult<Transition> {
    if job.is_expired(now) || scope.is_some_and(|t| *t != job.tenant) {
        return Err(StoreError::NotFound);
    }
    let completes = matches!(cmd, Command::Complete { .. });
    let effect = job.apply(cmd, now, retry)?;
    let text = encode(&job)?;
    let output = (completes && job.state == JobState::Succeeded).then(|| {
        output.unwrap_or(JobOutput {
            content_type: "application/json".into(),
            body: Bytes::from_static(b"null"),
            upstream: None,
        })
    });
    Ok(Transition {
        job,
        text,
        event: effect.event,
        output,
        refused: effect.refused,
    })
}
