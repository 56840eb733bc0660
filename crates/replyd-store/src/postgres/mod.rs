//! The PostgreSQL store: many replyd nodes, one database.
//!
//! Each operation is one transaction on a pooled connection; PostgreSQL
//! flushes the WAL of concurrent commits together (its own group commit),
//! so concurrency, not batching here, amortizes the fsync. Rows a node takes
//! for itself (leases, expired leases, garbage) are claimed with `FOR UPDATE
//! SKIP LOCKED`, so nodes never wait on each other nor take the same row.
//!
//! **Event positions** are fixed when an event is written and read up to
//! a horizon that no transaction still open can write below: see
//! `events.rs`. Every node LISTENs for the others' commits and reads the
//! newly readable events onto its local bus.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::event::{EventId, EventRecord};
use replyd_core::job::{Command, JobRecord, NewJob, RetryPolicy};
use replyd_core::ops::{DeadLetters, Endpoint, OpsEvent, Watch};
use replyd_core::outbox::{AttemptRecord, Channel, Delivery, DeliveryState, ReplyAsked, ReplySpec};
use replyd_core::schedule::ScheduleRecord;
use replyd_core::store::{
    Claimed, Counts, EventBatch, JobOutput, JobPage, LeaseQuery, Leased, ListQuery, Move, Outcome,
    Store, StoreError, StoreResult, Submitted,
};
use replyd_core::{JobId, Tenant};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::{Notify, broadcast};

mod events;
mod fair;
mod garbage;
mod jobs;
mod leases;
mod ops;
mod outbox;
mod schedules;
mod schema;
mod streams;
mod submits;
pub mod testing;

use events::{listener, notifier, readable_top};
use schema::migrate;

/// Options of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub retry: RetryPolicy,
    /// Connections in this node's pool.
    pub max_connections: u32,
    /// How long a request waits for a connection before the store reports
    /// itself unavailable (503) rather than hang.
    pub acquire_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            retry: RetryPolicy::default(),
            max_connections: 32,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    bus: broadcast::Sender<EventBatch>,
    /// Committed changes of Durable Streams, on any node.
    stream_bus: broadcast::Sender<replyd_core::stream::StreamTick>,
    /// Wakes this node's listener after a commit that appended events.
    committed: Arc<Notify>,
    /// Wakes the notifier, which tells the other nodes.
    notify: Arc<Notify>,
    /// The highest event position known committed, here or (told by a
    /// NOTIFY) on another node: the listener reads until it has it.
    wanted: std::sync::atomic::AtomicI64,
    /// Where each queue's lease scan starts (`leases.rs`).
    floors: leases::Floors,
    /// Submissions waiting for their group commit (`submits.rs`).
    submits: tokio::sync::mpsc::Sender<submits::Pending>,
    retry: RetryPolicy,
    /// Dropped with the store: its receivers (the background tasks) stop.
    _stop: StopOnDrop,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// Tells the background tasks to stop when the store goes.
struct StopOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    let unavailable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // connection exceptions, operator intervention (shutdown),
            // serialization failure, deadlock, too many connections
            c.starts_with("08")
                || c.starts_with("57")
                || c == "40001"
                || c == "40P01"
                || c == "53300"
        }),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(Box::new(e))
    } else {
        StoreError::Backend(Box::new(e))
    }
}

type Tx = Transaction<'static, Postgres>;

/// Submit flushers (`submits.rs`): batches committing at once. Measured
/// (`replyd bench --scenarios pg`, 2 cores, 2026-12-06): 1 gave the
/// largest batches and the best submit-only rate but the worst end to
/// end; 4 the reverse, and 3 nodes × 4 slowed each other; 2 was within
/// a few percent of the best of both.
const FLUSHERS: usize = 2;

impl PgStore {
    /// Connects, applies pending migrations (safe when several nodes start
    /// at once), and starts the listener and the notifier.
    pub async fn connect(url: &str, options: PgOptions) -> StoreResult<PgStore> {
        let connect: PgConnectOptions = url.parse().map_err(backend)?;
        PgStore::connect_with(connect, options).await
    }

    pub async fn connect_with(
        connect: PgConnectOptions,
        options: PgOptions,
    ) -> StoreResult<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(backend)?;
        migrate(&pool).await?;
        let (bus, _) = broadcast::channel(1024);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (submit_tx, submit_rx) = tokio::sync::mpsc::channel(submits::QUEUED);
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                bus,
                stream_bus: broadcast::channel(4096).0,
                committed: Arc::default(),
                notify: Arc::default(),
                wanted: Default::default(),
                floors: Default::default(),
                submits: submit_tx,
                retry: options.retry,
                _stop: StopOnDrop(stop_tx),
            }),
        };
        let last = readable_top(&store.inner.pool).await?;
        store
            .inner
            .wanted
            .store(last, std::sync::atomic::Ordering::Relaxed);
        let queue: submits::Queue = Arc::new(tokio::sync::Mutex::new(submit_rx));
        for _ in 0..FLUSHERS {
            tokio::spawn(submits::flusher(
                Arc::downgrade(&store.inner),
                store.inner.pool.clone(),
                queue.clone(),
            ));
        }
        tokio::spawn(notifier(Arc::downgrade(&store.inner), stop_rx.clone()));
        tokio::spawn(streams::stream_listener(
            Arc::downgrade(&store.inner),
            stop_rx.clone(),
        ));
        tokio::spawn(listener(Arc::downgrade(&store.inner), stop_rx, last));
        Ok(store)
    }

    async fn begin(&self) -> StoreResult<Tx> {
        self.inner.pool.begin().await.map_err(backend)
    }

    /// Ends `tx` for an operation that failed or refused: rolled back and
    /// waited for, so that no row lock it took outlives the call. (A
    /// dropped transaction only queues its ROLLBACK on its connection,
    /// which may sit in the pool with the locks held while the caller's
    /// next statement, on another connection, skips the locked rows.)
    async fn abort<T>(&self, tx: Tx, e: StoreError) -> StoreResult<T> {
        let _ = tx.rollback().await;
        Err(e)
    }

    /// Commits and, if the transaction appended events (`top`: the highest
    /// position), says so.
    async fn commit(&self, tx: Tx, top: Option<i64>) -> StoreResult<()> {
        tx.commit().await.map_err(backend)?;
        if let Some(top) = top {
            self.inner.appended(top);
        }
        Ok(())
    }

    /// Waits until every event committed before the call can be read from
    /// the log on any node (no transaction older than them is open), at
    /// most `limit`; whether it came to that.
    pub async fn settle(&self, limit: Duration) -> StoreResult<bool> {
        events::settle(&self.inner.pool, limit).await
    }
}

impl Inner {
    /// After a commit that appended events: this node's listener looks,
    /// and the other nodes are told.
    fn appended(&self, top: i64) {
        self.wanted
            .fetch_max(top, std::sync::atomic::Ordering::Relaxed);
        self.committed.notify_one();
        self.notify.notify_one();
    }
}

#[async_trait]
impl Store for PgStore {
    async fn submit(&self, new: NewJob, now: DateTime<Utc>) -> StoreResult<Submitted> {
        jobs::submit(self, new, now).await
    }

    async fn get(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        jobs::get(self, id).await
    }

    async fn input(&self, id: JobId) -> StoreResult<Option<Bytes>> {
        jobs::input(self, id).await
    }

    async fn output(&self, id: JobId) -> StoreResult<Option<JobOutput>> {
        jobs::output(self, id).await
    }

    async fn list(&self, q: ListQuery) -> StoreResult<JobPage> {
        jobs::list(self, q).await
    }

    async fn apply(
        &self,
        id: JobId,
        scope: Option<&Tenant>,
        cmd: Command,
        output: Option<JobOutput>,
        now: DateTime<Utc>,
    ) -> StoreResult<JobRecord> {
        jobs::apply(self, id, scope, cmd, output, now).await
    }

    async fn apply_many(
        &self,
        scope: Option<&Tenant>,
        moves: Vec<Move>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<StoreResult<JobRecord>>> {
        jobs::apply_many(self, scope, moves, now).await
    }

    async fn lease(&self, q: LeaseQuery, now: DateTime<Utc>) -> StoreResult<Vec<Leased>> {
        leases::lease(self, q, now).await
    }

    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize> {
        leases::expire_leases(self, now, limit).await
    }

    async fn put_schedule(&self, s: ScheduleRecord) -> StoreResult<bool> {
        schedules::put(self, s).await
    }

    async fn schedule(&self, tenant: &Tenant, name: &str) -> StoreResult<Option<ScheduleRecord>> {
        schedules::get(self, tenant, name).await
    }

    async fn schedules(&self, tenant: Option<&Tenant>) -> StoreResult<Vec<ScheduleRecord>> {
        schedules::list(self, tenant).await
    }

    async fn delete_schedule(&self, tenant: &Tenant, name: &str) -> StoreResult<bool> {
        schedules::delete(self, tenant, name).await
    }

    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<ScheduleRecord>> {
        schedules::due(self, now, limit).await
    }

    async fn advance_schedule(
        &self,
        tenant: &Tenant,
        name: &str,
        fired: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> StoreResult<bool> {
        schedules::advance(self, tenant, name, fired, next).await
    }

    async fn promote_due(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize> {
        leases::promote_due(self, now, limit).await
    }

    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        leases::next_due(self).await
    }

    async fn next_run_at(&self, queue: &str) -> StoreResult<Option<DateTime<Utc>>> {
        leases::next_run_at(self, queue).await
    }

    async fn delete(&self, id: JobId) -> StoreResult<()> {
        jobs::delete(self, id).await
    }

    async fn collect_garbage(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize> {
        garbage::collect_garbage(self, now, limit).await
    }

    async fn events(&self, id: JobId, after: Option<EventId>) -> StoreResult<Vec<EventRecord>> {
        events::events(self, id, after).await
    }

    async fn log(&self, after: Option<EventId>, limit: u32) -> StoreResult<Vec<EventRecord>> {
        events::log(self, after, limit).await
    }

    async fn counts(&self) -> StoreResult<Counts> {
        jobs::counts(self).await
    }

    async fn claim_deliveries(
        &self,
        channel: Channel,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Claimed>> {
        outbox::claim_deliveries(self, channel, now, lease, limit).await
    }

    async fn ask_reply(
        &self,
        id: JobId,
        spec: ReplySpec,
        now: DateTime<Utc>,
    ) -> StoreResult<ReplyAsked> {
        outbox::ask_reply(self, id, spec, now).await
    }

    async fn replay_dead_deliveries(
        &self,
        tenant: Option<Tenant>,
        queue: Option<String>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        outbox::replay_dead_deliveries(self, tenant, queue, from, to, now).await
    }

    async fn defer_deliveries(&self, deferred: Vec<(i64, DateTime<Utc>)>) -> StoreResult<()> {
        outbox::defer_deliveries(self, deferred).await
    }

    async fn record_attempts(&self, outcomes: Vec<Outcome>, watch: Watch) -> StoreResult<()> {
        outbox::record_attempts(self, outcomes, watch).await
    }

    async fn dead_letters(&self) -> StoreResult<Vec<DeadLetters>> {
        ops::dead_letters(self).await
    }

    async fn ops_events(
        &self,
        after: i64,
        tenant: Option<Tenant>,
        limit: u32,
    ) -> StoreResult<Vec<OpsEvent>> {
        ops::ops_events(self, after, tenant, limit).await
    }

    async fn last_ops_event(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT coalesce(max(id), 0)::bigint FROM ops_events")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(backend)
    }

    async fn endpoints(&self, tenant: Option<Tenant>) -> StoreResult<Vec<Endpoint>> {
        ops::endpoints(self, tenant).await
    }

    async fn resume_endpoint(
        &self,
        tenant: &Tenant,
        channel: Channel,
        target: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        ops::resume_endpoint(self, tenant, channel, target, now).await
    }

    async fn pause_endpoint(
        &self,
        tenant: &Tenant,
        channel: Channel,
        target: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        ops::pause_endpoint(self, tenant, channel, target, now).await
    }

    async fn pause_queue(
        &self,
        queue: &str,
        paused: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        leases::pause_queue(self, queue, paused, now).await
    }

    async fn paused_queues(&self) -> StoreResult<Vec<(String, DateTime<Utc>)>> {
        leases::paused_queues(self).await
    }

    async fn deliveries(&self, job: JobId) -> StoreResult<Vec<(Delivery, Vec<AttemptRecord>)>> {
        outbox::deliveries(self, job).await
    }

    async fn list_deliveries(
        &self,
        tenant: Option<Tenant>,
        state: Option<DeliveryState>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        outbox::list_deliveries(self, tenant, state, before, limit).await
    }

    async fn replay_delivery(
        &self,
        id: i64,
        scope: Option<&Tenant>,
        redeliver: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Delivery> {
        outbox::replay_delivery(self, id, scope, redeliver, now).await
    }

    async fn log_floor(&self) -> StoreResult<Option<EventId>> {
        events::log_floor(self).await
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(backend)
    }

    async fn setting_or_init(&self, key: &str, init: Vec<u8>) -> StoreResult<Vec<u8>> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(init)
            .execute(&self.inner.pool)
            .await
            .map_err(backend)?;
        sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(backend)
    }

    async fn replace_setting(
        &self,
        key: &str,
        old: Option<&[u8]>,
        new: Vec<u8>,
    ) -> StoreResult<bool> {
        let done = match old {
            Some(old) => sqlx::query("UPDATE meta SET value = $3 WHERE key = $1 AND value = $2")
                .bind(key)
                .bind(old)
                .bind(new),
            None => sqlx::query(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(new),
        }
        .execute(&self.inner.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    fn streams(&self) -> Option<&dyn replyd_core::store::StreamStore> {
        Some(self)
    }

    fn subscribe(&self) -> broadcast::Receiver<EventBatch> {
        self.inner.bus.subscribe()
    }
}
