//! The storage contract. The embedded SQLite store implements it today; a
//! PostgreSQL store implements the same trait and passes the same
//! conformance suite (`replyd_store::conformance`).
//!
//! Every method that changes a job is one transaction that writes the job,
//! appends its event, and (later) its outbox rows. A method returns only
//! after that transaction is durable.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::event::{EventId, EventRecord};
use crate::ids::{JobId, LeaseId, Tenant};
use crate::job::{Command, JobRecord, JobState, NewJob, TransitionError};
use crate::ops::{DeadLetters, Endpoint, OpsEvent, Watch};
use crate::outbox::{
    AfterAttempt, AttemptRecord, Channel, Delivery, DeliveryState, ReplyAsked, ReplySpec,
};
use crate::schedule::ScheduleRecord;

/// A job's result as the worker gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOutput {
    pub content_type: String,
    pub body: Bytes,
    /// What an upstream HTTP service answered (the gateway and the `http`
    /// executor), replayed at `/result`: its status and the headers kept.
    pub upstream: Option<Upstream>,
}

/// An upstream HTTP answer's status and the headers kept of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Upstream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// What became of a submission.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// A new job.
    Created(JobRecord),
    /// The idempotency key was seen before with the same request: that job.
    Existing(JobRecord),
}

impl Submitted {
    pub fn job(&self) -> &JobRecord {
        match self {
            Submitted::Created(j) | Submitted::Existing(j) => j,
        }
    }
}

/// Which jobs to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// `None` lists every tenant (operator keys only).
    pub tenant: Option<Tenant>,
    pub queue: Option<String>,
    pub state: Option<JobState>,
    /// Only jobs older than this one (the cursor).
    pub before: Option<JobId>,
    /// Only jobs created at or after `since` and before `until`: a job's
    /// id is a UUIDv7 that starts with its creation time, so each is an id
    /// bound ([`JobId::first_at`]) and the scan stays on the key.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only the job submitted with this idempotency key.
    pub idempotency_key: Option<String>,
    /// Only jobs whose input or error message contains this text (ASCII
    /// case-insensitive). A search reads at most [`SEARCH_SCAN`] jobs per
    /// page, newest first, so that a query's time is bounded however
    /// rare its matches: a page may then come back short, with
    /// [`JobPage::next`] saying where to go on.
    pub text: Option<String>,
    /// How many jobs a page with a row filter (queue, state, text) reads
    /// at most; `None`: [`SEARCH_SCAN`].
    pub scan: Option<u32>,
    pub limit: u32,
}

/// How many jobs one page with a row filter reads at most, by default.
pub const SEARCH_SCAN: u32 = 5_000;

/// A page of [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// The cursor of the next page (its `before`) when more jobs may match:
    /// the page is full, or a search stopped at its scan limit.
    pub next: Option<JobId>,
}

/// Which jobs a worker may lease.
#[derive(Debug, Clone)]
pub struct LeaseQuery {
    pub queue: String,
    /// `None` leases any tenant's jobs.
    pub tenant: Option<Tenant>,
    pub worker: String,
    pub length: Duration,
    pub max: u32,
    /// The queue's limits, which the store enforces across every node.
    pub limits: QueueLimits,
}

/// How many of a queue's jobs may run at once, and how many may start per
/// second, counted across every node and worker.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueLimits {
    pub max_running: Option<u32>,
    pub rate: Option<Rate>,
}

impl QueueLimits {
    pub fn any(&self) -> bool {
        self.max_running.is_some() || self.rate.is_some()
    }
}

/// A token bucket: `per_sec` tokens a second, at most `burst` saved up;
/// a lease takes one per job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    /// `per_sec`, with a bucket of a tenth of a second's tokens (at least
    /// one): a queue idle for a while starts no more than that at once.
    pub fn per_second(per_sec: f64) -> Rate {
        Rate {
            per_sec,
            burst: (per_sec / 10.0).max(1.0),
        }
    }

    /// The tokens in a bucket that held `kept` (tokens, at ms) at `now_ms`
    /// (a bucket never used is full).
    pub fn available(&self, kept: Option<(f64, i64)>, now_ms: i64) -> f64 {
        match kept {
            None => self.burst,
            Some((tokens, at)) => {
                let elapsed = (now_ms - at).max(0) as f64 / 1000.0;
                (tokens + elapsed * self.per_sec).min(self.burst)
            }
        }
    }
}

/// One job's move among many ([`Store::apply_many`]): a command and, for
/// a completion, its output.
#[derive(Debug, Clone)]
pub struct Move {
    pub id: JobId,
    pub cmd: Command,
    pub output: Option<JobOutput>,
}

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Leased {
    pub job: JobRecord,
    pub input: Bytes,
    pub lease_id: LeaseId,
}

/// What a job in a queue and state counts to (for `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    pub queue: String,
    pub state: JobState,
    pub count: u64,
}

/// A count of the jobs by queue and state, and which events of the log it
/// saw: a reader keeping the count up to date from the log adds only the
/// events it did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub jobs: Vec<StateCount>,
    pub seen: Seen,
}

/// The events a read saw: every position below `below`, but for the
/// half-open ranges in `unseen` (writes still open when it read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub below: i64,
    pub unseen: Vec<(i64, i64)>,
}

impl Seen {
    pub fn includes(&self, event: EventId) -> bool {
        event.0 < self.below
            && !self
                .unseen
                .iter()
                .any(|&(lo, hi)| lo <= event.0 && event.0 < hi)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such job")]
    NotFound,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("the idempotency key was used before with a different request")]
    IdempotencyMismatch,
    /// A replay of a delivery that succeeded, not asked for as such.
    #[error("the delivery succeeded already")]
    AlreadyDelivered,
    /// The database cannot be reached or is overloaded: try again later.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("store error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Backend(Box::new(e))
    }
}

/// A delivery claimed for an attempt, with what its payload needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub delivery: Delivery,
    /// The job's result, read in the claim's transaction, for a
    /// `job.succeeded` delivery whose result is at most
    /// [`INLINE_RESULT`](crate::outbox::INLINE_RESULT) bytes.
    pub result: Option<JobOutput>,
}

/// One attempt on a delivery, to record, and what becomes of the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub delivery: i64,
    pub attempt: AttemptRecord,
    pub after: AfterAttempt,
}

/// How long the tombstone of an expired job is kept.
pub const TOMBSTONE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The events of one commit, in log order. One wake-up per commit rather
/// than per event keeps the bus cheap under group commit.
pub type EventBatch = std::sync::Arc<Vec<EventRecord>>;

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Accepts a job (or finds the one its idempotency key names). Appends
    /// `job.accepted`. Returns only once durable.
    async fn submit(&self, job: NewJob, now: DateTime<Utc>) -> StoreResult<Submitted>;

    async fn get(&self, id: JobId) -> StoreResult<Option<JobRecord>>;

    async fn input(&self, id: JobId) -> StoreResult<Option<Bytes>>;

    async fn output(&self, id: JobId) -> StoreResult<Option<JobOutput>>;

    async fn list(&self, query: ListQuery) -> StoreResult<JobPage>;

    /// Applies a command to a job. With `Complete`, `output` is stored in
    /// the same transaction. A command the job refuses is
    /// `StoreError::Transition`; a refusal that still moved the job (a
    /// completion after a cancel request) has moved it when this returns.
    /// With a `scope`, another tenant's job is `NotFound`.
    async fn apply(
        &self,
        id: JobId,
        scope: Option<&Tenant>,
        cmd: Command,
        output: Option<JobOutput>,
        now: DateTime<Utc>,
    ) -> StoreResult<JobRecord>;

    /// Applies many moves (a worker's batch of outcomes), each as
    /// [`Store::apply`] would, answered in order with its own result; an
    /// `Err` of the whole is the store's failure (none of them is known to
    /// have moved). A store may commit them together; by default they are
    /// applied concurrently, each in its own transaction.
    async fn apply_many(
        &self,
        scope: Option<&Tenant>,
        moves: Vec<Move>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<StoreResult<JobRecord>>> {
        let applied = moves
            .into_iter()
            .map(|m| self.apply(m.id, scope, m.cmd, m.output, now));
        Ok(futures::future::join_all(applied).await)
    }

    /// Leases up to `query.max` ready jobs of a queue, oldest first. No job
    /// is ever leased to two workers at once.
    async fn lease(&self, query: LeaseQuery, now: DateTime<Utc>) -> StoreResult<Vec<Leased>>;

    /// Requeues (or fails) running jobs whose lease expired. Returns how many.
    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize>;

    /// Queues up to `limit` scheduled jobs that are due by `now`, the
    /// earliest first (`Command::Promote`, event `job.queued`). Returns how
    /// many. Safe to run on every node at once.
    async fn promote_due(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize>;

    /// When the earliest scheduled job is due, if any is scheduled.
    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>>;

    /// When the next queued job of `queue` becomes ready, if one is waiting
    /// for its backoff (lets a long-polling lease sleep until then).
    async fn next_run_at(&self, queue: &str) -> StoreResult<Option<DateTime<Utc>>>;

    /// Removes a finished job, its result and its events; refuses
    /// (`TransitionError::NotFinished`) a job that has not finished.
    async fn delete(&self, id: JobId) -> StoreResult<()>;

    /// Purges jobs whose time to live ran out before `now`: their input,
    /// result, events and idempotency key go; a tombstone stays for
    /// [`TOMBSTONE_RETENTION`] so that a read answers 410 Gone rather than
    /// 404, then goes too. Returns how many jobs were purged.
    async fn collect_garbage(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize>;

    /// The job's events after `after` (all of them with `None`), in order.
    async fn events(&self, id: JobId, after: Option<EventId>) -> StoreResult<Vec<EventRecord>>;

    /// The whole log after `after`, in order, at most `limit` events: what
    /// an all-jobs stream resumes from. Positions are commit-ordered, so a
    /// reader that goes on from the last id it saw never skips an event and
    /// never sees one twice, whichever node wrote it.
    async fn log(&self, after: Option<EventId>, limit: u32) -> StoreResult<Vec<EventRecord>>;

    /// The highest event id ever removed from the log (a deleted or purged
    /// job's events), if any: a reader resuming from an id below it may
    /// have missed events, and is told so (`stream.reset`).
    async fn log_floor(&self) -> StoreResult<Option<EventId>>;

    /// Claims up to `limit` due deliveries of `channel` for `lease`: no
    /// other dispatcher gets them until it runs out. Only the oldest pending
    /// delivery of each job on a channel is ever due, so a job's deliveries
    /// leave in event order (a later one waits until the earlier one is
    /// delivered or dead); the channels do not wait for each other.
    async fn claim_deliveries(
        &self,
        channel: Channel,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Claimed>>;

    /// A duplicate of the request that made job `id` asks for its reply at
    /// `spec` (API.md §6). A finished job owes its terminal event there
    /// now; a running one remembers the target in its record, so its
    /// terminal event is owed there too (`JobRecord::ask_reply`). Read and
    /// write in one transaction, so a job finishing meanwhile cannot leave
    /// the duplicate without its reply.
    async fn ask_reply(
        &self,
        id: JobId,
        spec: ReplySpec,
        now: DateTime<Utc>,
    ) -> StoreResult<ReplyAsked>;

    /// Gives claimed deliveries back, each due again at its time, without
    /// counting an attempt (their endpoint was busy).
    async fn defer_deliveries(&self, deferred: Vec<(i64, DateTime<Utc>)>) -> StoreResult<()>;

    /// Records attempts on deliveries and what becomes of each, in one
    /// transaction. A delivery that no longer exists (its job was deleted
    /// meanwhile) is skipped. In the same transaction, as `watch` asks:
    /// each dead letter's `delivery.dead_lettered`, a tenant's dead letters
    /// on a channel reaching the threshold, a webhook endpoint paused after
    /// too many dead letters in a row (its pending deliveries held), and
    /// one that had failed getting a delivery through again.
    async fn record_attempts(&self, outcomes: Vec<Outcome>, watch: Watch) -> StoreResult<()>;

    /// Dead letters by channel and tenant, with the oldest's time: read
    /// from counts kept as deliveries die and leave, not from the outbox.
    async fn dead_letters(&self) -> StoreResult<Vec<DeadLetters>>;

    /// Operational events after `after` (0: from the first kept), of one
    /// tenant (`None`: all), oldest first.
    async fn ops_events(
        &self,
        after: i64,
        tenant: Option<Tenant>,
        limit: u32,
    ) -> StoreResult<Vec<OpsEvent>>;

    /// The id of the newest operational event (0 if none).
    async fn last_ops_event(&self) -> StoreResult<i64>;

    /// Webhook endpoints that have failed (dead letters in a row) or are
    /// paused, of one tenant (`None`: all).
    async fn endpoints(&self, tenant: Option<Tenant>) -> StoreResult<Vec<Endpoint>>;

    /// Resumes a paused endpoint: its held deliveries are due at `now`, in
    /// order. Returns how many were held; `NotFound` if it is not paused.
    async fn resume_endpoint(
        &self,
        tenant: &Tenant,
        channel: Channel,
        target: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// Pauses an endpoint by hand: its deliveries are held (as when it
    /// was disabled for failing) until [`Store::resume_endpoint`]. Pausing
    /// a paused endpoint changes nothing.
    async fn pause_endpoint(
        &self,
        tenant: &Tenant,
        channel: Channel,
        target: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Pauses a queue (`paused`) or resumes it: no job of a paused queue
    /// is leased, by any node or executor, until it is resumed (jobs are
    /// still accepted, and running ones finish). Returns whether this
    /// changed anything.
    async fn pause_queue(&self, queue: &str, paused: bool, now: DateTime<Utc>)
    -> StoreResult<bool>;

    /// The paused queues, each with when it was paused.
    async fn paused_queues(&self) -> StoreResult<Vec<(String, DateTime<Utc>)>>;

    /// Creates or replaces the schedule of `s.tenant` named `s.name`
    /// (keeping its `created_at` and, if its `next_at` is unchanged, its
    /// `last_at`). True if it was created.
    async fn put_schedule(&self, s: ScheduleRecord) -> StoreResult<bool>;

    /// A tenant's schedule.
    async fn schedule(&self, tenant: &Tenant, name: &str) -> StoreResult<Option<ScheduleRecord>>;

    /// The schedules of a tenant (`None`: of every tenant), by tenant and
    /// name.
    async fn schedules(&self, tenant: Option<&Tenant>) -> StoreResult<Vec<ScheduleRecord>>;

    /// Removes a schedule; false if there was none.
    async fn delete_schedule(&self, tenant: &Tenant, name: &str) -> StoreResult<bool>;

    /// Up to `limit` schedules whose next tick is due by `now`, earliest
    /// first.
    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ScheduleRecord>>;

    /// Moves a schedule that fired the tick `fired` on to the tick `next`,
    /// if it is still at `fired` (another node may have moved it first).
    async fn advance_schedule(
        &self,
        tenant: &Tenant,
        name: &str,
        fired: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// A job's deliveries, oldest first, each with its attempts.
    async fn deliveries(&self, job: JobId) -> StoreResult<Vec<(Delivery, Vec<AttemptRecord>)>>;

    /// Deliveries, newest first: of one tenant (`None`: all), in one state,
    /// older than the cursor `before`.
    async fn list_deliveries(
        &self,
        tenant: Option<Tenant>,
        state: Option<DeliveryState>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;

    /// Queues a delivery again (a replay), due at `now`, its schedule
    /// restarted; its attempt log stays. With a `scope`, another tenant's
    /// delivery is `NotFound`. A delivery that succeeded is sent again only
    /// with `redeliver` (else `AlreadyDelivered`, and nothing changes).
    async fn replay_delivery(
        &self,
        id: i64,
        scope: Option<&Tenant>,
        redeliver: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Delivery>;

    /// Replays every dead delivery of a tenant (`None`: all), optionally of
    /// one queue, that died between `from` and `to` (by its last update).
    /// Returns how many.
    async fn replay_dead_deliveries(
        &self,
        tenant: Option<Tenant>,
        queue: Option<String>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// Jobs by queue and state, and the events the count saw.
    async fn counts(&self) -> StoreResult<Counts>;

    /// A cluster-wide setting: the value kept under `key`, if any.
    async fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;

    /// The value kept under `key`; if there was none, `init` is kept and
    /// returned. Nodes racing to set it agree on one value.
    async fn setting_or_init(&self, key: &str, init: Vec<u8>) -> StoreResult<Vec<u8>>;

    /// Replaces `key`'s value with `new` if it is still `old` (`None`: if
    /// it has none); false, changing nothing, if another writer was first.
    async fn replace_setting(
        &self,
        key: &str,
        old: Option<&[u8]>,
        new: Vec<u8>,
    ) -> StoreResult<bool>;

    /// A secret shared by every node of the cluster, created on first use
    /// (the key of job tokens).
    async fn cluster_secret(&self) -> StoreResult<Vec<u8>> {
        let fresh: [u8; 32] = rand::random();
        self.setting_or_init("job_token_secret", fresh.to_vec())
            .await
    }

    /// Whether the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Every event committed from now on, on this node or (with a shared
    /// database) any other, a batch per commit. A wake-up, not the truth: a
    /// receiver that lags reads the log instead.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<EventBatch>;

    /// Its Durable Streams, where this store keeps them.
    fn streams(&self) -> Option<&dyn StreamStore> {
        None
    }
}

/// What a store keeps of streams. Every write is one transaction that
/// checks before it writes (a refusal writes nothing); a caller is
/// answered once it is durable. Expired streams are `Missing` at once and
/// removed by [`StreamStore::stream_expire`].
#[async_trait::async_trait]
pub trait StreamStore: Send + Sync + 'static {
    async fn stream_create(
        &self,
        key: &crate::stream::StreamKey,
        req: crate::stream::CreateStream,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<crate::stream::Created, crate::stream::CreateRefusal>>;

    async fn stream_append(
        &self,
        key: &crate::stream::StreamKey,
        req: crate::stream::Append,
        now: DateTime<Utc>,
    ) -> StoreResult<
        crate::stream::Found<Result<crate::stream::Appended, crate::stream::AppendRefusal>>,
    >;

    /// A worker's append to job `job`'s output stream (`key`), with the
    /// job's current `lease` only (checked in the append's transaction);
    /// the first append makes the stream. `Missing`: no such job.
    async fn output_append(
        &self,
        key: &crate::stream::StreamKey,
        job: crate::ids::JobId,
        lease: crate::ids::LeaseId,
        req: crate::stream::Append,
        now: DateTime<Utc>,
    ) -> StoreResult<
        crate::stream::Found<Result<crate::stream::Appended, crate::stream::AppendRefusal>>,
    >;

    /// The bytes each tenant's streams hold (a fork counts only what it
    /// holds itself), for the tenants that have any.
    async fn tenant_bytes(&self) -> StoreResult<Vec<(crate::ids::Tenant, u64)>>;

    /// The lengths of the output streams of those of `jobs` that have one.
    async fn output_tails(
        &self,
        jobs: &[crate::ids::JobId],
    ) -> StoreResult<Vec<(crate::ids::JobId, u64)>>;

    /// The stream; `touch`: this is a read or write that restarts a TTL.
    async fn stream_head(
        &self,
        key: &crate::stream::StreamKey,
        touch: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<crate::stream::Found<crate::stream::StreamState>>;

    /// Chunks from position `from` (clamped to the tail), about `budget`
    /// bytes (at least one chunk when there is one), through forks'
    /// sources. Restarts a TTL.
    async fn stream_read(
        &self,
        key: &crate::stream::StreamKey,
        from: u64,
        budget: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<crate::stream::Found<(crate::stream::StreamState, crate::stream::ReadChunks)>>;

    async fn stream_delete(
        &self,
        key: &crate::stream::StreamKey,
        now: DateTime<Utc>,
    ) -> StoreResult<crate::stream::Found<()>>;

    /// Removes up to `limit` expired streams; how many.
    async fn stream_expire(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<usize>;

    /// Ticks of every committed stream change (on every node).
    fn stream_ticks(&self) -> tokio::sync::broadcast::Receiver<crate::stream::StreamTick>;
}
