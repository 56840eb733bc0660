//! Durable Streams, what both stores do alike: each operation's steps
//! (look up, decide with `replyd_core::stream`, write), written once over
//! [`Rows`], the few statements each store supplies. SQLite runs a flow
//! inside its writer's group commit (its `Rows` never waits, so the flow
//! completes in one poll); PostgreSQL in a transaction that locks the
//! stream's row first, so that positions follow commit order on every
//! node.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::store::StoreResult;
use replyd_core::stream::{
    Append, AppendRefusal, Appended, CreateRefusal, CreateStream, Created, Expiry, ForkOf, Found,
    MAX_SUB_MESSAGES, Producer, ProducerState, ReadChunks, StreamKey, StreamState, chunks_of,
    essence, fork_expiry, is_json, same_config, segments,
};

/// Chunk rows read per statement.
const PAGE: usize = 256;

/// What a store's rows of streams offer the flows. Every method is one
/// statement (or a few) in the operation's transaction.
pub(crate) trait Rows {
    /// The stream at `key` (locked for the transaction where the store
    /// locks rows).
    async fn by_key(&mut self, key: &StreamKey) -> StoreResult<Option<StreamState>>;
    async fn by_id(&mut self, id: i64) -> StoreResult<Option<StreamState>>;
    /// Up to `limit` chunks of `stream` that end past `from` and start
    /// before `to`, in order, each with its position.
    async fn chunks(
        &mut self,
        stream: i64,
        from: u64,
        to: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, Bytes)>>;
    async fn insert_stream(&mut self, key: &StreamKey, new: &NewRow) -> StoreResult<i64>;
    /// Writes `chunks` from `at` on (one append: `batch` = `at`).
    async fn insert_chunks(&mut self, stream: i64, at: u64, chunks: &[Bytes]) -> StoreResult<()>;
    async fn update(&mut self, stream: i64, change: &Change) -> StoreResult<()>;
    async fn producer(&mut self, stream: i64, id: &str) -> StoreResult<Option<ProducerState>>;
    async fn set_producer(&mut self, stream: i64, id: &str, p: ProducerState) -> StoreResult<()>;
    /// Deletes the stream's row, chunks and producers.
    async fn remove_rows(&mut self, stream: i64) -> StoreResult<()>;
    /// The job `id` (read for the lease its output's writer holds; where
    /// the store locks rows, locked against a concurrent move).
    async fn job(&mut self, id: replyd_core::JobId) -> StoreResult<Option<replyd_core::JobRecord>>;
    /// Streams `tenant` keeps (deleted ones kept for forks included).
    async fn count(&mut self, tenant: &replyd_core::Tenant) -> StoreResult<u64>;
    /// Ids of expired streams not yet deleted, at most `limit`.
    async fn expired(&mut self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<i64>>;
}

/// A new stream's row.
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub content_type: String,
    pub expiry: Expiry,
    pub closed: bool,
    pub tail: u64,
    pub fork: Option<ForkOf>,
    pub now: DateTime<Utc>,
    /// The job whose output this is (it goes with the job).
    pub job: Option<replyd_core::JobId>,
}

/// A change to a stream's row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Change {
    pub tail: Option<u64>,
    pub close: bool,
    pub seq: Option<String>,
    pub closed_by: Option<Producer>,
    pub touched_at: Option<DateTime<Utc>>,
    /// Added to `forks`.
    pub forks: i32,
    pub delete: bool,
}

/// `(ttl_secs, expires_at ms)` of an expiry, as the rows keep it.
pub(crate) fn expiry_columns(e: &Expiry) -> (Option<i64>, Option<i64>) {
    match e {
        Expiry::Never => (None, None),
        Expiry::Ttl(t) => (Some(i64::try_from(*t).unwrap_or(i64::MAX)), None),
        Expiry::At(at) => (None, Some(crate::record::ms(*at))),
    }
}

/// The expiry the columns hold.
pub(crate) fn expiry_of(ttl: Option<i64>, at: Option<i64>) -> Expiry {
    match (ttl, at) {
        (Some(t), _) => Expiry::Ttl(u64::try_from(t).unwrap_or(0)),
        (None, Some(at)) => Expiry::At(crate::record::from_ms(at)),
        (None, None) => Expiry::Never,
    }
}

pub(crate) fn encode_producer(p: &Producer) -> String {
    serde_json::json!([p.id, p.epoch, p.seq]).to_string()
}

pub(crate) fn decode_producer(text: &str) -> Option<Producer> {
    let (id, epoch, seq): (String, u64, u64) = serde_json::from_str(text).ok()?;
    Some(Producer { id, epoch, seq })
}

pub(crate) fn pos(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn col(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn lookup<R: Rows>(
    rows: &mut R,
    key: &StreamKey,
    now: DateTime<Utc>,
) -> StoreResult<Found<StreamState>> {
    Ok(match rows.by_key(key).await? {
        None => Found::Missing,
        Some(s) if s.deleted => Found::Gone,
        Some(s) if s.expired(now) => Found::Missing,
        Some(s) => Found::Live(s),
    })
}

/// The stream and its sources, oldest last, each with its fork point.
async fn chain<R: Rows>(
    rows: &mut R,
    state: &StreamState,
) -> StoreResult<Vec<(i64, Option<ForkOf>)>> {
    let mut out = vec![(state.id, state.fork)];
    let mut next = state.fork;
    while let Some(f) = next {
        match rows.by_id(f.source).await? {
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
/// position, cut to the range; stops once past `budget` bytes or at
/// `count` chunks (at least one).
async fn read_range<R: Rows>(
    rows: &mut R,
    chain: &[(i64, Option<ForkOf>)],
    from: u64,
    to: u64,
    budget: usize,
    count: usize,
) -> StoreResult<Vec<(u64, Bytes)>> {
    let mut out: Vec<(u64, Bytes)> = Vec::new();
    let mut bytes = 0usize;
    for seg in segments(chain, from, to) {
        let mut at = seg.from;
        while at < seg.to {
            let page = rows.chunks(seg.stream, at, seg.to, PAGE).await?;
            let full = page.len() == PAGE;
            for (start, data) in page {
                let end = start + data.len() as u64;
                if end <= at {
                    continue;
                }
                let lo = usize::try_from(at.saturating_sub(start)).unwrap_or(0);
                let hi = usize::try_from(seg.to.min(end) - start).unwrap_or(data.len());
                let piece = data.slice(lo..hi);
                bytes += piece.len();
                out.push((start.max(at), piece));
                at = seg.to.min(end);
                if bytes >= budget || out.len() >= count {
                    return Ok(out);
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(out)
}

/// Removes a stream no fork reads, then its sources that were deleted and
/// that no other fork reads.
async fn remove<R: Rows>(rows: &mut R, state: &StreamState) -> StoreResult<()> {
    let mut next = Some(state.clone());
    while let Some(s) = next.take() {
        rows.remove_rows(s.id).await?;
        if let Some(f) = s.fork {
            let drop_ref = Change {
                forks: -1,
                ..Change::default()
            };
            rows.update(f.source, &drop_ref).await?;
            if let Some(src) = rows.by_id(f.source).await?
                && src.deleted
                && src.forks == 0
            {
                next = Some(src);
            }
        }
    }
    Ok(())
}

/// Deletes a stream: gone at once for clients; its data stays while
/// forks read it.
async fn delete_or_keep<R: Rows>(rows: &mut R, state: &StreamState) -> StoreResult<()> {
    if state.forks > 0 {
        let delete = Change {
            delete: true,
            ..Change::default()
        };
        rows.update(state.id, &delete).await
    } else {
        remove(rows, state).await
    }
}

/// Where a fork diverges, or why it cannot.
async fn fork_point<R: Rows>(
    rows: &mut R,
    source: &StreamState,
    offset: Option<u64>,
    sub: u64,
) -> StoreResult<Result<ForkOf, CreateRefusal>> {
    let anchor = offset.unwrap_or(source.tail);
    if anchor > source.tail {
        return Ok(Err(CreateRefusal::OffsetBeyondTail));
    }
    let mut at = anchor;
    if sub > 0 {
        let chain = chain(rows, source).await?;
        if is_json(&source.content_type) {
            if sub > MAX_SUB_MESSAGES {
                return Ok(Err(CreateRefusal::SubOffsetBeyond));
            }
            let n = usize::try_from(sub).unwrap_or(usize::MAX);
            let messages = read_range(rows, &chain, anchor, source.tail, usize::MAX, n).await?;
            if messages.len() < n {
                return Ok(Err(CreateRefusal::SubOffsetBeyond));
            }
            at += messages.iter().map(|(_, m)| m.len() as u64).sum::<u64>();
        } else {
            // Within the append that holds the anchor.
            let first = read_range(rows, &chain, anchor, source.tail, 1, 1).await?;
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

pub(crate) async fn create<R: Rows>(
    rows: &mut R,
    key: &StreamKey,
    req: CreateStream,
    now: DateTime<Utc>,
) -> StoreResult<Result<Created, CreateRefusal>> {
    create_for(rows, key, req, None, now).await
}

/// `create`, of job `job`'s output when it names one.
async fn create_for<R: Rows>(
    rows: &mut R,
    key: &StreamKey,
    req: CreateStream,
    job: Option<replyd_core::JobId>,
    now: DateTime<Utc>,
) -> StoreResult<Result<Created, CreateRefusal>> {
    let source = match &req.fork {
        None => None,
        Some(f) => {
            let k = StreamKey {
                tenant: key.tenant.clone(),
                path: f.source.clone(),
            };
            match lookup(rows, &k, now).await? {
                Found::Missing => return Ok(Err(CreateRefusal::NoSource)),
                Found::Gone => return Ok(Err(CreateRefusal::SourceDeleted)),
                Found::Live(s) => Some(s),
            }
        }
    };
    let fork = match (&source, &req.fork) {
        (Some(s), Some(f)) => match fork_point(rows, s, f.offset, f.sub).await? {
            Ok(fork) => Some(fork),
            Err(refusal) => return Ok(Err(refusal)),
        },
        _ => None,
    };
    if let Some(existing) = rows.by_key(key).await? {
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
        delete_or_keep(rows, &existing).await?;
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
    let bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    if req.limits.bytes > 0 && bytes > req.limits.bytes {
        return Ok(Err(CreateRefusal::TooLarge(req.limits.bytes)));
    }
    if req.limits.streams > 0 && rows.count(&key.tenant).await? >= req.limits.streams {
        return Ok(Err(CreateRefusal::TooMany(req.limits.streams)));
    }
    let expiry = match &source {
        Some(s) => fork_expiry(&req.expiry, s),
        None => req.expiry.clone(),
    };
    let base = fork.map_or(0, |f| f.at);
    let tail = base + bytes;
    let new = NewRow {
        content_type,
        expiry,
        closed: req.closed,
        tail,
        fork,
        now,
        job,
    };
    let id = rows.insert_stream(key, &new).await?;
    rows.insert_chunks(id, base, &chunks).await?;
    if let Some(f) = fork {
        let add_ref = Change {
            forks: 1,
            ..Change::default()
        };
        rows.update(f.source, &add_ref).await?;
    }
    let state = StreamState {
        id,
        content_type: new.content_type,
        expiry: new.expiry,
        touched_at: now,
        closed: new.closed,
        tail,
        fork,
        forks: 0,
        deleted: false,
        last_seq: None,
        closed_by: None,
    };
    Ok(Ok(Created { state, new: true }))
}

pub(crate) type AppendAnswer = Found<Result<Appended, AppendRefusal>>;

/// The most bytes a tick hands to readers (a token-sized append; a larger
/// one is read from the store): each stream with readers keeps its last.
const FRESH_MAX: usize = 64 * 1024;

/// The tick of an append that moved the stream at `key` (`body`: what was
/// sent): its readers are to be woken, and this node's handed the bytes.
pub(crate) fn tick_of(
    key: &StreamKey,
    body: &Bytes,
    answer: &AppendAnswer,
) -> Option<replyd_core::stream::StreamTick> {
    let Found::Live(Ok(Appended::Written { tail, closed, .. })) = answer else {
        return None;
    };
    let fresh = tail
        .checked_sub(body.len() as u64)
        .filter(|_| !body.is_empty() && body.len() <= FRESH_MAX);
    Some(replyd_core::stream::StreamTick {
        key: key.tick(),
        fresh: fresh.map(|start| {
            std::sync::Arc::new(replyd_core::stream::Fresh {
                stream: key.clone(),
                start,
                data: body.clone(),
                closed: *closed,
            })
        }),
    })
}

/// A delete's answer without the id of what it deleted.
pub(crate) fn forget_id(found: Found<i64>) -> Found<()> {
    match found {
        Found::Live(_) => Found::Live(()),
        Found::Missing => Found::Missing,
        Found::Gone => Found::Gone,
    }
}

pub(crate) async fn append<R: Rows>(
    rows: &mut R,
    key: &StreamKey,
    req: Append,
    now: DateTime<Utc>,
) -> StoreResult<AppendAnswer> {
    let state = match lookup(rows, key, now).await? {
        Found::Live(s) => s,
        Found::Missing => return Ok(Found::Missing),
        Found::Gone => return Ok(Found::Gone),
    };
    let before = match &req.producer {
        None => None,
        Some(p) => rows.producer(state.id, &p.id).await?,
    };
    let plan = match state.decide_append(&req, before) {
        Err(refusal) => return Ok(Found::Live(Err(refusal))),
        Ok(Err(answer)) => return Ok(Found::Live(Ok(answer))),
        Ok(Ok(plan)) => plan,
    };
    rows.insert_chunks(state.id, state.tail, &plan.chunks)
        .await?;
    let tail = state.tail + plan.chunks.iter().map(|c| c.len() as u64).sum::<u64>();
    let change = Change {
        tail: Some(tail),
        close: plan.close,
        seq: plan.seq.clone(),
        closed_by: req.producer.clone().filter(|_| plan.close),
        touched_at: Some(now),
        ..Change::default()
    };
    rows.update(state.id, &change).await?;
    if let Some((id, p)) = &plan.producer {
        rows.set_producer(state.id, id, *p).await?;
    }
    let closed = state.closed || plan.close;
    Ok(Found::Live(Ok(Appended::Written {
        tail,
        closed,
        producer: plan.producer.map(|(_, p)| p),
    })))
}

/// A worker's append to job `job`'s output (at `key`): only with the
/// job's current lease; the stream is made by the first append, its
/// content type the one the submission named, else the append's.
pub(crate) async fn append_output<R: Rows>(
    rows: &mut R,
    key: &StreamKey,
    job: replyd_core::JobId,
    lease: replyd_core::LeaseId,
    req: Append,
    now: DateTime<Utc>,
) -> StoreResult<AppendAnswer> {
    let record = match rows.job(job).await? {
        Some(r) if r.tenant == key.tenant => r,
        _ => return Ok(Found::Missing),
    };
    if !record.leased_to(lease, now) {
        return Ok(Found::Live(Err(AppendRefusal::NotLeased)));
    }
    if rows.by_key(key).await?.is_none() {
        let new = CreateStream {
            // The submission's content type, else the first append's.
            content_type: record.output_type.clone().or(req.content_type.clone()),
            expiry: Expiry::Never,
            closed: false,
            body: Bytes::new(),
            fork: None,
            limits: replyd_core::stream::StreamLimits::default(),
        };
        if let Err(refusal) = create_for(rows, key, new, Some(job), now).await? {
            return Err(replyd_core::store::StoreError::Backend(
                format!("cannot make the job's output stream: {refusal}").into(),
            ));
        }
    }
    append(rows, key, req, now).await
}

/// A read: the stream and its chunks from `from` (clamped to the tail).
pub(crate) async fn read<R: Rows>(
    rows: &mut R,
    key: &StreamKey,
    from: u64,
    budget: usize,
    now: DateTime<Utc>,
) -> StoreResult<Found<(StreamState, ReadChunks)>> {
    let state = match lookup(rows, key, now).await? {
        Found::Live(s) => s,
        Found::Missing => return Ok(Found::Missing),
        Found::Gone => return Ok(Found::Gone),
    };
    let from = from.min(state.tail);
    let chain = chain(rows, &state).await?;
    let chunks = read_range(rows, &chain, from, state.tail, budget, usize::MAX).await?;
    let next = chunks
        .last()
        .map_or(from, |(start, c)| start + c.len() as u64);
    let chunks = chunks.into_iter().map(|(_, c)| c).collect();
    Ok(Found::Live((state, ReadChunks { chunks, next })))
}

pub(crate) async fn head<R: Rows>(
    rows: &mut R,
    key: &StreamKey,
    now: DateTime<Utc>,
) -> StoreResult<Found<StreamState>> {
    lookup(rows, key, now).await
}

/// Deletes the stream at `key`: its id when it was there.
pub(crate) async fn delete<R: Rows>(
    rows: &mut R,
    key: &StreamKey,
    now: DateTime<Utc>,
) -> StoreResult<Found<i64>> {
    Ok(match lookup(rows, key, now).await? {
        Found::Live(s) => {
            delete_or_keep(rows, &s).await?;
            Found::Live(s.id)
        }
        Found::Missing => Found::Missing,
        Found::Gone => Found::Gone,
    })
}

/// Removes up to `limit` expired streams (kept, deleted, while forks read
/// them).
pub(crate) async fn expire<R: Rows>(
    rows: &mut R,
    now: DateTime<Utc>,
    limit: usize,
) -> StoreResult<usize> {
    let ids = rows.expired(now, limit).await?;
    for id in &ids {
        if let Some(s) = rows.by_id(*id).await? {
            delete_or_keep(rows, &s).await?;
        }
    }
    Ok(ids.len())
}

/// Restarts a sliding TTL.
pub(crate) async fn touch<R: Rows>(rows: &mut R, id: i64, now: DateTime<Utc>) -> StoreResult<()> {
    let change = Change {
        touched_at: Some(now),
        ..Change::default()
    };
    rows.update(id, &change).await
}

/// Runs a flow whose `Rows` never waits (SQLite's, on the writer thread or
/// a reader connection) to its end.
pub(crate) fn now_or_never<T>(flow: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(flow)
}
