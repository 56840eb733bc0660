//! What operators watch (`replyd_core::ops`): dead letters counted, failing
//! endpoints paused and resumed, operational events. `watch` runs inside
//! `record_attempts`' write, for each outcome in order.

use super::{SqliteStore, backend};
use crate::record::{Recorded, from_ms, ms};
use chrono::{DateTime, Utc};
use replyd_core::Tenant;
use replyd_core::ops::{self, DeadLetters, Endpoint, OpsEvent, OpsKind, Watch};
use replyd_core::outbox::{AfterAttempt, Channel};
use replyd_core::store::{StoreError, StoreResult};
use rusqlite::{Connection, OptionalExtension, params};

/// Whether any endpoint is failing (or paused): until one is, a delivery
/// that gets through means nothing to operators.
pub(super) fn any_failing(conn: &Connection) -> StoreResult<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM endpoints)")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)
}

/// Writes what one outcome means to operators.
pub(super) fn watch(
    conn: &Connection,
    d: &Recorded,
    after: AfterAttempt,
    error: Option<&str>,
    w: Watch,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    let tenant = Tenant(d.tenant.clone());
    let webhook = d.channel == Channel::Webhook;
    match after {
        AfterAttempt::Dead => {
            let data = ops::dead_lettered(
                d.id, &d.job, d.channel, &d.target, &d.kind, d.attempts, error,
            );
            emit(conn, at, OpsKind::DeliveryDeadLettered, &tenant, &data)?;
            if w.dlq_threshold > 0 {
                let count: i64 = conn
                    .prepare_cached(
                        "SELECT coalesce(sum(delta), 0) FROM dead_letter_counts
                         WHERE channel = ?1 AND tenant = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![d.channel.as_str(), d.tenant], |r| r.get(0))
                    })
                    .map_err(backend)?;
                let count = u64::try_from(count).unwrap_or(0);
                // This one made it cross.
                if count == w.dlq_threshold {
                    let data = ops::threshold(d.channel, count, w.dlq_threshold);
                    emit(conn, at, OpsKind::DlqThresholdExceeded, &tenant, &data)?;
                }
            }
            if webhook {
                let (n, paused): (u32, Option<i64>) = conn
                    .prepare_cached(
                        "INSERT INTO endpoints (tenant, channel, target, dead_in_a_row)
                         VALUES (?1, ?2, ?3, 1)
                         ON CONFLICT (tenant, channel, target)
                         DO UPDATE SET dead_in_a_row = dead_in_a_row + 1
                         RETURNING dead_in_a_row, paused_at",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![d.tenant, d.channel.as_str(), d.target], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                    })
                    .map_err(backend)?;
                if paused.is_none() && w.disable_after > 0 && n >= w.disable_after {
                    pause(conn, d, at)?;
                    let data = ops::endpoint(d.channel, &d.target, n);
                    emit(conn, at, OpsKind::EndpointDisabled, &tenant, &data)?;
                }
            }
        }
        AfterAttempt::Delivered if webhook => {
            // A failing endpoint (not paused) got one through: it is no
            // longer watched.
            let recovered: Option<u32> = conn
                .prepare_cached(
                    "DELETE FROM endpoints
                     WHERE tenant = ?1 AND channel = ?2 AND target = ?3 AND paused_at IS NULL
                     RETURNING dead_in_a_row",
                )
                .and_then(|mut s| {
                    s.query_row(params![d.tenant, d.channel.as_str(), d.target], |r| {
                        r.get(0)
                    })
                    .optional()
                })
                .map_err(backend)?;
            if let Some(n) = recovered {
                let data = ops::endpoint(d.channel, &d.target, n);
                emit(conn, at, OpsKind::EndpointRecovered, &tenant, &data)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Pauses an endpoint: its pending deliveries are held.
fn pause(conn: &Connection, d: &Recorded, at: DateTime<Utc>) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE endpoints SET paused_at = ?4 WHERE tenant = ?1 AND channel = ?2 AND target = ?3",
    )
    .and_then(|mut s| s.execute(params![d.tenant, d.channel.as_str(), d.target, ms(at)]))
    .map_err(backend)?;
    conn.prepare_cached(
        "UPDATE outbox SET state = 'held', claimed_until = NULL, updated_at = ?4
         WHERE tenant = ?1 AND channel = ?2 AND target = ?3 AND state = 'pending'",
    )
    .and_then(|mut s| s.execute(params![d.tenant, d.channel.as_str(), d.target, ms(at)]))
    .map_err(backend)?;
    Ok(())
}

/// Holds what a claim took for paused endpoints; returns the ids held.
pub(super) fn hold_paused(
    conn: &Connection,
    ids: &[i64],
    at: DateTime<Utc>,
) -> StoreResult<Vec<i64>> {
    let mut held = Vec::new();
    let any_paused: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM endpoints WHERE paused_at IS NOT NULL)")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    if !any_paused {
        return Ok(held);
    }
    for id in ids {
        let n = conn
            .prepare_cached(
                "UPDATE outbox SET state = 'held', claimed_until = NULL, updated_at = ?2
                 WHERE id = ?1 AND EXISTS (
                     SELECT 1 FROM endpoints e WHERE e.tenant = outbox.tenant
                       AND e.channel = outbox.channel AND e.target = outbox.target
                       AND e.paused_at IS NOT NULL)",
            )
            .and_then(|mut s| s.execute(params![id, ms(at)]))
            .map_err(backend)?;
        if n == 1 {
            held.push(*id);
        }
    }
    Ok(held)
}

fn emit(
    conn: &Connection,
    at: DateTime<Utc>,
    kind: OpsKind,
    tenant: &Tenant,
    data: &serde_json::Value,
) -> StoreResult<()> {
    conn.prepare_cached("INSERT INTO ops_events (at, kind, tenant, data) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![ms(at), kind.name(), tenant.0, data.to_string()]))
        .map_err(backend)?;
    Ok(())
}

/// Rows of +1 and -1 beyond which a read folds them into one per group.
const FOLD_AFTER: i64 = 256;

pub(super) async fn dead_letters(s: &SqliteStore) -> StoreResult<Vec<DeadLetters>> {
    let (groups, rows) = s
        .read(|conn| {
            let rows: i64 = conn
                .query_row("SELECT count(*) FROM dead_letter_counts", [], |r| r.get(0))
                .map_err(backend)?;
            Ok((oldest_of(conn, &sums(conn)?)?, rows))
        })
        .await?;
    if rows > FOLD_AFTER {
        s.write(|conn, _| {
            let sums = sums(conn)?;
            conn.execute("DELETE FROM dead_letter_counts", [])
                .map_err(backend)?;
            for (channel, tenant, n) in &sums {
                conn.execute(
                    "INSERT INTO dead_letter_counts (channel, tenant, delta) VALUES (?1, ?2, ?3)",
                    params![channel, tenant, n],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(groups)
}

/// (channel, tenant, count) of every group with dead letters.
fn sums(conn: &Connection) -> StoreResult<Vec<(String, String, i64)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT channel, tenant, sum(delta) FROM dead_letter_counts
             GROUP BY channel, tenant HAVING sum(delta) > 0 ORDER BY channel, tenant",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

fn oldest_of(conn: &Connection, sums: &[(String, String, i64)]) -> StoreResult<Vec<DeadLetters>> {
    let mut out = Vec::with_capacity(sums.len());
    for (channel, tenant, n) in sums {
        let Some(ch) = Channel::parse(channel) else {
            continue;
        };
        let oldest: Option<i64> = conn
            .prepare_cached(
                "SELECT min(updated_at) FROM outbox INDEXED BY outbox_dead
                 WHERE state = 'dead' AND channel = ?1 AND tenant = ?2",
            )
            .and_then(|mut s| s.query_row(params![channel, tenant], |r| r.get(0)))
            .map_err(backend)?;
        out.push(DeadLetters {
            channel: ch,
            tenant: Tenant(tenant.clone()),
            count: u64::try_from(*n).unwrap_or(0),
            oldest: oldest.map(from_ms),
        });
    }
    Ok(out)
}

pub(super) async fn ops_events(
    s: &SqliteStore,
    after: i64,
    tenant: Option<Tenant>,
    limit: u32,
) -> StoreResult<Vec<OpsEvent>> {
    s.read(move |conn| {
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, at, kind, tenant, data FROM ops_events
                 WHERE id > ?1 AND (?2 IS NULL OR tenant = ?2) ORDER BY id LIMIT ?3",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![after, tenant.map(|t| t.0), limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, kind, tenant, data) = row.map_err(backend)?;
            out.push(crate::record::ops_event(id, at, &kind, tenant, &data)?);
        }
        Ok(out)
    })
    .await
}

pub(super) async fn endpoints(
    s: &SqliteStore,
    tenant: Option<Tenant>,
) -> StoreResult<Vec<Endpoint>> {
    s.read(move |conn| {
        let mut stmt = conn
            .prepare_cached(
                "SELECT tenant, channel, target, dead_in_a_row, paused_at,
                        (SELECT count(*) FROM outbox o INDEXED BY outbox_held
                         WHERE o.state = 'held' AND o.tenant = e.tenant
                           AND o.channel = e.channel AND o.target = e.target)
                 FROM endpoints e WHERE (?1 IS NULL OR tenant = ?1)
                 ORDER BY tenant, channel, target LIMIT 1000",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![tenant.map(|t| t.0)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (tenant, channel, target, n, paused, held) = row.map_err(backend)?;
            let Some(channel) = Channel::parse(&channel) else {
                continue;
            };
            out.push(Endpoint {
                tenant: Tenant(tenant),
                channel,
                target,
                dead_in_a_row: u32::try_from(n).unwrap_or(0),
                paused_at: paused.map(from_ms),
                held: u64::try_from(held).unwrap_or(0),
            });
        }
        Ok(out)
    })
    .await
}

pub(super) async fn resume_endpoint(
    s: &SqliteStore,
    tenant: &Tenant,
    channel: Channel,
    target: &str,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    let (tenant, target) = (tenant.0.clone(), target.to_string());
    s.write(move |conn, _| {
        let resumed = conn
            .prepare_cached(
                "UPDATE endpoints SET paused_at = NULL
                 WHERE tenant = ?1 AND channel = ?2 AND target = ?3 AND paused_at IS NOT NULL",
            )
            .and_then(|mut s| s.execute(params![tenant, channel.as_str(), target]))
            .map_err(backend)?;
        if resumed == 0 {
            return Err(StoreError::NotFound);
        }
        // Due now, in order (claims go by due time, then id); the
        // schedule starts again, the attempt log stays.
        let released = conn
            .prepare_cached(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?4,
                     claimed_until = NULL, updated_at = ?4
                 WHERE tenant = ?1 AND channel = ?2 AND target = ?3 AND state = 'held'",
            )
            .and_then(|mut s| s.execute(params![tenant, channel.as_str(), target, ms(now)]))
            .map_err(backend)?;
        Ok(released as u64)
    })
    .await
}

/// Forgets operational events older than their retention.
pub(super) fn trim(conn: &Connection, now: DateTime<Utc>) -> StoreResult<()> {
    let retention = chrono::Duration::from_std(ops::OPS_RETENTION).unwrap_or_default();
    conn.prepare_cached("DELETE FROM ops_events WHERE at < ?1")
        .and_then(|mut s| s.execute([ms(now - retention)]))
        .map_err(backend)?;
    Ok(())
}

pub(super) async fn pause_endpoint(
    s: &SqliteStore,
    tenant: &Tenant,
    channel: Channel,
    target: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let (tenant, target) = (tenant.0.clone(), target.to_string());
    s.write(move |conn, _| {
        conn.prepare_cached(PAUSE_ENDPOINT)
            .and_then(|mut s| s.execute(params![tenant, channel.as_str(), target, ms(now)]))
            .map(drop)
            .map_err(backend)
    })
    .await
}

/// Pauses an endpoint by hand (`?4` now), recorded if it was not yet.
const PAUSE_ENDPOINT: &str =
    "INSERT INTO endpoints (tenant, channel, target, dead_in_a_row, paused_at)
     VALUES (?1, ?2, ?3, 0, ?4)
     ON CONFLICT (tenant, channel, target)
     DO UPDATE SET paused_at = coalesce(endpoints.paused_at, excluded.paused_at)";
