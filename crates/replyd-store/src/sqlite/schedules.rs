//! Recurring schedules (`replyd_core::schedule`): kept by tenant and name,
//! found by the tick each fires next.

use super::{SqliteStore, backend};
use crate::record::{from_ms, json_err, ms};
use chrono::{DateTime, Utc};
use replyd_core::Tenant;
use replyd_core::schedule::{ScheduleRecord, ScheduleSource};
use replyd_core::store::{StoreError, StoreResult};
use rusqlite::{OptionalExtension, Row, params};

const COLUMNS: &str = "tenant, name, spec, source, next_at, last_at, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(ScheduleRecord, String)> {
    let spec: String = r.get(2)?;
    let source: String = r.get(3)?;
    Ok((
        ScheduleRecord {
            tenant: Tenant(r.get(0)?),
            name: r.get(1)?,
            spec: serde_json::Value::Null,
            source: ScheduleSource::parse(&source).unwrap_or(ScheduleSource::Api),
            next_at: from_ms(r.get(4)?),
            last_at: r.get::<_, Option<i64>>(5)?.map(from_ms),
            created_at: from_ms(r.get(6)?),
            updated_at: from_ms(r.get(7)?),
        },
        spec,
    ))
}

fn decode((mut s, spec): (ScheduleRecord, String)) -> StoreResult<ScheduleRecord> {
    s.spec = serde_json::from_str(&spec)
        .map_err(|e| StoreError::Backend(format!("a schedule's spec: {e}").into()))?;
    Ok(s)
}

pub(super) async fn put(s: &SqliteStore, rec: ScheduleRecord) -> StoreResult<bool> {
    let spec = serde_json::to_string(&rec.spec).map_err(json_err)?;
    s.write(move |conn, _| {
        let existed: bool = conn
            .prepare_cached("SELECT 1 FROM schedules WHERE tenant = ?1 AND name = ?2")
            .and_then(|mut st| {
                st.query_row(params![rec.tenant.0, rec.name], |_| Ok(true))
                    .optional()
            })
            .map_err(backend)?
            .unwrap_or(false);
        conn.prepare_cached(
            "INSERT INTO schedules (tenant, name, spec, source, next_at, last_at, created_at,
                                    updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT (tenant, name) DO UPDATE SET
                 spec = excluded.spec, source = excluded.source,
                 last_at = CASE WHEN schedules.next_at = excluded.next_at
                                THEN schedules.last_at ELSE excluded.last_at END,
                 next_at = excluded.next_at, updated_at = excluded.updated_at",
        )
        .and_then(|mut st| {
            st.execute(params![
                rec.tenant.0,
                rec.name,
                spec,
                rec.source.as_str(),
                ms(rec.next_at),
                rec.last_at.map(ms),
                ms(rec.updated_at)
            ])
        })
        .map_err(backend)?;
        Ok(!existed)
    })
    .await
}

pub(super) async fn get(
    s: &SqliteStore,
    tenant: &Tenant,
    name: &str,
) -> StoreResult<Option<ScheduleRecord>> {
    let (tenant, name) = (tenant.0.clone(), name.to_string());
    s.read(move |conn| {
        conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE tenant = ?1 AND name = ?2"
        ))
        .and_then(|mut st| st.query_row(params![tenant, name], from_row).optional())
        .map_err(backend)?
        .map(decode)
        .transpose()
    })
    .await
}

pub(super) async fn list(
    s: &SqliteStore,
    tenant: Option<&Tenant>,
) -> StoreResult<Vec<ScheduleRecord>> {
    let tenant = tenant.map(|t| t.0.clone());
    s.read(move |conn| {
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM schedules WHERE ?1 IS NULL OR tenant = ?1
                 ORDER BY tenant, name"
            ))
            .map_err(backend)?;
        let rows = st.query_map([tenant], from_row).map_err(backend)?;
        rows.map(|r| r.map_err(backend).and_then(decode)).collect()
    })
    .await
}

pub(super) async fn delete(s: &SqliteStore, tenant: &Tenant, name: &str) -> StoreResult<bool> {
    let (tenant, name) = (tenant.0.clone(), name.to_string());
    s.write(move |conn, _| {
        conn.prepare_cached("DELETE FROM schedules WHERE tenant = ?1 AND name = ?2")
            .and_then(|mut st| st.execute(params![tenant, name]))
            .map(|n| n > 0)
            .map_err(backend)
    })
    .await
}

pub(super) async fn due(
    s: &SqliteStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<Vec<ScheduleRecord>> {
    s.read(move |conn| {
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM schedules WHERE next_at <= ?1 ORDER BY next_at LIMIT ?2"
            ))
            .map_err(backend)?;
        let rows = st
            .query_map(params![ms(now), limit], from_row)
            .map_err(backend)?;
        rows.map(|r| r.map_err(backend).and_then(decode)).collect()
    })
    .await
}

pub(super) async fn advance(
    s: &SqliteStore,
    tenant: &Tenant,
    name: &str,
    fired: DateTime<Utc>,
    next: DateTime<Utc>,
) -> StoreResult<bool> {
    let (tenant, name) = (tenant.0.clone(), name.to_string());
    s.write(move |conn, _| {
        conn.prepare_cached(
            "UPDATE schedules SET next_at = ?4, last_at = ?3
             WHERE tenant = ?1 AND name = ?2 AND next_at = ?3",
        )
        .and_then(|mut st| st.execute(params![tenant, name, ms(fired), ms(next)]))
        .map(|n| n > 0)
        .map_err(backend)
    })
    .await
}
