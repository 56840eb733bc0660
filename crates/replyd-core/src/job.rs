//! The job and its state machine.
//!
//! A store loads a [`JobRecord`], calls [`JobRecord::apply`] with a
//! [`Command`], and writes back the record and the event the move produced,
//! all in one transaction. The rules live here, once, for every store.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, LeaseId, Tenant};
use crate::kind::EventKind;
use crate::reply::{Channel, MORE_REPLIES, ReplyAsked, ReplySpec, WebhookSpec};
use crate::trace::TraceContext;

/// Where a job is in its life: `queued → running → succeeded | failed |
/// canceled`, and `running → queued` again when an attempt is retried; a
/// job submitted to run later is `scheduled` until then, then `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Nothing moves a job out of a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled
        )
    }
}

/// How far a running attempt has come.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub percent: Option<f64>,
    pub message: Option<String>,
}

/// Why a job failed or was canceled (also kept while a failed attempt waits
/// for its retry, so a poller can see why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
    /// The HTTP status an upstream service answered, when that is why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl JobError {
    pub fn new(code: &str, message: impl Into<String>) -> JobError {
        JobError {
            code: code.to_string(),
            message: message.into(),
            status: None,
        }
    }

    /// An upstream service answered `status`.
    pub fn upstream(status: u16, message: impl Into<String>) -> JobError {
        JobError {
            status: Some(status),
            ..JobError::new("upstream-status", message)
        }
    }
}

/// The lease a worker holds on a running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The fencing token the worker must present.
    pub id: LeaseId,
    pub worker: String,
    /// When the job returns to the queue unless a heartbeat extends this.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub expires_at: DateTime<Utc>,
    /// The end of the attempt's `timeout`: heartbeats never extend past it.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub deadline: DateTime<Utc>,
    /// The length a heartbeat extends the lease by, unless it names another.
    pub length_ms: u64,
}

/// A job as the stores keep it, without its input and result (those are
/// stored beside it and read only when needed). Its serde form is the
/// stores' (compact: times in ms since the epoch), not the wire's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant: Tenant,
    pub queue: String,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The number of attempts started so far.
    pub attempt: u32,
    pub max_attempts: u32,
    /// How long one attempt may take.
    pub timeout_ms: u64,
    /// How long the job is kept once finished.
    pub ttl_ms: u64,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub updated_at: DateTime<Utc>,
    /// A scheduled job is due at this time; a queued one is not leased
    /// before it (retry backoff).
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub run_at: DateTime<Utc>,
    /// 0 to 9: a queue's jobs of a higher priority are leased first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// How far ahead of its `run_at` the job stands in its queue's order
    /// (its priority's worth of waiting; see [`JobRecord::order_at`]).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub head_start_ms: u64,
    /// The group the job shares its queue fairly with others by (a
    /// customer, say): see [`fair_start`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "chrono::serde::ts_milliseconds_option"
    )]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "chrono::serde::ts_milliseconds_option"
    )]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// When the current attempt started, or the last one did (kept after
    /// it ends: the attempt's span starts here).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "chrono::serde::ts_milliseconds_option"
    )]
    pub started_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// Bumped by every change a client can see; the HTTP ETag.
    pub version: u64,
    /// The webhook request, kept for the webhook dispatcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<serde_json::Value>,
    /// Where the reply goes when the job came over a message broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplySpec>,
    /// Where duplicates of the request that made this job asked for its
    /// reply while it ran (a requester that came back with another
    /// `reply_to`); its terminal event is owed to each of them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_replies: Vec<ReplySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// A digest of the submission, to tell a replay from a key reused for
    /// another request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// The job's output as its `job.output` events have announced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputMark>,
    /// The content type its output stream has or will have, when the
    /// submission named one (`"output": {"content_type": …}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_type: Option<String>,
    /// The trace its submitter was in (W3C Trace Context), passed to its
    /// workers, webhooks and replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// How much of a job's output its events have announced: the last
/// `job.output` event's part, bytes `from..to` of the output stream (`to`
/// is the length announced so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputMark {
    pub from: u64,
    pub to: u64,
}

/// What a client asks for when it submits a job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub tenant: Tenant,
    pub queue: String,
    /// The input as JSON text.
    pub input: bytes::Bytes,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub ttl: Duration,
    pub webhook: Option<serde_json::Value>,
    pub reply: Option<ReplySpec>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    /// The content type its output stream will have (else its first
    /// append's).
    pub output_type: Option<String>,
    /// The trace its submitter was in, or one started for it.
    pub trace: Option<TraceContext>,
    /// 0 to 9, higher first.
    pub priority: u8,
    /// What its priority is worth in its queue's order: it is leased as if
    /// it had been waiting this much longer.
    pub head_start: Duration,
    /// Its group in its queue's fair share, if it is in one.
    pub group: Option<String>,
    /// When it is due: until then it is `scheduled` (none, or a time
    /// already past: queued at once).
    pub run_at: Option<DateTime<Utc>>,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl NewJob {
    /// A plain job of `tenant` on `queue`: input `{}`, one attempt of at
    /// most 60 s, kept an hour, nothing owed, in no trace (what tests and
    /// benchmarks submit; set the fields they are about).
    pub fn plain(tenant: Tenant, queue: &str) -> NewJob {
        NewJob {
            id: JobId::new(),
            tenant,
            queue: queue.into(),
            input: bytes::Bytes::from_static(b"{}"),
            max_attempts: 1,
            timeout: Duration::from_secs(60),
            ttl: Duration::from_secs(3600),
            webhook: None,
            reply: None,
            idempotency_key: None,
            request_hash: None,
            output_type: None,
            trace: None,
            priority: 0,
            head_start: Duration::ZERO,
            group: None,
            run_at: None,
        }
    }

    /// The record of this job as it is accepted at `now`.
    pub fn into_record(self, now: DateTime<Utc>) -> (JobRecord, bytes::Bytes) {
        let (state, run_at) = match self.run_at {
            Some(at) if at > now => (JobState::Scheduled, at),
            _ => (JobState::Queued, now),
        };
        let record = JobRecord {
            id: self.id,
            tenant: self.tenant,
            queue: self.queue,
            state,
            progress: None,
            attempt: 0,
            max_attempts: self.max_attempts.max(1),
            timeout_ms: millis(self.timeout),
            ttl_ms: millis(self.ttl),
            created_at: now,
            updated_at: now,
            run_at,
            priority: self.priority.min(MAX_PRIORITY),
            head_start_ms: millis(self.head_start),
            group: self.group,
            finished_at: None,
            expires_at: None,
            lease: None,
            started_at: None,
            cancel_requested: false,
            error: None,
            version: 1,
            webhook: self.webhook,
            reply: self.reply,
            more_replies: Vec::new(),
            idempotency_key: self.idempotency_key,
            request_hash: self.request_hash,
            output: None,
            output_type: self.output_type,
            trace: self.trace,
        };
        (record, self.input)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn after(t: DateTime<Utc>, ms: u64) -> DateTime<Utc> {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    t.checked_add_signed(chrono::Duration::milliseconds(ms))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// When a failed attempt is tried again: exponential backoff with a jitter
/// derived from the job id, so it is spread out yet reproducible in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, after `attempt` failed
    /// attempts: `base * 2^(attempt-1)`, capped at `max`, minus up to 20%
    /// jitter.
    pub fn backoff(&self, id: JobId, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.max);
        // The low bits of a UUIDv7 are random: a per-job, per-attempt jitter.
        let seed = (id.0.as_u128() as u64) ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let fraction = (seed % 1000) as f64 / 1000.0 * 0.2;
        full.mul_f64(1.0 - fraction)
    }
}

/// The highest priority.
pub const MAX_PRIORITY: u8 = 9;

/// How far one job moves its group's place in its queue's order (ms).
pub const FAIR_STEP_MS: i64 = 1;

/// How long a group's clock is kept after it last moved (ms): a group
/// idle longer starts again at its queue's head, as a new one does.
pub const GROUP_CLOCK_KEPT_MS: i64 = 86_400_000;

/// Where the next job of a group starts in its queue's order (before its
/// priority's head start), by start-time fair queuing: at the queue's
/// head (the first of its queued jobs; `now` when none is queued), or
/// after the group's own last job if that is later. Each job moves its
/// group's clock on by [`FAIR_STEP_MS`]. So a group with many jobs queued
/// has its next ones at the back, one with few has them at the front:
/// the groups take turns, and none starves the others. Returns the
/// start, the clock keeps `start + n × FAIR_STEP_MS` for `n` jobs.
pub fn fair_start(head: Option<i64>, clock: Option<i64>, now: i64) -> i64 {
    let head = head.unwrap_or(now);
    clock.map_or(head, |c| c.max(head))
}

/// A request to move a job.
#[derive(Debug, Clone)]
pub enum Command {
    /// A scheduled job is due: it is queued.
    Promote,
    /// A worker takes a queued job.
    Lease {
        lease_id: LeaseId,
        worker: String,
        length: Duration,
    },
    /// A worker says it is still alive; `length` overrides the lease length.
    Heartbeat {
        lease_id: LeaseId,
        length: Option<Duration>,
    },
    /// A worker reports progress (also a heartbeat).
    Progress {
        lease_id: LeaseId,
        progress: Progress,
    },
    /// The output stream the lease holder appends to has reached `to`
    /// bytes: a `job.output` event for the part since the last one (none
    /// if there is no new part).
    Output { lease_id: LeaseId, to: u64 },
    /// A worker delivers the result (stored by the caller beside the job).
    Complete { lease_id: LeaseId },
    /// A worker gives up on the attempt; `retry` asks for another one.
    Fail {
        lease_id: LeaseId,
        error: JobError,
        retry: bool,
    },
    /// A client cancels.
    Cancel,
    /// The reaper found the lease expired.
    ExpireLease,
}

/// Why a command cannot apply to the job as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the job is {}, not queued", .0.as_str())]
    NotQueued(JobState),
    #[error("the lease is not current: it expired, or the job was leased again")]
    LeaseLost,
    #[error("the job has already finished ({})", .0.as_str())]
    AlreadyFinished(JobState),
    #[error("the job was canceled; the completion is refused")]
    CancelRequested,
    #[error("the lease has not expired")]
    LeaseNotExpired,
    #[error("the job is {}; only a finished job can be deleted", .0.as_str())]
    NotFinished(JobState),
    #[error("the job is not scheduled to run by now")]
    NotDue,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The event to append to the job's log, if the move is visible.
    pub event: Option<EventKind>,
    /// The move was made, but the command itself is refused: a completion
    /// that arrives after a cancel request cancels the job and is told so.
    pub refused: Option<TransitionError>,
}

impl Effect {
    fn event(kind: EventKind) -> Effect {
        Effect {
            event: Some(kind),
            refused: None,
        }
    }

    fn silent() -> Effect {
        Effect {
            event: None,
            refused: None,
        }
    }
}

impl JobRecord {
    /// Applies `cmd` at `now`. On error the record is unchanged.
    pub fn apply(
        &mut self,
        cmd: Command,
        now: DateTime<Utc>,
        retry: &RetryPolicy,
    ) -> Result<Effect, TransitionError> {
        let effect = match cmd {
            Command::Promote => {
                if self.state != JobState::Scheduled || self.run_at > now {
                    return Err(TransitionError::NotDue);
                }
                self.state = JobState::Queued;
                Effect::event(EventKind::Queued)
            }
            Command::Lease {
                lease_id,
                worker,
                length,
            } => {
                if self.state != JobState::Queued {
                    return Err(TransitionError::NotQueued(self.state));
                }
                let deadline = after(now, self.timeout_ms);
                let length_ms = millis(length);
                self.state = JobState::Running;
                self.attempt += 1;
                self.progress = None;
                self.started_at = Some(now);
                self.lease = Some(Lease {
                    id: lease_id,
                    worker,
                    expires_at: after(now, length_ms).min(deadline),
                    deadline,
                    length_ms,
                });
                Effect::event(EventKind::Started)
            }
            Command::Heartbeat { lease_id, length } => {
                let lease = self.current_lease(&lease_id, now)?;
                let ms = length.map(millis).unwrap_or(lease.length_ms);
                lease.expires_at = after(now, ms).min(lease.deadline);
                // Not visible to clients: no event, no new version.
                return Ok(Effect::silent());
            }
            Command::Progress { lease_id, progress } => {
                let lease = self.current_lease(&lease_id, now)?;
                lease.expires_at = after(now, lease.length_ms).min(lease.deadline);
                self.progress = Some(progress);
                Effect::event(EventKind::Progress)
            }
            Command::Output { lease_id, to } => {
                // An append is the holder's sign of life, as progress is.
                let lease = self.current_lease(&lease_id, now)?;
                lease.expires_at = after(now, lease.length_ms).min(lease.deadline);
                let from = self.output.map_or(0, |o| o.to);
                if to <= from {
                    return Ok(Effect::silent());
                }
                self.output = Some(OutputMark { from, to });
                Effect::event(EventKind::Output)
            }
            Command::Complete { lease_id } => {
                self.current_lease(&lease_id, now)?;
                if self.cancel_requested {
                    self.finish(JobState::Canceled, now);
                    self.error = Some(canceled_error());
                    Effect {
                        event: Some(EventKind::Canceled),
                        refused: Some(TransitionError::CancelRequested),
                    }
                } else {
                    self.finish(JobState::Succeeded, now);
                    self.error = None;
                    Effect::event(EventKind::Succeeded)
                }
            }
            Command::Fail {
                lease_id,
                error,
                retry: wants_retry,
            } => {
                self.current_lease(&lease_id, now)?;
                self.end_attempt(error, wants_retry, now, retry)
            }
            Command::Cancel => match self.state {
                JobState::Scheduled | JobState::Queued => {
                    self.finish(JobState::Canceled, now);
                    self.error = Some(canceled_error());
                    Effect::event(EventKind::Canceled)
                }
                JobState::Running if self.cancel_requested => return Ok(Effect::silent()),
                JobState::Running => {
                    self.cancel_requested = true;
                    Effect::event(EventKind::CancelRequested)
                }
                done => return Err(TransitionError::AlreadyFinished(done)),
            },
            Command::ExpireLease => {
                match &self.lease {
                    Some(l) if self.state == JobState::Running && l.expires_at <= now => {}
                    _ => return Err(TransitionError::LeaseNotExpired),
                }
                let error = JobError::new(
                    "lease_expired",
                    format!(
                        "attempt {} lost its lease (no heartbeat in time, or it ran past the {} s timeout)",
                        self.attempt,
                        self.timeout_ms / 1000
                    ),
                );
                self.end_attempt(error, true, now, retry)
            }
        };
        self.updated_at = now;
        self.version += 1;
        Ok(effect)
    }

    /// The lease, if `lease_id` is current and unexpired: the fencing check.
    fn current_lease(
        &mut self,
        lease_id: &LeaseId,
        now: DateTime<Utc>,
    ) -> Result<&mut Lease, TransitionError> {
        if self.state.is_terminal() {
            return Err(TransitionError::AlreadyFinished(self.state));
        }
        match &mut self.lease {
            Some(l)
                if self.state == JobState::Running && &l.id == lease_id && l.expires_at > now =>
            {
                Ok(l)
            }
            _ => Err(TransitionError::LeaseLost),
        }
    }

    /// Ends a running attempt that did not succeed: canceled if a cancel was
    /// asked, queued again with backoff if allowed and attempts remain,
    /// failed otherwise.
    fn end_attempt(
        &mut self,
        error: JobError,
        retry: bool,
        now: DateTime<Utc>,
        policy: &RetryPolicy,
    ) -> Effect {
        if self.cancel_requested {
            self.finish(JobState::Canceled, now);
            self.error = Some(canceled_error());
            return Effect::event(EventKind::Canceled);
        }
        self.error = Some(error);
        if retry && self.attempt < self.max_attempts {
            self.state = JobState::Queued;
            self.lease = None;
            let delay = policy.backoff(self.id, self.attempt);
            self.run_at = after(now, millis(delay));
            Effect::event(EventKind::Retrying)
        } else {
            self.finish(JobState::Failed, now);
            Effect::event(EventKind::Failed)
        }
    }

    fn finish(&mut self, state: JobState, now: DateTime<Utc>) {
        self.state = state;
        self.lease = None;
        self.finished_at = Some(now);
        self.expires_at = Some(after(now, self.ttl_ms));
    }

    /// Where the job stands in its queue's order, in ms since the epoch
    /// (lower first): its `run_at` less its head start. A job of a higher
    /// priority goes before the jobs that have waited less than its head
    /// start longer than it, and after those that have waited more, so
    /// that no job waits forever however many of a higher priority come.
    pub fn order_at(&self) -> i64 {
        self.run_at
            .timestamp_millis()
            .saturating_sub(i64::try_from(self.head_start_ms).unwrap_or(i64::MAX))
    }

    /// Whether the job's time to live has run out.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

fn canceled_error() -> JobError {
    JobError::new("canceled", "the job was canceled by request")
}

impl JobState {
    /// The event that ended a job in this state, if it has ended.
    pub fn ending(self) -> Option<EventKind> {
        match self {
            JobState::Succeeded => Some(EventKind::Succeeded),
            JobState::Failed => Some(EventKind::Failed),
            JobState::Canceled => Some(EventKind::Canceled),
            JobState::Scheduled | JobState::Queued | JobState::Running => None,
        }
    }
}

impl JobRecord {
    /// Whether `lease` is this job's running attempt's, unexpired at `now`:
    /// what lets a worker write for the job (its output) besides moving it.
    pub fn leased_to(&self, lease: LeaseId, now: DateTime<Utc>) -> bool {
        self.state == JobState::Running
            && self
                .lease
                .as_ref()
                .is_some_and(|l| l.id == lease && l.expires_at > now)
    }

    /// A duplicate of the request that made this job asks for its reply at
    /// `spec` (API.md §6: a duplicate gets its reply). The store writes what
    /// the answer says in one transaction with reading the record, so a job
    /// that finishes meanwhile cannot slip between.
    pub fn ask_reply(&mut self, spec: ReplySpec) -> ReplyAsked {
        if let Some(kind) = self.state.ending() {
            return ReplyAsked::Now(kind);
        }
        let same = |s: &ReplySpec| s.channel == spec.channel && s.target == spec.target;
        if self.reply.as_ref().is_some_and(same) || self.more_replies.iter().any(same) {
            return ReplyAsked::Owed;
        }
        if self.more_replies.len() >= MORE_REPLIES {
            self.more_replies.remove(0);
        }
        // A duplicate's own target is owed the outcome only: its progress
        // goes to the request that made the job.
        self.more_replies.push(ReplySpec {
            progress: false,
            ..spec
        });
        ReplyAsked::Remembered
    }

    /// Every delivery this event owes: (channel, target).
    pub fn owed(&self, kind: EventKind) -> impl Iterator<Item = (Channel, String)> + '_ {
        // The webhook is read in place: this runs for every event a hooked
        // job appends.
        let webhook = self
            .webhook
            .as_ref()
            .and_then(|w| WebhookSpec::deserialize(w).ok())
            .filter(|spec| spec.wants(kind))
            .map(|spec| (Channel::Webhook, spec.url));
        let reply = self
            .reply
            .as_ref()
            .filter(|spec| spec.wants(kind))
            .map(|spec| (spec.channel, spec.target.encode()));
        let more = self
            .more_replies
            .iter()
            .filter(move |spec| spec.wants(kind))
            .map(|spec| (spec.channel, spec.target.encode()));
        webhook.into_iter().chain(reply).chain(more)
    }

    /// Whether this event owes any delivery.
    pub fn owes(&self, kind: EventKind) -> bool {
        self.owed(kind).next().is_some()
    }
}

#[cfg(test)]
mod tests;
