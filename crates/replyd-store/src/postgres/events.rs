//! The event log: appending events (in their transition's transaction),
//! reading them in an order no reader can be surprised by, and the
//! listener that brings every node's events onto this node's bus.
//!
//! **Positions.** An event's position is fixed when it is written, from
//! the writing transaction's id: `xid × 65,536 + its ordinal in the
//! transaction + a shift` (the shift, kept in `event_origin`, puts the
//! first such position past every position the log held before
//! migration 10). Transaction ids do not commit in order, so a reader
//! takes only the events below the *horizon*, `xmin × 65,536 + shift`,
//! where `xmin` is its snapshot's oldest transaction still running: every
//! transaction below it has ended, and every transaction that has not yet
//! ended, or not yet begun, writes above it. So a reader that has read to
//! position P never finds an event below P later, with no second write
//! per event and no lock shared by the nodes. A job's events follow the
//! order they happened in: every transition locks its job's row before it
//! writes, and a transaction's id is taken no later than its first lock
//! (the holder of a row had its id before taking the row), as long as no
//! transaction waits for a job's row after it locked another; the
//! transactions that take many rows skip the ones they would wait for
//! (`jobs::transition_all`).
//!
//! What this costs: a transaction left open holds the horizon back, and
//! every reader with it (the listener warns when that lasts). Reads of one
//! job's events need no horizon (its events are written in its order) and
//! so see a commit at once.
//!
//! A node wakes its own listener after each commit that appended events
//! and tells the other nodes with a NOTIFY carrying the highest position
//! it committed (at most one in flight: a burst of commits costs one);
//! the listener looks again shortly while a position it knows committed
//! is not yet readable, and every second.

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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The channel nodes notify after committing events.
pub(super) const CHANNEL: &str = "replyd_events";

/// Positions one transaction may use: the ordinals of its events.
pub(super) const PER_TRANSACTION: i64 = 65_536;

/// The CTEs that place a transaction's next events: `here.lo`, its first
/// position (`xid × 65,536 + shift`), and `next.p`, the one after the
/// events it appended already. Every statement that appends events
/// starts from them: the one rule of positions.
macro_rules! next_position_ctes {
    () => {
        "here AS (
             SELECT pg_current_xact_id()::text::bigint * 65536
                    + (SELECT shift FROM event_origin) AS lo
         ), next AS (
             SELECT coalesce(
                 (SELECT max(position) + 1 FROM events, here
                  WHERE position >= here.lo AND position < here.lo + 65536),
                 (SELECT lo FROM here)) AS p
         )"
    };
}
pub(super) use next_position_ctes;

/// Appends `events` (job, kind, the job's record as JSON) in order, with
/// their positions, and owes their deliveries. The position continues
/// after this transaction's own earlier events. Returns the highest
/// position written (`None` for no event).
pub(super) async fn append_events(
    tx: &mut Tx,
    events: &[(&JobRecord, EventKind, &str)],
) -> StoreResult<Option<i64>> {
    if events.is_empty() {
        return Ok(None);
    }
    if events.len() as i64 >= PER_TRANSACTION {
        return Err(StoreError::Backend(
            format!("{} events in one statement", events.len()).into(),
        ));
    }
    let done = sqlx::query(concat!(
        "WITH ",
        next_position_ctes!(),
        "
         INSERT INTO events (position, job_id, kind, at, job)
         SELECT next.p + e.n - 1, e.job_id, e.kind, e.at, e.job
         FROM next, unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[])
              WITH ORDINALITY AS e(job_id, kind, at, job, n)
         RETURNING position, position - (SELECT lo FROM here) AS ordinal"
    ))
    .bind(events.iter().map(|(j, _, _)| j.id.0).collect::<Vec<_>>())
    .bind(events.iter().map(|(_, k, _)| k.name()).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|(j, _, _)| ms(j.updated_at))
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|(_, _, t)| *t).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    // An ordinal past the transaction's range would take the next one's.
    if done.iter().any(|r| {
        r.try_get::<i64, _>("ordinal")
            .is_ok_and(|o| o >= PER_TRANSACTION)
    }) {
        return Err(StoreError::Backend(
            "a transaction appended more than 65,536 events".into(),
        ));
    }
    for (job, kind, text) in events {
        for (channel, target) in job.owed(*kind) {
            owe(tx, job, *kind, channel, &target, text, job.updated_at).await?;
        }
    }
    Ok(done
        .iter()
        .filter_map(|r| r.try_get::<i64, _>("position").ok())
        .max())
}

/// Removes jobs' events (`$1` is an array of ids) from the log and raises
/// `log_floor` to the highest position removed.
pub(super) const FORGET_EVENTS_OF_JOBS: &str = "WITH gone AS (
         DELETE FROM events WHERE job_id = ANY($1) RETURNING position
     )
     INSERT INTO log_floor (one, below)
     SELECT 1, max(position) FROM gone HAVING max(position) IS NOT NULL
     ON CONFLICT (one) DO UPDATE SET below = greatest(log_floor.below, excluded.below)";

/// One job's events after `after`, committed ones all: a job's events are
/// written in the order they happen, so no horizon is needed.
pub(super) async fn events(
    s: &PgStore,
    id: JobId,
    after: Option<EventId>,
) -> StoreResult<Vec<EventRecord>> {
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
    let (events, _) = read_after(&s.inner.pool, after.map_or(0, |e| e.0), i64::from(limit)).await?;
    Ok(events)
}

pub(super) async fn log_floor(s: &PgStore) -> StoreResult<Option<EventId>> {
    let v: Option<i64> = sqlx::query_scalar("SELECT below FROM log_floor WHERE one = 1")
        .fetch_optional(&s.inner.pool)
        .await
        .map_err(backend)?;
    Ok(v.map(EventId))
}

/// The horizon: every position below it is final.
async fn horizon(pool: &PgPool) -> StoreResult<i64> {
    sqlx::query_scalar(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint * 65536
                + (SELECT shift FROM event_origin)",
    )
    .fetch_one(pool)
    .await
    .map_err(backend)
}

/// Up to `limit` events after `after` and below the horizon, and the
/// horizon. The horizon is read first, in a statement of its own: the
/// read that follows has a later snapshot, which sees every transaction
/// the horizon counts as ended.
pub(super) async fn read_after(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> StoreResult<(Vec<EventRecord>, i64)> {
    let below = horizon(pool).await?;
    let rows = sqlx::query(
        "SELECT position, kind, at, job FROM events
         WHERE position > $1 AND position < $2 ORDER BY position LIMIT $3",
    )
    .bind(after)
    .bind(below)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    let events = rows
        .iter()
        .map(event_from_row)
        .collect::<StoreResult<_>>()?;
    Ok((events, below))
}

/// The highest position below the horizon (0 for none): where a new
/// node's listener starts.
pub(super) async fn readable_top(pool: &PgPool) -> StoreResult<i64> {
    let below = horizon(pool).await?;
    sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events WHERE position < $1")
        .bind(below)
        .fetch_one(pool)
        .await
        .map(|v| v.unwrap_or(0))
        .map_err(backend)
}

/// Waits until every event committed before the call is below the
/// horizon (for tests and for a clean stop), at most `limit`.
pub(super) async fn settle(pool: &PgPool, limit: Duration) -> StoreResult<bool> {
    let committed: i64 = sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
        .fetch_one(pool)
        .await
        .map_err(backend)?
        .unwrap_or(0);
    let deadline = Instant::now() + limit;
    loop {
        if horizon(pool).await? > committed {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Tells the other nodes that events committed, and up to which position:
/// one NOTIFY at a time; the commits made while one is sent are told by
/// the next.
pub(super) async fn notifier(
    inner: std::sync::Weak<Inner>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Some(wake) = inner.upgrade().map(|s| s.notify.clone()) else {
            return;
        };
        tokio::select! {
            () = wake.notified() => {}
            _ = stop.changed() => return,
        }
        let Some((pool, top)) = inner
            .upgrade()
            .map(|s| (s.pool.clone(), s.wanted.load(Ordering::Relaxed)))
        else {
            return;
        };
        // The payload: the highest position committed here, for the other
        // nodes' listeners to wait for.
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(top.to_string())
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "NOTIFY replyd_events failed");
        }
    }
}

/// How long the listener waits before looking again while committed
/// events wait above the horizon: doubling from the first to the last.
const HELD_FIRST: Duration = Duration::from_millis(1);
const HELD_MOST: Duration = Duration::from_millis(100);

/// A node's reads of the log come at most this often. Each commit here
/// and each NOTIFY wakes the listener, and reading at each one read a few
/// events per query while the node was busy: with 3 nodes, 10,641 reads
/// of 58 events on average in one 20,000-job bench run (issue 25). The
/// cost: a live event reaches this node's bus up to this much later.
const READ_GAP: Duration = Duration::from_millis(5);

/// After how long a horizon held in place is worth a warning.
const HELD_WARN: Duration = Duration::from_secs(10);

/// Reads newly readable events (after this node's commits, another
/// node's NOTIFY, while some wait above the horizon, and every second)
/// and publishes them on this node's bus.
pub(super) async fn listener(
    inner: std::sync::Weak<Inner>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut last: i64,
) {
    let mut listen: Option<PgListener> = None;
    let mut held = HELD_FIRST;
    let mut held_since: Option<Instant> = None;
    let mut warned = false;
    let mut look_soon = false;
    let mut read_at: Option<Instant> = None;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let pool = strong.pool.clone();
        let bus = strong.bus.clone();
        let local = strong.committed.clone();
        let wanted_of = Arc::downgrade(&strong);
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
        let timeout = if look_soon {
            held
        } else {
            Duration::from_secs(1)
        };
        let wait = async {
            match listen.as_mut() {
                Some(l) => tokio::select! {
                    n = tokio::time::timeout(timeout, l.try_recv()) => match n {
                        Ok(Ok(Some(n))) => {
                            if let (Ok(top), Some(inner)) =
                                (n.payload().parse::<i64>(), wanted_of.upgrade())
                            {
                                inner.wanted.fetch_max(top, Ordering::Relaxed);
                            }
                            true
                        }
                        Err(_) => true,
                        // The connection dropped: reconnect (and read what
                        // we may have missed meanwhile).
                        Ok(Ok(None)) | Ok(Err(_)) => false,
                    },
                    () = local.notified() => true,
                },
                None => {
                    tokio::select! {
                        () = tokio::time::sleep(timeout.min(Duration::from_millis(500))) => {}
                        () = local.notified() => {}
                    }
                    true
                }
            }
        };
        tokio::select! {
            ok = wait => if !ok { listen = None },
            _ = stop.changed() => return,
        }
        if let Some(gap) = read_at.and_then(|at| READ_GAP.checked_sub(at.elapsed())) {
            tokio::select! {
                () = tokio::time::sleep(gap) => {}
                _ = stop.changed() => return,
            }
        }
        read_at = Some(Instant::now());
        let before = last;
        let mut below = i64::MIN;
        loop {
            match read_after(&pool, last, 1000).await {
                Ok((batch, horizon)) => {
                    below = horizon;
                    let full = batch.len() == 1000;
                    last = batch.last().map_or(last, |e| e.id.0);
                    if let Some(inner) = wanted_of.upgrade() {
                        inner.floors.saw(batch.iter().map(|e| &e.job));
                    }
                    if !batch.is_empty() && bus.receiver_count() > 0 {
                        let _ = bus.send(Arc::new(batch));
                    }
                    if full {
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading new events failed");
                    break;
                }
            }
        }
        // Committed (here, or on a node that told us) and not yet below the
        // horizon: an older transaction is still open. (Not "not yet read":
        // a job's events may be gone before they were read.)
        look_soon = wanted_of
            .upgrade()
            .is_some_and(|inner| inner.wanted.load(Ordering::Relaxed) >= below);
        if !look_soon || last != before {
            held = HELD_FIRST;
            held_since = look_soon.then(Instant::now);
            warned = false;
        } else {
            held = (held * 2).min(HELD_MOST);
            let since = *held_since.get_or_insert_with(Instant::now);
            if !warned && since.elapsed() >= HELD_WARN {
                warned = true;
                warn_held(&pool, since.elapsed()).await;
            }
        }
    }
}

/// Names the transaction that holds the horizon back.
async fn warn_held(pool: &PgPool, held: Duration) {
    let oldest = sqlx::query(
        "SELECT pid, coalesce(application_name, '') AS app, coalesce(state, '') AS state,
                coalesce(extract(epoch FROM now() - xact_start), 0)::float8 AS open_secs
         FROM pg_stat_activity WHERE backend_xid IS NOT NULL
         ORDER BY age(backend_xid) DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await;
    match oldest {
        Ok(Some(r)) => tracing::warn!(
            held_secs = held.as_secs(),
            pid = r.get::<i32, _>("pid"),
            application = r.get::<String, _>("app"),
            state = r.get::<String, _>("state"),
            open_secs = r.get::<f64, _>("open_secs"),
            "committed events wait for an older transaction to end before readers see them"
        ),
        _ => tracing::warn!(
            held_secs = held.as_secs(),
            "committed events wait for an older transaction to end before readers see them"
        ),
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
