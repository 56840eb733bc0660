//! Leases: handing queued jobs to workers (`FOR UPDATE SKIP LOCKED`), and taking back the ones whose lease ran out.

use super::jobs::{Moved, transition, transition_all};
use super::{PgStore, backend};
use crate::record::ms;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::job::Command;
use replyd_core::store::{LeaseQuery, Leased, Move, StoreError, StoreResult};
use replyd_core::{JobId, LeaseId};
use sqlx::Row;
use uuid::Uuid;

/// The jobs a lease takes: `$1` queue, `$2` now (ms), `$3` tenant or
/// NULL, `$4` how many. `jobs_ready` serves the order, so the scan stops
/// at the limit.
pub(super) const LEASE: &str = "SELECT id, input FROM jobs
     WHERE queue = $1 AND state = 'queued' AND run_at <= $2
       AND ($3::text IS NULL OR tenant = $3)
     ORDER BY run_at, id LIMIT $4
     FOR UPDATE SKIP LOCKED";

pub(super) async fn lease(
    s: &PgStore,
    q: LeaseQuery,
    now: DateTime<Utc>,
) -> StoreResult<Vec<Leased>> {
    let mut tx = s.begin().await?;
    let picked = sqlx::query(LEASE)
        .bind(&q.queue)
        .bind(ms(now))
        .bind(q.tenant.as_ref().map(|t| t.0.as_str()))
        .bind(i64::from(q.max))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
    let mut inputs = Vec::with_capacity(picked.len());
    let mut moves = Vec::with_capacity(picked.len());
    for row in &picked {
        let lease_id = LeaseId::new();
        moves.push(Move {
            id: JobId(row.get::<Uuid, _>("id")),
            cmd: Command::Lease {
                lease_id: lease_id.clone(),
                worker: q.worker.clone(),
                length: q.length,
            },
            output: None,
        });
        let input: Option<Vec<u8>> = row.get("input");
        inputs.push((lease_id, Bytes::from(input.unwrap_or_default())));
    }
    // The rows are ours (locked above): every lease is granted.
    let (moved, appended) = transition_all(&mut tx, moves, None, now, &s.inner.retry).await?;
    let mut leased = Vec::with_capacity(moved.len());
    for (m, (lease_id, input)) in moved.into_iter().zip(inputs) {
        let (job, _) = match m {
            Moved::Done(r) => r?,
            // Our own locks are never skipped.
            Moved::Busy(_) => {
                return s
                    .abort(tx, StoreError::Backend("a leased row was held".into()))
                    .await;
            }
        };
        leased.push(Leased {
            job,
            input,
            lease_id,
        });
    }
    s.commit(tx, appended).await?;
    Ok(leased)
}

pub(super) async fn expire_leases(
    s: &PgStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<usize> {
    let mut tx = s.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= $1
         LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(ms(now))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(backend)?;
    let mut top = None;
    for &id in &ids {
        let (_, _, appended) = transition(
            &mut tx,
            JobId(id),
            None,
            Command::ExpireLease,
            None,
            now,
            &s.inner.retry,
        )
        .await?;
        top = top.max(appended);
    }
    s.commit(tx, top).await?;
    Ok(ids.len())
}

pub(super) async fn next_run_at(s: &PgStore, queue: &str) -> StoreResult<Option<DateTime<Utc>>> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT min(run_at) FROM jobs WHERE queue = $1 AND state = 'queued'")
            .bind(queue)
            .fetch_one(&s.inner.pool)
            .await
            .map_err(backend)?;
    Ok(v.and_then(DateTime::from_timestamp_millis))
}
