//! The event log: appending an event (in its transition's transaction), the sequencer that gives committed events their positions, the listener that brings other nodes' events onto this node's bus, and reading the log.

use super::Inner;
use super::outbox::owe;
use super::{PgStore, Tx, backend};
use crate::record::{decode, ms};
use chrono::DateTime;
use replyd_core::JobId;
use replyd_core::event::{EventId, EventKind, EventRecord};
use replyd_core::job::JobRecord;
use replyd_core::store::{StoreError, StoreResult};
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool};
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn events(
    s: &PgStore,
    id: JobId,
    after: Option<EventId>,
) -> StoreResult<Vec<EventRecord>> {
    // Read your own writes: position what has committed so far.
    s.sequence().await?;
    let rows = sqlx::query(
        "SELECT position, kind, at, job FROM events
         WHERE job_id = $1 AND position > $2 ORDER BY position",
    )
    .bind(id.0)
    .bind(after.map_or(0, |e| e.0))
    .fetch_all(&s.inner.pool)
    .await
    .map_err(backend)?;
    rows.iter().map(event_from_row).collect()
}

pub(super) async fn log(
    s: &PgStore,
    after: Option<EventId>,
    limit: u32,
) -> StoreResult<Vec<EventRecord>> {
    read_after(&s.inner.pool, after.map_or(0, |e| e.0), i64::from(limit)).await
}

pub(super) async fn log_floor(s: &PgStore) -> StoreResult<Option<EventId>> {
    let v: Option<i64> = sqlx::query_scalar("SELECT below FROM log_floor WHERE one = 1")
        .fetch_optional(&s.inner.pool)
        .await
        .map_err(backend)?;
    Ok(v.map(EventId))
}

/// The advisory lock that serializes event sequencing (any 64-bit value
/// unique to replyd).
pub(super) const SEQUENCER_LOCK: i64 = 0x7265_706c_7964_0001;

/// The channel the sequencer notifies.
pub(super) const CHANNEL: &str = "replyd_events";

/// Events one sequencing transaction positions at most.
pub(super) const SEQUENCE_BATCH: i64 = 10_000;

/// Removes jobs' events (`$1` is an array of ids) from the log and raises
/// `log_floor` to the highest position removed. The floor is taken from
/// the rows the DELETE removed, not from a read before it: a sequencer
/// that positions one of them concurrently holds its row lock, so the
/// DELETE waits, then removes (and returns) the positioned version. A
/// floor read before the DELETE would miss that position, and the next
/// sequencer would hand it out a second time (a listener that saw it first
/// would never read the new event). The rows are locked in id order
/// first (a statement of its own, so the DELETE's snapshot sees what the
/// lock waited for), the order the sequencer locks them in: a DELETE alone locks in
/// scan order, and a sequencer locking the same two rows the other way
/// round deadlocked the pair (PostgreSQL aborted one with 40P01).
pub(super) const FORGET_EVENTS_OF_JOBS: [&str; 2] = [
    "SELECT id FROM events WHERE job_id = ANY($1) ORDER BY id FOR UPDATE",
    "WITH gone AS (
         DELETE FROM events WHERE job_id = ANY($1) RETURNING position
     )
     INSERT INTO log_floor (one, below)
     SELECT 1, max(position) FROM gone HAVING max(position) IS NOT NULL
     ON CONFLICT (one) DO UPDATE SET below = greatest(log_floor.below, excluded.below)",
];

pub(super) async fn sequence(pool: &PgPool) -> StoreResult<u64> {
    let mut tx = pool.begin().await.map_err(backend)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SEQUENCER_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let row = sqlx::query(
        "WITH todo AS (
             -- Locked in id order, as FORGET_EVENTS_OF_JOBS locks: two
             -- transactions that lock shared rows in one order cannot
             -- deadlock.
             SELECT id FROM events WHERE position IS NULL ORDER BY id LIMIT $1
             FOR UPDATE
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
pub(super) async fn sequencer(
    inner: std::sync::Weak<Inner>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
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
pub(super) async fn listener(
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

pub(super) fn event_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<EventRecord> {
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

pub(super) async fn read_after(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> StoreResult<Vec<EventRecord>> {
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

pub(super) async fn append_event(
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
