//! Durable Streams on SQLite (migration 6): the statements of
//! [`crate::streams::Rows`] on a connection, and the store's
//! `StreamStore`. Writes run in the writer's group commit, reads on reader
//! connections; the flows themselves are `crate::streams`'.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::store::StoreResult;
use replyd_core::store::StreamStore;
use replyd_core::stream::{
    Append, CreateRefusal, CreateStream, Created, ForkOf, Found, ProducerState, ReadChunks,
    StreamKey, StreamState, StreamTick,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{SqliteStore, backend};
use crate::record::{from_ms, ms};
use crate::streams::{
    self as flow, AppendAnswer, Change, NewRow, Rows, col, decode_producer, encode_producer,
    expiry_columns, expiry_of, now_or_never, pos,
};

const COLUMNS: &str = "id, content_type, ttl_secs, expires_at, touched_at, closed, tail, \
                       source, fork_at, forks, deleted, last_seq, closed_by";

fn state_of(r: &Row) -> rusqlite::Result<StreamState> {
    let source: Option<i64> = r.get(7)?;
    let fork_at: Option<i64> = r.get(8)?;
    let closed_by: Option<String> = r.get(12)?;
    Ok(StreamState {
        id: r.get(0)?,
        content_type: r.get(1)?,
        expiry: expiry_of(r.get(2)?, r.get(3)?),
        touched_at: from_ms(r.get(4)?),
        closed: r.get(5)?,
        tail: pos(r.get(6)?),
        fork: source.map(|source| ForkOf {
            source,
            at: pos(fork_at.unwrap_or(0)),
        }),
        forks: u32::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
        deleted: r.get(10)?,
        last_seq: r.get(11)?,
        closed_by: closed_by.and_then(|t| decode_producer(&t)),
    })
}

/// A connection's statements (the writer's, or a reader's for reads).
struct Sql<'a>(&'a Connection);

impl Rows for Sql<'_> {
    async fn by_key(&mut self, key: &StreamKey) -> StoreResult<Option<StreamState>> {
        self.0
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM streams WHERE tenant = ?1 AND path = ?2"
            ))
            .and_then(|mut s| {
                s.query_row(params![key.tenant.0, key.path], state_of)
                    .optional()
            })
            .map_err(backend)
    }

    async fn by_id(&mut self, id: i64) -> StoreResult<Option<StreamState>> {
        self.0
            .prepare_cached(&format!("SELECT {COLUMNS} FROM streams WHERE id = ?1"))
            .and_then(|mut s| s.query_row(params![id], state_of).optional())
            .map_err(backend)
    }

    async fn chunks(
        &mut self,
        stream: i64,
        from: u64,
        to: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Bytes)>> {
        let mut stmt = self
            .0
            .prepare_cached(
                "SELECT start, data FROM stream_chunks
                 WHERE stream = ?1 AND start < ?3 AND start >= coalesce(
                     (SELECT max(start) FROM stream_chunks WHERE stream = ?1 AND start <= ?2), 0)
                 ORDER BY start LIMIT ?4",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(
                params![
                    stream,
                    col(from),
                    col(to),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| Ok((pos(r.get(0)?), Bytes::from(r.get::<_, Vec<u8>>(1)?))),
            )
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    async fn insert_stream(&mut self, key: &StreamKey, new: &NewRow) -> StoreResult<i64> {
        let (ttl, at) = expiry_columns(&new.expiry);
        self.0
            .prepare_cached(
                "INSERT INTO streams (tenant, path, content_type, ttl_secs, expires_at,
                                      touched_at, closed, tail, source, fork_at, job)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    key.tenant.0,
                    key.path,
                    new.content_type,
                    ttl,
                    at,
                    ms(new.now),
                    new.closed,
                    col(new.tail),
                    new.fork.map(|f| f.source),
                    new.fork.map(|f| col(f.at)),
                    new.job.map(super::jobs::id_bytes),
                ])
            })
            .map_err(backend)?;
        Ok(self.0.last_insert_rowid())
    }

    async fn insert_chunks(&mut self, stream: i64, at: u64, chunks: &[Bytes]) -> StoreResult<()> {
        let mut stmt = self
            .0
            .prepare_cached(
                "INSERT INTO stream_chunks (stream, start, batch, data) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(backend)?;
        let mut p = at;
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            stmt.execute(params![stream, col(p), col(at), &c[..]])
                .map_err(backend)?;
            p += c.len() as u64;
        }
        Ok(())
    }

    async fn update(&mut self, stream: i64, c: &Change) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "UPDATE streams SET tail = coalesce(?2, tail), closed = closed OR ?3,
                     last_seq = coalesce(?4, last_seq), closed_by = coalesce(?5, closed_by),
                     touched_at = max(touched_at, coalesce(?6, touched_at)),
                     forks = max(forks + ?7, 0), deleted = deleted OR ?8
                 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    stream,
                    c.tail.map(col),
                    c.close,
                    c.seq,
                    c.closed_by.as_ref().map(encode_producer),
                    c.touched_at.map(ms),
                    c.forks,
                    c.delete
                ])
            })
            .map(|_| ())
            .map_err(backend)
    }

    async fn producer(&mut self, stream: i64, id: &str) -> StoreResult<Option<ProducerState>> {
        self.0
            .prepare_cached(
                "SELECT epoch, seq FROM stream_producers WHERE stream = ?1 AND producer = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![stream, id], |r| {
                    Ok(ProducerState {
                        epoch: pos(r.get(0)?),
                        seq: pos(r.get(1)?),
                    })
                })
                .optional()
            })
            .map_err(backend)
    }

    async fn set_producer(&mut self, stream: i64, id: &str, p: ProducerState) -> StoreResult<()> {
        self.0
            .prepare_cached(
                "INSERT INTO stream_producers (stream, producer, epoch, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stream, producer) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
            )
            .and_then(|mut s| s.execute(params![stream, id, col(p.epoch), col(p.seq)]))
            .map(|_| ())
            .map_err(backend)
    }

    async fn remove_rows(&mut self, stream: i64) -> StoreResult<()> {
        for sql in [
            "DELETE FROM stream_chunks WHERE stream = ?1",
            "DELETE FROM stream_producers WHERE stream = ?1",
            "DELETE FROM streams WHERE id = ?1",
        ] {
            self.0.execute(sql, params![stream]).map_err(backend)?;
        }
        Ok(())
    }

    async fn job(&mut self, id: replyd_core::JobId) -> StoreResult<Option<replyd_core::JobRecord>> {
        super::jobs::load(self.0, id)
    }

    async fn count(&mut self, tenant: &replyd_core::Tenant) -> StoreResult<u64> {
        self.0
            .prepare_cached("SELECT count(*) FROM streams WHERE tenant = ?1")
            .and_then(|mut s| s.query_row(params![tenant.0], |r| r.get::<_, i64>(0)))
            .map(pos)
            .map_err(backend)
    }

    async fn expired(&mut self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<i64>> {
        self.0
            .prepare_cached(
                "SELECT id FROM streams
                 WHERE deleted = 0 AND (expires_at <= ?1 OR touched_at + ttl_secs * 1000 <= ?1)
                 LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![ms(now), i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| r.get(0),
                )?
                .collect()
            })
            .map_err(backend)
    }
}

impl SqliteStore {
    /// Wakes the readers of a stream that moved.
    fn tick(&self, tick: Option<StreamTick>) {
        if let Some(t) = tick {
            let _ = self.inner.stream_bus.send(t);
        }
    }

    /// Restarts a sliding TTL (a write only for streams that have one).
    async fn touch(&self, s: &StreamState, now: DateTime<Utc>) -> StoreResult<()> {
        if !matches!(s.expiry, replyd_core::stream::Expiry::Ttl(_)) {
            return Ok(());
        }
        let id = s.id;
        self.write(move |conn, _| now_or_never(flow::touch(&mut Sql(conn), id, now)))
            .await
    }
}

#[async_trait::async_trait]
impl StreamStore for SqliteStore {
    async fn stream_create(
        &self,
        key: &StreamKey,
        req: CreateStream,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<Created, CreateRefusal>> {
        let key = key.clone();
        self.write(move |conn, _| now_or_never(flow::create(&mut Sql(conn), &key, req, now)))
            .await
    }

    async fn stream_append(
        &self,
        key: &StreamKey,
        req: Append,
        now: DateTime<Utc>,
    ) -> StoreResult<AppendAnswer> {
        let (k, body) = (key.clone(), req.body.clone());
        let found = self
            .write(move |conn, _| now_or_never(flow::append(&mut Sql(conn), &k, req, now)))
            .await?;
        self.tick(flow::tick_of(key, &body, &found));
        Ok(found)
    }

    async fn output_append(
        &self,
        key: &StreamKey,
        job: replyd_core::JobId,
        lease: replyd_core::LeaseId,
        req: Append,
        now: DateTime<Utc>,
    ) -> StoreResult<AppendAnswer> {
        let (k, body) = (key.clone(), req.body.clone());
        let found = self
            .write(move |conn, _| {
                let mut rows = Sql(conn);
                now_or_never(flow::append_output(&mut rows, &k, job, lease, req, now))
            })
            .await?;
        self.tick(flow::tick_of(key, &body, &found));
        Ok(found)
    }

    async fn tenant_bytes(&self) -> StoreResult<Vec<(replyd_core::Tenant, u64)>> {
        self.read(|conn| {
            let mut q = conn
                .prepare_cached(
                    "SELECT tenant, SUM(tail - COALESCE(fork_at, 0)) FROM streams
                     WHERE deleted = 0 GROUP BY tenant",
                )
                .map_err(backend)?;
            q.query_map([], |r| {
                Ok((replyd_core::Tenant(r.get(0)?), flow::pos(r.get(1)?)))
            })
            .and_then(|rows| rows.collect())
            .map_err(backend)
        })
        .await
    }

    async fn output_tails(
        &self,
        jobs: &[replyd_core::JobId],
    ) -> StoreResult<Vec<(replyd_core::JobId, u64)>> {
        let jobs = jobs.to_vec();
        self.read(move |conn| {
            let mut q = conn
                .prepare_cached("SELECT tail FROM streams WHERE job = ?1 AND deleted = 0")
                .map_err(backend)?;
            let mut out = Vec::new();
            for id in jobs {
                let tail: Option<i64> = q
                    .query_row([super::jobs::id_bytes(id)], |r| r.get(0))
                    .optional()
                    .map_err(backend)?;
                if let Some(t) = tail {
                    out.push((id, flow::pos(t)));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn stream_head(
        &self,
        key: &StreamKey,
        touch: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Found<StreamState>> {
        let k = key.clone();
        let found = self
            .read(move |conn| now_or_never(flow::head(&mut Sql(conn), &k, now)))
            .await?;
        if touch && let Found::Live(s) = &found {
            self.touch(s, now).await?;
        }
        Ok(found)
    }

    async fn stream_read(
        &self,
        key: &StreamKey,
        from: u64,
        budget: usize,
        now: DateTime<Utc>,
    ) -> StoreResult<Found<(StreamState, ReadChunks)>> {
        let k = key.clone();
        let found = self
            .read(move |conn| now_or_never(flow::read(&mut Sql(conn), &k, from, budget, now)))
            .await?;
        if let Found::Live((s, _)) = &found {
            self.touch(s, now).await?;
        }
        Ok(found)
    }

    async fn stream_delete(&self, key: &StreamKey, now: DateTime<Utc>) -> StoreResult<Found<()>> {
        let k = key.clone();
        let found = self
            .write(move |conn, _| now_or_never(flow::delete(&mut Sql(conn), &k, now)))
            .await?;
        // Its live readers learn that it is gone.
        self.tick(matches!(found, Found::Live(_)).then(|| StreamTick::of(key)));
        Ok(flow::forget_id(found))
    }

    async fn stream_expire(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<usize> {
        self.write(move |conn, _| now_or_never(flow::expire(&mut Sql(conn), now, limit)))
            .await
    }

    fn stream_ticks(&self) -> tokio::sync::broadcast::Receiver<StreamTick> {
        self.inner.stream_bus.subscribe()
    }
}
