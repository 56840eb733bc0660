//! Durable Streams on SQLite: a stream's row, its chunks by position and
//! its producers (migration 6). Each operation loads what it needs, asks
//! `replyd_core::stream` what to write, and writes it in the writer's
//! group commit; reads run on reader connections. A fork's reads below
//! its fork point come from its sources' chunks (`segments`).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::store::{StoreError, StoreResult};
use replyd_core::stream::{
    Append, AppendRefusal, Appended, CreateRefusal, CreateStream, Created, Expiry, ForkOf, Found,
    MAX_SUB_MESSAGES, Producer, ProducerState, ReadChunks, StreamKey, StreamState, StreamTick,
    chunks_of, essence, fork_expiry, is_json, same_config, segments,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{SqliteStore, backend};
use crate::record::{from_ms, ms};

const COLUMNS: &str = "id, content_type, ttl_secs, expires_at, touched_at, closed, tail, \
                       source, fork_at, forks, deleted, last_seq, closed_by";

fn state_of(r: &Row) -> rusqlite::Result<StreamState> {
    let ttl: Option<i64> = r.get(2)?;
    let at: Option<i64> = r.get(3)?;
    let expiry = match (ttl, at) {
        (Some(t), _) => Expiry::Ttl(u64::try_from(t).unwrap_or(0)),
        (None, Some(at)) => Expiry::At(from_ms(at)),
        (None, None) => Expiry::Never,
    };
    let source: Option<i64> = r.get(7)?;
    let fork_at: Option<i64> = r.get(8)?;
    let closed_by: Option<String> = r.get(12)?;
    Ok(StreamState {
        id: r.get(0)?,
        content_type: r.get(1)?,
        expiry,
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

fn pos(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn col(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn encode_producer(p: &Producer) -> String {
    serde_json::json!([p.id, p.epoch, p.seq]).to_string()
}

fn decode_producer(text: &str) -> Option<Producer> {
    let (id, epoch, seq): (String, u64, u64) = serde_json::from_str(text).ok()?;
    Some(Producer { id, epoch, seq })
}

fn by_key(conn: &Connection, key: &StreamKey) -> rusqlite::Result<Option<StreamState>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM streams WHERE tenant = ?1 AND path = ?2"
    ))?
    .query_row(params![key.tenant.0, key.path], state_of)
    .optional()
}

fn by_id(conn: &Connection, id: i64) -> rusqlite::Result<Option<StreamState>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM streams WHERE id = ?1"))?
        .query_row(params![id], state_of)
        .optional()
}

fn lookup(
    conn: &Connection,
    key: &StreamKey,
    now: DateTime<Utc>,
) -> rusqlite::Result<Found<StreamState>> {
    Ok(match by_key(conn, key)? {
        None => Found::Missing,
        Some(s) if s.deleted => Found::Gone,
        Some(s) if s.expired(now) => Found::Missing,
        Some(s) => Found::Live(s),
    })
}

/// The stream and its sources, oldest last, each with its fork point.
fn chain(conn: &Connection, state: &StreamState) -> rusqlite::Result<Vec<(i64, Option<ForkOf>)>> {
    let mut out = vec![(state.id, state.fork)];
    let mut next = state.fork;
    while let Some(f) = next {
        match by_id(conn, f.source)? {
            Some(s) => {
                out.push((s.id, s.fork));
                next = s.fork;
            }
            None => break,
        }
    }
    Ok(out)
}

/// Chunks of `[from, to)` through the chain, in order, each with its
/// position, cut to the range; stops past `budget` bytes or `count`
/// chunks (at least one).
fn read_range(
    conn: &Connection,
    chain: &[(i64, Option<ForkOf>)],
    from: u64,
    to: u64,
    budget: usize,
    count: usize,
) -> rusqlite::Result<Vec<(u64, Bytes)>> {
    let mut out: Vec<(u64, Bytes)> = Vec::new();
    let mut bytes = 0usize;
    for seg in segments(chain, from, to) {
        let mut stmt = conn.prepare_cached(
            "SELECT start, data FROM stream_chunks
             WHERE stream = ?1 AND start < ?3 AND start >= coalesce(
                 (SELECT max(start) FROM stream_chunks WHERE stream = ?1 AND start <= ?2), 0)
             ORDER BY start",
        )?;
        let mut rows = stmt.query(params![seg.stream, col(seg.from), col(seg.to)])?;
        while let Some(r) = rows.next()? {
            let start = pos(r.get(0)?);
            let data: Vec<u8> = r.get(1)?;
            let end = start + data.len() as u64;
            if end <= seg.from {
                continue;
            }
            let lo = usize::try_from(seg.from.saturating_sub(start)).unwrap_or(0);
            let hi = usize::try_from(seg.to.min(end) - start).unwrap_or(data.len());
            let piece = Bytes::from(data).slice(lo..hi);
            bytes += piece.len();
            out.push((start.max(seg.from), piece));
            if (bytes >= budget || out.len() >= count) && !out.is_empty() {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

fn insert_chunks(
    conn: &Connection,
    stream: i64,
    at: u64,
    chunks: &[Bytes],
) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO stream_chunks (stream, start, batch, data) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut p = at;
    for c in chunks {
        if c.is_empty() {
            continue;
        }
        stmt.execute(params![stream, col(p), col(at), &c[..]])?;
        p += c.len() as u64;
    }
    Ok(p)
}

/// Removes a stream that no fork reads, then its sources that were
/// deleted and are read by no other fork.
fn remove(conn: &Connection, state: &StreamState) -> rusqlite::Result<()> {
    let mut next = Some(state.clone());
    while let Some(s) = next.take() {
        conn.execute("DELETE FROM stream_chunks WHERE stream = ?1", params![s.id])?;
        conn.execute(
            "DELETE FROM stream_producers WHERE stream = ?1",
            params![s.id],
        )?;
        conn.execute("DELETE FROM streams WHERE id = ?1", params![s.id])?;
        if let Some(f) = s.fork {
            conn.execute(
                "UPDATE streams SET forks = max(forks - 1, 0) WHERE id = ?1",
                params![f.source],
            )?;
            if let Some(src) = by_id(conn, f.source)?
                && src.deleted
                && src.forks == 0
            {
                next = Some(src);
            }
        }
    }
    Ok(())
}

/// Deletes a stream: gone at once for clients; its data stays while forks
/// read it.
fn delete_or_keep(conn: &Connection, state: &StreamState) -> rusqlite::Result<()> {
    if state.forks > 0 {
        conn.execute(
            "UPDATE streams SET deleted = 1 WHERE id = ?1",
            params![state.id],
        )?;
        Ok(())
    } else {
        remove(conn, state)
    }
}

/// Where a fork diverges, or why it cannot.
fn fork_point(
    conn: &Connection,
    source: &StreamState,
    offset: Option<u64>,
    sub: u64,
) -> rusqlite::Result<Result<ForkOf, CreateRefusal>> {
    let anchor = offset.unwrap_or(source.tail);
    if anchor > source.tail {
        return Ok(Err(CreateRefusal::OffsetBeyondTail));
    }
    let mut at = anchor;
    if sub > 0 {
        let chain = chain(conn, source)?;
        if is_json(&source.content_type) {
            if sub > MAX_SUB_MESSAGES {
                return Ok(Err(CreateRefusal::SubOffsetBeyond));
            }
            let n = usize::try_from(sub).unwrap_or(usize::MAX);
            let messages = read_range(conn, &chain, anchor, source.tail, usize::MAX, n)?;
            if messages.len() < n {
                return Ok(Err(CreateRefusal::SubOffsetBeyond));
            }
            at += messages.iter().map(|(_, m)| m.len() as u64).sum::<u64>();
        } else {
            // Within the append that holds the anchor.
            let first = read_range(conn, &chain, anchor, source.tail, 1, 1)?;
            let Some((start, piece)) = first.first() else {
                return Ok(Err(CreateRefusal::SubOffsetBeyond));
            };
            if anchor + sub > start + piece.len() as u64 {
                return Ok(Err(CreateRefusal::SubOffsetBeyond));
            }
            at += sub;
        }
    }
    Ok(Ok(ForkOf {
        source: source.id,
        at,
    }))
}

fn create(
    conn: &Connection,
    key: &StreamKey,
    req: CreateStream,
    now: DateTime<Utc>,
) -> rusqlite::Result<Result<Created, CreateRefusal>> {
    let source = match &req.fork {
        None => None,
        Some(f) => {
            let k = StreamKey {
                tenant: key.tenant.clone(),
                path: f.source.clone(),
            };
            match lookup(conn, &k, now)? {
                Found::Missing => return Ok(Err(CreateRefusal::NoSource)),
                Found::Gone => return Ok(Err(CreateRefusal::SourceDeleted)),
                Found::Live(s) => Some(s),
            }
        }
    };
    let fork = match (&source, &req.fork) {
        (Some(s), Some(f)) => match fork_point(conn, s, f.offset, f.sub)? {
            Ok(fork) => Some(fork),
            Err(refusal) => return Ok(Err(refusal)),
        },
        _ => None,
    };
    if let Some(existing) = by_key(conn, key)? {
        if existing.deleted {
            return Ok(Err(CreateRefusal::DeletedWithForks));
        }
        if !existing.expired(now) {
            return Ok(if same_config(&existing, &req, fork) {
                Ok(Created {
                    state: existing,
                    new: false,
                })
            } else {
                Err(CreateRefusal::Conflict)
            });
        }
        delete_or_keep(conn, &existing)?;
        if existing.forks > 0 {
            return Ok(Err(CreateRefusal::DeletedWithForks));
        }
    }
    let content_type = match (&req.content_type, &source) {
        (Some(ct), Some(s)) if essence(ct) != essence(&s.content_type) => {
            return Ok(Err(CreateRefusal::ContentType));
        }
        (Some(ct), _) => ct.clone(),
        (None, Some(s)) => s.content_type.clone(),
        (None, None) => "application/octet-stream".to_string(),
    };
    let chunks = match chunks_of(&content_type, &req.body, true) {
        Ok(c) => c,
        Err(e) => return Ok(Err(CreateRefusal::BadBody(e))),
    };
    let expiry = match &source {
        Some(s) => fork_expiry(&req.expiry, s),
        None => req.expiry.clone(),
    };
    let (ttl, at) = match &expiry {
        Expiry::Never => (None, None),
        Expiry::Ttl(t) => (Some(col(*t)), None),
        Expiry::At(at) => (None, Some(ms(*at))),
    };
    let base = fork.map_or(0, |f| f.at);
    conn.prepare_cached(
        "INSERT INTO streams (tenant, path, content_type, ttl_secs, expires_at, touched_at,
                              closed, tail, source, fork_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        key.tenant.0,
        key.path,
        content_type,
        ttl,
        at,
        ms(now),
        req.closed,
        col(base),
        fork.map(|f| f.source),
        fork.map(|f| col(f.at)),
    ])?;
    let id = conn.last_insert_rowid();
    let tail = insert_chunks(conn, id, base, &chunks)?;
    conn.execute(
        "UPDATE streams SET tail = ?2 WHERE id = ?1",
        params![id, col(tail)],
    )?;
    if let Some(f) = fork {
        conn.execute(
            "UPDATE streams SET forks = forks + 1 WHERE id = ?1",
            params![f.source],
        )?;
    }
    let state = by_id(conn, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(Ok(Created { state, new: true }))
}

fn append(
    conn: &Connection,
    key: &StreamKey,
    req: Append,
    now: DateTime<Utc>,
) -> rusqlite::Result<Found<(StreamState, Result<Appended, AppendRefusal>)>> {
    let state = match lookup(conn, key, now)? {
        Found::Live(s) => s,
        Found::Missing => return Ok(Found::Missing),
        Found::Gone => return Ok(Found::Gone),
    };
    let before = match &req.producer {
        None => None,
        Some(p) => conn
            .prepare_cached(
                "SELECT epoch, seq FROM stream_producers WHERE stream = ?1 AND producer = ?2",
            )?
            .query_row(params![state.id, p.id], |r| {
                Ok(ProducerState {
                    epoch: pos(r.get(0)?),
                    seq: pos(r.get(1)?),
                })
            })
            .optional()?,
    };
    let plan = match state.decide_append(&req, before) {
        Err(refusal) => return Ok(Found::Live((state, Err(refusal)))),
        Ok(Err(answer)) => return Ok(Found::Live((state, Ok(answer)))),
        Ok(Ok(plan)) => plan,
    };
    let tail = insert_chunks(conn, state.id, state.tail, &plan.chunks)?;
    let closed_by = match (&req.producer, plan.close) {
        (Some(p), true) => Some(encode_producer(p)),
        _ => None,
    };
    conn.prepare_cached(
        "UPDATE streams SET tail = ?2, closed = closed OR ?3, last_seq = coalesce(?4, last_seq),
                            closed_by = coalesce(?5, closed_by), touched_at = ?6
         WHERE id = ?1",
    )?
    .execute(params![
        state.id,
        col(tail),
        plan.close,
        plan.seq,
        closed_by,
        ms(now)
    ])?;
    if let Some((id, p)) = &plan.producer {
        conn.prepare_cached(
            "INSERT INTO stream_producers (stream, producer, epoch, seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (stream, producer) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
        )?
        .execute(params![state.id, id, col(p.epoch), col(p.seq)])?;
    }
    let closed = state.closed || plan.close;
    let answer = Appended::Written {
        tail,
        closed,
        producer: plan.producer.map(|(_, p)| p),
    };
    let state = StreamState {
        tail,
        closed,
        touched_at: now,
        ..state
    };
    Ok(Found::Live((state, Ok(answer))))
}

fn expire(conn: &Connection, now: DateTime<Utc>, limit: usize) -> rusqlite::Result<usize> {
    let now = ms(now);
    let ids: Vec<i64> = conn
        .prepare_cached(
            "SELECT id FROM streams
             WHERE deleted = 0 AND (expires_at <= ?1 OR touched_at + ttl_secs * 1000 <= ?1)
             LIMIT ?2",
        )?
        .query_map(
            params![now, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    for id in &ids {
        if let Some(s) = by_id(conn, *id)? {
            delete_or_keep(conn, &s)?;
        }
    }
    Ok(ids.len())
}

impl SqliteStore {
    fn tick(&self, stream: i64) {
        let _ = self.inner.stream_bus.send(StreamTick { stream });
    }
}

fn store_err(e: rusqlite::Error) -> StoreError {
    backend(e)
}

#[async_trait::async_trait]
impl replyd_core::stream::StreamStore for SqliteStore {
    async fn stream_create(
        &self,
        key: &StreamKey,
        req: CreateStream,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<Created, CreateRefusal>> {
        let key = key.clone();
        self.write(move |conn, _| create(conn, &key, req, now).map_err(store_err))
            .await
    }

    async fn stream_append(
        &self,
        key: &StreamKey,
        req: Append,
        now: DateTime<Utc>,
    ) -> StoreResult<Found<(StreamState, Result<Appended, AppendRefusal>)>> {
        let key = key.clone();
        let found = self
            .write(move |conn, _| append(conn, &key, req, now).map_err(store_err))
            .await?;
        if let Found::Live((s, Ok(Appended::Written { .. }))) = &found {
            self.tick(s.id);
        }
        Ok(found)
    }

    async fn stream_head(
        &self,
        key: &StreamKey,
        touch: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<Found<StreamState>> {
        let k = key.clone();
        let found = self
            .read(move |conn| lookup(conn, &k, now).map_err(store_err))
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
            .read(move |conn| {
                let state = match lookup(conn, &k, now).map_err(store_err)? {
                    Found::Live(s) => s,
                    Found::Missing => return Ok(Found::Missing),
                    Found::Gone => return Ok(Found::Gone),
                };
                let from = from.min(state.tail);
                let chain = chain(conn, &state).map_err(store_err)?;
                let chunks = read_range(conn, &chain, from, state.tail, budget, usize::MAX)
                    .map_err(store_err)?;
                let next = chunks
                    .last()
                    .map_or(from, |(start, c)| start + c.len() as u64);
                let chunks = chunks.into_iter().map(|(_, c)| c).collect();
                Ok(Found::Live((state, ReadChunks { chunks, next })))
            })
            .await?;
        if let Found::Live((s, _)) = &found {
            self.touch(s, now).await?;
        }
        Ok(found)
    }

    async fn stream_delete(&self, key: &StreamKey, now: DateTime<Utc>) -> StoreResult<Found<()>> {
        let key = key.clone();
        let found = self
            .write(move |conn, _| {
                Ok(match lookup(conn, &key, now).map_err(store_err)? {
                    Found::Live(s) => {
                        delete_or_keep(conn, &s).map_err(store_err)?;
                        Found::Live(s.id)
                    }
                    Found::Missing => Found::Missing,
                    Found::Gone => Found::Gone,
                })
            })
            .await?;
        Ok(match found {
            Found::Live(id) => {
                // Its live readers learn that it is gone.
                self.tick(id);
                Found::Live(())
            }
            Found::Missing => Found::Missing,
            Found::Gone => Found::Gone,
        })
    }

    async fn stream_expire(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<usize> {
        self.write(move |conn, _| expire(conn, now, limit).map_err(store_err))
            .await
    }

    fn stream_ticks(&self) -> tokio::sync::broadcast::Receiver<StreamTick> {
        self.inner.stream_bus.subscribe()
    }
}

impl SqliteStore {
    /// Restarts a sliding TTL (a write only for streams that have one).
    async fn touch(&self, s: &StreamState, now: DateTime<Utc>) -> StoreResult<()> {
        if !matches!(s.expiry, Expiry::Ttl(_)) {
            return Ok(());
        }
        let id = s.id;
        self.write(move |conn, _| {
            conn.prepare_cached("UPDATE streams SET touched_at = max(touched_at, ?2) WHERE id = ?1")
                .and_then(|mut st| st.execute(params![id, ms(now)]))
                .map(|_| ())
                .map_err(store_err)
        })
        .await
    }
}
