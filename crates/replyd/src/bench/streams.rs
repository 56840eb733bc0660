//! `replyd bench --scenarios streams` (issue 4): idle live channels at
//! scale. For each C of `--stream-conns`, replyd holds C idle SSE streams
//! (`GET /v1/jobs/{id}/events`, each on its own job) and C WebSocket
//! connections (`GET /v1/ws`, each subscribed to its own job), while a
//! worker completes jobs at `--stream-rate` per second. Printed: the
//! server's RSS per idle connection and the completion → client latency.
//!
//! replyd runs in its own process (this binary's `serve`, a fresh SQLite
//! database), so that its RSS (`VmRSS` of `/proc/PID/status`) is its own:
//! read before the connections open and after they are open and idle.
//! The floor, measured in the same run with the same clients: a bare hyper
//! SSE broadcaster (`replyd bench-floor-sse`, also its own process) holding
//! 2C streams, each fed by its own channel, that sends one event per
//! "completion" (a POST to it).
//!
//! Latency: the worker records the instant each `complete` call returned
//! (the completion is durable then); each client the instant its
//! `job.succeeded` arrived. The difference is reported as is: it may be
//! negative when the push beats the HTTP answer. Also printed ("from the
//! call"): arrival minus the instant the `complete` call was sent, which
//! adds the durable commit.
//!
//! The clients are raw tokio sockets with a 1 KiB read buffer (the bench
//! holds up to 2C of them), spread over source addresses 127.0.0.2, .3, …
//! (at most [`PER_SOURCE`] each) so that ephemeral ports do not run out.
//! The descriptor limit is raised as far as allowed (the kernel's
//! `nr_open` with CAP_SYS_RESOURCE, else the hard limit) and the servers
//! inherit it; a C that does not fit (each process holds 2C sockets) is
//! measured at the largest C that does, and the output says so.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{BenchArgs, Conn, percentile_ms};

/// Client sockets per source address (about 28k ephemeral ports each).
const PER_SOURCE: usize = 10_000;
/// Connections opening at once: below the listen backlog (1024), so no SYN
/// is dropped and retried a second later.
const OPENING: usize = 128;
/// Connections completing jobs.
const COMPLETERS: usize = 32;
/// The targets of issue 4.
const TARGET_RSS_KIB: f64 = 16.0;
const TARGET_P99_MS: f64 = 50.0;
const TARGET_AT: usize = 20_000;
/// Descriptors a process needs besides the connections measured.
const FD_RESERVE: u64 = 300;

/// The next source address to hand out, as an offset from 127.0.0.2.
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

/// Source addresses for `n` client sockets, fresh for each measurement so
/// that one measurement's closed sockets never crowd the next's ports.
fn sources(n: usize) -> Vec<Ipv4Addr> {
    let count = n.div_ceil(PER_SOURCE).max(1) as u32;
    let first = NEXT_SOURCE.fetch_add(count, Ordering::Relaxed);
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    (0..count)
        .map(|k| Ipv4Addr::from(base + (first + k) % 0xFF_0000))
        .collect()
}

/// What one measurement found.
struct Figures {
    /// KiB of server RSS per idle connection: SSE, WebSocket, all.
    rss_sse: f64,
    rss_ws: f64,
    rss_all: f64,
    rss_before_mib: f64,
    rss_after_mib: f64,
    sse: Latencies,
    ws: Latencies,
    /// Completions per second actually achieved.
    rate: f64,
}

/// Completion → arrival latencies of one kind of client, sorted.
#[derive(Default)]
struct Latencies {
    /// Nanoseconds, arrival minus completion return (may be negative).
    ns: Vec<i64>,
    /// Nanoseconds from sending the `complete` call to the arrival: the
    /// durable commit plus the push.
    from_sent: Vec<i64>,
    /// Completed jobs whose event never arrived.
    missing: usize,
}

impl Latencies {
    fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.ns, p)
    }

    fn negative(&self) -> usize {
        self.ns.iter().filter(|&&n| n < 0).count()
    }
}

pub async fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let limit = raise_nofile();
    println!(
        "\nstreams: C idle SSE streams + C WebSocket subscriptions, jobs completed at {:.0}/s \
         ({} per C at most); servers in their own processes; descriptor limit {limit}",
        args.stream_rate, args.stream_completions
    );
    // Each process holds 2C sockets (the server its ends, the bench the
    // clients') plus a few files.
    let fits = (limit.saturating_sub(FD_RESERVE) / 2 / 100 * 100) as usize;
    let mut summary = Vec::new();
    for &asked in &args.stream_conns {
        let c = asked.min(fits);
        if c == 0 {
            bail!("the descriptor limit ({limit}) leaves no room for connections");
        }
        if c < asked {
            println!(
                "  C = {asked} needs {} descriptors in the server and in the bench, but RLIMIT_NOFILE \
                 is {limit} and this process may not raise it (no CAP_SYS_RESOURCE): measured at \
                 C = {c} ({} connections) instead",
                2 * asked as u64 + FD_RESERVE,
                2 * c
            );
        }
        let completions = args.stream_completions.min(2 * c).max(2);
        println!(
            "  C = {c}: {} connections, {completions} completions",
            2 * c
        );
        let replyd = replyd_run(args, dir, c, completions).await?;
        let floor = floor_run(args, c, completions).await?;
        report(asked, &replyd, &floor);
        summary.push((c, replyd, floor));
    }
    if summary.len() > 1 {
        println!(
            "  summary (RSS KiB per idle connection; latency from the completion's answer, ms p50/p99):"
        );
        println!(
            "  {:>7} {:>8} {:>8} {:>8} {:>8} {:>15} {:>15} {:>15} {:>9} {:>9}",
            "C", "SSE", "WS", "all", "floor", "SSE", "WS", "floor", "RSS/flr", "p99/flr"
        );
        for (c, r, f) in &summary {
            println!(
                "  {c:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7.2}/{:<7.2} {:>7.2}/{:<7.2} {:>7.2}/{:<7.2} {:>9.2} {:>9.2}",
                r.rss_sse,
                r.rss_ws,
                r.rss_all,
                f.rss_all,
                r.sse.percentile_ms(0.5),
                r.sse.percentile_ms(0.99),
                r.ws.percentile_ms(0.5),
                r.ws.percentile_ms(0.99),
                f.sse.percentile_ms(0.5),
                f.sse.percentile_ms(0.99),
                r.rss_all / f.rss_all,
                worst_p99(r) / f.sse.percentile_ms(0.99),
            );
        }
    }
    Ok(())
}

fn worst_p99(f: &Figures) -> f64 {
    f.sse.percentile_ms(0.99).max(f.ws.percentile_ms(0.99))
}

/// `asked`: the C asked for (the p99 target applies to the largest).
fn report(asked: usize, r: &Figures, f: &Figures) {
    let line = |name: &str, rss: f64, l: &Latencies| {
        println!(
            "  {name:<24} {rss:>6.1} KiB/conn   p50 {:>6.2} ms   p99 {:>6.2} ms   \
             (from the call: {:>5.2} / {:>5.2} ms)   ({} arrived, {} missing, {} negative)",
            l.percentile_ms(0.5),
            l.percentile_ms(0.99),
            percentile_ms(&l.from_sent, 0.5),
            percentile_ms(&l.from_sent, 0.99),
            l.ns.len(),
            l.missing,
            l.negative(),
        );
    };
    line("replyd SSE", r.rss_sse, &r.sse);
    line("replyd WebSocket", r.rss_ws, &r.ws);
    line("bare hyper SSE (floor)", f.rss_all, &f.sse);
    println!(
        "  replyd RSS {:.1} → {:.1} MiB: {:.1} KiB per idle connection (floor {:.1} → {:.1} MiB: {:.1}); \
         completions {:.0}/s (floor {:.0}/s)",
        r.rss_before_mib,
        r.rss_after_mib,
        r.rss_all,
        f.rss_before_mib,
        f.rss_after_mib,
        f.rss_all,
        r.rate,
        f.rate
    );
    let p99 = worst_p99(r);
    println!(
        "  ratio to floor: RSS {:.2}, p99 SSE {:.2}, p99 WebSocket {:.2}",
        r.rss_all / f.rss_all,
        r.sse.percentile_ms(0.99) / f.sse.percentile_ms(0.99),
        r.ws.percentile_ms(0.99) / f.sse.percentile_ms(0.99),
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    print!(
        "  targets: RSS <= {TARGET_RSS_KIB:.0} KiB/conn {}",
        verdict(r.rss_all <= TARGET_RSS_KIB)
    );
    if asked >= TARGET_AT {
        println!(
            "; p99 <= {TARGET_P99_MS:.0} ms at {TARGET_AT} {}",
            verdict(p99 <= TARGET_P99_MS)
        );
    } else {
        println!(" (the p99 target applies at C = {TARGET_AT})");
    }
}

/// Raises RLIMIT_NOFILE as far as allowed: as root to the kernel's
/// `nr_open`, else to the hard limit. Children inherit it. Returns the
/// soft limit in force.
pub(super) fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let want = nr_open.max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// A server in its own process, killed when dropped.
pub(super) struct Process {
    child: std::process::Child,
    pub(super) addr: SocketAddr,
    /// Its last log lines, for an error message.
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts this binary with `args` and waits for the line announcing
    /// `http://ADDR` after `marker` on stderr.
    async fn spawn(args: &[&str], marker: &'static str) -> anyhow::Result<Process> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        Process::spawn_exe(&exe, args, marker).await
    }

    /// As `spawn`, running the binary `exe` (another build of replyd).
    pub(super) async fn spawn_exe(
        exe: &Path,
        args: &[&str],
        marker: &'static str,
    ) -> anyhow::Result<Process> {
        let mut cmd = Command::new(exe);
        for var in [
            "REPLYD_CONFIG",
            "REPLYD_LISTEN",
            "REPLYD_DB",
            "REPLYD_DATABASE_URL",
            "REPLYD_INSECURE",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "warn,replyd_server=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start a server process")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        {
            let log = log.clone();
            // Reads the address, then keeps draining (a full pipe would
            // block the server); warnings are shown.
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(at) = line.find(marker) {
                        let rest = &line[at + marker.len()..];
                        let addr: String = rest
                            .trim_start_matches("http://")
                            .chars()
                            .take_while(|c| c.is_ascii_digit() || ".:".contains(*c))
                            .collect();
                        if let (Some(tx), Ok(addr)) = (tx.take(), addr.parse()) {
                            let _ = tx.send(addr);
                        }
                    } else if line.contains("WARN") || line.contains("ERROR") {
                        eprintln!("  [server] {line}");
                    }
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.push(line);
                    if log.len() > 50 {
                        log.remove(0);
                    }
                }
            });
        }
        let got =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await?;
        let mut process = Process {
            child,
            addr: "127.0.0.1:0".parse()?,
            log,
        };
        match got {
            Ok(addr) => process.addr = addr,
            Err(_) => bail!(
                "the server did not announce its address within 30 s (exit: {:?}); its log:\n{}",
                process.child.try_wait(),
                process.log_text()
            ),
        }
        Ok(process)
    }

    fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// The CPU it uses over `span`, in cores (1.0: one core all along).
    pub(super) async fn cpu_over(&self, span: Duration) -> anyhow::Result<f64> {
        let ticks = || -> anyhow::Result<u64> {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
            // After the command's parenthesised name: utime and stime are
            // the 12th and 13th fields.
            let rest = stat.rsplit_once(')').context("no ) in /proc/PID/stat")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Ok(f.get(11).context("utime")?.parse::<u64>()?
                + f.get(12).context("stime")?.parse::<u64>()?)
        };
        let (t0, at) = (ticks()?, Instant::now());
        tokio::time::sleep(span).await;
        let used = (ticks()? - t0) as f64 / 100.0;
        Ok(used / at.elapsed().as_secs_f64())
    }

    /// The descriptors it has open.
    pub(super) fn fds(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count())
    }

    /// Resident set size, in KiB.
    pub(super) fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// RSS after the process has been left alone for a second.
    pub(super) async fn settled_rss(&self) -> anyhow::Result<u64> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.rss_kib()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per-job timestamps shared by the completer and the clients, in
/// nanoseconds after `base`, plus one (zero: not yet).
struct Probe {
    base: Instant,
    /// When the `complete` call was sent.
    sent: Vec<AtomicU64>,
    /// When its answer returned.
    completed: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
    opened: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Probe {
    fn new(n: usize) -> Arc<Probe> {
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

    fn stamp(&self, slot: &AtomicU64, at: Instant) {
        let ns = at.saturating_duration_since(self.base).as_nanos() as u64 + 1;
        let _ = slot.compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn fail(&self, e: anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }

    /// Waits until `n` clients have opened (or failed).
    async fn wait_opened(&self, n: usize, what: &str) -> anyhow::Result<Duration> {
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
    async fn latencies(&self, indices: &[usize], grace: Duration) -> Latencies {
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
struct Scanner {
    tail: [u8; 32],
    len: usize,
}

impl Scanner {
    /// Feeds `chunk`; reports which of `needles` occur in it (or across its
    /// start).
    fn feed<const N: usize>(&mut self, chunk: &[u8], needles: [&[u8]; N]) -> [bool; N] {
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn connect(dst: SocketAddr, src: Ipv4Addr) -> anyhow::Result<TcpStream> {
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
fn spawn_sse(
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
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
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
fn ws_parse(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
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
fn spawn_ws(
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
struct Completion {
    index: usize,
    path: String,
    body: Bytes,
}

/// Sends `items` in order at `rate` per second over [`COMPLETERS`]
/// connections, stamping each job's completion when its answer returned.
/// Returns the rate achieved.
async fn complete_paced(
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
fn completion_order(c: usize, k: usize) -> Vec<usize> {
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

async fn replyd_run(
    args: &BenchArgs,
    dir: &Path,
    c: usize,
    completions: usize,
) -> anyhow::Result<Figures> {
    let db = dir.join(format!("bench-streams-{c}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let config = dir.join("bench-streams.toml");
    std::fs::write(
        &config,
        "[queues.bench]\nexecutor = \"pull\"\nmax_attempts = 1\ntimeout = 600\n\n\
         [queues.idle]\nexecutor = \"pull\"\n\n\
         # The bench's clients are a load it trusts.\n\
         [limits]\nmax_connections = 0\nmax_connections_per_ip = 0\nsubmit_rate = 0\n\
         streams = { total = 0, per_ip = 0, per_tenant = 0 }\n\
         websockets = { total = 0, per_ip = 0, per_tenant = 0 }\n\
         subscriptions = { total = 0, per_ip = 0, per_tenant = 0 }\n",
    )?;
    let (db, config) = (db.display().to_string(), config.display().to_string());
    let server = Process::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &db,
            "--config",
            &config,
        ],
        "replyd listening on ",
    )
    .await?;
    let dst = server.addr;

    // 2C jobs: index i < C for an SSE stream, C + i for a WebSocket; the
    // ones to complete go to queue `bench`, the others to `idle`.
    let order = completion_order(c, completions);
    let mut completed = vec![false; 2 * c];
    for &i in &order {
        completed[i] = true;
    }
    let submit_start = Instant::now();
    let ids = submit_jobs(dst, &completed).await?;
    let submit_time = submit_start.elapsed();
    let by_id: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    // Lease them all now, so that only completions move while measuring.
    let mut leased: HashMap<usize, String> = HashMap::new();
    let mut lease_conn = Conn::open(dst).await?;
    while leased.len() < order.len() {
        let (status, body) = lease_conn
            .post(
                "/v1/queues/bench/lease",
                Bytes::from_static(br#"{"worker":"bench","lease":1800,"wait":1,"batch":100}"#),
            )
            .await?;
        if status != StatusCode::OK {
            bail!(
                "lease answered {status} after {} of {}: {}",
                leased.len(),
                order.len(),
                String::from_utf8_lossy(&body)
            );
        }
        let batch: replyd_proto::LeaseBatch = serde_json::from_slice(&body)?;
        for l in batch.leases {
            let index = *by_id
                .get(l.job.id.as_str())
                .context("leased an unknown job")?;
            leased.insert(index, l.lease_id);
        }
    }
    drop(lease_conn);
    println!(
        "    replyd: {} jobs submitted in {:.1} s, {} leased",
        ids.len(),
        submit_time.as_secs_f64(),
        leased.len()
    );

    let probe = Probe::new(2 * c);
    let stop = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(OPENING));
    let rss0 = server.settled_rss().await?;
    for (i, src) in (0..c).zip(
        sources(c)
            .iter()
            .flat_map(|s| std::iter::repeat_n(*s, PER_SOURCE)),
    ) {
        let path = format!("/v1/jobs/{}/events", ids[i]);
        spawn_sse(probe.clone(), i, dst, src, path, gate.clone(), stop.clone());
    }
    let sse_open = probe.wait_opened(c, "SSE").await?;
    let rss1 = server.settled_rss().await?;
    for (i, src) in (c..2 * c).zip(
        sources(c)
            .iter()
            .flat_map(|s| std::iter::repeat_n(*s, PER_SOURCE)),
    ) {
        spawn_ws(
            probe.clone(),
            i,
            dst,
            src,
            ids[i].clone(),
            gate.clone(),
            stop.clone(),
        );
    }
    let ws_open = probe.wait_opened(2 * c, "WebSocket").await? + sse_open;
    let rss2 = server.settled_rss().await?;
    println!(
        "    replyd: {c} SSE streams open in {:.1} s, {c} WebSockets in {:.1} s; RSS {} → {} → {} KiB",
        sse_open.as_secs_f64(),
        (ws_open - sse_open).as_secs_f64(),
        rss0,
        rss1,
        rss2
    );

    let items = order
        .iter()
        .map(|&i| Completion {
            index: i,
            path: format!("/v1/jobs/{}/complete", ids[i]),
            body: Bytes::from(format!(r#"{{"lease_id":"{}","result":null}}"#, leased[&i])),
        })
        .collect();
    let rate = complete_paced(dst, items, args.stream_rate, &probe).await?;
    let (sse_idx, ws_idx): (Vec<usize>, Vec<usize>) = order.iter().partition(|&&i| i < c);
    let sse = probe.latencies(&sse_idx, Duration::from_secs(10)).await;
    let ws = probe.latencies(&ws_idx, Duration::from_secs(10)).await;
    if probe.failed.load(Ordering::Relaxed) > 0 {
        let first = probe
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        eprintln!(
            "    {} clients failed during the run; the first: {}",
            probe.failed.load(Ordering::Relaxed),
            first.unwrap_or_default()
        );
    }
    // The server goes first, so that the closes are its own (no client
    // port lingers in TIME_WAIT for the next measurement).
    drop(server);
    stop.cancel();
    let kib = |from: u64, to: u64, n: usize| (to as f64 - from as f64) / n as f64;
    Ok(Figures {
        rss_sse: kib(rss0, rss1, c),
        rss_ws: kib(rss1, rss2, c),
        rss_all: kib(rss0, rss2, 2 * c),
        rss_before_mib: rss0 as f64 / 1024.0,
        rss_after_mib: rss2 as f64 / 1024.0,
        sse,
        ws,
        rate,
    })
}

/// Submits one job per entry of `complete` (to queue `bench` where true,
/// else `idle`), in order as far as concurrency allows; their ids.
async fn submit_jobs(dst: SocketAddr, complete: &[bool]) -> anyhow::Result<Vec<String>> {
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

async fn floor_run(args: &BenchArgs, c: usize, completions: usize) -> anyhow::Result<Figures> {
    let server = Process::spawn(
        &["bench-floor-sse", "--listen", "127.0.0.1:0"],
        "floor listening on ",
    )
    .await?;
    let dst = server.addr;
    let probe = Probe::new(2 * c);
    let stop = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(OPENING));
    let rss0 = server.settled_rss().await?;
    let srcs = sources(2 * c);
    for (i, src) in (0..2 * c).zip(
        srcs.iter()
            .flat_map(|s| std::iter::repeat_n(*s, PER_SOURCE)),
    ) {
        let path = format!("/events/{i}");
        spawn_sse(probe.clone(), i, dst, src, path, gate.clone(), stop.clone());
    }
    let open = probe.wait_opened(2 * c, "floor SSE").await?;
    let rss1 = server.settled_rss().await?;
    println!(
        "    floor: {} SSE streams open in {:.1} s; RSS {rss0} → {rss1} KiB",
        2 * c,
        open.as_secs_f64()
    );
    let order = completion_order(c, completions);
    let items = order
        .iter()
        .map(|&i| Completion {
            index: i,
            path: format!("/complete/{i}"),
            body: Bytes::new(),
        })
        .collect();
    let rate = complete_paced(dst, items, args.stream_rate, &probe).await?;
    let sse = probe.latencies(&order, Duration::from_secs(10)).await;
    drop(server);
    stop.cancel();
    let per = (rss1 as f64 - rss0 as f64) / (2 * c) as f64;
    Ok(Figures {
        rss_sse: per,
        rss_ws: per,
        rss_all: per,
        rss_before_mib: rss0 as f64 / 1024.0,
        rss_after_mib: rss1 as f64 / 1024.0,
        sse,
        ws: Latencies::default(),
        rate,
    })
}

/// `replyd bench-floor-sse --listen ADDR` (hidden): the floor of the
/// streams scenario, a bare hyper HTTP/1.1 server with no replyd logic.
/// `GET /events/{i}` opens an SSE stream fed by its own channel and sends
/// a `job.accepted` event at once; `POST /complete/{i}` sends stream i a
/// `job.succeeded` event and ends it, as replyd ends a job's stream after
/// its terminal event. Announces `floor listening on http://ADDR` on
/// stderr.
pub async fn serve_floor(listen: SocketAddr) -> anyhow::Result<()> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("floor listening on http://{}", listener.local_addr()?);
    let streams: Arc<Mutex<HashMap<u64, tokio::sync::mpsc::Sender<Bytes>>>> = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let streams = streams.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| floor_handle(req, streams.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A representation of about the size replyd sends.
const FLOOR_DATA: &str = r#"{"id":"0198c2a5-7f3e-7b61-9a2c-5d4e3f2a1b0c","queue":"bench","state":"succeeded","progress":null,"attempt":1,"max_attempts":1,"cancel_requested":false,"created_at":"2026-11-28T12:00:00.000Z","updated_at":"2026-11-28T12:00:01.000Z","finished_at":"2026-11-28T12:00:01.000Z","expires_at":"2026-11-29T12:00:01.000Z","error":null,"links":{"self":"/v1/jobs/0198c2a5-7f3e-7b61-9a2c-5d4e3f2a1b0c","result":"/v1/jobs/0198c2a5-7f3e-7b61-9a2c-5d4e3f2a1b0c/result","events":"/v1/jobs/0198c2a5-7f3e-7b61-9a2c-5d4e3f2a1b0c/events"}}"#;

async fn floor_handle(
    req: hyper::Request<hyper::body::Incoming>,
    streams: Arc<Mutex<HashMap<u64, tokio::sync::mpsc::Sender<Bytes>>>>,
) -> Result<hyper::Response<FloorBody>, std::convert::Infallible> {
    let path = req.uri().path();
    let index = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|i| i.parse::<u64>().ok())
    };
    let respond = |status: StatusCode, body: FloorBody| {
        let mut res = hyper::Response::new(body);
        *res.status_mut() = status;
        res
    };
    let lock = || streams.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = index("/events/") {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let _ = tx.try_send(Bytes::from(format!(
            "id: {}\nevent: job.accepted\ndata: {FLOOR_DATA}\n\n",
            2 * i
        )));
        lock().insert(i, tx);
        let mut res = respond(StatusCode::OK, FloorBody::Stream(rx));
        let h = res.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-store"),
        );
        return Ok(res);
    }
    if let Some(i) = index("/complete/") {
        let tx = lock().remove(&i);
        return Ok(match tx {
            Some(tx) => {
                let _ = tx.try_send(Bytes::from(format!(
                    "id: {}\nevent: job.succeeded\ndata: {FLOOR_DATA}\n\n",
                    2 * i + 1
                )));
                respond(StatusCode::OK, FloorBody::Empty)
            }
            None => respond(StatusCode::NOT_FOUND, FloorBody::Empty),
        });
    }
    Ok(respond(StatusCode::NOT_FOUND, FloorBody::Empty))
}

/// The floor's bodies: nothing, or a stream fed by a channel (ending when
/// the sender is dropped).
enum FloorBody {
    Empty,
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for FloorBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            FloorBody::Empty => std::task::Poll::Ready(None),
            FloorBody::Stream(rx) => rx
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, FloorBody::Empty)
    }
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
