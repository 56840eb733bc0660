//! Garbage: expired jobs become tombstones, then are gone.

use super::jobs::{forget_history, forget_keys_of_gone};
use super::{PgStore, backend};
use crate::record::ms;
use chrono::{DateTime, Utc};
use replyd_core::job::GROUP_CLOCK_KEPT_MS;
use replyd_core::store::{StoreResult, TOMBSTONE_RETENTION};
use uuid::Uuid;

pub(super) async fn collect_garbage(
    s: &PgStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<usize> {
    let mut tx = s.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(GARBAGE)
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
    forget_history(&mut tx, &ids).await?;
    sqlx::query("UPDATE jobs SET input = NULL, idempotency_key = NULL WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let retention = chrono::Duration::from_std(TOMBSTONE_RETENTION).unwrap_or_default();
    // The tombstones past their retention, and their keys, in one
    // statement (however many there are, none passes through here).
    sqlx::query(concat!(
        "WITH gone AS (
             DELETE FROM jobs WHERE input IS NULL AND expires_at <= $1 RETURNING tenant, id
         )",
        forget_keys_of_gone!()
    ))
    .bind(ms(now - retention))
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    super::ops::trim(&mut tx, now).await?;
    s.commit(tx, None).await?;
    // Idle groups' clocks, on their own: no lock of the sweep's is held
    // while waiting for a submit's.
    sqlx::query("DELETE FROM group_clocks WHERE tag <= $1")
        .bind(ms(now) - GROUP_CLOCK_KEPT_MS)
        .execute(&s.inner.pool)
        .await
        .map_err(backend)?;
    Ok(ids.len())
}

/// Expired jobs (`expires_at <= $1`) still holding their input, at most
/// `$2`, oldest first. The order is also what makes PostgreSQL walk
/// `jobs_expiry` without statistics: with a bare LIMIT it scanned the
/// whole table for every sweep, hoping to meet expired rows early.
pub(super) const GARBAGE: &str = "SELECT id FROM jobs WHERE expires_at <= $1 AND input IS NOT NULL
     ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED";
