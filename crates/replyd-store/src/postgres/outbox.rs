//! The outbox: deliveries owed, claimed (`SKIP LOCKED`), attempted, replayed; replies asked again.

use super::jobs::{load, update_job};
use super::{PgStore, Tx, backend};
use crate::record::{decode, json_err, ms};
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
use sqlx::Row;
use std::time::Duration;
use uuid::Uuid;

pub(super) async fn claim_deliveries(
    s: &PgStore,
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
        .fetch_all(&s.inner.pool)
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
        .fetch_all(&s.inner.pool)
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

pub(super) async fn ask_reply(
    s: &PgStore,
    id: JobId,
    spec: ReplySpec,
    now: DateTime<Utc>,
) -> StoreResult<ReplyAsked> {
    let mut tx = s.begin().await?;
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
        // Nothing to write, but the job's row is locked: end the
        // transaction here. Dropped, its ROLLBACK would only be queued, and
        // the lock would make the next `SKIP LOCKED` lease skip the job.
        ReplyAsked::Owed => {}
    }
    s.commit(tx, None).await?;
    Ok(asked)
}

pub(super) async fn replay_dead_deliveries(
    s: &PgStore,
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
    .execute(&s.inner.pool)
    .await
    .map_err(backend)?;
    Ok(done.rows_affected())
}

pub(super) async fn defer_deliveries(
    s: &PgStore,
    deferred: Vec<(i64, DateTime<Utc>)>,
) -> StoreResult<()> {
    let (ids, until): (Vec<i64>, Vec<i64>) = deferred.iter().map(|(id, t)| (*id, ms(*t))).unzip();
    sqlx::query(
        "UPDATE outbox SET next_at = d.until, claimed_until = NULL
         FROM unnest($1::bigint[], $2::bigint[]) AS d(id, until)
         WHERE outbox.id = d.id AND outbox.state = 'pending'",
    )
    .bind(&ids)
    .bind(&until)
    .execute(&s.inner.pool)
    .await
    .map_err(backend)?;
    Ok(())
}

pub(super) async fn record_attempts(
    s: &PgStore,
    outcomes: Vec<Outcome>,
    watch: Watch,
) -> StoreResult<()> {
    let mut tx = s.begin().await?;
    let ids: Vec<i64> = outcomes.iter().map(|o| o.delivery).collect();
    let any_dead = outcomes.iter().any(|o| o.after == AfterAttempt::Dead);
    // Operational events are written under their lock, taken first.
    let watching = super::ops::may_emit(&mut tx, &ids, any_dead).await?;
    if watching {
        super::ops::lock(&mut tx).await?;
    }
    for o in &outcomes {
        let (state, next_at) = o.after.state_and_next(o.attempt.at);
        let updated = sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_at = $3,
                 -- Held (its endpoint paused meanwhile) until resumed.
                 state = CASE WHEN state = 'held' AND $2 = 'pending' THEN 'held' ELSE $2 END,
                 claimed_until = NULL, updated_at = $4, last_error = $5
             WHERE id = $1
             RETURNING tenant, channel, target, job_id, kind, attempts",
        )
        .bind(o.delivery)
        .bind(state.as_str())
        .bind(ms(next_at))
        .bind(ms(o.attempt.at))
        .bind(&o.attempt.error)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = updated else {
            // Deleted with its job meanwhile.
            continue;
        };
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
        if watching {
            let recorded = crate::record::Recorded {
                id: o.delivery,
                tenant: row.get("tenant"),
                channel: Channel::parse(row.get::<&str, _>("channel")).unwrap_or(Channel::Webhook),
                target: row.get("target"),
                job: JobId(row.get::<Uuid, _>("job_id")).to_string(),
                kind: row.get("kind"),
                attempts: u32::try_from(row.get::<i32, _>("attempts")).unwrap_or(0),
            };
            let error = o.attempt.error.as_deref();
            super::ops::watch(&mut tx, &recorded, o.after, error, watch, o.attempt.at).await?;
        }
    }
    s.commit(tx, None).await
}

pub(super) async fn deliveries(
    s: &PgStore,
    job: JobId,
) -> StoreResult<Vec<(Delivery, Vec<AttemptRecord>)>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLUMNS} FROM outbox WHERE job_id = $1 ORDER BY id"
    )))
    .bind(job.0)
    .fetch_all(&s.inner.pool)
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
        .fetch_all(&s.inner.pool)
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

pub(super) async fn list_deliveries(
    s: &PgStore,
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
    .fetch_all(&s.inner.pool)
    .await
    .map_err(backend)?;
    rows.iter().map(delivery_from_row).collect()
}

pub(super) async fn replay_delivery(
    s: &PgStore,
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
    .fetch_optional(&s.inner.pool)
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
            .fetch_optional(&s.inner.pool)
            .await
            .map_err(backend)?;
            Err(match delivered {
                Some(true) => StoreError::AlreadyDelivered,
                _ => StoreError::NotFound,
            })
        }
    }
}

pub(super) const DELIVERY_COLUMNS: &str =
    "id, job_id, tenant, queue, kind, target, job, state, attempts,
    next_at, created_at, updated_at, last_error, channel";

pub(super) fn delivery_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<Delivery> {
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

/// Claims due deliveries of channel `$4` until `$3`: at most `$2`, due at
/// `$1`, the oldest pending of each job only. Both lookups have an index
/// made for them (migration 6), so the plan needs no statistics: without
/// them, on a table that grew since its last ANALYZE, PostgreSQL chose a
/// BitmapAnd over the whole channel's pending index for every candidate,
/// which made a claim quadratic (6.4 s with 20,000 pending).
pub(super) fn claim_sql() -> String {
    format!(
        "WITH picked AS (
             SELECT id FROM outbox o
             WHERE channel = $4 AND state = 'pending' AND next_at <= $1
               AND (claimed_until IS NULL OR claimed_until <= $1)
               AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.job_id = o.job_id
                               AND p.channel = o.channel
                               AND p.state = 'pending' AND p.id < o.id)
             ORDER BY next_at, id LIMIT $2
             FOR UPDATE SKIP LOCKED
         ), held AS (
             -- What is owed to a paused endpoint is held, not attempted.
             UPDATE outbox SET state = 'held', claimed_until = NULL, updated_at = $1
             FROM picked, endpoints e
             WHERE outbox.id = picked.id AND e.paused_at IS NOT NULL
               AND e.tenant = outbox.tenant AND e.channel = outbox.channel
               AND e.target = outbox.target
             RETURNING outbox.id
         )
         UPDATE outbox SET claimed_until = $3
         WHERE id IN (SELECT id FROM picked) AND id NOT IN (SELECT id FROM held)
         RETURNING {DELIVERY_COLUMNS}"
    )
}

/// Writes an outbox row: `kind` of `job` (its record after the event is
/// `text`) owed to `target` on `channel`, due at `at`.
pub(super) async fn owe(
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
