//! The PostgreSQL store: many replyd nodes, one database.
//!
//! Each operation is one transaction on a pooled connection; PostgreSQL
//! flushes the WAL of concurrent commits together (its own group commit),
//! so concurrency, not batching here, amortizes the fsync. Rows a node takes
//! for itself (leases, expired leases, garbage) are claimed with `FOR UPDATE
//! SKIP LOCKED`, so nodes never wait on each other nor take the same row.
//!
//! **Event positions.** Sequence values do not commit in order: a reader may
//! see event 11 before event 10 commits. So an event is inserted without a
//! position, and a sequencer assigns positions to the committed, unpositioned
//! events, in insertion order, under a cluster-wide advisory lock: positions
//! are handed out in the order their sequencing transactions commit, and a
//! reader that asks "after position P" can never later find an event below
//! P. (Within one job, insertion order is causal order: the job's row lock
//! makes the next event's transaction wait for the previous one's commit.)
//! The sequencer's commit NOTIFYs `replyd_events`; every node LISTENs and
//! reads the newly positioned events onto its local bus.

use std::sync::Arc;
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
    StoreError, StoreResult, Submitted, TOMBSTONE_RETENTION,
};
use replyd_core::{JobId, LeaseId, Tenant};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use crate::migrations;

/// The advisory lock that serializes event sequencing (any 64-bit value
/// unique to replyd).
const SEQUENCER_LOCK: i64 = 0x7265_706c_7964_0001;
/// The advisory lock that serializes migrations.
const MIGRATION_LOCK: i64 = 0x7265_706c_7964_0002;
/// The channel the sequencer notifies.
const CHANNEL: &str = "replyd_events";
/// Events one sequencing transaction positions at most.
const SEQUENCE_BATCH: i64 = 10_000;

/// Removes a job's events from the log and raises `log_floor` to the
/// highest position removed. The floor is taken from the rows the DELETE
/// removed, not from a read before it: a sequencer that positions one of
/// them concurrently holds its row lock, so the DELETE waits, then removes
/// (and returns) the positioned version. A floor read before the DELETE
/// would miss that position, and the next sequencer would hand it out a
/// second time (a listener that saw it first would never read the new
/// event).
const FORGET_EVENTS_OF_JOB: &str = "WITH gone AS (
         DELETE FROM events WHERE job_id = $1 RETURNING position
     )
     INSERT INTO log_floor (one, below)
     SELECT 1, max(position) FROM gone HAVING max(position) IS NOT NULL
     ON CONFLICT (one) DO UPDATE SET below = greatest(log_floor.below, excluded.below)";
/// [`FORGET_EVENTS_OF_JOB`] for many jobs (`$1` is an array of ids).
const FORGET_EVENTS_OF_JOBS: &str = "WITH gone AS (
         DELETE FROM events WHERE job_id = ANY($1) RETURNING position
     )
     INSERT INTO log_floor (one, below)
     SELECT 1, max(position) FROM gone HAVING max(position) IS NOT NULL
     ON CONFLICT (one) DO UPDATE SET below = greatest(log_floor.below, excluded.below)";

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
    /// Wakes the sequencer after a commit that appended events.
    sequence: Notify,
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

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::backend(e)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn decode(text: &str) -> StoreResult<JobRecord> {
    serde_json::from_str(text).map_err(json_err)
}

type Tx = Transaction<'static, Postgres>;

impl PgStore {
    /// Connects, applies pending migrations (safe when several nodes start
    /// at once), and starts the sequencer and the listener.
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
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                bus,
                sequence: Notify::new(),
                retry: options.retry,
                _stop: StopOnDrop(stop_tx),
            }),
        };
        let last = store.max_position().await?;
        tokio::spawn(sequencer(Arc::downgrade(&store.inner), stop_rx.clone()));
        tokio::spawn(listener(Arc::downgrade(&store.inner), stop_rx, last));
        Ok(store)
    }

    async fn begin(&self) -> StoreResult<Tx> {
        self.inner.pool.begin().await.map_err(backend)
    }

    /// Commits and, if the transaction appended events, wakes the sequencer.
    async fn commit(&self, tx: Tx, appended: bool) -> StoreResult<()> {
        tx.commit().await.map_err(backend)?;
        if appended {
            self.inner.sequence.notify_one();
        }
        Ok(())
    }

    async fn max_position(&self) -> StoreResult<i64> {
        sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
            .fetch_one(&self.inner.pool)
            .await
            .map(|v| v.unwrap_or(0))
            .map_err(backend)
    }

    /// Positions the committed, unpositioned events (see the module doc).
    /// Returns how many.
    pub async fn sequence(&self) -> StoreResult<u64> {
        sequence(&self.inner.pool).await
    }
}

async fn migrate(pool: &PgPool) -> StoreResult<()> {
    let mut conn = pool.acquire().await.map_err(backend)?;
    // A session lock: nodes starting together migrate one after another.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    let result = async {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    bigint PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
        for (version, sql) in migrations::POSTGRES {
            let done: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)",
            )
            .bind(version)
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
            if done {
                continue;
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(backend)?;
            // Our own migration text, not input.
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            tracing::info!(version, "applied migration");
        }
        Ok(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    result
}

async fn sequence(pool: &PgPool) -> StoreResult<u64> {
    let mut tx = pool.begin().await.map_err(backend)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SEQUENCER_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let row = sqlx::query(
        "WITH todo AS (
             SELECT id FROM events WHERE position IS NULL ORDER BY id LIMIT $1
         ), base AS (
             -- Past every position ever given, even one whose event was
             -- removed since (log_floor keeps the highest removed).
             SELECT greatest(
                 (SELECT coalesce(max(position), 0) FROM events),
                 (SELECT coalesce(max(below), 0) FROM log_floor)
             ) AS b
         ), numbered AS (
             SELECT todo.id, base.b + row_number() OVER (ORDER BY todo.id) AS pos
             FROM todo, base
         ), done AS (
             UPDATE events e SET position = n.pos FROM numbered n WHERE e.id = n.id
             RETURNING e.position
         )
         SELECT count(*) AS n, max(position) AS top FROM done",
    )
    .bind(SEQUENCE_BATCH)
    .fetch_one(&mut *tx)
    .await
    .map_err(backend)?;
    let n: i64 = row.get("n");
    if n > 0 {
        let top: i64 = row.get("top");
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(top.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Positions events whenever a commit on this node appended some (and
/// every second, for events another node left behind when it died).
async fn sequencer(inner: std::sync::Weak<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let pool = strong.pool.clone();
        let woke = async {
            tokio::select! {
                _ = strong.sequence.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        tokio::select! {
            _ = woke => {}
            _ = stop.changed() => return,
        }
        drop(strong);
        loop {
            match sequence(&pool).await {
                Ok(n) if n as i64 == SEQUENCE_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "event sequencing failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

/// Reads newly positioned events (announced by the sequencer's NOTIFY, or
/// found by a periodic check) and publishes them on this node's bus.
async fn listener(
    inner: std::sync::Weak<Inner>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut last: i64,
) {
    let mut listen: Option<PgListener> = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let pool = strong.pool.clone();
        let bus = strong.bus.clone();
        drop(strong);
        if listen.is_none() {
            match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => listen = Some(l),
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot connect the event listener"),
            }
        }
        let wait = async {
            match listen.as_mut() {
                Some(l) => match tokio::time::timeout(Duration::from_secs(1), l.try_recv()).await {
                    Ok(Ok(Some(_))) | Err(_) => true,
                    // The connection dropped: reconnect (and read what we
                    // may have missed meanwhile).
                    Ok(Ok(None)) | Ok(Err(_)) => false,
                },
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    true
                }
            }
        };
        tokio::select! {
            ok = wait => if !ok { listen = None },
            _ = stop.changed() => return,
        }
        loop {
            match read_after(&pool, last, 1000).await {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => {
                    let full = batch.len() == 1000;
                    last = batch.last().map_or(last, |e| e.id.0);
                    if bus.receiver_count() > 0 {
                        let _ = bus.send(Arc::new(batch));
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading new events failed");
                    break;
                }
            }
        }
    }
}

const DELIVERY_COLUMNS: &str = "id, job_id, tenant, queue, kind, target, job, state, attempts,
    next_at, created_at, updated_at, last_error, channel";

fn delivery_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<Delivery> {
    let kind: String = row.get("kind");
    let state: String = row.get("state");
    let channel: String = row.get("channel");
    let job = decode(row.get::<&str, _>("job"))?;
    let at = |c: &str| DateTime::from_timestamp_millis(row.get(c)).unwrap_or_default();
    Ok(Delivery {
        id: row.get("id"),
        channel: Channel::parse(&channel)
            .ok_or_else(|| StoreError::Backend(format!("unknown channel {channel:?}").into()))?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| StoreError::Backend(format!("unknown event kind {kind:?}").into()))?,
        target: row.get("target"),
        state: DeliveryState::parse(&state).ok_or_else(|| {
            StoreError::Backend(format!("unknown delivery state {state:?}").into())
        })?,
        attempts: u32::try_from(row.get::<i32, _>("attempts")).unwrap_or(0),
        next_at: at("next_at"),
        created_at: at("created_at"),
        updated_at: at("updated_at"),
        last_error: row.get("last_error"),
        job,
    })
}

fn event_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<EventRecord> {
    let kind: String = row.get("kind");
    let job = decode(row.get::<&str, _>("job"))?;
    let kind = EventKind::parse(&kind).ok_or_else(|| {
        StoreError::Backend(format!("unknown event kind {kind:?} in the log").into())
    })?;
    Ok(EventRecord {
        id: EventId(row.get("position")),
        job_id: job.id,
        tenant: job.tenant.clone(),
        queue: job.queue.clone(),
        kind,
        at: DateTime::from_timestamp_millis(row.get("at")).unwrap_or_default(),
        job,
    })
}

async fn read_after(pool: &PgPool, after: i64, limit: i64) -> StoreResult<Vec<EventRecord>> {
    let rows = sqlx::query(
        "SELECT position, kind, at, job FROM events WHERE position > $1 ORDER BY position LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    rows.iter().map(event_from_row).collect()
}

/// Expired jobs (`expires_at <= $1`) still holding their input, at most
/// `$2`, oldest first. The order is also what makes PostgreSQL walk
/// `jobs_expiry` without statistics: with a bare LIMIT it scanned the
/// whole table for every sweep, hoping to meet expired rows early.
const GARBAGE: &str = "SELECT id FROM jobs WHERE expires_at <= $1 AND input IS NOT NULL
     ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED";

/// Claims due deliveries of channel `$4` until `$3`: at most `$2`, due at
/// `$1`, the oldest pending of each job only. Both lookups have an index
/// made for them (migration 6), so the plan needs no statistics: without
/// them, on a table that grew since its last ANALYZE, PostgreSQL chose a
/// BitmapAnd over the whole channel's pending index for every candidate,
/// which made a claim quadratic (6.4 s with 20,000 pending).
fn claim_sql() -> String {
    format!(
        "UPDATE outbox SET claimed_until = $3 WHERE id IN (
             SELECT id FROM outbox o
             WHERE channel = $4 AND state = 'pending' AND next_at <= $1
               AND (claimed_until IS NULL OR claimed_until <= $1)
               AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.job_id = o.job_id
                               AND p.channel = o.channel
                               AND p.state = 'pending' AND p.id < o.id)
             ORDER BY next_at, id LIMIT $2
             FOR UPDATE SKIP LOCKED)
         RETURNING {DELIVERY_COLUMNS}"
    )
}

async fn load(tx: &mut Tx, id: JobId, lock: bool) -> StoreResult<Option<JobRecord>> {
    let sql = if lock {
        "SELECT record FROM jobs WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT record FROM jobs WHERE id = $1"
    };
    let text: Option<String> = sqlx::query_scalar(sql)
        .bind(id.0)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?;
    text.as_deref().map(decode).transpose()
}

async fn update_job(tx: &mut Tx, job: &JobRecord, text: &str) -> StoreResult<()> {
    sqlx::query(
        "UPDATE jobs SET state = $2, run_at = $3, lease_expires_at = $4, expires_at = $5,
                         record = $6
         WHERE id = $1",
    )
    .bind(job.id.0)
    .bind(job.state.as_str())
    .bind(ms(job.run_at))
    .bind(job.lease.as_ref().map(|l| ms(l.expires_at)))
    .bind(job.expires_at.map(ms))
    .bind(text)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn append_event(
    tx: &mut Tx,
    job: &JobRecord,
    kind: EventKind,
    text: &str,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO events (job_id, kind, at, job) VALUES ($1, $2, $3, $4)")
        .bind(job.id.0)
        .bind(kind.name())
        .bind(ms(job.updated_at))
        .bind(text)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    for (channel, target) in job.owed(kind) {
        owe(tx, job, kind, channel, &target, text, job.updated_at).await?;
    }
    Ok(())
}

/// Writes an outbox row: `kind` of `job` (its record after the event is
/// `text`) owed to `target` on `channel`, due at `at`.
async fn owe(
    tx: &mut Tx,
    job: &JobRecord,
    kind: EventKind,
    channel: Channel,
    target: &str,
    text: &str,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO outbox (job_id, tenant, queue, channel, kind, target, job, state, next_at,
                             created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8, $8)",
    )
    .bind(job.id.0)
    .bind(&job.tenant.0)
    .bind(&job.queue)
    .bind(channel.as_str())
    .bind(kind.name())
    .bind(target)
    .bind(text)
    .bind(ms(at))
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Loads (locked), applies, writes back, appends the event: every
/// transition's one path. Returns whether an event was appended.
async fn transition(
    tx: &mut Tx,
    id: JobId,
    scope: Option<&Tenant>,
    cmd: Command,
    output: Option<JobOutput>,
    now: DateTime<Utc>,
    retry: &RetryPolicy,
) -> StoreResult<(JobRecord, Option<TransitionError>, bool)> {
    let mut job = load(tx, id, true).await?.ok_or(StoreError::NotFound)?;
    if job.is_expired(now) || scope.is_some_and(|t| *t != job.tenant) {
        return Err(StoreError::NotFound);
    }
    let completes = matches!(cmd, Command::Complete { .. });
    let effect = job.apply(cmd, now, retry)?;
    let text = serde_json::to_string(&job).map_err(json_err)?;
    update_job(tx, &job, &text).await?;
    if let Some(kind) = effect.event {
        append_event(tx, &job, kind, &text).await?;
    }
    if completes && job.state == JobState::Succeeded {
        let out = output.unwrap_or(JobOutput {
            content_type: "application/json".into(),
            body: Bytes::from_static(b"null"),
            upstream: None,
        });
        sqlx::query(
            "INSERT INTO job_outputs (job_id, content_type, body, upstream) VALUES ($1, $2, $3, $4)
             ON CONFLICT (job_id) DO UPDATE SET content_type = $2, body = $3, upstream = $4",
        )
        .bind(id.0)
        .bind(&out.content_type)
        .bind(&out.body[..])
        .bind(
            out.upstream
                .as_ref()
                .map(|u| serde_json::to_string(u).unwrap_or_default()),
        )
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    }
    Ok((job, effect.refused, effect.event.is_some()))
}

#[async_trait]
impl Store for PgStore {
    async fn submit(&self, new: NewJob, now: DateTime<Utc>) -> StoreResult<Submitted> {
        let (job, input) = new.into_record(now);
        let text = serde_json::to_string(&job).map_err(json_err)?;
        let mut tx = self.begin().await?;
        // The unique index decides between concurrent duplicates: the second
        // waits for the first to commit, then does nothing.
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, tenant, queue, state, run_at, idempotency_key, input, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(job.id.0)
        .bind(&job.tenant.0)
        .bind(&job.queue)
        .bind(job.state.as_str())
        .bind(ms(job.run_at))
        .bind(&job.idempotency_key)
        .bind(&input[..])
        .bind(&text)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        if inserted == 0 {
            let found: String = sqlx::query_scalar(
                "SELECT record FROM jobs WHERE tenant = $1 AND idempotency_key = $2",
            )
            .bind(&job.tenant.0)
            .bind(&job.idempotency_key)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            let existing = decode(&found)?;
            tx.rollback().await.map_err(backend)?;
            return if existing.request_hash == job.request_hash {
                Ok(Submitted::Existing(existing))
            } else {
                Err(StoreError::IdempotencyMismatch)
            };
        }
        append_event(&mut tx, &job, EventKind::Accepted, &text).await?;
        self.commit(tx, true).await?;
        Ok(Submitted::Created(job))
    }

    async fn get(&self, id: JobId) -> StoreResult<Option<JobRecord>> {
        let text: Option<String> = sqlx::query_scalar("SELECT record FROM jobs WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(backend)?;
        text.as_deref().map(decode).transpose()
    }

    async fn input(&self, id: JobId) -> StoreResult<Option<Bytes>> {
        let body: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT input FROM jobs WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(backend)?;
        Ok(body.flatten().map(Bytes::from))
    }

    async fn output(&self, id: JobId) -> StoreResult<Option<JobOutput>> {
        let row =
            sqlx::query("SELECT content_type, body, upstream FROM job_outputs WHERE job_id = $1")
                .bind(id.0)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(backend)?;
        Ok(row.map(|r| JobOutput {
            content_type: r.get("content_type"),
            body: Bytes::from(r.get::<Vec<u8>, _>("body")),
            upstream: r
                .get::<Option<String>, _>("upstream")
                .and_then(|u| serde_json::from_str(&u).ok()),
        }))
    }

    async fn list(&self, q: ListQuery) -> StoreResult<Vec<JobRecord>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT record FROM jobs
             WHERE ($1::text IS NULL OR tenant = $1)
               AND ($2::text IS NULL OR queue = $2)
               AND ($3::text IS NULL OR state = $3)
               AND ($4::uuid IS NULL OR id < $4)
             ORDER BY id DESC LIMIT $5",
        )
        .bind(q.tenant.map(|t| t.0))
        .bind(q.queue)
        .bind(q.state.map(|s| s.as_str()))
        .bind(q.before.map(|b| b.0))
        .bind(i64::from(q.limit))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(|t| decode(t)).collect()
    }

    async fn apply(
        &self,
        id: JobId,
        scope: Option<&Tenant>,
        cmd: Command,
        output: Option<JobOutput>,
        now: DateTime<Utc>,
    ) -> StoreResult<JobRecord> {
        let mut tx = self.begin().await?;
        let (job, refused, appended) =
            transition(&mut tx, id, scope, cmd, output, now, &self.inner.retry).await?;
        self.commit(tx, appended).await?;
        match refused {
            Some(e) => Err(StoreError::Transition(e)),
            None => Ok(job),
        }
    }

    async fn lease(&self, q: LeaseQuery, now: DateTime<Utc>) -> StoreResult<Vec<Leased>> {
        let mut tx = self.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs
             WHERE queue = $1 AND state = 'queued' AND run_at <= $2
               AND ($3::text IS NULL OR tenant = $3)
             ORDER BY run_at, id LIMIT $4
             FOR UPDATE SKIP LOCKED",
        )
        .bind(&q.queue)
        .bind(ms(now))
        .bind(q.tenant.as_ref().map(|t| t.0.as_str()))
        .bind(i64::from(q.max))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut leased = Vec::with_capacity(ids.len());
        for id in ids {
            let id = JobId(id);
            let lease_id = LeaseId::new();
            let cmd = Command::Lease {
                lease_id: lease_id.clone(),
                worker: q.worker.clone(),
                length: q.length,
            };
            let (job, _, _) =
                transition(&mut tx, id, None, cmd, None, now, &self.inner.retry).await?;
            let input: Option<Vec<u8>> = sqlx::query_scalar("SELECT input FROM jobs WHERE id = $1")
                .bind(id.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
            leased.push(Leased {
                job,
                input: Bytes::from(input.unwrap_or_default()),
                lease_id,
            });
        }
        let appended = !leased.is_empty();
        self.commit(tx, appended).await?;
        Ok(leased)
    }

    async fn expire_leases(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize> {
        let mut tx = self.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= $1
             LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        for &id in &ids {
            transition(
                &mut tx,
                JobId(id),
                None,
                Command::ExpireLease,
                None,
                now,
                &self.inner.retry,
            )
            .await?;
        }
        self.commit(tx, !ids.is_empty()).await?;
        Ok(ids.len())
    }

    async fn next_run_at(&self, queue: &str) -> StoreResult<Option<DateTime<Utc>>> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT min(run_at) FROM jobs WHERE queue = $1 AND state = 'queued'",
        )
        .bind(queue)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(backend)?;
        Ok(v.and_then(DateTime::from_timestamp_millis))
    }

    async fn delete(&self, id: JobId) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let job = load(&mut tx, id, true).await?.ok_or(StoreError::NotFound)?;
        if !job.state.is_terminal() {
            return Err(TransitionError::NotFinished(job.state).into());
        }
        for sql in [
            FORGET_EVENTS_OF_JOB,
            "DELETE FROM job_outputs WHERE job_id = $1",
            "DELETE FROM delivery_attempts WHERE delivery_id IN
                 (SELECT id FROM outbox WHERE job_id = $1)",
            "DELETE FROM outbox WHERE job_id = $1",
            "DELETE FROM jobs WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.0)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        self.commit(tx, false).await
    }

    async fn collect_garbage(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<usize> {
        let mut tx = self.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(GARBAGE)
            .bind(ms(now))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        for sql in [
            FORGET_EVENTS_OF_JOBS,
            "DELETE FROM job_outputs WHERE job_id = ANY($1)",
            "DELETE FROM delivery_attempts WHERE delivery_id IN
                 (SELECT id FROM outbox WHERE job_id = ANY($1))",
            "DELETE FROM outbox WHERE job_id = ANY($1)",
            "UPDATE jobs SET input = NULL, idempotency_key = NULL WHERE id = ANY($1)",
        ] {
            sqlx::query(sql)
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        let retention = chrono::Duration::from_std(TOMBSTONE_RETENTION).unwrap_or_default();
        sqlx::query("DELETE FROM jobs WHERE input IS NULL AND expires_at <= $1")
            .bind(ms(now - retention))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        self.commit(tx, false).await?;
        Ok(ids.len())
    }

    async fn events(&self, id: JobId, after: Option<EventId>) -> StoreResult<Vec<EventRecord>> {
        // Read your own writes: position what has committed so far.
        self.sequence().await?;
        let rows = sqlx::query(
            "SELECT position, kind, at, job FROM events
             WHERE job_id = $1 AND position > $2 ORDER BY position",
        )
        .bind(id.0)
        .bind(after.map_or(0, |e| e.0))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn log(&self, after: Option<EventId>, limit: u32) -> StoreResult<Vec<EventRecord>> {
        read_after(&self.inner.pool, after.map_or(0, |e| e.0), i64::from(limit)).await
    }

    async fn counts(&self) -> StoreResult<Vec<StateCount>> {
        let rows = sqlx::query(
            "SELECT queue, state, count(*) AS n FROM jobs WHERE input IS NOT NULL
             GROUP BY queue, state",
        )
        .fetch_all(&self.inner.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let state = JobState::parse(r.get::<&str, _>("state"))?;
                Some(StateCount {
                    queue: r.get("queue"),
                    state,
                    count: u64::try_from(r.get::<i64, _>("n")).unwrap_or(0),
                })
            })
            .collect())
    }

    async fn claim_deliveries(
        &self,
        channel: Channel,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Claimed>> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let rows = sqlx::query(sqlx::AssertSqlSafe(claim_sql()))
            .bind(ms(now))
            .bind(i64::from(limit))
            .bind(ms(until))
            .bind(channel.as_str())
            .fetch_all(&self.inner.pool)
            .await
            .map_err(backend)?;
        let mut out: Vec<Delivery> = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|d| (d.next_at, d.id));
        // The small results of those that announce a success.
        let succeeded: Vec<Uuid> = out
            .iter()
            .filter(|d| d.kind == EventKind::Succeeded)
            .map(|d| d.job.id.0)
            .collect();
        let mut results: std::collections::HashMap<Uuid, JobOutput> = if succeeded.is_empty() {
            Default::default()
        } else {
            sqlx::query(
                "SELECT job_id, content_type, body FROM job_outputs
                 WHERE job_id = ANY($1) AND length(body) <= $2",
            )
            .bind(&succeeded)
            .bind(INLINE_RESULT as i64)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(backend)?
            .iter()
            .map(|r| {
                let output = JobOutput {
                    content_type: r.get("content_type"),
                    body: Bytes::from(r.get::<Vec<u8>, _>("body")),
                    upstream: None,
                };
                (r.get("job_id"), output)
            })
            .collect()
        };
        Ok(out
            .into_iter()
            .map(|d| Claimed {
                result: (d.kind == EventKind::Succeeded)
                    .then(|| results.remove(&d.job.id.0))
                    .flatten(),
                delivery: d,
            })
            .collect())
    }

    async fn ask_reply(
        &self,
        id: JobId,
        spec: ReplySpec,
        now: DateTime<Utc>,
    ) -> StoreResult<ReplyAsked> {
        let mut tx = self.begin().await?;
        let mut job = load(&mut tx, id, true).await?.ok_or(StoreError::NotFound)?;
        let (channel, target) = (spec.channel, spec.target.encode());
        let asked = job.ask_reply(spec);
        match asked {
            ReplyAsked::Now(kind) => {
                let text = serde_json::to_string(&job).map_err(json_err)?;
                owe(&mut tx, &job, kind, channel, &target, &text, now).await?;
            }
            ReplyAsked::Remembered => {
                let text = serde_json::to_string(&job).map_err(json_err)?;
                update_job(&mut tx, &job, &text).await?;
            }
            ReplyAsked::Owed => return Ok(asked),
        }
        self.commit(tx, false).await?;
        Ok(asked)
    }

    async fn replay_dead_deliveries(
        &self,
        tenant: Option<Tenant>,
        queue: Option<String>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_at = $5,
                 claimed_until = NULL, updated_at = $5
             WHERE state = 'dead' AND ($1::text IS NULL OR tenant = $1)
               AND ($2::text IS NULL OR queue = $2) AND updated_at >= $3 AND updated_at <= $4",
        )
        .bind(tenant.map(|t| t.0))
        .bind(queue)
        .bind(ms(from))
        .bind(ms(to))
        .bind(ms(now))
        .execute(&self.inner.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn defer_deliveries(&self, deferred: Vec<(i64, DateTime<Utc>)>) -> StoreResult<()> {
        let (ids, until): (Vec<i64>, Vec<i64>) =
            deferred.iter().map(|(id, t)| (*id, ms(*t))).unzip();
        sqlx::query(
            "UPDATE outbox SET next_at = d.until, claimed_until = NULL
             FROM unnest($1::bigint[], $2::bigint[]) AS d(id, until)
             WHERE outbox.id = d.id AND outbox.state = 'pending'",
        )
        .bind(&ids)
        .bind(&until)
        .execute(&self.inner.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn record_attempts(&self, outcomes: Vec<Outcome>) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        for o in &outcomes {
            let (state, next_at) = o.after.state_and_next(o.attempt.at);
            let updated = sqlx::query(
                "UPDATE outbox SET state = $2, attempts = attempts + 1, next_at = $3,
                     claimed_until = NULL, updated_at = $4, last_error = $5
                 WHERE id = $1",
            )
            .bind(o.delivery)
            .bind(state.as_str())
            .bind(ms(next_at))
            .bind(ms(o.attempt.at))
            .bind(&o.attempt.error)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if updated.rows_affected() == 0 {
                // Deleted with its job meanwhile.
                continue;
            }
            sqlx::query(
                "INSERT INTO delivery_attempts (delivery_id, at, status, latency_ms, error)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(o.delivery)
            .bind(ms(o.attempt.at))
            .bind(o.attempt.status.map(i32::from))
            .bind(o.attempt.latency_ms as i64)
            .bind(&o.attempt.error)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        self.commit(tx, false).await
    }

    async fn deliveries(&self, job: JobId) -> StoreResult<Vec<(Delivery, Vec<AttemptRecord>)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM outbox WHERE job_id = $1 ORDER BY id"
        )))
        .bind(job.0)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let d = delivery_from_row(row)?;
            let attempts = sqlx::query(
                "SELECT at, status, latency_ms, error FROM delivery_attempts
                 WHERE delivery_id = $1 ORDER BY at, ctid",
            )
            .bind(d.id)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(backend)?
            .iter()
            .map(|r| AttemptRecord {
                at: DateTime::from_timestamp_millis(r.get("at")).unwrap_or_default(),
                status: r
                    .get::<Option<i32>, _>("status")
                    .and_then(|s| u16::try_from(s).ok()),
                latency_ms: u64::try_from(r.get::<i64, _>("latency_ms")).unwrap_or(0),
                error: r.get("error"),
            })
            .collect();
            out.push((d, attempts));
        }
        Ok(out)
    }

    async fn list_deliveries(
        &self,
        tenant: Option<Tenant>,
        state: Option<DeliveryState>,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM outbox
             WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR state = $2)
               AND id < $3
             ORDER BY id DESC LIMIT $4"
        )))
        .bind(tenant.map(|t| t.0))
        .bind(state.map(DeliveryState::as_str))
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn replay_delivery(
        &self,
        id: i64,
        scope: Option<&Tenant>,
        redeliver: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Delivery> {
        let tenant = scope.map(|t| t.0.clone());
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_at = $2,
                 claimed_until = NULL, updated_at = $2
             WHERE id = $1 AND ($3::text IS NULL OR tenant = $3)
               AND ($4 OR state <> 'delivered')
             RETURNING {DELIVERY_COLUMNS}"
        )))
        .bind(id)
        .bind(ms(now))
        .bind(&tenant)
        .bind(redeliver)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(backend)?;
        match row {
            Some(row) => delivery_from_row(&row),
            None => {
                // Missing (or another tenant's), or delivered.
                let delivered: Option<bool> = sqlx::query_scalar(
                    "SELECT state = 'delivered' FROM outbox
                     WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
                )
                .bind(id)
                .bind(&tenant)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(backend)?;
                Err(match delivered {
                    Some(true) => StoreError::AlreadyDelivered,
                    _ => StoreError::NotFound,
                })
            }
        }
    }

    async fn log_floor(&self) -> StoreResult<Option<EventId>> {
        let v: Option<i64> = sqlx::query_scalar("SELECT below FROM log_floor WHERE one = 1")
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(backend)?;
        Ok(v.map(EventId))
    }

    async fn cluster_secret(&self) -> StoreResult<Vec<u8>> {
        let fresh: [u8; 32] = rand::random();
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('job_token_secret', $1)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(&fresh[..])
        .execute(&self.inner.pool)
        .await
        .map_err(backend)?;
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'job_token_secret'")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(backend)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map(|_| ())
            .map_err(backend)
    }

    fn subscribe(&self) -> broadcast::Receiver<EventBatch> {
        self.inner.bus.subscribe()
    }
}

/// Test support shared by this crate's and the server's test suites.
pub mod testing {
    /// The plan of a delivery claim (`claim_deliveries`' own statement) as
    /// PostgreSQL ran it, `EXPLAIN (ANALYZE, BUFFERS)` a line each, in a
    /// transaction rolled back after.
    pub async fn explain_claim(
        url: &str,
        channel: &str,
        now_ms: i64,
        limit: i64,
    ) -> sqlx::Result<Vec<String>> {
        let pool = sqlx::PgPool::connect(url).await?;
        let mut tx = pool.begin().await?;
        let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", super::claim_sql());
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(limit)
            .bind(now_ms + 60_000)
            .bind(channel)
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        pool.close().await;
        Ok(plan)
    }

    /// The plan of a garbage sweep's selection (`collect_garbage`' own
    /// statement), as [`explain_claim`] gives it.
    pub async fn explain_garbage(url: &str, now_ms: i64, limit: i64) -> sqlx::Result<Vec<String>> {
        let pool = sqlx::PgPool::connect(url).await?;
        let mut tx = pool.begin().await?;
        let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", super::GARBAGE);
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        pool.close().await;
        Ok(plan)
    }

    /// The server tests run against: `REPLYD_TEST_DATABASE_URL`, by default
    /// the local `test` database.
    pub fn url() -> String {
        std::env::var("REPLYD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
    }

    /// A URL for a fresh, empty schema (its `search_path`), so that tests
    /// running at once do not see each other's rows. `None` (with a message
    /// saying why) when no PostgreSQL answers; with
    /// `REPLYD_REQUIRE_SERVICES=1` that panics instead. Schemas of earlier
    /// runs with the same `prefix` are dropped once per process.
    pub async fn fresh_schema(prefix: &'static str) -> Option<String> {
        fresh_schema_at(&url(), prefix).await
    }

    /// As [`fresh_schema`], in the database at `base`.
    pub async fn fresh_schema_at(base: &str, prefix: &'static str) -> Option<String> {
        let base = base.to_string();
        let admin = match sqlx::PgPool::connect(&base).await {
            Ok(p) => p,
            Err(e) => {
                replyd_testkit::skip(
                    &format!("PostgreSQL at {base} ({e})"),
                    "run scripts/test, or start PostgreSQL (REPLYD_TEST_DATABASE_URL names another)",
                );
                return None;
            }
        };
        static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        SWEPT
            .get_or_init(|| async {
                let old: Vec<String> = sqlx::query_scalar(
                    "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
                )
                .bind(format!("{prefix}_"))
                .fetch_all(&admin)
                .await
                .unwrap_or_default();
                for s in old {
                    let drop = format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
                }
            })
            .await;
        let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&admin)
            .await
            .expect("create a test schema");
        admin.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
    }
}
