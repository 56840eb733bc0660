//! Jobs: submitting, reading, listing, moving (every transition), deleting, counting.

use super::events::{FORGET_EVENTS_OF_JOBS, append_event};
use super::{PgStore, Tx, backend};
use crate::record::{decode, encode_upstream, json_err, ms};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::event::EventKind;
use replyd_core::job::{Command, JobRecord, JobState, NewJob, RetryPolicy, TransitionError};
use replyd_core::store::{JobOutput, ListQuery, StateCount, StoreError, StoreResult, Submitted};
use replyd_core::{JobId, Tenant};
use sqlx::Row;

pub(super) async fn submit(s: &PgStore, new: NewJob, now: DateTime<Utc>) -> StoreResult<Submitted> {
    let (job, input) = new.into_record(now);
    let text = serde_json::to_string(&job).map_err(json_err)?;
    let mut tx = s.begin().await?;
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
    s.commit(tx, true).await?;
    Ok(Submitted::Created(job))
}

pub(super) async fn get(s: &PgStore, id: JobId) -> StoreResult<Option<JobRecord>> {
    let text: Option<String> = sqlx::query_scalar("SELECT record FROM jobs WHERE id = $1")
        .bind(id.0)
        .fetch_optional(&s.inner.pool)
        .await
        .map_err(backend)?;
    text.as_deref().map(decode).transpose()
}

pub(super) async fn input(s: &PgStore, id: JobId) -> StoreResult<Option<Bytes>> {
    let body: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT input FROM jobs WHERE id = $1")
        .bind(id.0)
        .fetch_optional(&s.inner.pool)
        .await
        .map_err(backend)?;
    Ok(body.flatten().map(Bytes::from))
}

pub(super) async fn output(s: &PgStore, id: JobId) -> StoreResult<Option<JobOutput>> {
    let row = sqlx::query("SELECT content_type, body, upstream FROM job_outputs WHERE job_id = $1")
        .bind(id.0)
        .fetch_optional(&s.inner.pool)
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

pub(super) async fn list(s: &PgStore, q: ListQuery) -> StoreResult<Vec<JobRecord>> {
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
    .fetch_all(&s.inner.pool)
    .await
    .map_err(backend)?;
    rows.iter().map(|t| decode(t)).collect()
}

pub(super) async fn apply(
    s: &PgStore,
    id: JobId,
    scope: Option<&Tenant>,
    cmd: Command,
    output: Option<JobOutput>,
    now: DateTime<Utc>,
) -> StoreResult<JobRecord> {
    let mut tx = s.begin().await?;
    let (job, refused, appended) =
        transition(&mut tx, id, scope, cmd, output, now, &s.inner.retry).await?;
    s.commit(tx, appended).await?;
    match refused {
        Some(e) => Err(StoreError::Transition(e)),
        None => Ok(job),
    }
}

pub(super) async fn delete(s: &PgStore, id: JobId) -> StoreResult<()> {
    let mut tx = s.begin().await?;
    let job = load(&mut tx, id, true).await?.ok_or(StoreError::NotFound)?;
    if !job.state.is_terminal() {
        return Err(TransitionError::NotFinished(job.state).into());
    }
    forget_history(&mut tx, &[id.0]).await?;
    sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    s.commit(tx, false).await
}

/// Removes what jobs (`ids`) have beyond their records: their outputs,
/// their events (raising the log's floor past them) and their deliveries.
pub(super) async fn forget_history(tx: &mut Tx, ids: &[uuid::Uuid]) -> StoreResult<()> {
    let [lock_events, forget_events] = FORGET_EVENTS_OF_JOBS;
    for sql in [
        lock_events,
        forget_events,
        "DELETE FROM job_outputs WHERE job_id = ANY($1)",
        "DELETE FROM delivery_attempts WHERE delivery_id IN
             (SELECT id FROM outbox WHERE job_id = ANY($1))",
        "DELETE FROM outbox WHERE job_id = ANY($1)",
    ] {
        sqlx::query(sql)
            .bind(ids)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

pub(super) async fn counts(s: &PgStore) -> StoreResult<Vec<StateCount>> {
    let rows = sqlx::query(
        "SELECT queue, state, count(*) AS n FROM jobs WHERE input IS NOT NULL
         GROUP BY queue, state",
    )
    .fetch_all(&s.inner.pool)
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

pub(super) async fn load(tx: &mut Tx, id: JobId, lock: bool) -> StoreResult<Option<JobRecord>> {
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

pub(super) async fn update_job(tx: &mut Tx, job: &JobRecord, text: &str) -> StoreResult<()> {
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

/// Loads (locked), applies (`record::transition` decides), writes back,
/// appends the event: every transition's one path. Returns whether an
/// event was appended.
pub(super) async fn transition(
    tx: &mut Tx,
    id: JobId,
    scope: Option<&Tenant>,
    cmd: Command,
    output: Option<JobOutput>,
    now: DateTime<Utc>,
    retry: &RetryPolicy,
) -> StoreResult<(JobRecord, Option<TransitionError>, bool)> {
    let job = load(tx, id, true).await?.ok_or(StoreError::NotFound)?;
    let t = crate::record::transition(job, scope, cmd, output, now, retry)?;
    update_job(tx, &t.job, &t.text).await?;
    if let Some(kind) = t.event {
        append_event(tx, &t.job, kind, &t.text).await?;
    }
    if let Some(out) = &t.output {
        sqlx::query(
            "INSERT INTO job_outputs (job_id, content_type, body, upstream) VALUES ($1, $2, $3, $4)
             ON CONFLICT (job_id) DO UPDATE SET content_type = $2, body = $3, upstream = $4",
        )
        .bind(id.0)
        .bind(&out.content_type)
        .bind(&out.body[..])
        .bind(out.upstream.as_ref().map(encode_upstream))
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    }
    Ok((t.job, t.refused, t.event.is_some()))
}
