//! The accept loop. Like `axum::serve`, it serves HTTP/1.1 (with upgrades:
//! WebSockets) and HTTP/2 (prior knowledge) and drains gracefully; unlike
//! it, it bounds what a client can hold before reading a byte from it, and
//! keeps an idle connection cheap.
//!
//! - **Admission.** Each accepted connection takes a place of
//!   [`Held::Connection`]: at most `limits.max_connections` in all and
//!   `max_connections_per_ip` per client address (sized from the open-file
//!   limit unless configured, so that descriptors are left for the
//!   database and outbound calls). A connection past either is answered
//!   with a one-line 503 or 429 and closed at once, without being read.
//!   The place goes with the socket: a WebSocket that upgraded keeps it.
//! - **Deadlines.** A connection that sends nothing is closed after
//!   `limits.header_timeout`; HTTP/1.1 then gives each request's headers
//!   that long, idle keep-alive included (hyper's header timer); an
//!   HTTP/2 connection with no request in progress for that long is sent
//!   GOAWAY and closed. Bodies have their own deadline (`http::front`).
//! - **Protocol.** HTTP/2 is told by its preface, peeked at without
//!   consuming it, so that hyper's HTTP/1 read buffer starts empty
//!   (hyper-util's `auto` builder reads it instead and hands hyper a 24-byte
//!   head start, which made the buffer of every idle connection grow from
//!   8 to 16 KiB, measured with heaptrack). A peek never polls: when only
//!   part of a preface has come, the bytes are read instead (a read waits
//!   for more, a peek of bytes already there would not) and handed to
//!   hyper in front of the rest ([`Conn`]).
//! - **Lingering close.** When hyper closes an HTTP/1.1 connection while
//!   the client may still be sending (a 413 answered from `Content-Length`
//!   before the body, a 400 for a broken request), closing the socket at
//!   once would answer the client's next bytes with a reset, and a reset
//!   can destroy the response before the client reads it (Node's fetch
//!   reported `EPIPE` instead of the 413). So [`Conn`] sends FIN, then
//!   reads and discards what still comes until the client closes, for at
//!   most [`LINGER`] and [`LINGER_BYTES`] (nginx's `lingering_close`). The
//!   connection keeps its place meanwhile.
//! - One router and one pair of connection builders serve every
//!   connection; accept errors (out of descriptors) wait rather than spin.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::limits::{Held, Limiter, Over, Permit};

/// What an HTTP/2 connection with prior knowledge starts with (RFC 9113).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Requests one HTTP/2 connection may have in progress at once.
const H2_MAX_STREAMS: u32 = 100;

/// How long a closing HTTP/1.1 connection reads what the client still
/// sends, at most, and how many bytes (see the module's docs).
const LINGER: Duration = Duration::from_secs(10);
const LINGER_BYTES: usize = 64 << 20;

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting and waits for the open connections to finish (the caller
/// bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: super::front::Api,
    limiter: Arc<Limiter>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        // A peer that stops answering pings is gone.
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    // WebSockets over HTTP/2 (RFC 8441) need the CONNECT protocol.
    h2.enable_connect_protocol();
    // Each connection task holds a clone of `open`; when the last is
    // dropped, every connection has ended.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: wait for connections to close
                    // rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match limiter.hold(Held::Connection, Some(peer.ip()), None) {
            Ok(p) => p,
            Err(over) => {
                refuse(stream, &over);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (h1, h2) = (h1.clone(), h2.clone());
        let (open, shutdown, router) = (open.clone(), shutdown.clone(), router.clone());
        tokio::spawn(async move {
            serve_one(
                stream,
                peer,
                permit,
                router,
                h1,
                h2,
                header_timeout,
                shutdown,
            )
            .await;
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
}

/// Answers a connection past a limit without reading it, and closes it.
fn refuse(stream: TcpStream, over: &Over) {
    let (status, slug) = if over.scope == "total" {
        ("503 Service Unavailable", "too-many-connections")
    } else {
        ("429 Too Many Requests", "too-many-connections")
    };
    let body = serde_json::json!({
        "type": format!("urn:replyd:problem:{slug}"),
        "title": &status[4..],
        "status": status[..3].parse::<u16>().unwrap_or(503),
        "detail": over.to_string(),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer takes this at once; if not, the client
    // just sees the close.
    let _ = stream.try_write(answer.as_bytes());
}

#[allow(clippy::too_many_arguments)]
async fn serve_one(
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
    router: super::front::Api,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    // A connection that has sent nothing when draining begins, or within
    // the header timeout, is closed: it has no request to finish.
    let sniffed = tokio::select! {
        s = tokio::time::timeout(header_timeout, sniff(&mut stream)) => s,
        _ = shutdown.cancelled() => return,
    };
    let (is_h2, prefix) = match sniffed {
        Ok(Ok(Some(found))) => found,
        _ => return,
    };
    let client = ClientAddr(peer.ip());
    let service =
        TowerToHyperService::new(router.map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(client);
            req.map(Body::new)
        }));
    let io = TokioIo::new(Conn {
        stream,
        prefix,
        read_closed: false,
        linger: None,
        _permit: permit,
    });
    let served = if is_h2 {
        let activity = Arc::new(Activity::default());
        let service = Tracked {
            inner: service,
            activity: activity.clone(),
        };
        let conn = h2.serve_connection(io, service);
        drive!(conn, shutdown, Some((&*activity, header_timeout)))
    } else {
        // hyper's header timer closes an idle HTTP/1.1 connection.
        let conn = h1.serve_connection(io, service).with_upgrades();
        drive!(conn, shutdown, None)
    };
    if let Err(e) = served {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

/// Drives a hyper connection to its end. Once `shutdown` is cancelled, or
/// (given an `Activity` and a timeout) once it has had no request in
/// progress for that long, asks it to finish what it is doing and stop
/// (HTTP/1: after the response in flight; HTTP/2: GOAWAY).
macro_rules! drive {
    ($conn:expr, $shutdown:expr, $idle:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let idle: Option<(&Activity, Duration)> = $idle;
        let mut draining = false;
        let mut check = Instant::now() + idle.map_or(Duration::ZERO, |(_, t)| t);
        loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = $shutdown.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep_until(check), if !draining && idle.is_some() => {
                    let Some((activity, timeout)) = idle else { continue };
                    match activity.idle_since() {
                        Some(since) if since.elapsed() >= timeout => {
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        Some(since) => check = since + timeout,
                        None => check = Instant::now() + timeout,
                    }
                }
            }
        }
    }};
}
use drive;

/// Whether the connection opens with the HTTP/2 preface, and the bytes
/// read to tell (none when a peek told). `None`: it closed first.
async fn sniff(stream: &mut TcpStream) -> io::Result<Option<(bool, Bytes)>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    // A peek waits for the first bytes; it consumes nothing.
    let n = stream.peek(&mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf[..n] != H2_PREFACE[..n] {
        return Ok(Some((false, Bytes::new())));
    }
    if n == H2_PREFACE.len() {
        return Ok(Some((true, Bytes::new())));
    }
    // Part of the preface so far. Peeking again would find the same bytes
    // at once, so read instead (the bytes go to hyper ahead of the rest),
    // each read waiting for more, until the preface is whole, broken, or
    // the peer closes.
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf[got..]).await?;
        if n == 0 {
            return Ok(None);
        }
        got += n;
        if buf[..got] != H2_PREFACE[..got] {
            return Ok(Some((false, Bytes::copy_from_slice(&buf[..got]))));
        }
        if got == H2_PREFACE.len() {
            return Ok(Some((true, Bytes::copy_from_slice(&buf))));
        }
    }
}

/// A client's socket: the bytes read to sniff its protocol first, then the
/// socket's own; it holds the connection's place until it is dropped
/// (after an upgrade, when the WebSocket ends).
struct Conn {
    stream: TcpStream,
    prefix: Bytes,
    /// The client has closed its side (a read found the end).
    read_closed: bool,
    /// Once closing: until when, and how many more bytes, to discard.
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    _permit: Permit,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            this.read_closed = true;
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Sends FIN, then lingers: discards what the client still sends until
    /// it closes, [`LINGER`] passes or [`LINGER_BYTES`] have come.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            this.linger = Some((Box::pin(tokio::time::sleep(LINGER)), LINGER_BYTES));
        }
        let Some((deadline, left)) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 8192];
        loop {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() && buf.filled().len() < *left => {
                    *left -= buf.filled().len();
                }
                // The end, an error or past the budget: close.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// An HTTP/2 connection's requests in progress (from the request until its
/// response body is done or dropped) and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after `start` when the connection last became idle.
    idle_at: AtomicU64,
    start: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_at: AtomicU64::new(0),
            start: Instant::now(),
        }
    }
}

impl Activity {
    /// When it became idle, or `None` while a request is in progress.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.start + Duration::from_millis(self.idle_at.load(Ordering::Acquire)))
    }
}

/// Counts one request in progress until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.start.elapsed().as_millis() as u64;
        a.idle_at.store(ms, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router's service, counting each request in progress on its
/// connection until its response body ends.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = Busy::new(self.activity.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|inner| TrackedBody { inner, _busy: busy }))
        })
    }
}

/// A response body that keeps its request counted until it ends.
struct TrackedBody<B> {
    inner: B,
    _busy: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_preface_is_told_whole_or_in_pieces_without_losing_a_byte() {
        // Whole, in one segment: peeked, nothing consumed.
        let (mut c, mut s) = pair().await;
        c.write_all(H2_PREFACE).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(sniff(&mut s).await.unwrap(), Some((true, Bytes::new())));
        // HTTP/1.1: told by the first byte.
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(sniff(&mut s).await.unwrap(), Some((false, Bytes::new())));
        // A piece, then the rest: the piece is handed on.
        let (mut c, mut s) = pair().await;
        c.write_all(&H2_PREFACE[..3]).await.unwrap();
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.write_all(&H2_PREFACE[3..]).await.unwrap();
            c
        });
        assert_eq!(
            sniff(&mut s).await.unwrap(),
            Some((true, Bytes::from_static(H2_PREFACE)))
        );
        drop(rest.await.unwrap());
        // "P" of a POST: read, found not to be a preface, handed on.
        let (mut c, mut s) = pair().await;
        c.write_all(b"P").await.unwrap();
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.write_all(b"OST / HTTP/1.1\r\n").await.unwrap();
            c
        });
        let (h2, prefix) = sniff(&mut s).await.unwrap().unwrap();
        assert!(!h2);
        assert!(b"POST / HTTP/1.1\r\n".starts_with(&prefix), "{prefix:?}");
        drop(rest.await.unwrap());
    }

    /// "PRI" and a close: the peer's end is seen at once (a peek of the
    /// three bytes would keep finding them).
    #[tokio::test]
    async fn a_piece_of_a_preface_then_a_close_ends_the_sniff() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"PRI").await.unwrap();
        drop(c);
        let r = tokio::time::timeout(Duration::from_secs(2), sniff(&mut s))
            .await
            .expect("the sniff must end when the peer closes");
        assert_eq!(r.unwrap(), None);
    }
}
