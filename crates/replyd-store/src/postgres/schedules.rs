//! Recurring schedules (`replyd_core::schedule`): kept by tenant and name,
//! found by the tick each fires next; a tick moves on by compare and set,
//! so that of the nodes that fired it one moves it.

use super::{PgStore, backend};
use crate::record::{from_ms, json_err, ms};
use chrono::{DateTime, Utc};
use replyd_core::Tenant;
use replyd_core::schedule::{ScheduleRecord, ScheduleSource};
use replyd_core::store::{StoreError, StoreResult};
use sqlx::Row;
use sqlx::postgres::PgRow;

const COLUMNS: &str = "tenant, name, spec, source, next_at, last_at, created_at, updated_at";

fn from_row(r: &PgRow) -> StoreResult<ScheduleRecord> {
    let spec: &str = r.get("spec");
    Ok(ScheduleRecord {
        tenant: Tenant(r.get("tenant")),
        name: r.get("name"),
        spec: serde_json::from_str(spec)
            .map_err(|e| StoreError::Backend(format!("a schedule's spec: {e}").into()))?,
        source: ScheduleSource::parse(r.get("source")).unwrap_or(ScheduleSource::Api),
        next_at: from_ms(r.get("next_at")),
        last_at: r.get::<Option<i64>, _>("last_at").map(from_ms),
        created_at: from_ms(r.get("created_at")),
        updated_at: from_ms(r.get("updated_at")),
    })
}

pub(super) async fn put(s: &PgStore, rec: ScheduleRecord) -> StoreResult<bool> {
    let spec = serde_json::to_string(&rec.spec).map_err(json_err)?;
    // xmax = 0: the row was inserted, not updated.
    let created: bool = sqlx::query_scalar(
        "INSERT INTO schedules AS s (tenant, name, spec, source, next_at, last_at, created_at,
                                     updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (tenant, name) DO UPDATE SET
             spec = excluded.spec, source = excluded.source,
             last_at = CASE WHEN s.next_at = excluded.next_at
                            THEN s.last_at ELSE excluded.last_at END,
             next_at = excluded.next_at, updated_at = excluded.updated_at
         RETURNING (xmax = 0)",
    )
    .bind(&rec.tenant.0)
    .bind(&rec.name)
    .bind(spec)
    .bind(rec.source.as_str())
    .bind(ms(rec.next_at))
    .bind(rec.last_at.map(ms))
    .bind(ms(rec.updated_at))
    .fetch_one(&s.inner.pool)
    .await
    .map_err(backend)?;
    Ok(created)
}

pub(super) async fn get(
    s: &PgStore,
    tenant: &Tenant,
    name: &str,
) -> StoreResult<Option<ScheduleRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM schedules WHERE tenant = $1 AND name = $2");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&tenant.0)
        .bind(name)
        .fetch_optional(&s.inner.pool)
        .await
        .map_err(backend)?
        .as_ref()
        .map(from_row)
        .transpose()
}

pub(super) async fn list(s: &PgStore, tenant: Option<&Tenant>) -> StoreResult<Vec<ScheduleRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM schedules WHERE $1::text IS NULL OR tenant = $1
         ORDER BY tenant, name"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant.map(|t| t.0.as_str()))
        .fetch_all(&s.inner.pool)
        .await
        .map_err(backend)?
        .iter()
        .map(from_row)
        .collect()
}

pub(super) async fn delete(s: &PgStore, tenant: &Tenant, name: &str) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM schedules WHERE tenant = $1 AND name = $2")
        .bind(&tenant.0)
        .bind(name)
        .execute(&s.inner.pool)
        .await
        .map_err(backend)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn due(
    s: &PgStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<Vec<ScheduleRecord>> {
    let sql =
        format!("SELECT {COLUMNS} FROM schedules WHERE next_at <= $1 ORDER BY next_at LIMIT $2");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&s.inner.pool)
        .await
        .map_err(backend)?
        .iter()
        .map(from_row)
        .collect()
}

pub(super) async fn advance(
    s: &PgStore,
    tenant: &Tenant,
    name: &str,
    fired: DateTime<Utc>,
    next: DateTime<Utc>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE schedules SET next_at = $4, last_at = $3
         WHERE tenant = $1 AND name = $2 AND next_at = $3",
    )
    .bind(&tenant.0)
    .bind(name)
    .bind(ms(fired))
    .bind(ms(next))
    .execute(&s.inner.pool)
    .await
    .map_err(backend)?;
    Ok(done.rows_affected() > 0)
}
