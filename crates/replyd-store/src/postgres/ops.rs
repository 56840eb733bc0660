//! What operators watch (`replyd_core::ops`); see SQLite's `ops.rs`. A
//! transaction that may write operational events takes [`OPS_LOCK`]
//! before anything else, so their ids rise in commit order (a reader that
//! resumes after an id misses none) and no lock is taken out of turn.

use super::{PgStore, Tx, backend};
use crate::record::{Recorded, from_ms, ms};
use chrono::{DateTime, Utc};
use replyd_core::Tenant;
use replyd_core::ops::{self, DeadLetters, Endpoint, OpsEvent, OpsKind, Watch};
use replyd_core::outbox::{AfterAttempt, Channel};
use replyd_core::store::{StoreError, StoreResult};
use sqlx::Row;

/// The transaction-scoped advisory lock of operational events.
pub(super) const OPS_LOCK: i64 = 0x7265_706c_7964_0003;

pub(super) async fn lock(tx: &mut Tx) -> StoreResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(OPS_LOCK)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Whether recording these outcomes may write operational events: a dead
/// letter, or a delivery to an endpoint that has been failing.
pub(super) async fn may_emit(tx: &mut Tx, ids: &[i64], any_dead: bool) -> StoreResult<bool> {
    if any_dead {
        return Ok(true);
    }
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM outbox o JOIN endpoints e
                          ON e.tenant = o.tenant AND e.channel = o.channel AND e.target = o.target
                        WHERE o.id = ANY($1))",
    )
    .bind(ids)
    .fetch_one(&mut **tx)
    .await
    .map_err(backend)
}

/// Writes what one outcome means to operators (under [`OPS_LOCK`]).
pub(super) async fn watch(
    tx: &mut Tx,
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
            emit(tx, at, OpsKind::DeliveryDeadLettered, &tenant, &data).await?;
            if w.dlq_threshold > 0 {
                let count: i64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(delta), 0)::bigint FROM dead_letter_counts
                     WHERE channel = $1 AND tenant = $2",
                )
                .bind(d.channel.as_str())
                .bind(&d.tenant)
                .fetch_one(&mut **tx)
                .await
                .map_err(backend)?;
                let count = u64::try_from(count).unwrap_or(0);
                if count == w.dlq_threshold {
                    let data = ops::threshold(d.channel, count, w.dlq_threshold);
                    emit(tx, at, OpsKind::DlqThresholdExceeded, &tenant, &data).await?;
                }
            }
            if webhook {
                let row = sqlx::query(
                    "INSERT INTO endpoints (tenant, channel, target, dead_in_a_row)
                     VALUES ($1, $2, $3, 1)
                     ON CONFLICT (tenant, channel, target)
                     DO UPDATE SET dead_in_a_row = endpoints.dead_in_a_row + 1
                     RETURNING dead_in_a_row, paused_at",
                )
                .bind(&d.tenant)
                .bind(d.channel.as_str())
                .bind(&d.target)
                .fetch_one(&mut **tx)
                .await
                .map_err(backend)?;
                let n = u32::try_from(row.get::<i32, _>("dead_in_a_row")).unwrap_or(0);
                let paused: Option<i64> = row.get("paused_at");
                if paused.is_none() && w.disable_after > 0 && n >= w.disable_after {
                    pause(tx, d, at).await?;
                    let data = ops::endpoint(d.channel, &d.target, n);
                    emit(tx, at, OpsKind::EndpointDisabled, &tenant, &data).await?;
                }
            }
        }
        AfterAttempt::Delivered if webhook => {
            let recovered: Option<i32> = sqlx::query_scalar(
                "DELETE FROM endpoints
                 WHERE tenant = $1 AND channel = $2 AND target = $3 AND paused_at IS NULL
                 RETURNING dead_in_a_row",
            )
            .bind(&d.tenant)
            .bind(d.channel.as_str())
            .bind(&d.target)
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?;
            if let Some(n) = recovered {
                let n = u32::try_from(n).unwrap_or(0);
                let data = ops::endpoint(d.channel, &d.target, n);
                emit(tx, at, OpsKind::EndpointRecovered, &tenant, &data).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

async fn pause(tx: &mut Tx, d: &Recorded, at: DateTime<Utc>) -> StoreResult<()> {
    sqlx::query(
        "UPDATE endpoints SET paused_at = $4 WHERE tenant = $1 AND channel = $2 AND target = $3",
    )
    .bind(&d.tenant)
    .bind(d.channel.as_str())
    .bind(&d.target)
    .bind(ms(at))
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    sqlx::query(
        "UPDATE outbox SET state = 'held', claimed_until = NULL, updated_at = $4
         WHERE tenant = $1 AND channel = $2 AND target = $3 AND state = 'pending'",
    )
    .bind(&d.tenant)
    .bind(d.channel.as_str())
    .bind(&d.target)
    .bind(ms(at))
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn emit(
    tx: &mut Tx,
    at: DateTime<Utc>,
    kind: OpsKind,
    tenant: &Tenant,
    data: &serde_json::Value,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO ops_events (at, kind, tenant, data) VALUES ($1, $2, $3, $4)")
        .bind(ms(at))
        .bind(kind.name())
        .bind(&tenant.0)
        .bind(data.to_string())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Rows of +1 and -1 beyond which a read folds them into one per group.
const FOLD_AFTER: i64 = 256;

pub(super) async fn dead_letters(s: &PgStore) -> StoreResult<Vec<DeadLetters>> {
    let rows = sqlx::query(
        "SELECT c.channel, c.tenant, c.n, c.rows,
                (SELECT min(updated_at) FROM outbox o
                 WHERE o.state = 'dead' AND o.channel = c.channel AND o.tenant = c.tenant) AS oldest
         FROM (SELECT channel, tenant, sum(delta)::bigint AS n,
                      sum(count(*)) OVER ()::bigint AS rows
               FROM dead_letter_counts GROUP BY channel, tenant) c
         ORDER BY c.channel, c.tenant",
    )
    .fetch_all(&s.inner.pool)
    .await
    .map_err(backend)?;
    let folding = rows
        .first()
        .is_some_and(|r| r.get::<i64, _>("rows") > FOLD_AFTER);
    if folding {
        // Concurrent folds each take the rows they deleted; rows of
        // transactions still open are left for the next.
        sqlx::query(
            "WITH gone AS (DELETE FROM dead_letter_counts RETURNING channel, tenant, delta)
             INSERT INTO dead_letter_counts (channel, tenant, delta)
             SELECT channel, tenant, sum(delta) FROM gone
             GROUP BY channel, tenant HAVING sum(delta) <> 0",
        )
        .execute(&s.inner.pool)
        .await
        .map_err(backend)?;
    }
    let mut out = Vec::new();
    for r in &rows {
        let n: i64 = r.get("n");
        let Some(channel) = Channel::parse(r.get::<&str, _>("channel")) else {
            continue;
        };
        if n <= 0 {
            continue;
        }
        out.push(DeadLetters {
            channel,
            tenant: Tenant(r.get("tenant")),
            count: u64::try_from(n).unwrap_or(0),
            oldest: r.get::<Option<i64>, _>("oldest").map(from_ms),
        });
    }
    Ok(out)
}

pub(super) async fn ops_events(
    s: &PgStore,
    after: i64,
    tenant: Option<Tenant>,
    limit: u32,
) -> StoreResult<Vec<OpsEvent>> {
    let rows = sqlx::query(
        "SELECT id, at, kind, tenant, data FROM ops_events
         WHERE id > $1 AND ($2::text IS NULL OR tenant = $2) ORDER BY id LIMIT $3",
    )
    .bind(after)
    .bind(tenant.map(|t| t.0))
    .bind(i64::from(limit))
    .fetch_all(&s.inner.pool)
    .await
    .map_err(backend)?;
    rows.iter()
        .map(|r| {
            crate::record::ops_event(
                r.get("id"),
                r.get("at"),
                r.get("kind"),
                r.get("tenant"),
                r.get("data"),
            )
        })
        .collect()
}

pub(super) async fn endpoints(s: &PgStore, tenant: Option<Tenant>) -> StoreResult<Vec<Endpoint>> {
    let rows = sqlx::query(
        "SELECT tenant, channel, target, dead_in_a_row, paused_at,
                (SELECT count(*) FROM outbox o
                 WHERE o.state = 'held' AND o.tenant = e.tenant
                   AND o.channel = e.channel AND o.target = e.target) AS held
         FROM endpoints e WHERE ($1::text IS NULL OR tenant = $1)
         ORDER BY tenant, channel, target LIMIT 1000",
    )
    .bind(tenant.map(|t| t.0))
    .fetch_all(&s.inner.pool)
    .await
    .map_err(backend)?;
    let mut out = Vec::new();
    for r in &rows {
        let Some(channel) = Channel::parse(r.get::<&str, _>("channel")) else {
            continue;
        };
        out.push(Endpoint {
            tenant: Tenant(r.get("tenant")),
            channel,
            target: r.get("target"),
            dead_in_a_row: u32::try_from(r.get::<i32, _>("dead_in_a_row")).unwrap_or(0),
            paused_at: r.get::<Option<i64>, _>("paused_at").map(from_ms),
            held: u64::try_from(r.get::<i64, _>("held")).unwrap_or(0),
        });
    }
    Ok(out)
}

pub(super) async fn resume_endpoint(
    s: &PgStore,
    tenant: &Tenant,
    channel: Channel,
    target: &str,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    let mut tx = s.begin().await?;
    let resumed = sqlx::query(
        "UPDATE endpoints SET paused_at = NULL
         WHERE tenant = $1 AND channel = $2 AND target = $3 AND paused_at IS NOT NULL",
    )
    .bind(&tenant.0)
    .bind(channel.as_str())
    .bind(target)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    if resumed.rows_affected() == 0 {
        return s.abort(tx, StoreError::NotFound).await;
    }
    let released = sqlx::query(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_at = $4,
             claimed_until = NULL, updated_at = $4
         WHERE tenant = $1 AND channel = $2 AND target = $3 AND state = 'held'",
    )
    .bind(&tenant.0)
    .bind(channel.as_str())
    .bind(target)
    .bind(ms(now))
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    s.commit(tx, None).await?;
    Ok(released.rows_affected())
}

/// Forgets operational events older than their retention.
pub(super) async fn trim(tx: &mut Tx, now: DateTime<Utc>) -> StoreResult<()> {
    let retention = chrono::Duration::from_std(ops::OPS_RETENTION).unwrap_or_default();
    sqlx::query("DELETE FROM ops_events WHERE at < $1")
        .bind(ms(now - retention))
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

pub(super) async fn pause_endpoint(
    s: &PgStore,
    tenant: &Tenant,
    channel: Channel,
    target: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO endpoints (tenant, channel, target, dead_in_a_row, paused_at)
         VALUES ($1, $2, $3, 0, $4)
         ON CONFLICT (tenant, channel, target)
         DO UPDATE SET paused_at = coalesce(endpoints.paused_at, excluded.paused_at)",
    )
    .bind(&tenant.0)
    .bind(channel.as_str())
    .bind(target)
    .bind(ms(now))
    .execute(&s.inner.pool)
    .await
    .map_err(backend)?;
    Ok(())
}
