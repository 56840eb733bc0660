//! Durable Streams (protocol v1.0): append-only byte streams addressed by
//! path, read from any offset, live or not. What a stream is and every
//! rule of its writes, without IO: the stores load a stream's state, ask
//! [`StreamState::decide_append`] (or [`decide_create`]) what to write,
//! and write it in one transaction, as they do with jobs.
//!
//! Positions are byte counts from the stream's start. On the wire an
//! offset is `0000000000000000_` then the position in 16 decimal digits:
//! fixed width, so that offsets sort as their positions do. A fork shares
//! its source's positions below the fork point, so its offsets are the
//! source's there. In JSON mode (`application/json`) each message is one
//! chunk (its JSON text, as sent), and a read answers the messages as
//! one array.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::ids::Tenant;

/// The width of an offset's position.
const DIGITS: usize = 16;

/// An offset on the wire.
pub fn encode_offset(position: u64) -> String {
    format!("{:0w$}_{position:0w$}", 0, w = DIGITS)
}

/// A position from an offset of ours (`digits_digits`), else `None`.
/// The sentinels `-1` and `now` are the caller's to recognise first.
pub fn parse_offset(raw: &str) -> Option<u64> {
    let (epoch, position) = raw.split_once('_')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(epoch) || !digits(position) || epoch.parse::<u64>().ok()? != 0 {
        return None;
    }
    position.parse().ok()
}

/// A stream's name: its tenant and its path below `/v1/stream/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub tenant: Tenant,
    pub path: String,
}

/// When a stream expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    Never,
    /// Seconds without a read or a write (a sliding window).
    Ttl(u64),
    /// An absolute time.
    At(DateTime<Utc>),
}

/// Whether a content type is JSON mode (`application/json`, any case,
/// any parameters).
pub fn is_json(content_type: &str) -> bool {
    essence(content_type) == "application/json"
}

/// Whether SSE carries this content type's bytes as text (else base64).
pub fn is_text(content_type: &str) -> bool {
    let e = essence(content_type);
    e.starts_with("text/") || e == "application/json"
}

/// Whether `content_type` is a media type (`type/subtype`, tokens, and
/// parameters after `;`), at most 255 bytes of visible ASCII.
pub fn is_media_type(content_type: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if content_type.len() > 255 || !content_type.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return false;
    }
    let t = content_type.trim();
    let essence = t.split(';').next().unwrap_or("").trim();
    matches!(essence.split_once('/'), Some((a, b)) if token(a) && token(b))
}

/// A content type's media type, lowercased, without parameters.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// An idempotent producer's claim on an append (`Producer-Id`,
/// `Producer-Epoch`, `Producer-Seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    pub id: String,
    pub epoch: u64,
    pub seq: u64,
}

/// What a producer last did on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerState {
    pub epoch: u64,
    pub seq: u64,
}

/// A fork's source: the stream and the position where the fork diverges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkOf {
    pub source: i64,
    pub at: u64,
}

/// A stream as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// The store's id of this incarnation of the path.
    pub id: i64,
    pub content_type: String,
    pub expiry: Expiry,
    /// Last read or write (for a TTL).
    pub touched_at: DateTime<Utc>,
    pub closed: bool,
    /// The position after the last byte.
    pub tail: u64,
    pub fork: Option<ForkOf>,
    /// Forks that read from this stream.
    pub forks: u32,
    /// Deleted while forks still read it: gone for clients.
    pub deleted: bool,
    /// The last `Stream-Seq` accepted.
    pub last_seq: Option<String>,
    /// The producer append that closed the stream, if one did.
    pub closed_by: Option<Producer>,
}

impl StreamState {
    /// When it expires, if it does.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match &self.expiry {
            Expiry::Never => None,
            Expiry::Ttl(secs) => {
                Some(self.touched_at + chrono::Duration::seconds(i64::try_from(*secs).ok()?))
            }
            Expiry::At(at) => Some(*at),
        }
    }

    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at().is_some_and(|at| at <= now)
    }

    pub fn json(&self) -> bool {
        is_json(&self.content_type)
    }

    /// What a job's output reads as before its first append: empty (and
    /// closed once the job has ended); its `id` is 0, no stream's.
    pub fn nothing_yet(
        content_type: Option<&str>,
        closed: bool,
        now: DateTime<Utc>,
    ) -> StreamState {
        StreamState {
            id: 0,
            content_type: content_type.unwrap_or("application/octet-stream").into(),
            expiry: Expiry::Never,
            touched_at: now,
            closed,
            tail: 0,
            fork: None,
            forks: 0,
            deleted: false,
            last_seq: None,
            closed_by: None,
        }
    }
}

/// What a tenant's streams may hold (0: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamLimits {
    /// Streams one tenant keeps at once.
    pub streams: u64,
    /// Bytes one stream holds (its own, not a fork's inherited ones).
    pub bytes: u64,
}

/// A `PUT`: create a stream, or find the same one.
#[derive(Debug, Clone)]
pub struct CreateStream {
    /// `None`: the source's for a fork, else `application/octet-stream`.
    pub content_type: Option<String>,
    pub expiry: Expiry,
    pub closed: bool,
    pub body: Bytes,
    pub fork: Option<ForkRequest>,
    pub limits: StreamLimits,
}

/// `Stream-Forked-From` and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkRequest {
    /// The source's path (same tenant).
    pub source: String,
    /// `Stream-Fork-Offset`; `None`: the source's tail.
    pub offset: Option<u64>,
    /// `Stream-Fork-Sub-Offset`: bytes (or JSON messages) past `offset`.
    pub sub: u64,
}

/// Why a create is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateRefusal {
    #[error("a stream exists at this path with a different configuration")]
    Conflict,
    #[error(
        "the stream at this path was deleted while forks still read it; the path cannot be used until they are gone"
    )]
    DeletedWithForks,
    #[error("no stream at the path named by Stream-Forked-From")]
    NoSource,
    #[error("the source stream was deleted (forks still read it); it cannot be forked")]
    SourceDeleted,
    #[error("Stream-Fork-Offset is past the source stream's tail")]
    OffsetBeyondTail,
    #[error("Stream-Fork-Sub-Offset names a position past the data at Stream-Fork-Offset")]
    SubOffsetBeyond,
    #[error("the content type differs from the source stream's")]
    ContentType,
    #[error("{0}")]
    BadBody(String),
    #[error(
        "this tenant keeps {0} streams, its most (durable_streams.max_streams_per_tenant); delete some first"
    )]
    TooMany(u64),
    #[error(
        "the initial body is more than a stream may hold ({0} bytes: durable_streams.max_stream_bytes)"
    )]
    TooLarge(u64),
}

/// A `POST`: append, close, or both.
#[derive(Debug, Clone, Default)]
pub struct Append {
    /// `Content-Type` (ignored when the body is empty).
    pub content_type: Option<String>,
    pub body: Bytes,
    /// `Stream-Closed: true`.
    pub close: bool,
    /// `Stream-Seq`.
    pub seq: Option<String>,
    pub producer: Option<Producer>,
    pub limits: StreamLimits,
}

/// Why an append is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendRefusal {
    #[error("the stream is closed")]
    Closed { tail: u64 },
    #[error("the content type differs from the stream's")]
    ContentType,
    #[error("Stream-Seq is not greater than the last one accepted")]
    SeqRegression,
    #[error("a newer epoch of this producer has written")]
    StaleEpoch { current: u64 },
    #[error("a new producer epoch must start at Producer-Seq 0")]
    EpochStart,
    #[error("Producer-Seq skips ahead")]
    SeqGap { expected: u64, received: u64 },
    #[error("an append needs a body (or Stream-Closed: true)")]
    EmptyBody,
    #[error("{0}")]
    BadBody(String),
    #[error("the stream would hold more than {0} bytes (durable_streams.max_stream_bytes)")]
    TooLarge(u64),
    #[error("the lease is not the job's current one (it ended, expired or was never given)")]
    NotLeased,
}

/// The path of job `id`'s output stream, in its tenant: below `__jobs/`,
/// which no `/v1/stream/` path reaches.
pub fn output_path(id: crate::ids::JobId) -> String {
    format!("__jobs/{id}")
}

/// What an append writes: its chunks at the tail, then the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendPlan {
    pub chunks: Vec<Bytes>,
    pub close: bool,
    pub seq: Option<String>,
    /// The producer's state to record.
    pub producer: Option<(String, ProducerState)>,
}

/// An append's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Written (or, with nothing to write, the stream closed): 204, or
    /// 200 for a producer's new data.
    Written {
        tail: u64,
        closed: bool,
        producer: Option<ProducerState>,
    },
    /// A producer's retry of what was written: 204, nothing written.
    Duplicate {
        tail: u64,
        closed: bool,
        producer: ProducerState,
    },
}

/// The messages of a JSON body: one, or the elements of an array (one
/// level flattened), each as sent.
pub fn json_messages(body: &[u8], allow_empty: bool) -> Result<Vec<Bytes>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 JSON".to_string())?;
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    let trimmed = raw.get().trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(raw.get())
            .map_err(|e| format!("the body is not valid JSON: {e}"))?;
        if items.is_empty() && !allow_empty {
            return Err("an empty JSON array appends nothing".into());
        }
        return Ok(items
            .into_iter()
            .map(|m| Bytes::copy_from_slice(m.get().trim().as_bytes()))
            .collect());
    }
    Ok(vec![Bytes::copy_from_slice(raw.get().trim().as_bytes())])
}

/// The chunks a body becomes on a stream of `content_type`.
pub fn chunks_of(
    content_type: &str,
    body: &Bytes,
    allow_empty_array: bool,
) -> Result<Vec<Bytes>, String> {
    if body.is_empty() {
        Ok(Vec::new())
    } else if is_json(content_type) {
        json_messages(body, allow_empty_array)
    } else {
        Ok(vec![body.clone()])
    }
}

impl StreamState {
    /// What `req` writes on this stream, the producer's state before it
    /// being `producer` (if it has written here), or why not.
    pub fn decide_append(
        &self,
        req: &Append,
        producer: Option<ProducerState>,
    ) -> Result<Result<AppendPlan, Appended>, AppendRefusal> {
        let tail = self.tail;
        // A producer's retry of the append that closed the stream.
        if self.closed {
            if let (Some(p), Some(by)) = (&req.producer, &self.closed_by)
                && p == by
            {
                return Ok(Err(Appended::Duplicate {
                    tail,
                    closed: true,
                    producer: ProducerState {
                        epoch: p.epoch,
                        seq: p.seq,
                    },
                }));
            }
            if req.body.is_empty() && req.close {
                if let Some(p) = &req.producer
                    && let Some(state) = producer
                    && p.epoch < state.epoch
                {
                    return Err(AppendRefusal::StaleEpoch {
                        current: state.epoch,
                    });
                }
                return Ok(Err(Appended::Written {
                    tail,
                    closed: true,
                    producer: None,
                }));
            }
            if let Some(p) = &req.producer
                && let Some(state) = producer
                && p.epoch < state.epoch
            {
                return Err(AppendRefusal::StaleEpoch {
                    current: state.epoch,
                });
            }
            return Err(AppendRefusal::Closed { tail });
        }
        if req.body.is_empty() && !req.close {
            return Err(AppendRefusal::EmptyBody);
        }
        if !req.body.is_empty() {
            match &req.content_type {
                Some(ct) if essence(ct) == essence(&self.content_type) => {}
                _ => return Err(AppendRefusal::ContentType),
            }
        }
        // Idempotent producer: fencing and deduplication first, so that a
        // retry is answered as the first attempt was.
        let mut next_producer = None;
        if let Some(p) = &req.producer {
            match producer {
                Some(state) if p.epoch < state.epoch => {
                    return Err(AppendRefusal::StaleEpoch {
                        current: state.epoch,
                    });
                }
                Some(state) if p.epoch == state.epoch => {
                    if p.seq <= state.seq {
                        return Ok(Err(Appended::Duplicate {
                            tail,
                            closed: false,
                            producer: state,
                        }));
                    }
                    if p.seq != state.seq + 1 {
                        return Err(AppendRefusal::SeqGap {
                            expected: state.seq + 1,
                            received: p.seq,
                        });
                    }
                }
                // A new epoch (or a new producer) starts at 0.
                _ if p.seq != 0 => {
                    return Err(match producer {
                        Some(_) => AppendRefusal::EpochStart,
                        None => AppendRefusal::SeqGap {
                            expected: 0,
                            received: p.seq,
                        },
                    });
                }
                _ => {}
            }
            next_producer = Some((
                p.id.clone(),
                ProducerState {
                    epoch: p.epoch,
                    seq: p.seq,
                },
            ));
        }
        if let Some(seq) = &req.seq
            && self
                .last_seq
                .as_ref()
                .is_some_and(|last| seq.as_bytes() <= last.as_bytes())
        {
            return Err(AppendRefusal::SeqRegression);
        }
        let chunks =
            chunks_of(&self.content_type, &req.body, false).map_err(AppendRefusal::BadBody)?;
        let own = self.tail - self.fork.map_or(0, |f| f.at);
        let adding: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if req.limits.bytes > 0 && own + adding > req.limits.bytes {
            return Err(AppendRefusal::TooLarge(req.limits.bytes));
        }
        Ok(Ok(AppendPlan {
            chunks,
            close: req.close,
            seq: req.seq.clone(),
            producer: next_producer,
        }))
    }
}

/// How a `PUT` meets the stream already at its path (live, not expired).
pub fn same_config(existing: &StreamState, req: &CreateStream, fork: Option<ForkOf>) -> bool {
    let ct_same = match &req.content_type {
        Some(ct) => essence(ct) == essence(&existing.content_type),
        None => req.fork.is_some() || essence(&existing.content_type) == "application/octet-stream",
    };
    let expiry_same = match (&req.expiry, &existing.expiry) {
        (Expiry::Never, Expiry::Never) => true,
        (Expiry::Ttl(a), Expiry::Ttl(b)) => a == b,
        (Expiry::At(a), Expiry::At(b)) => a == b,
        // A fork that asked for nothing inherited its source's.
        (Expiry::Never, _) => req.fork.is_some(),
        _ => false,
    };
    let fork_same = match (&req.fork, fork, existing.fork) {
        (None, _, None) => true,
        (Some(_), Some(want), Some(have)) => want == have,
        _ => false,
    };
    ct_same && expiry_same && fork_same && existing.closed == req.closed
}

/// A fork's expiry when it asked for `asked`, its source having `source`.
pub fn fork_expiry(asked: &Expiry, source: &StreamState) -> Expiry {
    match asked {
        Expiry::Never => source.expiry.clone(),
        other => other.clone(),
    }
}

/// The stretch of a read that one stream of a fork chain serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub stream: i64,
    pub from: u64,
    pub to: u64,
}

/// Where the bytes of `[from, to)` of the last stream of `chain` live:
/// `chain` runs from the stream read (first) to its oldest ancestor, each
/// with where it diverges from the next. Returned in reading order.
pub fn segments(chain: &[(i64, Option<ForkOf>)], from: u64, to: u64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut hi = to;
    for (id, fork) in chain {
        let lo = fork.map_or(0, |f| f.at);
        let start = from.max(lo);
        if start < hi {
            out.push(Segment {
                stream: *id,
                from: start,
                to: hi,
            });
        }
        hi = hi.min(lo);
        if hi <= from {
            break;
        }
    }
    out.reverse();
    out
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadChunks {
    /// The chunks from the position asked for (the first may start inside
    /// one for byte streams, never for JSON), at most about the byte
    /// budget asked for.
    pub chunks: Vec<Bytes>,
    /// The position after the last chunk.
    pub next: u64,
}

impl ReadChunks {
    /// The read as a body of stream `s`: its bytes, or for a JSON stream
    /// its messages as one array.
    pub fn body(&self, s: &StreamState) -> Bytes {
        if !s.json() {
            return self.chunks.concat().into();
        }
        let mut out =
            Vec::with_capacity(2 + self.chunks.iter().map(|c| c.len() + 1).sum::<usize>());
        out.push(b'[');
        for (i, c) in self.chunks.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(c);
        }
        out.push(b']');
        out.into()
    }
}

/// A lookup of a stream by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<T> {
    /// No stream (or an expired one).
    Missing,
    /// Deleted while forks still read it: 410 for clients.
    Gone,
    Live(T),
}

/// A `PUT`'s answer: the stream, and whether this call made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub state: StreamState,
    pub new: bool,
}

/// Said after a commit that changed a stream (its tail, its closure, its
/// existence), so that its waiting readers read again. It names the
/// stream by its key's [`StreamKey::tick`], so that a reader may wait for
/// a stream that does not exist yet (a job's output before its first
/// append); two keys that share one only wake each other's readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTick {
    pub key: u64,
    /// For this node's readers, what the append wrote (other nodes'
    /// ticks carry none).
    pub fresh: Option<std::sync::Arc<Fresh>>,
}

/// An append as its node's readers may take it without reading the
/// store: its stream, where its bytes start, and the bytes (the body as
/// sent: a byte stream's chunk; a JSON stream's readers read the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fresh {
    pub stream: StreamKey,
    pub start: u64,
    pub data: Bytes,
    /// The append closed the stream.
    pub closed: bool,
}

impl Fresh {
    /// Where its bytes end: the stream's tail after it.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

impl StreamTick {
    /// Every stream may have moved (ticks may have been missed).
    pub const ALL: StreamTick = StreamTick {
        key: u64::MAX,
        fresh: None,
    };

    /// The stream at `key` moved.
    pub fn of(key: &StreamKey) -> StreamTick {
        StreamTick {
            key: key.tick(),
            fresh: None,
        }
    }
}

impl StreamKey {
    /// The stream's name in ticks: FNV-1a of the tenant and the path,
    /// the same on every node and build.
    pub fn tick(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self
            .tenant
            .0
            .bytes()
            .chain(std::iter::once(0))
            .chain(self.path.bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h.min(u64::MAX - 1)
    }
}

/// The most JSON messages a fork's sub-offset may count.
pub const MAX_SUB_MESSAGES: u64 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StreamState {
        StreamState {
            id: 1,
            content_type: "text/plain".into(),
            expiry: Expiry::Never,
            touched_at: Utc::now(),
            closed: false,
            tail: 10,
            fork: None,
            forks: 0,
            deleted: false,
            last_seq: None,
            closed_by: None,
        }
    }

    fn append(body: &str) -> Append {
        Append {
            content_type: Some("text/plain".into()),
            body: Bytes::from(body.to_string()),
            ..Append::default()
        }
    }

    #[test]
    fn offsets_sort_as_positions_and_round_trip() {
        assert_eq!(encode_offset(0), "0000000000000000_0000000000000000");
        assert!(encode_offset(9) < encode_offset(10));
        assert_eq!(parse_offset(&encode_offset(12345)), Some(12345));
        for bad in ["", "_", "1", "0_", "_1", "a_1", "0_1,2", "0_ 1", "1_5"] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn media_types_are_checked() {
        for ok in [
            "text/plain",
            "text/event-stream",
            "application/json; charset=utf-8",
            "a/b+c",
        ] {
            assert!(is_media_type(ok), "{ok}");
        }
        for bad in [
            "",
            "text",
            "/plain",
            "text/",
            "text/pl ain",
            "text/plain\n",
            "tëxt/plain",
        ] {
            assert!(!is_media_type(bad), "{bad:?}");
        }
        assert!(!is_media_type(&format!("text/{}", "x".repeat(300))));
    }

    #[test]
    fn json_bodies_flatten_one_level_and_keep_text() {
        let m = json_messages(br#"[{"a": 1}, [1,2], 3.0]"#, false).unwrap();
        assert_eq!(
            m,
            vec![
                Bytes::from(r#"{"a": 1}"#),
                Bytes::from("[1,2]"),
                Bytes::from("3.0")
            ]
        );
        assert_eq!(
            json_messages(b" {\"x\":1} ", false).unwrap(),
            vec![Bytes::from("{\"x\":1}")]
        );
        assert!(json_messages(b"[]", false).is_err());
        assert!(json_messages(b"[]", true).unwrap().is_empty());
        assert!(json_messages(b"{", false).is_err());
    }

    #[test]
    fn producers_are_fenced_deduplicated_and_gapless() {
        let s = state();
        let mut req = append("x");
        req.producer = Some(Producer {
            id: "p".into(),
            epoch: 1,
            seq: 0,
        });
        let at = |epoch, seq| Some(ProducerState { epoch, seq });
        assert!(matches!(s.decide_append(&req, None), Ok(Ok(_))));
        assert_eq!(
            s.decide_append(&req, at(2, 0)),
            Err(AppendRefusal::StaleEpoch { current: 2 })
        );
        assert!(matches!(
            s.decide_append(&req, at(1, 0)),
            Ok(Err(Appended::Duplicate { .. }))
        ));
        req.producer = Some(Producer {
            id: "p".into(),
            epoch: 1,
            seq: 3,
        });
        assert_eq!(
            s.decide_append(&req, at(1, 1)),
            Err(AppendRefusal::SeqGap {
                expected: 2,
                received: 3
            })
        );
        req.producer = Some(Producer {
            id: "p".into(),
            epoch: 2,
            seq: 1,
        });
        assert_eq!(
            s.decide_append(&req, at(1, 1)),
            Err(AppendRefusal::EpochStart)
        );
    }

    #[test]
    fn a_closed_stream_takes_only_a_close() {
        let mut s = state();
        s.closed = true;
        assert_eq!(
            s.decide_append(&append("x"), None),
            Err(AppendRefusal::Closed { tail: 10 })
        );
        let close = Append {
            close: true,
            ..Append::default()
        };
        assert!(matches!(
            s.decide_append(&close, None),
            Ok(Err(Appended::Written { closed: true, .. }))
        ));
    }

    #[test]
    fn a_stream_holds_at_most_its_limit() {
        let s = state();
        let mut req = append("12345");
        req.limits.bytes = 14;
        assert_eq!(
            s.decide_append(&req, None),
            Err(AppendRefusal::TooLarge(14))
        );
        req.limits.bytes = 15;
        assert!(matches!(s.decide_append(&req, None), Ok(Ok(_))));
    }

    #[test]
    fn seq_is_compared_as_bytes() {
        let mut s = state();
        s.last_seq = Some("2".into());
        let mut req = append("x");
        req.seq = Some("10".into());
        assert_eq!(
            s.decide_append(&req, None),
            Err(AppendRefusal::SeqRegression)
        );
        s.last_seq = Some("09".into());
        assert!(matches!(s.decide_append(&req, None), Ok(Ok(_))));
    }

    #[test]
    fn fork_chains_split_reads_by_owner() {
        // 3 forks 2 at 6, 2 forks 1 at 4.
        let chain = [
            (3, Some(ForkOf { source: 2, at: 6 })),
            (2, Some(ForkOf { source: 1, at: 4 })),
            (1, None),
        ];
        assert_eq!(
            segments(&chain, 0, 9),
            vec![
                Segment {
                    stream: 1,
                    from: 0,
                    to: 4
                },
                Segment {
                    stream: 2,
                    from: 4,
                    to: 6
                },
                Segment {
                    stream: 3,
                    from: 6,
                    to: 9
                }
            ]
        );
        assert_eq!(
            segments(&chain, 7, 9),
            vec![Segment {
                stream: 3,
                from: 7,
                to: 9
            }]
        );
        assert_eq!(
            segments(&chain, 5, 6),
            vec![Segment {
                stream: 2,
                from: 5,
                to: 6
            }]
        );
    }
}
