//! Durable Streams on PostgreSQL (migration 7): the statements of
//! [`crate::streams::Rows`] in a transaction, the store's `StreamStore`,
//! and the listener that brings other nodes' stream changes to this one.
//!
//! A write locks its stream's row (`FOR UPDATE`) before it reads it, so
//! appends on any node are serialized per stream and positions follow
//! commit order: a reader that saw tail T never later finds new bytes
//! below T. Each commit that moves a stream NOTIFYs `replyd_streams` with
//! its id; every node LISTENs and wakes its readers of that stream.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::store::StreamStore;
use replyd_core::store::{StoreError, StoreResult};
use replyd_core::stream::{
    Append, CreateRefusal, CreateStream, Created, Expiry, ForkOf, Found, ProducerState, ReadChunks,
    StreamKey, StreamState, StreamTick,
};
use sqlx::Row;
use sqlx::postgres::{PgListener, PgRow};

use super::{Inner, PgStore, Tx, backend};
use crate::record::{from_ms, ms};
use crate::streams::{
    self as flow, AppendAnswer, Change, NewRow, Rows, col, decode_producer, encode_producer,
    expiry_columns, expiry_of, pos,
};

const CHANNEL: &str = "replyd_streams";

/// A stream row's columns, as `state_of` reads them.
macro_rules! select_stream {
    ($where:literal) => {
        concat!(
            "SELECT id, content_type, ttl_secs, expires_at, touched_at, closed, tail, ",
            "source, fork_at, forks, deleted, last_seq, closed_by FROM streams WHERE ",
            $where
        )
    };
}

fn state_of(r: &PgRow) -> StreamState {
    let source: Option<i64> = r.get("source");
    let fork_at: Option<i64> = r.get("fork_at");
    let closed_by: Option<String> = r.get("closed_by");
    StreamState {
        id: r.get("id"),
        content_type: r.get("content_type"),
        expiry: expiry_of(r.get("ttl_secs"), r.get("expires_at")),
        touched_at: from_ms(r.get("touched_at")),
        closed: r.get("closed"),
        tail: pos(r.get("tail")),
        fork: source.map(|source| ForkOf {
            source,
            at: pos(fork_at.unwrap_or(0)),
        }),
        forks: u32::try_from(r.get::<i32, _>("forks")).unwrap_or(0),
        deleted: r.get("deleted"),
        last_seq: r.get("last_seq"),
        closed_by: closed_by.and_then(|t| decode_producer(&t)),
    }
}

/// A transaction's statements; `lock`: a write, which locks the stream it
/// looks up by key.
struct Sql<'a> {
    tx: &'a mut Tx,
    lock: bool,
}

impl Rows for Sql<'_> {
    async fn by_key(&mut self, key: &StreamKey) -> StoreResult<Option<StreamState>> {
        let sql = if self.lock {
            select_stream!("tenant = $1 AND path = $2 FOR UPDATE")
        } else {
            select_stream!("tenant = $1 AND path = $2")
        };
        let row = sqlx::query(sql)
            .bind(&key.tenant.0)
            .bind(&key.path)
            .fetch_optional(&mut **self.tx)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(state_of))
    }

    async fn by_id(&mut self, id: i64) -> StoreResult<Option<StreamState>> {
        let row = sqlx::query(select_stream!("id = $1"))
            .bind(id)
            .fetch_optional(&mut **self.tx)
            .await
            .map_err(backend)?;
        Ok(row.as_ref().map(state_of))
    }

    async fn chunks(
        &mut self,
        stream: i64,
        from: u64,
        to: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Bytes)>> {
        let rows = sqlx::query(
            "SELECT start, data FROM stream_chunks
             WHERE stream = $1 AND start < $3 AND start >= coalesce(
                 (SELECT max(start) FROM stream_chunks WHERE stream = $1 AND start <= $2), 0)
             ORDER BY start LIMIT $4",
        )
        .bind(stream)
        .bind(col(from))
        .bind(col(to))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut **self.tx)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    pos(r.get("start")),
                    Bytes::from(r.get::<Vec<u8>, _>("data")),
                )
            })
            .collect())
    }

    async fn insert_stream(&mut self, key: &StreamKey, new: &NewRow) -> StoreResult<i64> {
        let (ttl, at) = expiry_columns(&new.expiry);
        sqlx::query_scalar(
            "INSERT INTO streams (tenant, path, content_type, ttl_secs, expires_at, touched_at,
                                  closed, tail, source, fork_at, job)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(&key.tenant.0)
        .bind(&key.path)
        .bind(&new.content_type)
        .bind(ttl)
        .bind(at)
        .bind(ms(new.now))
        .bind(new.closed)
        .bind(col(new.tail))
        .bind(new.fork.map(|f| f.source))
        .bind(new.fork.map(|f| col(f.at)))
        .bind(new.job.map(|j| j.0))
        .fetch_one(&mut **self.tx)
        .await
        .map_err(backend)
    }

    async fn insert_chunks(&mut self, stream: i64, at: u64, chunks: &[Bytes]) -> StoreResult<()> {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut data: Vec<&[u8]> = Vec::with_capacity(chunks.len());
        let mut p = at;
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            starts.push(col(p));
            data.push(&c[..]);
            p += c.len() as u64;
        }
        if starts.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO stream_chunks (stream, start, batch, data)
             SELECT $1, s, $2, d FROM unnest($3::bigint[], $4::bytea[]) AS t(s, d)",
        )
        .bind(stream)
        .bind(col(at))
        .bind(&starts)
        .bind(&data)
        .execute(&mut **self.tx)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn update(&mut self, stream: i64, c: &Change) -> StoreResult<()> {
        sqlx::query(
            "UPDATE streams SET tail = coalesce($2, tail), closed = closed OR $3,
                 last_seq = coalesce($4, last_seq), closed_by = coalesce($5, closed_by),
                 touched_at = greatest(touched_at, coalesce($6, touched_at)),
                 forks = greatest(forks + $7, 0), deleted = deleted OR $8
             WHERE id = $1",
        )
        .bind(stream)
        .bind(c.tail.map(col))
        .bind(c.close)
        .bind(&c.seq)
        .bind(c.closed_by.as_ref().map(encode_producer))
        .bind(c.touched_at.map(ms))
        .bind(c.forks)
        .bind(c.delete)
        .execute(&mut **self.tx)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn producer(&mut self, stream: i64, id: &str) -> StoreResult<Option<ProducerState>> {
        let row = sqlx::query(
            "SELECT epoch, seq FROM stream_producers WHERE stream = $1 AND producer = $2",
        )
        .bind(stream)
        .bind(id)
        .fetch_optional(&mut **self.tx)
        .await
        .map_err(backend)?;
        Ok(row.map(|r| ProducerState {
            epoch: pos(r.get("epoch")),
            seq: pos(r.get("seq")),
        }))
    }

    async fn set_producer(&mut self, stream: i64, id: &str, p: ProducerState) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO stream_producers (stream, producer, epoch, seq) VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream, producer) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
        )
        .bind(stream)
        .bind(id)
        .bind(col(p.epoch))
        .bind(col(p.seq))
        .execute(&mut **self.tx)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn remove_rows(&mut self, stream: i64) -> StoreResult<()> {
        for sql in [
            "DELETE FROM stream_chunks WHERE stream = $1",
            "DELETE FROM stream_producers WHERE stream = $1",
            "DELETE FROM streams WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(stream)
                .execute(&mut **self.tx)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn job(&mut self, id: replyd_core::JobId) -> StoreResult<Option<replyd_core::JobRecord>> {
        super::jobs::load(self.tx, id, true).await
    }

    async fn count(&mut self, tenant: &replyd_core::Tenant) -> StoreResult<u64> {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM streams WHERE tenant = $1")
            .bind(&tenant.0)
            .fetch_one(&mut **self.tx)
            .await
            .map(pos)
            .map_err(backend)
    }

    async fn expired(&mut self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<i64>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Each kind of expiry by its own index (FOR UPDATE takes no UNION).
        let mut ids: Vec<i64> = Vec::new();
        for sql in [
            "SELECT id FROM streams WHERE expires_at <= $1 AND expires_at IS NOT NULL
             AND NOT deleted LIMIT $2 FOR UPDATE SKIP LOCKED",
            "SELECT id FROM streams WHERE ttl_secs IS NOT NULL AND NOT deleted
             AND touched_at + ttl_secs * 1000 <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
        ] {
            let found: Vec<i64> = sqlx::query_scalar(sql)
                .bind(ms(now))
                .bind(limit - ids.len() as i64)
                .fetch_all(&mut **self.tx)
                .await
                .map_err(backend)?;
            ids.extend(found);
        }
        Ok(ids)
    }
}

/// Whether a failure is a unique index refusing a second stream at one
/// path: a concurrent create won, and the flow, run again, sees it.
fn raced(e: &StoreError) -> bool {
    let StoreError::Backend(b) = e else {
        return false;
    };
    b.downcast_ref::<sqlx::Error>()
        .and_then(|e| match e {
            sqlx::Error::Database(d) => d.code(),
            _ => None,
        })
        .is_some_and(|c| c == "23505")
}

/// Tells every node, at commit, that the stream whose tick key is `key`
/// moved.
async fn notify(tx: &mut Tx, key: u64) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(key.to_string())
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

impl PgStore {
    /// One stream operation in a transaction: `flow` on its rows (a write
    /// locks the rows it looks up), then, when `moved` gives the tick of a
    /// stream that moved, a NOTIFY to every node before the commit and the
    /// tick to this one after it. An error rolls back (and waits for it).
    async fn in_tx<T>(
        &self,
        lock: bool,
        moved: impl Fn(&T) -> Option<StreamTick>,
        flow: impl AsyncFnOnce(&mut Sql<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut tx = self.begin().await?;
        let done = flow(&mut Sql { tx: &mut tx, lock }).await;
        let done = match done {
            Ok(d) => d,
            Err(e) => return self.abort(tx, e).await,
        };
        let tick = moved(&done);
        if let Some(t) = &tick
            && let Err(e) = notify(&mut tx, t.key).await
        {
            return self.abort(tx, e).await;
        }
        self.commit(tx, None).await?;
        if let Some(t) = tick {
            let _ = self.inner.stream_bus.send(t);
        }
        Ok(done)
    }

    async fn touch(&self, s: &StreamState, now: DateTime<Utc>) -> StoreResult<()> {
        if !matches!(s.expiry, Expiry::Ttl(_)) {
            return Ok(());
        }
        let id = s.id;
        self.in_tx(
            true,
            |_| None,
            async |rows| flow::touch(rows, id, now).await,
        )
        .await
    }
}

#[async_trait::async_trait]
impl StreamStore for PgStore {
    async fn stream_create(
        &self,
        key: &StreamKey,
        req: CreateStream,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<Created, CreateRefusal>> {
        let mut tries = 0;
        loop {
            let create = async |rows: &mut Sql<'_>| flow::create(rows, key, req.clone(), now).await;
            match self.in_tx(true, |_| None, create).await {
                // A concurrent create of the same path won: run again to
                // find it.
                Err(e) if raced(&e) && tries < 3 => tries += 1,
                answer => return answer,
            }
        }
    }

    async fn stream_append(
        &self,
        key: &StreamKey,
        req: Append,
        now: DateTime<Utc>,
    ) -> StoreResult<AppendAnswer> {
        let body = req.body.clone();
        let append = async |rows: &mut Sql<'_>| flow::append(rows, key, req, now).await;
        self.in_tx(true, |a| flow::tick_of(key, &body, a), append)
            .await
    }

    async fn output_append(
        &self,
        key: &StreamKey,
        job: replyd_core::JobId,
        lease: replyd_core::LeaseId,
        req: Append,
        now: DateTime<Utc>,
    ) -> StoreResult<AppendAnswer> {
        let body = req.body.clone();
        let append =
            async |rows: &mut Sql<'_>| flow::append_output(rows, key, job, lease, req, now).await;
        self.in_tx(true, |a| flow::tick_of(key, &body, a), append)
            .await
    }

    async fn tenant_bytes(&self) -> StoreResult<Vec<(replyd_core::Tenant, u64)>> {
        let rows = sqlx::query(
            "SELECT tenant, SUM(tail - COALESCE(fork_at, 0))::bigint AS bytes FROM streams
             WHERE NOT deleted GROUP BY tenant",
        )
        .fetch_all(&self.inner.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    replyd_core::Tenant(r.get("tenant")),
                    flow::pos(r.get::<i64, _>("bytes")),
                )
            })
            .collect())
    }

    async fn output_tails(
        &self,
        jobs: &[replyd_core::JobId],
    ) -> StoreResult<Vec<(replyd_core::JobId, u64)>> {
        let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.0).collect();
        let rows = sqlx::query("SELECT job, tail FROM streams WHERE job = ANY($1) AND NOT deleted")
            .bind(&ids)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    replyd_core::JobId(r.get::<uuid::Uuid, _>("job")),
                    flow::pos(r.get::<i64, _>("tail")),
                )
            })
            .collect())
    }

    async fn stream_head(
        &self,
        key: &StreamKey,
        touch: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Found<StreamState>> {
        let head = async |rows: &mut Sql<'_>| flow::head(rows, key, now).await;
        let found = self.in_tx(false, |_| None, head).await?;
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
        let read = async |rows: &mut Sql<'_>| flow::read(rows, key, from, budget, now).await;
        let found = self.in_tx(false, |_| None, read).await?;
        if let Found::Live((s, _)) = &found {
            self.touch(s, now).await?;
        }
        Ok(found)
    }

    async fn stream_delete(&self, key: &StreamKey, now: DateTime<Utc>) -> StoreResult<Found<()>> {
        let delete = async |rows: &mut Sql<'_>| flow::delete(rows, key, now).await;
        let found = self
            .in_tx(
                true,
                |f| matches!(f, Found::Live(_)).then(|| StreamTick::of(key)),
                delete,
            )
            .await?;
        Ok(flow::forget_id(found))
    }

    async fn stream_expire(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<usize> {
        let expire = async |rows: &mut Sql<'_>| flow::expire(rows, now, limit).await;
        self.in_tx(true, |_| None, expire).await
    }

    fn stream_ticks(&self) -> tokio::sync::broadcast::Receiver<StreamTick> {
        self.inner.stream_bus.subscribe()
    }
}

/// Brings every node's stream changes onto this node's ticks. After a
/// reconnect (when notifications may have been missed) it wakes every
/// reader, who reads again.
pub(super) async fn stream_listener(
    inner: std::sync::Weak<Inner>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let pool = strong.pool.clone();
        let bus = strong.stream_bus.clone();
        drop(strong);
        let mut listen = match PgListener::connect_with(&pool).await {
            Ok(mut l) => match l.listen(CHANNEL).await {
                Ok(()) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN replyd_streams failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect the stream listener");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let _ = bus.send(StreamTick::ALL);
        loop {
            tokio::select! {
                n = listen.try_recv() => match n {
                    Ok(Some(n)) => {
                        if let Ok(key) = n.payload().parse() {
                            let _ = bus.send(StreamTick { key, fresh: None });
                        }
                    }
                    // Dropped: connect again.
                    Ok(None) | Err(_) => break,
                },
                _ = stop.changed() => return,
            }
        }
    }
}
