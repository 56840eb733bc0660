//! Reading a Durable Stream: catch-up, `live=long-poll`, `live=sse`, of
//! a stream of `/v1/stream/` or of a job's output ([`Source`]).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use replyd_core::JobId;
use replyd_core::stream::{
    Found, ReadChunks, StreamKey, StreamState, encode_offset, is_text, parse_offset,
};

use super::{
    content_type_value, etag, gone, h, not_found, offset_value, set, set_true, streams_of,
};
use crate::error::{ApiError, ApiResult};
use crate::http::{AppState, Client};
use crate::limits::Held;
use crate::live::{Listener, Target};

/// What a read reads.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A stream of `/v1/stream/`.
    Stream(StreamKey),
    /// Job `job`'s output, at `key`: empty until its first append, and
    /// closed once the job has ended.
    Output { key: StreamKey, job: JobId },
}

impl Source {
    pub(crate) fn key(&self) -> &StreamKey {
        match self {
            Source::Stream(key) | Source::Output { key, .. } => key,
        }
    }

    /// The stream as its readers see it, and what it holds from `from`
    /// (clamped to its tail), about `budget` bytes.
    pub(crate) async fn read(
        &self,
        app: &AppState,
        from: u64,
        budget: usize,
    ) -> ApiResult<(StreamState, ReadChunks)> {
        let streams = streams_of(app)?;
        match self {
            Source::Stream(key) => match streams.stream_read(key, from, budget, app.now()).await? {
                Found::Live(found) => Ok(found),
                Found::Missing => Err(not_found()),
                Found::Gone => Err(gone()),
            },
            Source::Output { key, job } => {
                // The job first: every append it took came before its end.
                let record = app
                    .store
                    .get(*job)
                    .await?
                    .ok_or_else(ApiError::job_not_found)?;
                let ended = record.state.is_terminal();
                match streams.stream_read(key, from, budget, app.now()).await? {
                    Found::Live((mut s, read)) => {
                        s.closed |= ended;
                        Ok((s, read))
                    }
                    Found::Missing | Found::Gone => Ok((
                        StreamState::nothing_yet(record.output_type.as_deref(), ended, app.now()),
                        ReadChunks {
                            chunks: Vec::new(),
                            next: 0,
                        },
                    )),
                }
            }
        }
    }

    /// What else wakes a waiting reader: a job output's job moving (its
    /// end closes the output).
    fn listener(&self, app: &AppState) -> Option<Listener> {
        match self {
            Source::Stream(_) => None,
            Source::Output { job, .. } => {
                let l = app.hub.listen();
                l.watch(0, Target::Job(*job));
                Some(l)
            }
        }
    }
}

/// Waits for an event of `l`, or forever without one.
async fn moved(l: &mut Option<Listener>) {
    match l {
        Some(l) => {
            if l.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Start,
    Now,
    At(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    No,
    LongPoll,
    Sse,
}

fn read_params(q: &[(String, String)]) -> ApiResult<(Option<From>, Live, Option<String>)> {
    let mut offset = None;
    let mut live = Live::No;
    let mut cursor = None;
    for (k, v) in q {
        match k.as_str() {
            "offset" => {
                if offset.is_some() {
                    return Err(ApiError::bad_request("give one offset"));
                }
                offset = Some(match v.as_str() {
                    "-1" => From::Start,
                    "now" => From::Now,
                    "" => return Err(ApiError::bad_request("offset must not be empty")),
                    raw => From::At(parse_offset(raw).ok_or_else(|| {
                        ApiError::bad_request(
                            "malformed offset: use -1, now, or an offset this server gave",
                        )
                    })?),
                });
            }
            "live" => {
                live = match v.as_str() {
                    "long-poll" => Live::LongPoll,
                    "sse" => Live::Sse,
                    "false" | "" => Live::No,
                    _ => return Err(ApiError::bad_request("live must be long-poll or sse")),
                }
            }
            "cursor" => cursor = Some(v.clone()),
            _ => {}
        }
    }
    if live != Live::No && offset.is_none() {
        return Err(ApiError::bad_request("a live read needs an offset"));
    }
    Ok((offset, live, cursor))
}

/// The cursor of a live answer: 20-second intervals since 2024-10-09, and
/// always past the client's (by 1 to 180 intervals of jitter), so that
/// caches never loop on one key.
fn cursor(client: Option<&str>, now: DateTime<Utc>) -> HeaderValue {
    const EPOCH_MS: i64 = 1_728_432_000_000;
    let current = (now.timestamp_millis() - EPOCH_MS).max(0) / 20_000;
    let value = match client.and_then(|c| c.parse::<i64>().ok()) {
        Some(c) if c >= current => c.saturating_add(rand::random_range(1..=180)),
        _ => current,
    };
    HeaderValue::from(value)
}

/// A read's bytes as the answer's body: the bytes, or for JSON the
/// messages as one array.
pub(super) fn render(s: &StreamState, read: &ReadChunks) -> Bytes {
    read.body(s)
}

pub(crate) async fn read(
    app: &AppState,
    source: &Source,
    client: Client,
    headers: &HeaderMap,
    q: &[(String, String)],
    now: DateTime<Utc>,
) -> ApiResult<Response> {
    let (offset, live, client_cursor) = read_params(q)?;
    let budget = app.config.durable_streams.read_chunk;
    let from = match offset.unwrap_or(From::Start) {
        From::Start => 0,
        From::At(p) => p,
        From::Now => u64::MAX,
    };
    if live == Live::Sse {
        return sse(app, source, client, from, client_cursor).await;
    }
    let (s, chunk) = source.read(app, from, budget).await?;
    let at_now = offset == Some(From::Now);
    if live == Live::No && at_now {
        let mut res = Response::new(Body::from(if s.json() { "[]" } else { "" }));
        res.headers_mut()
            .insert(header::CONTENT_TYPE, content_type_value(&s));
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        set(&mut res, h::NEXT_OFFSET, offset_value(s.tail));
        set_true(&mut res, h::UP_TO_DATE);
        if s.closed {
            set_true(&mut res, h::CLOSED);
        }
        return Ok(res);
    }
    if live == Live::LongPoll && chunk.chunks.is_empty() {
        return long_poll(app, source, client, s, chunk.next, client_cursor).await;
    }
    let start = offset_label(offset);
    Ok(answer(
        &s,
        &chunk,
        &start,
        headers,
        (live == Live::LongPoll).then(|| cursor(client_cursor.as_deref(), now)),
    ))
}

fn offset_label(offset: Option<From>) -> String {
    match offset {
        None | Some(From::Start) => "-1".into(),
        Some(From::Now) => "now".into(),
        Some(From::At(p)) => encode_offset(p),
    }
}

/// A `200` with a read's data (catch-up, or a long poll that found some).
fn answer(
    s: &StreamState,
    read: &ReadChunks,
    start: &str,
    headers: &HeaderMap,
    cursor: Option<HeaderValue>,
) -> Response {
    let up_to_date = read.next >= s.tail;
    let closed = s.closed && up_to_date;
    let tag = etag(s, start, read.next, closed);
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes())
    {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        res.headers_mut().insert(header::ETAG, tag);
        return res;
    }
    let body = render(s, read);
    let mut res = Response::new(Body::from(body));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, content_type_value(s));
    res.headers_mut().insert(header::ETAG, tag);
    // Data at a position never changes, so a chunk may be kept; the tail's
    // empty answer may not (it would hide what comes next).
    let cache = if read.chunks.is_empty() {
        "no-store"
    } else {
        "private, max-age=60, stale-while-revalidate=300"
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    set(&mut res, h::NEXT_OFFSET, offset_value(read.next));
    if up_to_date {
        set_true(&mut res, h::UP_TO_DATE);
    }
    if closed {
        set_true(&mut res, h::CLOSED);
    }
    if let Some(c) = cursor {
        set(&mut res, h::CURSOR, c);
    }
    res
}

/// A long poll at the tail: waits for the stream to move, up to
/// `durable_streams.long_poll`.
async fn long_poll(
    app: &AppState,
    source: &Source,
    client: Client,
    mut s: StreamState,
    at: u64,
    client_cursor: Option<String>,
) -> ApiResult<Response> {
    let timeout = crate::config::secs(app.config.durable_streams.long_poll);
    let deadline = tokio::time::Instant::now() + timeout;
    let key = source.key();
    let _permit = client.hold(app, Held::Wait, Some(&key.tenant))?;
    let watch = app.tails.watch(key.tick());
    let mut events = source.listener(app);
    loop {
        if s.closed {
            let mut res = StatusCode::NO_CONTENT.into_response();
            set(&mut res, h::NEXT_OFFSET, offset_value(s.tail));
            set_true(&mut res, h::UP_TO_DATE);
            set_true(&mut res, h::CLOSED);
            return Ok(res);
        }
        let woken = watch.notify().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let read = source
            .read(app, at, app.config.durable_streams.read_chunk)
            .await?;
        s = read.0;
        if !read.1.chunks.is_empty() {
            let c = cursor(client_cursor.as_deref(), app.now());
            return Ok(answer(
                &s,
                &read.1,
                &encode_offset(at),
                &HeaderMap::new(),
                Some(c),
            ));
        }
        if s.closed {
            continue;
        }
        let expired = tokio::select! {
            () = &mut woken => false,
            () = moved(&mut events) => false,
            () = tokio::time::sleep_until(deadline) => true,
            () = app.shutdown.cancelled() => true,
        };
        if expired {
            let mut res = StatusCode::NO_CONTENT.into_response();
            set(&mut res, h::NEXT_OFFSET, offset_value(at));
            set_true(&mut res, h::UP_TO_DATE);
            set(
                &mut res,
                h::CURSOR,
                cursor(client_cursor.as_deref(), app.now()),
            );
            return Ok(res);
        }
    }
}

/// One SSE event: `event:` then each line of `data` as its own `data:`
/// line (CR, LF and CRLF all end a line in SSE, so a payload can never
/// end an event or start another).
fn sse_event(out: &mut BytesMut, event: &str, data: &[u8]) {
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    let mut rest = data;
    loop {
        let cut = rest.iter().position(|b| *b == b'\n' || *b == b'\r');
        let (line, next) = match cut {
            None => (rest, None),
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                (&rest[..i], Some(&rest[i + skip..]))
            }
        };
        // One space after the colon only when the line starts with one:
        // a reader strips exactly one.
        out.put_slice(if line.first() == Some(&b' ') {
            b"data: "
        } else {
            b"data:"
        });
        out.put_slice(line);
        out.put_u8(b'\n');
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    out.put_u8(b'\n');
}

/// A reader that follows a stream from an offset: each read that finds
/// data (and the first, and the one that finds the stream closed at its
/// tail), waiting on the stream's tail and, for a job's output, the job.
pub(crate) struct Follow {
    app: AppState,
    source: Source,
    events: Option<Listener>,
    watch: crate::tails::Watch,
    at: u64,
    started: bool,
    /// The stream as the last read of the store found it.
    last: Option<StreamState>,
    ends: tokio::time::Instant,
}

/// What this node's last append says to a [`Follow`].
enum Fresh {
    /// It starts where the reader is: its bytes, as a read would give them.
    Here(StreamState, ReadChunks),
    /// It ends where the reader is: nothing newer (unless a tick comes).
    Behind,
}

/// What a [`Follow`] found.
pub(crate) enum Followed {
    /// Data from the reader's offset (maybe none, on the first read or
    /// at a closed tail); the offset has moved past it.
    Read(StreamState, ReadChunks),
    /// Nothing for a keep-alive's while.
    Quiet,
    /// The reader's lifetime ran out, the server is stopping, or the
    /// stream went away.
    Ended,
}

impl Follow {
    /// Follows `source` from `from` (clamped to its tail) for `lifetime`.
    pub(crate) fn new(
        app: &AppState,
        source: &Source,
        from: u64,
        lifetime: std::time::Duration,
    ) -> Follow {
        Follow {
            app: app.clone(),
            source: source.clone(),
            events: source.listener(app),
            watch: app.tails.watch(source.key().tick()),
            at: from,
            started: false,
            last: None,
            ends: tokio::time::Instant::now() + lifetime,
        }
    }

    /// The offset the next read starts at.
    pub(crate) fn at(&self) -> u64 {
        self.at
    }

    pub(crate) async fn next(&mut self, keepalive: std::time::Duration) -> Followed {
        // Whether the store must be read (else this node's last append may
        // say all there is): not after a wake-up by the stream's tail.
        let mut look = true;
        loop {
            let woken = self.watch.notify().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.fresh() {
                Some(Fresh::Here(s, read)) => {
                    self.at = read.next;
                    return Followed::Read(s, read);
                }
                Some(Fresh::Behind) if !look => {}
                _ => look = true,
            }
            if look {
                let budget = self.app.config.durable_streams.read_chunk;
                let Ok((s, read)) = self.source.read(&self.app, self.at, budget).await else {
                    return Followed::Ended;
                };
                self.last = Some(s.clone());
                let at_tail = read.next >= s.tail;
                if !read.chunks.is_empty() || !self.started || (s.closed && at_tail) {
                    self.started = true;
                    self.at = read.next;
                    return Followed::Read(s, read);
                }
            }
            let tick = tokio::time::Instant::now() + keepalive;
            tokio::select! {
                () = &mut woken => look = false,
                () = moved(&mut self.events) => look = true,
                () = tokio::time::sleep_until(tick.min(self.ends)) => {
                    if tokio::time::Instant::now() >= self.ends {
                        return Followed::Ended;
                    }
                    return Followed::Quiet;
                }
                () = self.app.shutdown.cancelled() => return Followed::Ended,
            }
        }
    }

    /// What this node's last append to the stream tells the reader, when
    /// it is its stream's and the stream is a byte stream it has read.
    fn fresh(&self) -> Option<Fresh> {
        // (Not a job's output before its first append: it had no type yet.)
        let last = self
            .last
            .as_ref()
            .filter(|s| self.started && s.id != 0 && !s.json())?;
        let f = self
            .watch
            .fresh()
            .filter(|f| f.stream == *self.source.key())?;
        if f.start == self.at {
            let mut s = last.clone();
            s.tail = f.end();
            s.closed |= f.closed;
            let read = ReadChunks {
                chunks: vec![f.data.clone()],
                next: f.end(),
            };
            return Some(Fresh::Here(s, read));
        }
        (f.end() == self.at).then_some(Fresh::Behind)
    }
}

struct SseState {
    follow: Follow,
    cursor: Option<String>,
    base64: bool,
    done: bool,
    _permit: crate::limits::Permit,
}

impl SseState {
    /// The next frames: data then control, or a keep-alive; `None` once the
    /// stream closed, the connection's lifetime ran out, or the stream went
    /// away.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let keepalive = crate::config::secs(self.follow.app.config.streams.keepalive);
        let (s, read) = match self.follow.next(keepalive).await {
            Followed::Read(s, read) => (s, read),
            Followed::Quiet => return Some(Bytes::from_static(b": keep-alive\n\n")),
            Followed::Ended => {
                self.done = true;
                return None;
            }
        };
        let mut out = BytesMut::new();
        if !read.chunks.is_empty() {
            let data = render(&s, &read);
            if self.base64 {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
                sse_event(&mut out, "data", b64.as_bytes());
            } else {
                sse_event(&mut out, "data", &data);
            }
        }
        let at = self.follow.at();
        let at_tail = at >= s.tail;
        let mut control = serde_json::Map::new();
        control.insert("streamNextOffset".into(), encode_offset(at).into());
        if s.closed && at_tail {
            control.insert("streamClosed".into(), true.into());
            control.insert("upToDate".into(), true.into());
            self.done = true;
        } else {
            let c = cursor(self.cursor.as_deref(), self.follow.app.now());
            control.insert(
                "streamCursor".into(),
                c.to_str().unwrap_or_default().to_string().into(),
            );
            if at_tail {
                control.insert("upToDate".into(), true.into());
            }
        }
        let json = serde_json::Value::Object(control).to_string();
        sse_event(&mut out, "control", json.as_bytes());
        Some(out.freeze())
    }
}

async fn sse(
    app: &AppState,
    source: &Source,
    client: Client,
    from: u64,
    client_cursor: Option<String>,
) -> ApiResult<Response> {
    let key = source.key();
    let permit = client.hold(app, Held::Stream, Some(&key.tenant))?;
    // Where "now" is, and whether the stream is there at all.
    let (s, _) = source.read(app, u64::MAX, 1).await?;
    let base64 = !is_text(&s.content_type);
    let lifetime = crate::config::secs(app.config.durable_streams.sse_lifetime);
    let state = SseState {
        follow: Follow::new(app, source, from.min(s.tail), lifetime),
        cursor: client_cursor,
        base64,
        done: false,
        _permit: permit,
    };
    let body = futures::stream::unfold(state, |mut st| async move {
        let chunk = st.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), st))
    });
    let mut res = Response::new(Body::from_stream(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if base64 {
        set(
            &mut res,
            h::SSE_ENCODING,
            HeaderValue::from_static("base64"),
        );
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(data: &[u8]) -> String {
        let mut out = BytesMut::new();
        sse_event(&mut out, "data", data);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn payload_line_breaks_never_end_an_sse_event() {
        assert_eq!(
            events(b"a\r\n\r\nevent: x"),
            "event: data\ndata:a\ndata:\ndata:event: x\n\n"
        );
        assert_eq!(events(b"a\rb"), "event: data\ndata:a\ndata:b\n\n");
        assert_eq!(events(b" a"), "event: data\ndata:  a\n\n");
        assert_eq!(events(b""), "event: data\ndata:\n\n");
    }

    #[test]
    fn cursors_never_go_back() {
        let now = Utc::now();
        let current: i64 = cursor(None, now).to_str().unwrap().parse().unwrap();
        let next: i64 = cursor(Some(&current.to_string()), now)
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(next > current);
        let ahead = current + 1000;
        let past_ahead: i64 = cursor(Some(&ahead.to_string()), now)
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(past_ahead > ahead);
    }
}
