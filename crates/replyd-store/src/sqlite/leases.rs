//! Leases: handing queued jobs to workers, and taking back the ones whose lease ran out.

use super::jobs::{Step, query_ids, transition, transition_loaded};
use super::{SqliteStore, backend};
use crate::record::decode;
use crate::record::{from_ms, ms};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::LeaseId;
use replyd_core::job::Command;
use replyd_core::store::{LeaseQuery, Leased, Rate, StoreResult};
use rusqlite::{OptionalExtension, params};

pub(super) async fn lease(
    s: &SqliteStore,
    q: LeaseQuery,
    now: DateTime<Utc>,
) -> StoreResult<Vec<Leased>> {
    if is_paused(s, &q.queue) {
        return Ok(Vec::new());
    }
    let retry = s.inner.retry;
    s.write(move |conn, events| {
        // The writer is the only one: what the limits allow is exact.
        let allowed = allowed(conn, &q, now)?;
        if allowed == 0 {
            return Ok(Vec::new());
        }
        // The jobs to lease with their records and inputs, in one read.
        let picked: Vec<(String, Vec<u8>)> = {
            let (sql, tenant) = match &q.tenant {
                Some(t) => (
                    "SELECT record, input FROM jobs WHERE queue = ?1 AND state = 'queued'
                       AND run_at <= ?2 AND tenant = ?4 ORDER BY order_at, id LIMIT ?3",
                    Some(t.0.as_str()),
                ),
                None => (
                    "SELECT record, input FROM jobs WHERE queue = ?1 AND state = 'queued'
                       AND run_at <= ?2 AND ?4 IS NULL ORDER BY order_at, id LIMIT ?3",
                    None,
                ),
            };
            let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
            let rows = stmt
                .query_map(params![q.queue, ms(now), allowed, tenant], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        let mut leased = Vec::with_capacity(picked.len());
        for (record, input) in picked {
            let job = decode(&record)?;
            let lease_id = LeaseId::new();
            let cmd = Command::Lease {
                lease_id: lease_id.clone(),
                worker: q.worker.clone(),
                length: q.length,
            };
            let step = Step {
                id: job.id,
                scope: None,
                cmd,
                output: None,
                now,
            };
            let (job, _) = transition_loaded(conn, events, job, step, &retry)?;
            leased.push(Leased {
                job,
                input: Bytes::from(input),
                lease_id,
            });
        }
        if let Some(rate) = q.limits.rate {
            spend(conn, &q.queue, rate, now, leased.len())?;
        }
        Ok(leased)
    })
    .await
}

/// A queue's running jobs (index `jobs_running`, by its prefix).
const RUNNING_IN_QUEUE: &str = "SELECT count(*) FROM jobs WHERE queue = ?1 AND state = 'running'";

/// Leases that have expired (index `jobs_running`, read whole: it holds
/// only the running jobs).
const EXPIRED_LEASES: &str =
    "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= ?1 LIMIT ?2";

/// How many jobs a lease may take: its `max`, less what the queue's
/// limits leave (its running jobs against `max_running`, the tokens in
/// its bucket).
fn allowed(conn: &rusqlite::Connection, q: &LeaseQuery, now: DateTime<Utc>) -> StoreResult<u32> {
    let mut allowed = q.max;
    if let Some(cap) = q.limits.max_running {
        let running: u32 = conn
            .prepare_cached(RUNNING_IN_QUEUE)
            .and_then(|mut s| s.query_row([&q.queue], |r| r.get(0)))
            .map_err(backend)?;
        allowed = allowed.min(cap.saturating_sub(running));
    }
    if let Some(rate) = q.limits.rate {
        let tokens = rate.available(bucket(conn, &q.queue)?, ms(now));
        allowed = allowed.min(tokens.max(0.0).floor() as u32);
    }
    Ok(allowed)
}

fn bucket(conn: &rusqlite::Connection, queue: &str) -> StoreResult<Option<(f64, i64)>> {
    conn.prepare_cached("SELECT tokens, at FROM queue_buckets WHERE queue = ?1")
        .and_then(|mut s| {
            s.query_row([queue], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)
}

/// Takes `n` tokens from the queue's bucket.
fn spend(
    conn: &rusqlite::Connection,
    queue: &str,
    rate: Rate,
    now: DateTime<Utc>,
    n: usize,
) -> StoreResult<()> {
    let left = rate.available(bucket(conn, queue)?, ms(now)) - n as f64;
    conn.prepare_cached(
        "INSERT INTO queue_buckets (queue, tokens, at) VALUES (?1, ?2, ?3)
         ON CONFLICT (queue) DO UPDATE SET tokens = excluded.tokens, at = excluded.at",
    )
    .and_then(|mut s| s.execute(params![queue, left, ms(now)]))
    .map_err(backend)?;
    Ok(())
}

pub(super) async fn expire_leases(
    s: &SqliteStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<usize> {
    sweep(s, EXPIRED_LEASES, Command::ExpireLease, now, limit).await
}

pub(super) async fn promote_due(
    s: &SqliteStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<usize> {
    sweep(
        s,
        "SELECT id FROM jobs WHERE state = 'scheduled' AND run_at <= ?1
         ORDER BY run_at LIMIT ?2",
        Command::Promote,
        now,
        limit,
    )
    .await
}

/// Applies `cmd` to the jobs `select` finds (`?1` now, `?2` the limit), in
/// one write; returns how many.
async fn sweep(
    s: &SqliteStore,
    select: &'static str,
    cmd: Command,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<usize> {
    let retry = s.inner.retry;
    s.write(move |conn, events| {
        let ids = query_ids(conn, select, params![ms(now), limit])?;
        for &id in &ids {
            let step = Step {
                id,
                scope: None,
                cmd: cmd.clone(),
                output: None,
                now,
            };
            transition(conn, events, step, &retry)?;
        }
        Ok(ids.len())
    })
    .await
}

pub(super) async fn next_due(s: &SqliteStore) -> StoreResult<Option<DateTime<Utc>>> {
    s.read(|conn| {
        conn.prepare_cached("SELECT min(run_at) FROM jobs WHERE state = 'scheduled'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, Option<i64>>(0)))
            .map(|v| v.map(from_ms))
            .map_err(backend)
    })
    .await
}

pub(super) async fn next_run_at(
    s: &SqliteStore,
    queue: &str,
) -> StoreResult<Option<DateTime<Utc>>> {
    if is_paused(s, queue) {
        return Ok(None);
    }
    let queue = queue.to_string();
    s.read(move |conn| {
        conn.prepare_cached("SELECT min(run_at) FROM jobs WHERE queue = ?1 AND state = 'queued'")
            .and_then(|mut s| s.query_row([queue], |r| r.get::<_, Option<i64>>(0)))
            .map(|v| v.map(from_ms))
            .map_err(backend)
    })
    .await
}

pub(super) async fn pause_queue(
    s: &SqliteStore,
    queue: &str,
    paused: bool,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let name = queue.to_string();
    let changed = s
        .write(move |conn, _| {
            let sql = if paused {
                "INSERT INTO queue_pauses (queue, paused_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM queue_pauses WHERE queue = ?1 AND ?2 IS NOT NULL"
            };
            conn.prepare_cached(sql)
                .and_then(|mut st| st.execute(params![name, ms(now)]))
                .map(|n| n > 0)
                .map_err(backend)
        })
        .await?;
    // Committed: from now on, leases see it.
    let mut set = s.inner.paused.write().unwrap_or_else(|p| p.into_inner());
    if paused {
        set.insert(queue.to_string());
    } else {
        set.remove(queue);
    }
    Ok(changed)
}

fn is_paused(s: &SqliteStore, queue: &str) -> bool {
    s.inner
        .paused
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .contains(queue)
}

/// The paused queues as the database has them (at open).
pub(super) fn read_paused(
    conn: &rusqlite::Connection,
) -> StoreResult<std::collections::HashSet<String>> {
    let mut stmt = conn
        .prepare("SELECT queue FROM queue_pauses")
        .map_err(backend)?;
    let rows = stmt.query_map([], |r| r.get(0)).map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

pub(super) async fn paused_queues(s: &SqliteStore) -> StoreResult<Vec<(String, DateTime<Utc>)>> {
    s.read(|conn| {
        let mut stmt = conn
            .prepare_cached("SELECT queue, paused_at FROM queue_pauses ORDER BY queue")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, from_ms(r.get(1)?))))
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(sql: &str) -> String {
        let n = sql.matches('?').count();
        super::super::query_plan(sql, vec![rusqlite::types::Value::Integer(1); n])
    }

    /// The limits' count and the reaper read the running jobs' index,
    /// never the jobs table (which holds every job until its time to live
    /// ends).
    #[test]
    fn running_jobs_are_read_from_their_index() {
        let count = plan(RUNNING_IN_QUEUE);
        assert!(
            count.contains("COVERING INDEX jobs_running (queue=?)"),
            "{count}"
        );
        let expired = plan(EXPIRED_LEASES);
        assert!(expired.contains("INDEX jobs_running"), "{expired}");
    }
}
