//! Garbage: expired jobs become tombstones, then are gone.

use super::jobs::{forget_history, id_bytes, query_ids};
use super::{SqliteStore, backend};
use crate::record::ms;
use chrono::{DateTime, Utc};
use replyd_core::job::GROUP_CLOCK_KEPT_MS;
use replyd_core::store::{StoreResult, TOMBSTONE_RETENTION};
use rusqlite::params;

pub(super) async fn collect_garbage(
    s: &SqliteStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<usize> {
    s.write(move |conn, _| {
        // Purge: keep a tombstone (the record) so reads say 410 Gone.
        let ids = query_ids(
            conn,
            "SELECT id FROM jobs WHERE expires_at <= ?1 AND input IS NOT NULL LIMIT ?2",
            params![ms(now), limit],
        )?;
        for &id in &ids {
            let key = id_bytes(id);
            forget_history(conn, key)?;
            conn.prepare_cached(
                "UPDATE jobs SET input = NULL, idempotency_key = NULL WHERE id = ?1",
            )
            .and_then(|mut s| s.execute([key]))
            .map_err(backend)?;
        }
        let retention = chrono::Duration::from_std(TOMBSTONE_RETENTION).unwrap_or_default();
        conn.prepare_cached("DELETE FROM jobs WHERE input IS NULL AND expires_at <= ?1")
            .and_then(|mut s| s.execute([ms(now - retention)]))
            .map_err(backend)?;
        conn.prepare_cached("DELETE FROM group_clocks WHERE tag <= ?1")
            .and_then(|mut s| s.execute([ms(now) - GROUP_CLOCK_KEPT_MS]))
            .map_err(backend)?;
        super::ops::trim(conn, now)?;
        Ok(ids.len())
    })
    .await
}
