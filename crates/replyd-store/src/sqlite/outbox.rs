//! The outbox: deliveries owed, claimed, attempted, replayed; replies asked again.

use super::jobs::{id_bytes, load, update_job};
use super::{SqliteStore, backend};
use crate::record::{decode, from_ms, json_err, ms};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::event::EventKind;
use replyd_core::job::JobRecord;
use replyd_core::ops::Watch;
use replyd_core::outbox::{
    AfterAttempt, AttemptRecord, Channel, Delivery, DeliveryState, INLINE_RESULT, ReplyAsked,
    ReplySpec,
};
use replyd_core::store::{Claimed, JobOutput, Outcome, StoreError, StoreResult};
use replyd_core::{JobId, Tenant};
use rusqlite::{Connection, OptionalExtension, params};
use std::time::Duration;

pub(super) async fn claim_deliveries(
    s: &SqliteStore,
    channel: Channel,
    now: DateTime<Utc>,
    lease: Duration,
    limit: u32,
) -> StoreResult<Vec<Claimed>> {
    let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
    s.write(move |conn, _| {
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
        // What is owed to a paused endpoint is held, not attempted.
        let ids: Vec<i64> = rows.iter().map(|d| d.id).collect();
        let held = super::ops::hold_paused(conn, &ids, now)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for d in rows.into_iter().filter(|d| !held.contains(&d.id)) {
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

pub(super) async fn ask_reply(
    s: &SqliteStore,
    id: JobId,
    spec: ReplySpec,
    now: DateTime<Utc>,
) -> StoreResult<ReplyAsked> {
    s.write(move |conn, _| {
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

pub(super) async fn replay_dead_deliveries(
    s: &SqliteStore,
    tenant: Option<Tenant>,
    queue: Option<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    s.write(move |conn, _| {
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

pub(super) async fn defer_deliveries(
    s: &SqliteStore,
    deferred: Vec<(i64, DateTime<Utc>)>,
) -> StoreResult<()> {
    s.write(move |conn, _| {
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

pub(super) async fn record_attempts(
    s: &SqliteStore,
    outcomes: Vec<Outcome>,
    watch: Watch,
) -> StoreResult<()> {
    s.write(move |conn, _| {
        let mut failing = super::ops::any_failing(conn)?;
        for o in &outcomes {
            let (state, next_at) = o.after.state_and_next(o.attempt.at);
            // No RETURNING: SQLite's costs several microseconds per row,
            // and only a few outcomes need the row again (below).
            let n = conn
                .prepare_cached(
                    "UPDATE outbox SET attempts = attempts + 1, next_at = ?3,
                         -- Held (its endpoint paused meanwhile) until resumed.
                         state = CASE WHEN state = 'held' AND ?2 = 'pending' THEN 'held' ELSE ?2 END,
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
            // Only a dead letter, or a delivery while some endpoint is
            // failing, can mean anything to operators.
            failing |= o.after == AfterAttempt::Dead;
            if !failing {
                continue;
            }
            let recorded = conn
                .prepare_cached(
                    "SELECT tenant, channel, target, job_id, kind, attempts
                     FROM outbox WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([o.delivery], |r| {
                        Ok(crate::record::Recorded {
                            id: o.delivery,
                            tenant: r.get(0)?,
                            channel: Channel::parse(&r.get::<_, String>(1)?)
                                .unwrap_or(Channel::Webhook),
                            target: r.get(2)?,
                            job: uuid::Uuid::from_slice(&r.get::<_, Vec<u8>>(3)?)
                                .map(|u| JobId(u).to_string())
                                .unwrap_or_default(),
                            kind: r.get(4)?,
                            attempts: r.get(5)?,
                        })
                    })
                })
                .map_err(backend)?;
            super::ops::watch(
                conn,
                &recorded,
                o.after,
                o.attempt.error.as_deref(),
                watch,
                o.attempt.at,
            )?;
        }
        Ok(())
    })
    .await
}

pub(super) async fn deliveries(
    s: &SqliteStore,
    job: JobId,
) -> StoreResult<Vec<(Delivery, Vec<AttemptRecord>)>> {
    s.read(move |conn| {
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

pub(super) async fn list_deliveries(
    s: &SqliteStore,
    tenant: Option<Tenant>,
    state: Option<DeliveryState>,
    before: Option<i64>,
    limit: u32,
) -> StoreResult<Vec<Delivery>> {
    s.read(move |conn| {
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

pub(super) async fn replay_delivery(
    s: &SqliteStore,
    id: i64,
    scope: Option<&Tenant>,
    redeliver: bool,
    now: DateTime<Utc>,
) -> StoreResult<Delivery> {
    let scope = scope.cloned();
    s.write(move |conn, _| {
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

/// Writes an outbox row: `kind` of `job` (its record after the event is
/// `text`) owed to `target` on `channel`, due at `at`.
pub(super) fn owe(
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

pub(super) const DELIVERY_COLUMNS: &str =
    "id, job_id, tenant, queue, kind, target, job, state, attempts,
    next_at, created_at, updated_at, last_error, channel";

pub(super) fn query_deliveries(
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
        let job = decode(&job)?;
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

pub(super) fn one_delivery(conn: &Connection, id: i64) -> StoreResult<Delivery> {
    query_deliveries(
        conn,
        &format!("SELECT {DELIVERY_COLUMNS} FROM outbox WHERE id = ?1"),
        params![id],
    )?
    .pop()
    .ok_or(StoreError::NotFound)
}
