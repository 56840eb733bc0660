//! `tokens`: many outputs streamed at a model's token rate, each followed
//! live. S streams (`--token-streams`, default 1,000) each get a 20–40 byte
//! append every 20 ms (50/s; one HTTP request each, from this process's
//! keep-alive client) while one SSE reader per stream follows it
//! (`?offset=-1&live=sse`). Each chunk carries the instant it was sent, so
//! each reader measures append → reader latency. Printed: the appends/s
//! achieved against the 50 × S asked, p50/p99 latency, chunks acknowledged
//! but never read (lost), and the server's CPU and RSS. The server runs
//! alone on cpu 0; replyd (SQLite, durable) and the protocol's reference
//! server in memory, in the same run, with the same client.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode};

use crate::BenchArgs;
use crate::harness::Conn;
use crate::process::Pid;

/// What one server did.
struct Figures {
    asked: f64,
    appends_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    sent: u64,
    lost: u64,
    cpu: f64,
    rss_mib: f64,
}

/// A chunk: `t` and the microseconds since `start` it was sent at, `|`,
/// then padding to 20–40 bytes.
fn chunk(start: Instant, k: u64) -> Bytes {
    let mut s = format!("t{:016}|", start.elapsed().as_micros());
    let len = 20 + (k % 21) as usize;
    while s.len() < len {
        s.push('x');
    }
    Bytes::from(s)
}

/// The send instants (µs since `start`) of the chunks in `text`.
fn stamps(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.match_indices('t').filter_map(|(i, _)| {
        let digits = text.get(i + 1..i + 17)?;
        (text.as_bytes().get(i + 17) == Some(&b'|'))
            .then(|| digits.parse().ok())
            .flatten()
    })
}

/// Follows `path` over SSE until `until`, recording each chunk's latency
/// (µs) into `lat`.
async fn follow(
    addr: std::net::SocketAddr,
    path: String,
    start: Instant,
    until: Instant,
) -> anyhow::Result<Vec<u64>> {
    let conn = Conn::open(addr).await?;
    let mut sender = conn.sender;
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("{path}?offset=-1&live=sse"))
        .header("host", &conn.host)
        .body(http_body_util::Full::new(Bytes::new()))?;
    sender.ready().await?;
    let res = sender.send_request(req).await?;
    if res.status() != StatusCode::OK {
        bail!("SSE answered {}", res.status());
    }
    let mut body = res.into_body();
    let mut lat = Vec::new();
    let mut carry = String::new();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            () = tokio::time::sleep_until(until.into()) => break,
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = start.elapsed().as_micros() as u64;
        carry.push_str(&String::from_utf8_lossy(&data));
        // Whole lines only: a stamp may straddle two frames.
        let cut = carry.rfind('\n').map_or(0, |i| i + 1);
        for line in carry[..cut].lines() {
            if let Some(payload) = line.strip_prefix("data:") {
                lat.extend(stamps(payload).map(|t| now.saturating_sub(t)));
            }
        }
        carry.drain(..cut);
    }
    Ok(lat)
}

async fn measure(
    addr: std::net::SocketAddr,
    streams: usize,
    secs: u64,
    server: Pid,
) -> anyhow::Result<Figures> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let start = Instant::now();
    let paths: Vec<String> = (0..streams)
        .map(|i| format!("/v1/stream/tokens-{run}-{i}"))
        .collect();
    let mut conns = Vec::with_capacity(streams);
    for p in &paths {
        let mut c = Conn::open(addr).await?;
        let (status, _) = c.send(Method::PUT, p, "text/plain", Bytes::new()).await?;
        if status != StatusCode::CREATED {
            bail!("creating {p}: {status}");
        }
        conns.push(c);
    }
    let until = Instant::now() + Duration::from_secs(secs);
    let readers: Vec<_> = paths
        .iter()
        .map(|p| {
            tokio::spawn(follow(
                addr,
                p.clone(),
                start,
                until + Duration::from_secs(2),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Arc::new(AtomicU64::new(0));
    let write_until = Instant::now() + Duration::from_secs(secs);
    let began = Instant::now();
    let writers: Vec<_> = conns
        .into_iter()
        .zip(paths.iter().cloned())
        .enumerate()
        .map(|(i, (mut c, p))| {
            let sent = sent.clone();
            tokio::spawn(async move {
                // Spread the writers over the 20 ms period.
                tokio::time::sleep(Duration::from_micros((i as u64 * 20_000) / streams as u64))
                    .await;
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut k = 0u64;
                while Instant::now() < write_until {
                    tick.tick().await;
                    let (status, _) = c
                        .send(Method::POST, &p, "text/plain", chunk(start, k))
                        .await?;
                    if status.is_success() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    k += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let cpu = server
        .cpu_over(Duration::from_secs(secs.saturating_sub(2).max(1)))
        .await?;
    let rss = server.rss_kib()? as f64 / 1024.0;
    for w in writers {
        w.await??;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for r in readers {
        lat.extend(r.await??);
    }
    lat.sort_unstable();
    let sent = sent.load(Ordering::Relaxed);
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p) as usize)
            .map_or(f64::NAN, |us| *us as f64 / 1e3)
    };
    Ok(Figures {
        asked: 50.0 * streams as f64,
        appends_per_s: sent as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        sent,
        lost: sent.saturating_sub(lat.len() as u64),
        cpu,
        rss_mib: rss,
    })
}

fn line(name: &str, f: &Figures) {
    println!(
        "  {name:<34} {:>8.0} of {:>6.0} {:>8.2} {:>8.2} {:>9} {:>6} {:>6.2} {:>8.1}",
        f.appends_per_s, f.asked, f.p50_ms, f.p99_ms, f.sent, f.lost, f.cpu, f.rss_mib
    );
}

pub async fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let streams = args.token_streams;
    let secs = args.duration.round().max(5.0) as u64;
    println!(
        "\n== tokens: {streams} outputs, a 20-40 byte append every 20 ms each, one SSE reader each, {secs} s"
    );
    crate::process::raise_nofile();
    println!(
        "  {:<34} {:>18} {:>8} {:>8} {:>9} {:>6} {:>6} {:>8}",
        "server", "appends/s", "p50 ms", "p99 ms", "appended", "lost", "cores", "RSS MiB"
    );
    let server =
        crate::dstreams::replyd(dir, &["--db", &dir.join("tokens.db").display().to_string()])
            .await?;
    let pid = Pid(server.child.id());
    let f = measure(server.addr, streams, secs, pid).await?;
    line("replyd, SQLite (synchronous=FULL)", &f);
    drop(server);

    let peer = std::path::absolute("target/peers/durable-streams")?;
    if !peer.join("node_modules/@durable-streams/server").exists() {
        println!("  reference: skipped (run scripts/peers-setup)");
        return Ok(());
    }
    let (child, url) = crate::dstreams::reference(&peer, None).await?;
    let pid = child.id().context("the reference has no pid")?;
    let addr = url.trim_start_matches("http://").parse()?;
    let f = measure(addr, streams, secs, Pid(pid)).await?;
    line("reference, in memory", &f);
    drop(child);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_carry_their_stamp_and_are_20_to_40_bytes() {
        let start = Instant::now();
        for k in 0..50 {
            let c = chunk(start, k);
            assert!((20..=40).contains(&c.len()), "{}", c.len());
        }
        let two = format!(
            "{}{}",
            String::from_utf8_lossy(&chunk(start, 3)),
            String::from_utf8_lossy(&chunk(start, 7))
        );
        assert_eq!(stamps(&two).count(), 2);
    }
}
