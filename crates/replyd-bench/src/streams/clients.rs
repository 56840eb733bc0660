//! The clients of the streams scenario: raw SSE and WebSocket connections
//! from many source addresses, each stamping when its job's completion
//! arrives, and the completer that paces completions.

use super::{COMPLETERS, Latencies, PER_SOURCE};
use crate::harness::Conn;
use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::StatusCode;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The next source address to hand out, as an offset from 127.0.0.2.
pub(super) static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

/// Source addresses for `n` client sockets, fresh for each measurement so
/// that one measurement's closed sockets never crowd the next's ports.
pub(super) fn sources(n: usize) -> Vec<Ipv4Addr> {
    let count = n.div_ceil(PER_SOURCE).max(1) as u32;
    let first = NEXT_SOURCE.fetch_add(count, Ordering::Relaxed);
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    (0..count)
        .map(|k| Ipv4Addr::from(base + (first + k) % 0xFF_0000))
        .collect()
}

/// Per-job timestamps shared by the completer and the clients, in
/// nanoseconds after `base`, plus one (zero: not yet).
pub(super) struct Probe {
    pub(super) base: Instant,
    /// When the `complete` call was sent.
    pub(super) sent: Vec<AtomicU64>,
    /// When its answer returned.
    pub(super) completed: Vec<AtomicU64>,
    pub(super) arrived: Vec<AtomicU64>,
    pub(super) opened: AtomicUsize,
    pub(super) failed: AtomicUsize,
    pub(super) first_error: Mutex<Option<String>>,
}

impl Probe {
    pub(super) fn new(n: usize) -> Arc<Probe> {
        Arc::new(Probe {
            base: Instant::now(),
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            completed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            arrived: (0..n).map(|_| AtomicU64::new(0)).collect(),
            opened: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
        })
    }

    pub(super) fn stamp(&self, slot: &AtomicU64, at: Instant) {
        let ns = at.saturating_duration_since(self.base).as_nanos() as u64 + 1;
        let _ = slot.compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(super) fn fail(&self, e: anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }

    /// Waits until `n` clients have opened (or failed).
    pub(super) async fn wait_opened(&self, n: usize, what: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(120 + n as u64 / 200);
        loop {
            let (opened, failed) = (
                self.opened.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
            );
            if failed > 0 {
                let first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                bail!(
                    "{failed} {what} clients failed; the first: {}",
                    first.as_deref().unwrap_or("?")
                );
            }
            if opened >= n {
                return Ok(start.elapsed());
            }
            if Instant::now() > deadline {
                bail!("only {opened} of {n} {what} clients opened in time");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Latencies of the jobs `indices`, once their events arrived (or
    /// `grace` passed).
    pub(super) async fn latencies(&self, indices: &[usize], grace: Duration) -> Latencies {
        let deadline = Instant::now() + grace;
        let pending = || {
            indices.iter().any(|&i| {
                self.completed[i].load(Ordering::Relaxed) != 0
                    && self.arrived[i].load(Ordering::Relaxed) == 0
            })
        };
        while pending() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut l = Latencies::default();
        for &i in indices {
            let done = self.completed[i].load(Ordering::Relaxed);
            if done == 0 {
                continue;
            }
            match self.arrived[i].load(Ordering::Relaxed) {
                0 => l.missing += 1,
                at => {
                    l.ns.push(at as i64 - done as i64);
                    let sent = self.sent[i].load(Ordering::Relaxed);
                    l.from_sent.push(at as i64 - sent as i64);
                }
            }
        }
        l.ns.sort_unstable();
        l.from_sent.sort_unstable();
        l
    }
}

/// Finds `needle` in a byte stream read in pieces: the end of the previous
/// piece is kept so that a needle split across two reads is found.
#[derive(Default)]
pub(super) struct Scanner {
    tail: [u8; 32],
    len: usize,
}

impl Scanner {
    /// Feeds `chunk`; reports which of `needles` occur in it (or across its
    /// start).
    pub(super) fn feed<const N: usize>(&mut self, chunk: &[u8], needles: [&[u8]; N]) -> [bool; N] {
        let found = needles.map(|n| {
            contains(chunk, n)
                || (1..n.len().min(self.len + 1))
                    .any(|k| self.tail[..self.len].ends_with(&n[..k]) && chunk.starts_with(&n[k..]))
        });
        let keep = chunk.len().min(self.tail.len());
        if keep == self.tail.len() {
            self.tail.copy_from_slice(&chunk[chunk.len() - keep..]);
            self.len = keep;
        } else {
            let old = (self.tail.len() - keep).min(self.len);
            self.tail.copy_within(self.len - old..self.len, 0);
            self.tail[old..old + keep].copy_from_slice(&chunk[chunk.len() - keep..]);
            self.len = old + keep;
        }
        found
    }
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub(super) async fn connect(dst: SocketAddr, src: Ipv4Addr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .with_context(|| format!("bind {src}"))?;
    let stream = socket
        .connect(dst)
        .await
        .with_context(|| format!("connect {src} → {dst}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One SSE client: opens `path`, counts itself opened at the history's
/// `job.accepted`, stamps the arrival of `job.succeeded`, then holds the
/// connection until the server closes it or the bench stops.
pub(super) fn spawn_sse(
    probe: Arc<Probe>,
    index: usize,
    dst: SocketAddr,
    src: Ipv4Addr,
    path: String,
    gate: Arc<Semaphore>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let client = async {
            let permit = gate.acquire_owned().await?;
            let mut stream = connect(dst, src).await?;
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: {dst}\r\naccept: text/event-stream\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut buf = [0u8; 1024];
            let mut scan = Scanner::default();
            let mut permit = Some(permit);
            let mut first = true;
            loop {
                let n = stream.read(&mut buf).await?;
                let at = Instant::now();
                if n == 0 {
                    if permit.is_some() {
                        bail!("{path}: the server closed the stream before the history");
                    }
                    return Ok(());
                }
                let chunk = &buf[..n];
                if first {
                    first = false;
                    if !chunk.starts_with(b"HTTP/1.1 200") {
                        bail!(
                            "{path}: {}",
                            String::from_utf8_lossy(chunk).lines().next().unwrap_or("")
                        );
                    }
                }
                let [accepted, succeeded] =
                    scan.feed(chunk, [b"event: job.accepted", b"event: job.succeeded"]);
                if accepted && permit.take().is_some() {
                    probe.opened.fetch_add(1, Ordering::Relaxed);
                }
                if succeeded {
                    probe.stamp(&probe.arrived[index], at);
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            r = client => if let Err(e) = r { probe.fail(e) },
        }
    });
}

/// A client frame: FIN, `opcode`, masked as RFC 6455 requires of clients.
pub(super) fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x88];
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// The first complete frame in `buf`: (opcode, payload range, frame length).
pub(super) fn ws_parse(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    if masked {
        at += 4; // servers do not mask; skip a key anyway
    }
    let end = at + len;
    (buf.len() >= end).then_some((b0 & 0x0F, at..end, end))
}

/// One WebSocket client: upgrades, subscribes to `job`, counts itself
/// opened at the history's `job.accepted`, answers pings, stamps the
/// arrival of `job.succeeded`, then holds the connection until the bench
/// stops.
pub(super) fn spawn_ws(
    probe: Arc<Probe>,
    index: usize,
    dst: SocketAddr,
    src: Ipv4Addr,
    job: String,
    gate: Arc<Semaphore>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let client = async {
            let permit = gate.acquire_owned().await?;
            let mut stream = connect(dst, src).await?;
            let request = format!(
                "GET /v1/ws HTTP/1.1\r\nhost: {dst}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                 sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await?;
            let mut buf: Vec<u8> = Vec::with_capacity(1024);
            // The response head.
            loop {
                if stream.read_buf(&mut buf).await? == 0 {
                    bail!("the server closed the connection during the upgrade");
                }
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !buf.starts_with(b"HTTP/1.1 101") {
                        bail!(
                            "upgrade refused: {}",
                            String::from_utf8_lossy(&buf).lines().next().unwrap_or("")
                        );
                    }
                    buf.drain(..end + 4);
                    break;
                }
            }
            let subscribe = format!(r#"{{"type":"subscribe","ref":{index},"job_id":"{job}"}}"#);
            stream
                .write_all(&ws_frame(0x1, subscribe.as_bytes()))
                .await?;
            let mut permit = Some(permit);
            // When the bytes in `buf` arrived: frames are stamped with it.
            let mut at = Instant::now();
            loop {
                while let Some((opcode, payload, len)) = ws_parse(&buf) {
                    let text = &buf[payload.clone()];
                    match opcode {
                        0x1 => {
                            if contains(text, br#""event":"job.succeeded""#) {
                                probe.stamp(&probe.arrived[index], at);
                            } else if contains(text, br#""event":"job.accepted""#) {
                                if permit.take().is_some() {
                                    probe.opened.fetch_add(1, Ordering::Relaxed);
                                }
                            } else if contains(text, br#""type":"error""#) {
                                bail!("{}", String::from_utf8_lossy(text));
                            }
                        }
                        0x8 => return Ok(()),
                        0x9 => stream.write_all(&ws_frame(0xA, text)).await?,
                        _ => {}
                    }
                    buf.drain(..len);
                }
                if buf.capacity() - buf.len() < 512 {
                    buf.reserve(1024);
                }
                if stream.read_buf(&mut buf).await? == 0 {
                    if permit.is_some() {
                        bail!("the server closed the connection before the history");
                    }
                    return Ok(());
                }
                at = Instant::now();
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            r = client => if let Err(e) = r { probe.fail(e) },
        }
    });
}

/// One completion: the job's probe index and the request that completes it.
pub(super) struct Completion {
    pub(super) index: usize,
    pub(super) path: String,
    pub(super) body: Bytes,
}

/// Sends `items` in order at `rate` per second over [`COMPLETERS`]
/// connections, stamping each job's completion when its answer returned.
/// Returns the rate achieved.
pub(super) async fn complete_paced(
    dst: SocketAddr,
    items: Vec<Completion>,
    rate: f64,
    probe: &Arc<Probe>,
) -> anyhow::Result<f64> {
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for _ in 0..COMPLETERS.min(items.len()) {
        let (items, next, probe) = (items.clone(), next.clone(), probe.clone());
        let mut conn = Conn::open(dst).await?;
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(k) else {
                    return anyhow::Ok(());
                };
                tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
                probe.stamp(&probe.sent[item.index], Instant::now());
                let (status, body) = conn.post(&item.path, item.body.clone()).await?;
                let at = Instant::now();
                if status != StatusCode::OK {
                    bail!(
                        "{} answered {status}: {}",
                        item.path,
                        String::from_utf8_lossy(&body)
                    );
                }
                probe.stamp(&probe.completed[item.index], at);
            }
        }));
    }
    for t in tasks {
        t.await?.context("a completer failed")?;
    }
    Ok(items.len() as f64 / start.elapsed().as_secs_f64())
}

/// Which probe indices are completed: `k` of the SSE half `0..c` and of the
/// other half `c..2c`, interleaved (SSE, other, SSE, …) in completion
/// order.
pub(super) fn completion_order(c: usize, k: usize) -> Vec<usize> {
    let (first, second) = (k.div_ceil(2).min(c), (k / 2).min(c));
    let mut order = Vec::with_capacity(first + second);
    for i in 0..first.max(second) {
        if i < first {
            order.push(i);
        }
        if i < second {
            order.push(c + i);
        }
    }
    order
}

/// Submits one job per entry of `complete` (to queue `bench` where true,
/// else `idle`), in order as far as concurrency allows; their ids.
pub(super) async fn submit_jobs(dst: SocketAddr, complete: &[bool]) -> anyhow::Result<Vec<String>> {
    let complete = Arc::new(complete.to_vec());
    let ids = Arc::new(Mutex::new(vec![String::new(); complete.len()]));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (complete, ids, next) = (complete.clone(), ids.clone(), next.clone());
        let mut conn = Conn::open(dst).await?;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&bench) = complete.get(i) else {
                    return anyhow::Ok(());
                };
                let body: &'static [u8] = if bench {
                    br#"{"queue":"bench","input":{"n":1}}"#
                } else {
                    br#"{"queue":"idle","input":{"n":1}}"#
                };
                let (status, body) = conn.post("/v1/jobs", Bytes::from_static(body)).await?;
                if status != StatusCode::ACCEPTED {
                    bail!(
                        "submit answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                let job: replyd_proto::Job = serde_json::from_slice(&body)?;
                ids.lock().unwrap_or_else(|p| p.into_inner())[i] = job.id;
            }
        }));
    }
    for t in tasks {
        t.await?.context("a submitter failed")?;
    }
    let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_needles_split_across_reads() {
        let mut s = Scanner::default();
        assert_eq!(
            s.feed(b"xx event: job.acc", [b"event: job.accepted"]),
            [false]
        );
        assert_eq!(s.feed(b"epted\n", [b"event: job.accepted"]), [true]);
        assert_eq!(s.feed(b"e", [b"event: job.succeeded"]), [false]);
        assert_eq!(
            s.feed(b"vent: job.succeeded", [b"event: job.succeeded"]),
            [true]
        );
        let long = [b'a'; 100];
        assert_eq!(s.feed(&long, [b"event"]), [false]);
    }

    #[test]
    fn ws_frames_round_trip_lengths() {
        for n in [0usize, 5, 125, 126, 1000, 70_000] {
            let payload = vec![b'x'; n];
            let f = ws_frame(0x1, &payload);
            let (op, range, len) = ws_parse(&f).unwrap();
            assert_eq!((op, range.len(), len), (1, n, f.len()));
            assert!(ws_parse(&f[..f.len() - 1]).is_none());
        }
    }

    #[test]
    fn completions_interleave_both_halves() {
        assert_eq!(completion_order(4, 5), vec![0, 4, 1, 5, 2]);
        assert_eq!(completion_order(2, 10), vec![0, 2, 1, 3]);
    }
}
