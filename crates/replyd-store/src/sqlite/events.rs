//! The event log: appending an event (in its transition's transaction) and reading it.

use super::jobs::id_bytes;
use super::outbox::owe;
use super::writer::Events;
use super::{SqliteStore, backend};
use crate::record::{decode, from_ms, ms};
use replyd_core::JobId;
use replyd_core::event::{EventId, EventKind, EventRecord};
use replyd_core::job::JobRecord;
use replyd_core::store::{StoreError, StoreResult};
use rusqlite::{Connection, OptionalExtension, params};

pub(super) async fn events(
    s: &SqliteStore,
    id: JobId,
    after: Option<EventId>,
) -> StoreResult<Vec<EventRecord>> {
    s.read(move |conn| {
        read_events(
            conn,
            "SELECT id, kind, at, job FROM events WHERE job_id = ?1 AND id > ?2 ORDER BY id",
            params![id_bytes(id), after.map_or(0, |e| e.0)],
        )
    })
    .await
}

pub(super) async fn log(
    s: &SqliteStore,
    after: Option<EventId>,
    limit: u32,
) -> StoreResult<Vec<EventRecord>> {
    s.read(move |conn| {
        read_events(
            conn,
            "SELECT id, kind, at, job FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            params![after.map_or(0, |e| e.0), limit],
        )
    })
    .await
}

pub(super) async fn log_floor(s: &SqliteStore) -> StoreResult<Option<EventId>> {
    s.read(|conn| {
        conn.prepare_cached("SELECT below FROM log_floor WHERE one = 1")
            .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
            .map(|v| v.map(EventId))
            .map_err(backend)
    })
    .await
}

pub(super) fn append_event(
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

/// Before a job's events are removed: remember the highest of them.
pub(super) const RAISE_LOG_FLOOR: &str = "
    INSERT INTO log_floor (one, below)
    SELECT 1, max(id) FROM events WHERE job_id = ?1 AND id IS NOT NULL
    HAVING max(id) IS NOT NULL
    ON CONFLICT (one) DO UPDATE SET below = max(below, excluded.below)";

/// Events from a query selecting `id, kind, at, job`.
pub(super) fn read_events(
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
        let job = decode(&text)?;
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
