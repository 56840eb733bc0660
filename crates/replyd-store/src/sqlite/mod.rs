//! The embedded store: one SQLite file in WAL mode at full durability
//! (`synchronous=FULL`: every commit is fsynced).
//!
//! An fsync costs about 2 ms, so one commit per request would cap replyd near
//! 500 writes/s. Instead every write is a closure sent to one writer thread,
//! which takes whatever has queued up, runs it all in one transaction,
//! commits once, and only then answers each caller: group commit. Reads run
//! on a small pool of reader connections, which WAL lets proceed while the
//! writer writes.
//!
//! An operation checks before it writes: a refusal (no such job, a stale
//! lease, ...) happens before its first change, so it leaves the batch
//! clean. An operation that fails after writing, or with a database error,
//! poisons the batch: the whole transaction is rolled back and every caller
//! in it is told the store is unavailable, to try again. (A savepoint per
//! operation would isolate failures, but SQLite then journals every page an
//! operation touches: it cost a third of the writer's time.)

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
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
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{broadcast, mpsc};

mod events;
mod garbage;
mod jobs;
mod leases;
mod ops;
mod outbox;
mod schedules;
mod schema;
mod streams;
mod writer;

use schema::open_connection;
use writer::{
    MAX_BATCH, MAX_CONCURRENT_READS, WRITER_CACHE_KIB, WRITER_CHECKPOINT_PAGES, WriteOp,
    checkpointer, writer,
};

/// Options of the embedded store.
#[derive(Debug, Clone, Default)]
pub struct SqliteOptions {
    pub retry: RetryPolicy,
}

/// What the writer thread has done: how well group commit batches.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Write operations carried by them.
    pub ops: AtomicU64,
}

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Dropped with the store: stops the checkpointer thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
    stats: Arc<WriterStats>,
    writes: mpsc::Sender<WriteOp>,
    readers: Mutex<Vec<Connection>>,
    read_turns: tokio::sync::Semaphore,
    bus: broadcast::Sender<EventBatch>,
    /// Committed changes of Durable Streams.
    stream_bus: broadcast::Sender<replyd_core::stream::StreamTick>,
    retry: RetryPolicy,
    /// The paused queues (`queue_pauses`), kept here too: one process
    /// owns the file, so a lease asks this set rather than the database.
    paused: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure) => {
            StoreError::Unavailable(Box::new(e))
        }
        _ => StoreError::Backend(Box::new(e)),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending
    /// migrations.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let (conn, paused) = tokio::task::spawn_blocking(move || -> StoreResult<_> {
            let mut conn = open_connection(&p).map_err(backend)?;
            schema::apply(&mut conn).map_err(backend)?;
            conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
                .map_err(backend)?;
            conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
                .map_err(backend)?;
            let paused = leases::read_paused(&conn)?;
            Ok((conn, paused))
        })
        .await
        .map_err(StoreError::backend)??;

        let (writes, rx) = mpsc::channel::<WriteOp>(4 * MAX_BATCH);
        let (bus, _) = broadcast::channel(1024);
        let bus_tx = bus.clone();
        let checkpoints = open_connection(&path).map_err(backend)?;
        let (stop_checkpoints, stop) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("replyd-sqlite-checkpoint".into())
            .spawn(move || checkpointer(checkpoints, stop))
            .map_err(StoreError::backend)?;
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("replyd-sqlite-writer".into())
            .spawn(move || writer(conn, rx, bus_tx, &writer_stats))
            .map_err(StoreError::backend)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                _stop_checkpoints: stop_checkpoints,
                stats,
                writes,
                readers: Mutex::new(Vec::new()),
                read_turns: tokio::sync::Semaphore::new(MAX_CONCURRENT_READS),
                bus,
                stream_bus: broadcast::channel(4096).0,
                retry: options.retry,
                paused: std::sync::RwLock::new(paused),
            }),
        })
    }

    /// Commits and operations so far.
    pub fn stats(&self) -> &WriterStats {
        &self.inner.stats
    }
}

#[async_trait]
impl Store for SqliteStore {
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

    async fn log_floor(&self) -> StoreResult<Option<EventId>> {
        events::log_floor(self).await
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
        self.read(|conn| {
            conn.query_row("SELECT coalesce(max(id), 0) FROM ops_events", [], |r| {
                r.get(0)
            })
            .map_err(backend)
        })
        .await
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

    async fn counts(&self) -> StoreResult<Counts> {
        jobs::counts(self).await
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let key = key.to_string();
        self.read(move |conn| {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn setting_or_init(&self, key: &str, init: Vec<u8>) -> StoreResult<Vec<u8>> {
        let key = key.to_string();
        self.write(move |conn, _| {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                rusqlite::params![key, init],
            )
            .map_err(backend)?;
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| {
                r.get(0)
            })
            .map_err(backend)
        })
        .await
    }

    async fn replace_setting(
        &self,
        key: &str,
        old: Option<&[u8]>,
        new: Vec<u8>,
    ) -> StoreResult<bool> {
        let (key, old) = (key.to_string(), old.map(<[u8]>::to_vec));
        self.write(move |conn, _| {
            let changed = match old {
                Some(old) => conn.execute(
                    "UPDATE meta SET value = ?3 WHERE key = ?1 AND value = ?2",
                    rusqlite::params![key, old, new],
                ),
                None => conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                    rusqlite::params![key, new],
                ),
            }
            .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }

    fn subscribe(&self) -> broadcast::Receiver<EventBatch> {
        self.inner.bus.subscribe()
    }

    fn streams(&self) -> Option<&dyn replyd_core::store::StreamStore> {
        Some(self)
    }
}

/// The plan SQLite makes for `sql` with `args` on a fresh database with
/// every migration applied (`EXPLAIN QUERY PLAN`'s lines, joined by `; `).
#[cfg(test)]
pub(super) fn query_plan(sql: &str, args: Vec<rusqlite::types::Value>) -> String {
    let mut conn = Connection::open_in_memory().unwrap();
    schema::apply(&mut conn).unwrap();
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
        .unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_op_that_fails_after_writing_rolls_its_batch_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("p.db"), SqliteOptions::default())
            .await
            .unwrap();
        let r = store
            .write(|conn, _| {
                conn.execute("INSERT INTO meta (key, value) VALUES ('x', x'00')", [])
                    .map_err(backend)?;
                Err::<(), _>(StoreError::NotFound)
            })
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        let count: i64 = store
            .read(|conn| {
                conn.query_row("SELECT count(*) FROM meta WHERE key = 'x'", [], |r| {
                    r.get(0)
                })
                .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(count, 0, "the poisoned write was rolled back");
        // A refusal before any write is just a refusal.
        let r = store.write(|_, _| Err::<(), _>(StoreError::NotFound)).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
        // The writer carries on.
        store.cluster_secret().await.unwrap();
        let panicked = store
            .write(|_, _| -> StoreResult<()> { panic!("a bug") })
            .await;
        assert!(matches!(panicked, Err(StoreError::Unavailable(_))));
        store.ping().await.unwrap();
        store.cluster_secret().await.unwrap();
    }
}
