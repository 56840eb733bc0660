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
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::StatusCode;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

mod clients;
mod floor;

use crate::BenchArgs;
use crate::harness::{Conn, percentile_ms};
use crate::process::{Process, raise_nofile};
use clients::*;
pub use floor::serve_floor;

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
