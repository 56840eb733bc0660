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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::event::{EventId, EventKind, EventRecord};
use replyd_core::job::{Command, JobRecord, JobState, NewJob, RetryPolicy, TransitionError};
use replyd_core::outbox::{
    AttemptRecord, Channel, Delivery, DeliveryState, INLINE_RESULT, ReplyAsked, ReplySpec,
};
use replyd_core::store::{
    Claimed, EventBatch, JobOutput, LeaseQuery, Leased, ListQuery, Outcome, StateCount, Store,
    StoreError, StoreResult, Submitted, TOMBSTONE_RETENTION, Upstream,
};
use replyd_core::{JobId, LeaseId, Tenant};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::migrations;

/// The most writes one transaction carries.
const MAX_BATCH: usize = 2048;
/// Reader connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// Reads that run at once, each on its own connection. Past this, reads
/// wait for a turn instead of opening ever more connections (a burst of
/// 2,000 stream connects once opened about 500, each with its own page
/// cache and file descriptors).
const MAX_CONCURRENT_READS: usize = 16;

type Events = Vec<EventRecord>;
/// Runs after the batch's commit (or its failure) to answer the caller.
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;
/// One write: runs inside the batch's transaction. `Err` poisons the batch.
type WriteOp = Box<dyn FnOnce(&Connection, &mut Events) -> Result<Reply, (Reply, String)> + Send>;

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
    retry: RetryPolicy,
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

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::backend(e)
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Every commit reaches the disk before anyone is told it happened.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

/// WAL pages after which the writer itself checkpoints: a backstop, should
/// the checkpointer thread fall behind.
const WRITER_CHECKPOINT_PAGES: i64 = 50_000;
/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed WAL frames into the database file on its own thread and
/// connection, so the writer never pays for checkpoints (and their fsync)
/// in the middle of a group commit. Stops when the store is dropped.
fn checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(CHECKPOINT_EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "sqlite checkpoint failed");
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending
    /// migrations.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || -> StoreResult<Connection> {
            let mut conn = open_connection(&p).map_err(backend)?;
            migrations::apply_sqlite(&mut conn).map_err(backend)?;
            conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
                .map_err(backend)?;
            Ok(conn)
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
                retry: options.retry,
            }),
        })
    }

    /// Commits and operations so far.
    pub fn stats(&self) -> &WriterStats {
        &self.inner.stats
    }

    /// Runs `f` in the next group commit and returns its result once the
    /// commit is durable.
    async fn write<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &mut Events) -> StoreResult<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: WriteOp = Box::new(move |conn, events| {
            let changes = conn.total_changes();
            let result = f(conn, events);
            let poison = match &result {
                Err(e @ (StoreError::Backend(_) | StoreError::Unavailable(_))) => {
                    Some(e.to_string())
                }
                Err(e) if conn.total_changes() != changes => {
                    tracing::error!(error = %e, "a store operation failed after writing; rolling back its batch");
                    Some(e.to_string())
                }
                _ => None,
            };
            let reply: Reply = Box::new(move |batch_error: Option<&str>| {
                let answer = match batch_error {
                    None => result,
                    Some(e) => Err(StoreError::Unavailable(
                        format!("the write was rolled back ({e}); try again").into(),
                    )),
                };
                let _ = tx.send(answer);
            });
            match poison {
                None => Ok(reply),
                Some(reason) => Err((reply, reason)),
            }
        });
        self.inner
            .writes
            .send(op)
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }

    /// Runs `f` on a reader connection.
    async fn read<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let _turn = self
            .inner
            .read_turns
            .acquire()
            .await
            .map_err(StoreError::backend)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.path).map_err(backend)?,
            };
            let r = f(&conn);
            let mut pool = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
            r
        })
        .await
        .map_err(StoreError::backend)?
    }
}

/// The writer thread: batches, commits, answers, then announces the events.
fn writer(
    conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    bus: broadcast::Sender<EventBatch>,
    stats: &WriterStats,
) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut events = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        let mut failure = conn
            .execute_batch("BEGIN IMMEDIATE")
            .err()
            .map(|e| e.to_string());
        for op in batch.drain(..) {
            if failure.is_some() {
                // Dropping an op answers its caller "the writer has stopped":
                // nothing of it ran, so it may retry.
                continue;
            }
            match run_op(&conn, &mut events, op) {
                Ok(reply) => replies.push(reply),
                Err((reply, reason)) => {
                    replies.push(reply);
                    failure = Some(reason);
                }
            }
        }
        if failure.is_none()
            && let Err(e) = conn.execute_batch("COMMIT")
        {
            failure = Some(e.to_string());
        }
        match failure {
            None => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.ops.fetch_add(replies.len() as u64, Ordering::Relaxed);
                for reply in replies {
                    reply(None);
                }
                if !events.is_empty() && bus.receiver_count() > 0 {
                    let _ = bus.send(Arc::new(events));
                }
            }
            Some(reason) => {
                tracing::error!(error = %reason, "sqlite group commit rolled back");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                for reply in replies {
                    reply(Some(&reason));
                }
            }
        }
    }
}

/// Runs one op. A panic (a bug) poisons the batch like a failed write.
fn run_op(conn: &Connection, events: &mut Events, op: WriteOp) -> Result<Reply, (Reply, String)> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(conn, events))) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("a store write panicked; its batch is rolled back");
            let reply: Reply = Box::new(|_| {});
            Err((reply, "a store write panicked".to_string()))
        }
    }
}

// ---- rows ---------------------------------------------------------------

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

fn id_bytes(id: JobId) -> [u8; 16] {
    *id.0.as_bytes()
}

fn decode_record(text: &str) -> StoreResult<JobRecord> {
    serde_json::from_str(text).map_err(json_err)
}

fn load(conn: &Connection, id: JobId) -> StoreResult<Option<JobRecord>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT record FROM jobs WHERE id = ?1")
        .and_then(|mut s| s.query_row([id_bytes(id)], |r| r.get(0)).optional())
        .map_err(backend)?;
    text.as_deref().map(decode_record).transpose()
}

fn insert_job(conn: &Connection, job: &JobRecord, input: &[u8], text: &str) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO jobs (id, tenant, queue, state, run_at, lease_expires_at, expires_at,
                           idempotency_key, input, record)
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id_bytes(job.id),
            job.tenant.0,
            job.queue,
            job.state.as_str(),
            ms(job.run_at),
            job.idempotency_key,
            input,
            text
        ])
    })
    .map_err(backend)?;
    Ok(())
}

fn update_job(conn: &Connection, job: &JobRecord, text: &str) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, run_at = ?3, lease_expires_at = ?4, expires_at = ?5,
                         record = ?6
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id_bytes(job.id),
            job.state.as_str(),
            ms(job.run_at),
            job.lease.as_ref().map(|l| ms(l.expires_at)),
            job.expires_at.map(ms),
            text
        ])
    })
    .map_err(backend)?;
    Ok(())
}

fn append_event(
    conn: &Connection,
    events: &mut Events,
    job: &JobRecord,
    kind: EventKind,
    text: &str,
) -> StoreResult<()> {
    let at = job.updated_at;
    conn.prepare_cached("INSERT INTO events (job_id, kind, at, job) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![id_bytes(job.id), kind.name(), ms(at), text]))
        .map_err(backend)?;
    let id = EventId(conn.last_insert_rowid());
    for (channel, target) in job.owed(kind) {
        owe(conn, job, kind, channel, &target, text, at)?;
    }
    events.push(EventRecord {
        id,
        job_id: job.id,
        tenant: job.tenant.clone(),
        queue: job.queue.clone(),
        kind,
        at,
        job: job.clone(),
    });
    Ok(())
}

/// Writes an outbox row: `kind` of `job` (its record after the event is
/// `text`) owed to `target` on `channel`, due at `at`.
fn owe(
    conn: &Connection,
    job: &JobRecord,
    kind: EventKind,
    channel: Channel,
    target: &str,
    text: &str,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO outbox (job_id, tenant, queue, channel, kind, target, job, state, next_at,
                             created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?8, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id_bytes(job.id),
            job.tenant.0,
            job.queue,
            channel.as_str(),
            kind.name(),
            target,
            text,
            ms(at)
        ])
    })
    .map_err(backend)?;
    Ok(())
}

/// One transition to make.
struct Step<'a> {
    id: JobId,
    /// Refuse (as not found) a job of another tenant.
    scope: Option<&'a Tenant>,
    cmd: Command,
    output: Option<JobOutput>,
    now: DateTime<Utc>,
}

/// Loads a job, applies the command, writes the job and its event. The
/// shared path of every transition.
fn transition(
    conn: &Connection,
    events: &mut Events,
    step: Step<'_>,
    retry: &RetryPolicy,
) -> StoreResult<(JobRecord, Option<TransitionError>)> {
    let Step {
        id,
        scope,
        cmd,
        output,
        now,
    } = step;
    let mut job = load(conn, id)?.ok_or(StoreError::NotFound)?;
    if job.is_expired(now) || scope.is_some_and(|t| *t != job.tenant) {
        return Err(StoreError::NotFound);
    }
    let completes = matches!(cmd, Command::Complete { .. });
    let effect = job.apply(cmd, now, retry)?;
    let text = serde_json::to_string(&job).map_err(json_err)?;
    update_job(conn, &job, &text)?;
    if let Some(kind) = effect.event {
        append_event(conn, events, &job, kind, &text)?;
    }
    if completes && job.state == JobState::Succeeded {
        let out = output.unwrap_or(JobOutput {
            content_type: "application/json".into(),
            body: Bytes::from_static(b"null"),
            upstream: None,
        });
        let upstream = out.upstream.as_ref().map(encode_upstream);
        conn.prepare_cached(
            "INSERT OR REPLACE INTO job_outputs (job_id, content_type, body, upstream)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id_bytes(id),
                out.content_type,
                &out.body[..],
                upstream
            ])
        })
        .map_err(backend)?;
    }
    Ok((job, effect.refused))
}

fn encode_upstream(u: &Upstream) -> String {
    serde_json::to_string(u).unwrap_or_default()
}

fn decode_upstream(text: &str) -> Option<Upstream> {
    serde_json::from_str(text).ok()
}

fn query_ids(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<JobId>> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(params, |r| r.get::<_, [u8; 16]>(0))
        .map_err(backend)?;
    rows.map(|r| r.map(|b| JobId(uuid::Uuid::from_bytes(b))).map_err(backend))
        .collect()
}

fn query_records(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<JobRecord>> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(params, |r| r.get::<_, String>(0))
        .map_err(backend)?;
    rows.map(|r| r.map_err(backend).and_then(|t| decode_record(&t)))
        .collect()
}

const DELIVERY_COLUMNS: &str = "id, job_id, tenant, queue, kind, target, job, state, attempts,
    next_at, created_at, updated_at, last_error, channel";

fn query_deliveries(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<Delivery>> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, i64>(10)?,
                r.get::<_, i64>(11)?,
                r.get::<_, Option<String>>(12)?,
                r.get::<_, String>(13)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (
            id,
            kind,
            target,
            job,
            state,
            attempts,
            next_at,
            created,
            updated,
            last_error,
            channel,
        ) = row.map_err(backend)?;
        let job = decode_record(&job)?;
        out.push(Delivery {
            id,
            channel: Channel::parse(&channel).ok_or_else(|| {
                StoreError::Backend(format!("unknown channel {channel:?}").into())
            })?,
            kind: EventKind::parse(&kind).ok_or_else(|| {
                StoreError::Backend(format!("unknown event kind {kind:?}").into())
            })?,
            target,
            job,
            state: DeliveryState::parse(&state).ok_or_else(|| {
                StoreError::Backend(format!("unknown delivery state {state:?}").into())
            })?,
            attempts: u32::try_from(attempts).unwrap_or(0),
            next_at: from_ms(next_at),
            created_at: from_ms(created),
            updated_at: from_ms(updated),
            last_error,
        });
    }
    Ok(out)
}

fn one_delivery(conn: &Connection, id: i64) -> StoreResult<Delivery> {
    query_deliveries(
        conn,
        &format!("SELECT {DELIVERY_COLUMNS} FROM outbox WHERE id = ?1"),
        params![id],
    )?
    .pop()
    .ok_or(StoreError::NotFound)
}

/// Before a job's events are removed: remember the highest of them.
const RAISE_LOG_FLOOR: &str = "
    INSERT INTO log_floor (one, below)
    SELECT 1, max(id) FROM events WHERE job_id = ?1 AND id IS NOT NULL
    HAVING max(id) IS NOT NULL
    ON CONFLICT (one) DO UPDATE SET below = max(below, excluded.below)";

/// Events from a query selecting `id, kind, at, job`.
fn read_events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<EventRecord>> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (eid, kind, at, text) = row.map_err(backend)?;
        let job = decode_record(&text)?;
        let kind = EventKind::parse(&kind).ok_or_else(|| {
            StoreError::Backend(format!("unknown event kind {kind:?} in the log").into())
        })?;
        out.push(EventRecord {
            id: EventId(eid),
            job_id: job.id,
            tenant: job.tenant.clone(),
            queue: job.queue.clone(),
            kind,
            at: from_ms(at),
            job,
        });
    }
    Ok(out)
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit(&self, new: NewJob, now: DateTime<Utc>) -> StoreResult<Submitted> {
        // Serialize here, off the writer thread: it is the hot path.
        let (job, input) = new.into_record(now);
        let text = serde_json::to_string(&job).map_err(json_err)?;
        self.write(move |conn, events| {
            if let Some(key) = &job.idempotency_key {
                let found: Option<String> = conn
                    .prepare_cached(
                        "SELECT record FROM jobs WHERE tenant = ?1 AND idempotency_key = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![job.tenant.0, key], |r| r.get(0))
                            .optional()
                    })
                    .map_err(backend)?;
                if let Some(found) = found {
                    let existing = decode_record(&found)?;
                    return if existing.request_hash == job.request_hash {
                        Ok(Submitted::Existing(existing))
                    } else {
                        Err(StoreError::IdempotencyMismatch)
                    };
                }
            }
            insert_job(conn, &job, &input, &text)?;
            append_event(conn, events, &job, EventKind::Accepted, &text)?;
            Ok(Submitted::Created(job))
        })
        .await
    }

    async fn get(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        self.read(move |conn| load(conn, id)).await
    }

    async fn input(&self, id: JobId) -> StoreResult<Option<Bytes>> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT input FROM jobs WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([id_bytes(id)], |r| r.get::<_, Vec<u8>>(0))
                        .optional()
                })
                .map(|o| o.map(Bytes::from))
                .map_err(backend)
        })
        .await
    }

    async fn output(&self, id: JobId) -> StoreResult<Option<JobOutput>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT content_type, body, upstream FROM job_outputs WHERE job_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([id_bytes(id)], |r| {
                    Ok(JobOutput {
                        content_type: r.get(0)?,
                        body: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                        upstream: r
                            .get::<_, Option<String>>(2)?
                            .and_then(|u| decode_upstream(&u)),
                    })
                })
                .optional()
            })
            .map_err(backend)
        })
        .await
    }

    async fn list(&self, q: ListQuery) -> StoreResult<Vec<JobRecord>> {
        self.read(move |conn| {
            let mut sql = String::from("SELECT record FROM jobs WHERE 1 = 1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(t) = q.tenant {
                args.push(t.0.into());
                sql.push_str(&format!(" AND tenant = ?{}", args.len()));
            }
            if let Some(queue) = q.queue {
                args.push(queue.into());
                sql.push_str(&format!(" AND queue = ?{}", args.len()));
            }
            if let Some(state) = q.state {
                args.push(state.as_str().to_string().into());
                sql.push_str(&format!(" AND state = ?{}", args.len()));
            }
            if let Some(before) = q.before {
                args.push(id_bytes(before).to_vec().into());
                sql.push_str(&format!(" AND id < ?{}", args.len()));
            }
            args.push(i64::from(q.limit).into());
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
            query_records(conn, &sql, rusqlite::params_from_iter(args))
        })
        .await
    }

    async fn apply(
        &self,
        id: JobId,
        scope: Option<&Tenant>,
        cmd: Command,
        output: Option<JobOutput>,
        now: DateTime<Utc>,
    ) -> StoreResult<JobRecord> {
        let retry = self.inner.retry;
        let scope = scope.cloned();
        let (job, refused) = self
            .write(move |conn, events| {
                let step = Step {
                    id,
                    scope: scope.as_ref(),
                    cmd,
                    output,
                    now,
                };
                transition(conn, events, step, &retry)
            })
            .await?;
        match refused {
            Some(e) => Err(StoreError::Transition(e)),
            None => Ok(job),
        }
    }

    async fn lease(&self, q: LeaseQuery, now: DateTime<Utc>) -> StoreResult<Vec<Leased>> {
        let retry = self.inner.retry;
        self.write(move |conn, events| {
            let ids = match &q.tenant {
                Some(t) => query_ids(
                    conn,
                    "SELECT id FROM jobs WHERE queue = ?1 AND state = 'queued' AND run_at <= ?2
                       AND tenant = ?3 ORDER BY run_at, id LIMIT ?4",
                    params![q.queue, ms(now), t.0, q.max],
                )?,
                None => query_ids(
                    conn,
                    "SELECT id FROM jobs WHERE queue = ?1 AND state = 'queued' AND run_at <= ?2
                       ORDER BY run_at, id LIMIT ?3",
                    params![q.queue, ms(now), q.max],
                )?,
            };
            let mut leased = Vec::with_capacity(ids.len());
            for id in ids {
                let lease_id = LeaseId::new();
                let cmd = Command::Lease {
                    lease_id: lease_id.clone(),
                    worker: q.worker.clone(),
                    length: q.length,
                };
                let step = Step {
                    id,
                    scope: None,
                    cmd,
                    output: None,
                    now,
                };
                let (job, _) = transition(conn, events, step, &retry)?;
                let input: Vec<u8> = conn
                    .prepare_cached("SELECT input FROM jobs WHERE id = ?1")
                    .and_then(|mut s| s.query_row([id_bytes(id)], |r| r.get(0)))
                    .map_err(backend)?;
                leased.push(Leased {
                    job,
                    input: Bytes::from(input),
                    lease_id,
                });
            }
            Ok(leased)
        })
        .await
    }

    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize> {
        let retry = self.inner.retry;
        self.write(move |conn, events| {
            let ids = query_ids(
                conn,
                "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= ?1 LIMIT ?2",
                params![ms(now), limit],
            )?;
            for &id in &ids {
                let step = Step {
                    id,
                    scope: None,
                    cmd: Command::ExpireLease,
                    output: None,
                    now,
                };
                transition(conn, events, step, &retry)?;
            }
            Ok(ids.len())
        })
        .await
    }

    async fn next_run_at(&self, queue: &str) -> StoreResult<Option<DateTime<Utc>>> {
        let queue = queue.to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT min(run_at) FROM jobs WHERE queue = ?1 AND state = 'queued'",
            )
            .and_then(|mut s| s.query_row([queue], |r| r.get::<_, Option<i64>>(0)))
            .map(|v| v.map(from_ms))
            .map_err(backend)
        })
        .await
    }

    async fn delete(&self, id: JobId) -> StoreResult<()> {
        self.write(move |conn, _| {
            let job = load(conn, id)?.ok_or(StoreError::NotFound)?;
            if !job.state.is_terminal() {
                return Err(TransitionError::NotFinished(job.state).into());
            }
            let key = id_bytes(id);
            for sql in [
                RAISE_LOG_FLOOR,
                "DELETE FROM job_outputs WHERE job_id = ?1",
                "DELETE FROM events WHERE job_id = ?1",
                "DELETE FROM delivery_attempts WHERE delivery_id IN
                     (SELECT id FROM outbox WHERE job_id = ?1)",
                "DELETE FROM outbox WHERE job_id = ?1",
                "DELETE FROM jobs WHERE id = ?1",
            ] {
                conn.prepare_cached(sql)
                    .and_then(|mut s| s.execute([key]))
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn collect_garbage(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize> {
        self.write(move |conn, _| {
            // Purge: keep a tombstone (the record) so reads say 410 Gone.
            let ids = query_ids(
                conn,
                "SELECT id FROM jobs WHERE expires_at <= ?1 AND input IS NOT NULL LIMIT ?2",
                params![ms(now), limit],
            )?;
            for &id in &ids {
                let key = id_bytes(id);
                for sql in [
                    RAISE_LOG_FLOOR,
                    "DELETE FROM job_outputs WHERE job_id = ?1",
                    "DELETE FROM events WHERE job_id = ?1",
                    "DELETE FROM delivery_attempts WHERE delivery_id IN
                         (SELECT id FROM outbox WHERE job_id = ?1)",
                    "DELETE FROM outbox WHERE job_id = ?1",
                    "UPDATE jobs SET input = NULL, idempotency_key = NULL WHERE id = ?1",
                ] {
                    conn.prepare_cached(sql)
                        .and_then(|mut s| s.execute([key]))
                        .map_err(backend)?;
                }
            }
            let retention = chrono::Duration::from_std(TOMBSTONE_RETENTION).unwrap_or_default();
            conn.prepare_cached("DELETE FROM jobs WHERE input IS NULL AND expires_at <= ?1")
                .and_then(|mut s| s.execute([ms(now - retention)]))
                .map_err(backend)?;
            Ok(ids.len())
        })
        .await
    }

    async fn events(&self, id: JobId, after: Option<EventId>) -> StoreResult<Vec<EventRecord>> {
        self.read(move |conn| {
            read_events(
                conn,
                "SELECT id, kind, at, job FROM events WHERE job_id = ?1 AND id > ?2 ORDER BY id",
                params![id_bytes(id), after.map_or(0, |e| e.0)],
            )
        })
        .await
    }

    async fn log(&self, after: Option<EventId>, limit: u32) -> StoreResult<Vec<EventRecord>> {
        self.read(move |conn| {
            read_events(
                conn,
                "SELECT id, kind, at, job FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                params![after.map_or(0, |e| e.0), limit],
            )
        })
        .await
    }

    async fn log_floor(&self) -> StoreResult<Option<EventId>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT below FROM log_floor WHERE one = 1")
                .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                .map(|v| v.map(EventId))
                .map_err(backend)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        channel: Channel,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Claimed>> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        self.write(move |conn, _| {
            let rows = query_deliveries(
                conn,
                &format!(
                    // The indexes are named: without statistics (a new
                    // database; replyd runs no ANALYZE) SQLite's planner
                    // picks outbox_state for both, which makes a claim
                    // quadratic in the pending deliveries.
                    "SELECT {DELIVERY_COLUMNS} FROM outbox o INDEXED BY outbox_due
                     WHERE channel = ?3 AND state = 'pending' AND next_at <= ?1
                       AND (claimed_until IS NULL OR claimed_until <= ?1)
                       AND NOT EXISTS (SELECT 1 FROM outbox p INDEXED BY outbox_job
                                       WHERE p.job_id = o.job_id AND p.channel = o.channel
                                         AND p.state = 'pending' AND p.id < o.id)
                     ORDER BY next_at, id LIMIT ?2"
                ),
                params![ms(now), limit, channel.as_str()],
            )?;
            let mut claimed = Vec::with_capacity(rows.len());
            for d in rows {
                conn.prepare_cached("UPDATE outbox SET claimed_until = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![d.id, ms(until)]))
                    .map_err(backend)?;
                let result = if d.kind == EventKind::Succeeded {
                    conn.prepare_cached(
                        "SELECT content_type, body FROM job_outputs
                         WHERE job_id = ?1 AND length(body) <= ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![id_bytes(d.job.id), INLINE_RESULT as i64], |r| {
                            Ok(JobOutput {
                                content_type: r.get(0)?,
                                body: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                                upstream: None,
                            })
                        })
                        .optional()
                    })
                    .map_err(backend)?
                } else {
                    None
                };
                claimed.push(Claimed {
                    delivery: d,
                    result,
                });
            }
            Ok(claimed)
        })
        .await
    }

    async fn ask_reply(
        &self,
        id: JobId,
        spec: ReplySpec,
        now: DateTime<Utc>,
    ) -> StoreResult<ReplyAsked> {
        self.write(move |conn, _| {
            let mut job = load(conn, id)?.ok_or(StoreError::NotFound)?;
            let (channel, target) = (spec.channel, spec.target.encode());
            let asked = job.ask_reply(spec);
            match asked {
                ReplyAsked::Now(kind) => {
                    let text = serde_json::to_string(&job).map_err(json_err)?;
                    owe(conn, &job, kind, channel, &target, &text, now)?;
                }
                ReplyAsked::Remembered => {
                    let text = serde_json::to_string(&job).map_err(json_err)?;
                    update_job(conn, &job, &text)?;
                }
                ReplyAsked::Owed => {}
            }
            Ok(asked)
        })
        .await
    }

    async fn replay_dead_deliveries(
        &self,
        tenant: Option<Tenant>,
        queue: Option<String>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        self.write(move |conn, _| {
            conn.prepare_cached(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?5,
                     claimed_until = NULL, updated_at = ?5
                 WHERE state = 'dead' AND (?1 IS NULL OR tenant = ?1)
                   AND (?2 IS NULL OR queue = ?2) AND updated_at >= ?3 AND updated_at <= ?4",
            )
            .and_then(|mut s| {
                s.execute(params![
                    tenant.map(|t| t.0),
                    queue,
                    ms(from),
                    ms(to),
                    ms(now)
                ])
            })
            .map(|n| n as u64)
            .map_err(backend)
        })
        .await
    }

    async fn defer_deliveries(&self, deferred: Vec<(i64, DateTime<Utc>)>) -> StoreResult<()> {
        self.write(move |conn, _| {
            for (id, until) in &deferred {
                conn.prepare_cached(
                    "UPDATE outbox SET next_at = ?2, claimed_until = NULL
                     WHERE id = ?1 AND state = 'pending'",
                )
                .and_then(|mut s| s.execute(params![id, ms(*until)]))
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn record_attempts(&self, outcomes: Vec<Outcome>) -> StoreResult<()> {
        self.write(move |conn, _| {
            for o in &outcomes {
                let (state, next_at) = o.after.state_and_next(o.attempt.at);
                let n = conn
                    .prepare_cached(
                        "UPDATE outbox SET state = ?2, attempts = attempts + 1, next_at = ?3,
                             claimed_until = NULL, updated_at = ?4, last_error = ?5
                         WHERE id = ?1",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            o.delivery,
                            state.as_str(),
                            ms(next_at),
                            ms(o.attempt.at),
                            o.attempt.error
                        ])
                    })
                    .map_err(backend)?;
                if n == 0 {
                    // Deleted with its job meanwhile.
                    continue;
                }
                conn.prepare_cached(
                    "INSERT INTO delivery_attempts (delivery_id, at, status, latency_ms, error)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        o.delivery,
                        ms(o.attempt.at),
                        o.attempt.status,
                        o.attempt.latency_ms as i64,
                        o.attempt.error
                    ])
                })
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn deliveries(&self, job: JobId) -> StoreResult<Vec<(Delivery, Vec<AttemptRecord>)>> {
        self.read(move |conn| {
            let ds = query_deliveries(
                conn,
                &format!("SELECT {DELIVERY_COLUMNS} FROM outbox WHERE job_id = ?1 ORDER BY id"),
                params![id_bytes(job)],
            )?;
            let mut out = Vec::with_capacity(ds.len());
            for d in ds {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT at, status, latency_ms, error FROM delivery_attempts
                         WHERE delivery_id = ?1 ORDER BY at, rowid",
                    )
                    .map_err(backend)?;
                let attempts = stmt
                    .query_map([d.id], |r| {
                        Ok(AttemptRecord {
                            at: from_ms(r.get(0)?),
                            status: r.get(1)?,
                            latency_ms: r.get::<_, i64>(2)?.max(0) as u64,
                            error: r.get(3)?,
                        })
                    })
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                out.push((d, attempts));
            }
            Ok(out)
        })
        .await
    }

    async fn list_deliveries(
        &self,
        tenant: Option<Tenant>,
        state: Option<DeliveryState>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        self.read(move |conn| {
            query_deliveries(
                conn,
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM outbox
                     WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR state = ?2)
                       AND id < ?3
                     ORDER BY id DESC LIMIT ?4"
                ),
                params![
                    tenant.map(|t| t.0),
                    state.map(DeliveryState::as_str),
                    before.unwrap_or(i64::MAX),
                    limit
                ],
            )
        })
        .await
    }

    async fn replay_delivery(
        &self,
        id: i64,
        scope: Option<&Tenant>,
        redeliver: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Delivery> {
        let scope = scope.cloned();
        self.write(move |conn, _| {
            let d = one_delivery(conn, id)?;
            if scope.is_some_and(|t| t != d.job.tenant) {
                return Err(StoreError::NotFound);
            }
            if d.state == DeliveryState::Delivered && !redeliver {
                return Err(StoreError::AlreadyDelivered);
            }
            conn.prepare_cached(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?2,
                     claimed_until = NULL, updated_at = ?2
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, ms(now)]))
            .map_err(backend)?;
            one_delivery(conn, id)
        })
        .await
    }

    async fn counts(&self) -> StoreResult<Vec<StateCount>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT queue, state, count(*) FROM jobs WHERE input IS NOT NULL
                     GROUP BY queue, state",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (queue, state, count) = row.map_err(backend)?;
                if let Some(state) = JobState::parse(&state) {
                    out.push(StateCount {
                        queue,
                        state,
                        count: u64::try_from(count).unwrap_or(0),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn cluster_secret(&self) -> StoreResult<Vec<u8>> {
        self.write(|conn, _| {
            let found: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'job_token_secret'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if let Some(secret) = found {
                return Ok(secret);
            }
            let secret: [u8; 32] = rand::random();
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('job_token_secret', ?1)",
                [&secret[..]],
            )
            .map_err(backend)?;
            Ok(secret.to_vec())
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
