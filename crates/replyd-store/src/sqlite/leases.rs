//! Leases: handing queued jobs to workers, and taking back the ones whose lease ran out.

use super::jobs::{Step, id_bytes, query_ids, transition};
use super::{SqliteStore, backend};
use crate::record::{from_ms, ms};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::LeaseId;
use replyd_core::job::Command;
use replyd_core::store::{LeaseQuery, Leased, StoreResult};
use rusqlite::params;

pub(super) async fn lease(
    s: &SqliteStore,
    q: LeaseQuery,
    now: DateTime<Utc>,
) -> StoreResult<Vec<Leased>> {
    let retry = s.inner.retry;
    s.write(move |conn, events| {
        let ids = match &q.tenant {
            Some(t) => query_ids(
                conn,
                "SELECT id FROM jobs WHERE queue = ?1 AND state = 'queued' AND run_at <= ?2
                   AND tenant = ?3 ORDER BY run_at, id LIMIT ?4",
                params![q.queue, ms(now), t.0, q.max],
            )?,
            None => query_ids(
                conn,
                "SELECT id FROM jobs WHERE queue = ?1 AND state = 'queued' AND run_at <= ?2
                   ORDER BY run_at, id LIMIT ?3",
                params![q.queue, ms(now), q.max],
            )?,
        };
        let mut leased = Vec::with_capacity(ids.len());
        for id in ids {
            let lease_id = LeaseId::new();
            let cmd = Command::Lease {
                lease_id: lease_id.clone(),
                worker: q.worker.clone(),
                length: q.length,
            };
            let step = Step {
                id,
                scope: None,
                cmd,
                output: None,
                now,
            };
            let (job, _) = transition(conn, events, step, &retry)?;
            let input: Vec<u8> = conn
                .prepare_cached("SELECT input FROM jobs WHERE id = ?1")
                .and_then(|mut s| s.query_row([id_bytes(id)], |r| r.get(0)))
                .map_err(backend)?;
            leased.push(Leased {
                job,
                input: Bytes::from(input),
                lease_id,
            });
        }
        Ok(leased)
    })
    .await
}

pub(super) async fn expire_leases(
    s: &SqliteStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<usize> {
    let retry = s.inner.retry;
    s.write(move |conn, events| {
        let ids = query_ids(
            conn,
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= ?1 LIMIT ?2",
            params![ms(now), limit],
        )?;
        for &id in &ids {
            let step = Step {
                id,
                scope: None,
                cmd: Command::ExpireLease,
                output: None,
                now,
            };
            transition(conn, events, step, &retry)?;
        }
        Ok(ids.len())
    })
    .await
}

pub(super) async fn next_run_at(
    s: &SqliteStore,
    queue: &str,
) -> StoreResult<Option<DateTime<Utc>>> {
    let queue = queue.to_string();
    s.read(move |conn| {
        conn.prepare_cached("SELECT min(run_at) FROM jobs WHERE queue = ?1 AND state = 'queued'")
            .and_then(|mut s| s.query_row([queue], |r| r.get::<_, Option<i64>>(0)))
            .map(|v| v.map(from_ms))
            .map_err(backend)
    })
    .await
}
