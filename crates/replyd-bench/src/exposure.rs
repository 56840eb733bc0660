//! `replyd bench --scenarios exposure`: what a stranger with no key can
//! make a replyd hold (issue 12), measured on this build and, given
//! `--baseline-bin PATH` (an older `replyd`), on that one in the same run,
//! each server in its own process with a fresh database and the default
//! configuration (an open server on loopback).
//!
//! 1. **Idle connections.** Two attacker processes (this binary's hidden
//!    `bench-hold`) open `--exposure-conns` connections between them from
//!    127.0.0.2 (HTTP/1.1, sending nothing) and 127.0.0.3 (HTTP/2: the
//!    preface and a SETTINGS frame, then nothing). While they hold them: how
//!    many the server keeps, its RSS and CPU, and `/healthz` from a fresh
//!    client at 127.0.0.9 (20 new connections, one after another, 5 s
//!    each at most).
//! 2. **Pieces of a preface.** 2,000 connections that send `PRI` and close;
//!    then the server's CPU over the next 10 s.
//! 3. **Methods as labels.** 300 requests whose method is 20 KB long; the
//!    size of `/metrics` and the RSS before and after.
//! 4. **WebSocket refs.** 3 connections × 100 subscriptions, each with a
//!    1 MB `ref`; the RSS before and after.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::BenchArgs;
use crate::process::{Process, raise_nofile};

/// What an HTTP/2 client sends first: the preface and an empty SETTINGS
/// frame.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// One server's figures.
#[derive(Debug, Default)]
struct Figures {
    held: usize,
    asked: usize,
    hold_rss_mib: f64,
    hold_cpu: f64,
    healthz_ok: usize,
    healthz_p50_ms: f64,
    healthz_max_ms: f64,
    pri_cpu: f64,
    metrics_before: usize,
    metrics_after: usize,
    metrics_rss_mib: f64,
    refs_rss_mib: f64,
}

pub async fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let this = std::env::current_exe().context("cannot find this binary")?;
    let mut runs: Vec<(&str, PathBuf)> = Vec::new();
    if let Some(b) = &args.baseline_bin {
        runs.push(("baseline", b.clone()));
    }
    runs.push(("this build", this));
    println!(
        "exposure: {} idle connections from two addresses, 2,000 PRI-and-close, \
         300 × 20 KB methods, 3 × 100 WebSocket refs of 1 MB",
        args.exposure_conns
    );
    let mut all = Vec::new();
    for (label, exe) in &runs {
        println!("  {label}: {}", exe.display());
        let f = measure(args, dir, exe).await?;
        all.push((*label, f));
    }
    println!();
    println!(
        "  {:<44} {}",
        "",
        all.iter()
            .map(|(l, _)| format!("{l:>16}"))
            .collect::<String>()
    );
    let row = |name: &str, v: &dyn Fn(&Figures) -> String| {
        println!(
            "  {name:<44} {}",
            all.iter()
                .map(|(_, f)| format!("{:>16}", v(f)))
                .collect::<String>()
        );
    };
    row("idle connections the server keeps", &|f| {
        format!("{} / {}", f.held, f.asked)
    });
    row("  server RSS while held (MiB)", &|f| {
        format!("{:.0}", f.hold_rss_mib)
    });
    row("  server CPU while held (cores)", &|f| {
        format!("{:.2}", f.hold_cpu)
    });
    row("  /healthz from a fresh client: answered", &|f| {
        format!("{} / 20", f.healthz_ok)
    });
    row("  /healthz p50 / max (ms)", &|f| {
        format!("{:.1} / {:.0}", f.healthz_p50_ms, f.healthz_max_ms)
    });
    row("CPU 10 s after 2,000 PRI-and-close (cores)", &|f| {
        format!("{:.2}", f.pri_cpu)
    });
    row("/metrics after 300 × 20 KB methods (bytes)", &|f| {
        format!("{} → {}", f.metrics_before, f.metrics_after)
    });
    row("  server RSS growth (MiB)", &|f| {
        format!("{:.0}", f.metrics_rss_mib)
    });
    row("RSS growth, 300 WebSocket refs of 1 MB (MiB)", &|f| {
        format!("{:.0}", f.refs_rss_mib)
    });
    Ok(())
}

async fn server(dir: &Path, exe: &Path, name: &str) -> anyhow::Result<Process> {
    let db = dir.join(format!("exposure-{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let db = db.display().to_string();
    Process::spawn_exe(
        exe,
        &["serve", "--listen", "127.0.0.1:0", "--db", &db],
        "replyd listening on ",
    )
    .await
}

async fn measure(args: &BenchArgs, dir: &Path, exe: &Path) -> anyhow::Result<Figures> {
    let mut f = Figures {
        asked: args.exposure_conns,
        ..Figures::default()
    };
    // 1. Idle connections.
    {
        let s = server(dir, exe, "hold").await?;
        let fds0 = s.fds()?;
        let half = args.exposure_conns / 2;
        let mut h1 = Holder::spawn(s.addr, Ipv4Addr::new(127, 0, 0, 2), half, false).await?;
        let mut h2 = Holder::spawn(
            s.addr,
            Ipv4Addr::new(127, 0, 0, 3),
            args.exposure_conns - half,
            true,
        )
        .await?;
        h1.opened().await?;
        h2.opened().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        f.hold_cpu = s.cpu_over(Duration::from_secs(3)).await?;
        f.hold_rss_mib = s.rss_kib()? as f64 / 1024.0;
        let mut times = Vec::new();
        for _ in 0..20 {
            let start = Instant::now();
            let ok = tokio::time::timeout(Duration::from_secs(5), healthz(s.addr))
                .await
                .is_ok_and(|r| r.is_ok_and(|ok| ok));
            if ok {
                f.healthz_ok += 1;
                times.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(f64::total_cmp);
        f.healthz_p50_ms = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
        f.healthz_max_ms = times.last().copied().unwrap_or(f64::NAN);
        // What the server holds is what it has descriptors for: an
        // attacker also counts connections the kernel completed (a SYN
        // cookie, a full backlog) that the server never accepted.
        f.held = s.fds()?.saturating_sub(fds0);
        let seen = h1.held().await? + h2.held().await?;
        println!(
            "    the server holds {} of {} (the attackers think {seen}); /healthz {} of 20",
            f.held, f.asked, f.healthz_ok
        );
    }
    // 2. Pieces of a preface.
    {
        let s = server(dir, exe, "pri").await?;
        let gate = Arc::new(Semaphore::new(50));
        let mut tasks = Vec::new();
        for _ in 0..2_000 {
            let permit = gate.clone().acquire_owned().await?;
            let addr = s.addr;
            tasks.push(tokio::spawn(async move {
                if let Ok(mut c) = TcpStream::connect(addr).await {
                    let _ = c.write_all(b"PRI").await;
                }
                drop(permit);
            }));
        }
        for t in tasks {
            t.await?;
        }
        f.pri_cpu = s.cpu_over(Duration::from_secs(10)).await?;
    }
    // 3. Methods as labels.
    {
        let s = server(dir, exe, "methods").await?;
        f.metrics_before = metrics_len(s.addr).await?;
        let rss0 = s.rss_kib()?;
        let gate = Arc::new(Semaphore::new(20));
        let mut tasks = Vec::new();
        for i in 0..300 {
            let permit = gate.clone().acquire_owned().await?;
            let addr = s.addr;
            tasks.push(tokio::spawn(async move {
                let method = format!("{}{i}", "M".repeat(20_000));
                let req =
                    format!("{method} /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                if let Ok(mut c) = TcpStream::connect(addr).await {
                    let _ = c.write_all(req.as_bytes()).await;
                    let mut sink = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut sink))
                        .await;
                }
                drop(permit);
            }));
        }
        for t in tasks {
            t.await?;
        }
        f.metrics_after = metrics_len(s.addr).await?;
        f.metrics_rss_mib = (s.settled_rss().await? as f64 - rss0 as f64) / 1024.0;
    }
    // 4. WebSocket refs.
    {
        let s = server(dir, exe, "refs").await?;
        let rss0 = s.settled_rss().await?;
        let big = "r".repeat(1_000_000);
        let mut sockets = Vec::new();
        for _ in 0..3 {
            let (mut ws, _) =
                tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.addr)).await?;
            use futures::{SinkExt, StreamExt};
            for i in 0..100 {
                let frame = serde_json::json!({
                    "type": "subscribe", "ref": format!("{i}{big}"), "all": true,
                    "queue": format!("q{i}"),
                });
                ws.send(tungstenite::Message::Text(frame.to_string().into()))
                    .await?;
                // Its answer (an ack that echoes the ref, or an error).
                let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
            }
            sockets.push(ws);
        }
        f.refs_rss_mib = (s.settled_rss().await? as f64 - rss0 as f64) / 1024.0;
        drop(sockets);
    }
    Ok(f)
}

/// `GET /healthz` on a fresh connection from 127.0.0.9: whether it was 200.
async fn healthz(addr: SocketAddr) -> anyhow::Result<bool> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from(([127, 0, 0, 9], 0)))?;
    let mut c = sock.connect(addr).await?;
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).await?;
    Ok(out.starts_with(b"HTTP/1.1 200"))
}

async fn metrics_len(addr: SocketAddr) -> anyhow::Result<usize> {
    let mut c = TcpStream::connect(addr).await?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).await?;
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| out.len() - at - 4);
    Ok(body)
}

/// An attacker process holding connections, and its report lines.
struct Holder {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Holder {
    async fn spawn(
        to: SocketAddr,
        from: Ipv4Addr,
        count: usize,
        h2: bool,
    ) -> anyhow::Result<Holder> {
        let exe = std::env::current_exe()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args([
            "bench-hold",
            "--target",
            &to.to_string(),
            "--from",
            &from.to_string(),
            "--count",
            &count.to_string(),
        ]);
        if h2 {
            cmd.arg("--h2");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        Ok(Holder { child, lines })
    }

    /// Waits for its `opened` line.
    async fn opened(&mut self) -> anyhow::Result<()> {
        loop {
            match tokio::time::timeout(Duration::from_secs(120), self.lines.next_line()).await {
                Ok(Ok(Some(l))) if l.starts_with("opened") => return Ok(()),
                Ok(Ok(Some(_))) => {}
                _ => bail!("the attacker never reported: {:?}", self.child.try_wait()),
            }
        }
    }

    /// The connections it holds now: its latest `held N` line (older ones
    /// wait in the pipe; a new one comes every second).
    async fn held(&mut self) -> anyhow::Result<usize> {
        let mut latest = None;
        loop {
            let wait = if latest.is_some() { 200 } else { 10_000 };
            match tokio::time::timeout(Duration::from_millis(wait), self.lines.next_line()).await {
                Ok(Ok(Some(l))) => {
                    if let Some(n) = l.strip_prefix("held ") {
                        latest = Some(n.trim().parse()?);
                    }
                }
                Err(_) if latest.is_some() => return Ok(latest.unwrap_or(0)),
                _ => bail!("the attacker stopped reporting"),
            }
        }
    }
}

/// The attacker (`replyd bench-hold`): opens `count` connections to
/// `target` from `from`, 256 at a time, 5 s each at most (a server that
/// stops accepting leaves them in the kernel's backlog, then unanswered);
/// HTTP/2 ones send the preface and SETTINGS, HTTP/1.1 ones nothing.
/// Prints `opened N failed M`, then every second `held N`, until killed.
pub async fn hold(
    target: SocketAddr,
    from: Ipv4Addr,
    count: usize,
    h2: bool,
) -> anyhow::Result<()> {
    raise_nofile();
    let gate = Arc::new(Semaphore::new(256));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = gate.clone().acquire_owned().await?;
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let open = async {
                let sock = TcpSocket::new_v4()?;
                sock.bind(SocketAddr::new(from.into(), 0))?;
                let mut c = sock.connect(target).await?;
                if h2 {
                    c.write_all(H2_HELLO).await?;
                }
                anyhow::Ok(c)
            };
            let c = tokio::time::timeout(Duration::from_secs(5), open).await;
            drop(permit);
            match c {
                Ok(Ok(c)) => Some(c),
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }));
    }
    let mut conns = Vec::with_capacity(count);
    for t in tasks {
        if let Some(c) = t.await? {
            conns.push(Some(c));
        }
    }
    println!(
        "opened {} failed {}",
        conns.len(),
        failed.load(Ordering::Relaxed)
    );
    let mut buf = vec![0u8; 4096];
    loop {
        // A connection the server closed reads as the end (or an error);
        // what it sent (SETTINGS, a refusal) is read and dropped.
        for slot in conns.iter_mut() {
            if let Some(c) = slot {
                let gone = loop {
                    match c.try_read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                        Err(_) => break true,
                    }
                };
                if gone {
                    *slot = None;
                }
            }
        }
        println!("held {}", conns.iter().filter(|c| c.is_some()).count());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
