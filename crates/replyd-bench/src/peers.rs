//! `peers`: replyd beside what a user would build instead (pg-boss, BullMQ,
//! Celery, each behind the same polling contract: `../shared/peers`, made
//! ready in `target/peers` by `scripts/peers-setup`), in one invocation.
//!
//! Each peer's own `run.sh` measures it and prints its figures; replyd is
//! measured here in the same two shapes:
//! - submit: `wrk -t1 -c64` with the peers' `post.lua` on cpu 1 against a
//!   replyd process on cpu 0 (SQLite at full durability), after the same
//!   warm-up, for the same duration;
//! - end to end: N jobs enqueued beforehand (not timed), then the workers
//!   start; jobs/s until the last completed (the peers time from their
//!   worker process's spawn, so their figure includes its start-up).
//!
//! replyd's own end to end (every job submitted over HTTP while the
//! workers run) is printed beside them too: it does more per job than the
//! peers' shape. A peer that cannot run is skipped, with its reason.

use anyhow::{Context, bail};
use std::path::Path;
use std::time::Duration;

use crate::BenchArgs;
use crate::e2e::{drain_run, e2e_run};
use crate::harness::{Storage, start_replyd};
use crate::process::Process;

/// What `wrk` with the peers' `post.lua` printed: `rps= p50_ms= p99_ms=
/// requests= errors=`.
#[derive(Debug, Default, Clone, PartialEq)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

impl Wrk {
    fn parse(line: &str) -> Option<Wrk> {
        let field = |name: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        Some(Wrk {
            rps: field("rps")?,
            p50_ms: field("p50_ms")?,
            p99_ms: field("p99_ms")?,
            errors: field("errors")? as u64,
        })
    }
}

/// One peer's figures, as its `run.sh` printed them.
#[derive(Debug, Default, Clone, PartialEq)]
struct PeerFigures {
    about: String,
    submit: Option<Wrk>,
    ceiling: Option<Wrk>,
    /// Jobs/s from the workers' start (the jobs enqueued beforehand).
    e2e: Option<f64>,
    /// Jobs/s from the enqueue's start to the last completion: what
    /// replyd's own e2e, whose submits are timed, is set beside (issue 25).
    e2e_with_enqueue: Option<f64>,
}

impl PeerFigures {
    fn parse(out: &str) -> PeerFigures {
        let mut f = PeerFigures::default();
        let mut enqueued: Option<(f64, f64)> = None;
        let mut worker_secs: Option<f64> = None;
        for line in out.lines() {
            if let Some(about) = line.strip_prefix("== ") {
                f.about = about.trim().to_string();
            } else if let Some(rest) = line.strip_prefix("peer ") {
                f.submit = Wrk::parse(rest);
            } else if let Some(rest) = line.strip_prefix("ceiling ") {
                f.ceiling = Wrk::parse(rest);
            } else if let Some(rest) = line.strip_prefix("e2e: enqueued ") {
                // "20000 jobs in 0.79 s"
                let words: Vec<&str> = rest.split_whitespace().collect();
                if let [n, "jobs", "in", secs, ..] = words[..] {
                    enqueued = n.parse::<f64>().ok().zip(secs.parse::<f64>().ok());
                }
            } else if line.starts_with("e2e: worker start") {
                // "... completed in 2.45 s = 8174 jobs/s (first ...)"
                f.e2e = line
                    .split_once(" = ")
                    .and_then(|(_, r)| r.split_whitespace().next())
                    .and_then(|v| v.parse().ok());
                worker_secs = line
                    .split_once("completed in ")
                    .and_then(|(_, r)| r.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok());
            }
        }
        if let (Some((n, enqueue)), Some(work)) = (enqueued, worker_secs)
            && enqueue + work > 0.0
        {
            f.e2e_with_enqueue = Some(n / (enqueue + work));
        }
        f
    }
}

/// replyd on PostgreSQL's end to end figures with `nodes` nodes, from a
/// `pg` scenario earlier in the same invocation: set beside pg-boss's.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct PgFigures {
    pub nodes: usize,
    /// Its own e2e: every job submitted over HTTP while the workers run.
    pub e2e: f64,
    /// The peers' shape: enqueued first, then the workers' drain timed.
    pub drain: f64,
}

pub(crate) async fn run(args: &BenchArgs, dir: &Path, pg: &[PgFigures]) -> anyhow::Result<()> {
    let peers_dir = args.peers_dir.clone();
    let n = args.peer_jobs;
    println!(
        "\npeers: replyd beside {} ({}), {n} jobs end to end",
        args.peers.join(", "),
        peers_dir.display()
    );
    let ready = peers_dir.join("run.sh").is_file() && peers_dir.join("post.lua").is_file();

    // replyd in the peers' shapes.
    let submit = if !ready {
        Err(format!(
            "no peers in {} (run scripts/peers-setup)",
            peers_dir.display()
        ))
    } else {
        replyd_wrk(&peers_dir, dir)
            .await
            .map_err(|e| format!("{e:#}"))
    };
    let drain = {
        let server = start_replyd(&Storage::Sqlite(dir.join("bench-peers-drain.db"))).await?;
        let took = drain_run(args, &[server.addr], n).await;
        server.stop().await;
        n as f64 / took?.as_secs_f64()
    };
    let full = {
        let server = start_replyd(&Storage::Sqlite(dir.join("bench-peers-e2e.db"))).await?;
        let mut a = args.clone();
        a.jobs = n;
        let run = e2e_run(&a, &[server.addr]).await;
        server.stop().await;
        run?.rate()
    };

    let mut peers = Vec::new();
    for peer in &args.peers {
        let got = if ready {
            run_peer(&peers_dir, peer, n).await
        } else {
            Err(format!(
                "no peers in {} (run scripts/peers-setup)",
                peers_dir.display()
            ))
        };
        match &got {
            Ok(f) => println!("  {}", f.about),
            Err(why) => println!("  {peer}: SKIPPED: {why}"),
        }
        peers.push((peer.clone(), got));
    }

    println!(
        "\n  {:<34} {:>10} {:>9} {:>9} {:>12}",
        "", "submit/s", "p50 ms", "p99 ms", "e2e jobs/s"
    );
    let row = |name: &str, w: Option<&Wrk>, e2e: Option<f64>| {
        let (rps, p50, p99) = w.map_or(("-".into(), "-".into(), "-".into()), |w| {
            (
                format!("{:.0}", w.rps),
                format!("{:.2}", w.p50_ms),
                format!("{:.2}", w.p99_ms),
            )
        });
        let e2e = e2e.map_or("-".into(), |v| format!("{v:.0}"));
        println!("  {name:<34} {rps:>10} {p50:>9} {p99:>9} {e2e:>12}");
    };
    row(
        "replyd (SQLite, synchronous=FULL)",
        submit.as_ref().ok(),
        Some(drain),
    );
    if let Err(why) = &submit {
        println!("    (replyd's submit in the peers' shape skipped: {why})");
    }
    for (name, got) in &peers {
        if let Ok(f) = got {
            row(name, f.submit.as_ref(), f.e2e);
        }
    }
    println!(
        "  replyd's own e2e (each job submitted over HTTP while workers run): {full:.0} jobs/s"
    );
    println!("\n  replyd / peer:");
    for (name, got) in &peers {
        let Ok(f) = got else { continue };
        let submit_ratio = match (submit.as_ref().ok(), f.submit.as_ref()) {
            (Some(r), Some(p)) if p.rps > 0.0 => format!("{:.1}x", r.rps / p.rps),
            _ => "-".into(),
        };
        let (e2e_ratio, full_ratio) = match f.e2e {
            Some(p) if p > 0.0 => (format!("{:.1}x", drain / p), format!("{:.1}x", full / p)),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "  {name:<10} submit {submit_ratio:>7}   e2e {e2e_ratio:>7}   (replyd's own e2e: {full_ratio})"
        );
    }
    let pgboss = peers
        .iter()
        .find(|(name, _)| name == "pgboss")
        .and_then(|(_, got)| got.as_ref().ok());
    if let Some(boss) = pgboss.filter(|_| !pg.is_empty()) {
        println!(
            "\n  replyd on PostgreSQL (the pg scenario of this invocation) / pg-boss on the same PostgreSQL:"
        );
        let ratio = |a: f64, b: Option<f64>| {
            b.filter(|b| *b > 0.0)
                .map_or("-".into(), |b| format!("{:.2}x", a / b))
        };
        let with = boss
            .e2e_with_enqueue
            .map_or("-".into(), |v| format!("{v:.0}"));
        let from = boss.e2e.map_or("-".into(), |v| format!("{v:.0}"));
        println!("    pg-boss e2e: {with} jobs/s with its enqueue, {from} from its workers' start");
        for f in pg {
            println!(
                "    {} node(s): own e2e {:.0} jobs/s = {} pg-boss's with enqueue; drain {:.0} = {} pg-boss's from workers' start",
                f.nodes,
                f.e2e,
                ratio(f.e2e, boss.e2e_with_enqueue),
                f.drain,
                ratio(f.drain, boss.e2e),
            );
        }
    }
    Ok(())
}

/// Runs `run.sh PEER` (it starts and stops its own store, server and
/// workers) and reads its figures; `Err` says why it could not run.
async fn run_peer(dir: &Path, peer: &str, n: usize) -> Result<PeerFigures, String> {
    let run = tokio::process::Command::new(dir.join("run.sh"))
        .arg(peer)
        .env("N", n.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(900), run).await {
        Err(_) => return Err("run.sh took more than 15 minutes".into()),
        Ok(Err(e)) => return Err(format!("cannot run run.sh: {e}")),
        Ok(Ok(out)) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "run.sh {peer} failed ({}): {}",
            out.status,
            tail.join(" | ")
        ));
    }
    let f = PeerFigures::parse(&stdout);
    if f.e2e.is_none() && f.submit.is_none() {
        return Err(format!("run.sh {peer} printed no figures: {stdout}"));
    }
    Ok(f)
}

/// replyd under the peers' submit load: a replyd process on cpu 0, `wrk
/// -t1 -c64` with their `post.lua` on cpu 1, 2 s of warm-up, then 10 s.
async fn replyd_wrk(peers: &Path, dir: &Path) -> anyhow::Result<Wrk> {
    for tool in ["wrk", "taskset"] {
        let found = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            bail!("{tool} is not installed (scripts/peers-setup installs wrk)");
        }
    }
    let db = dir.join("bench-peers-submit.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    // The peers' queue is `work`; the load is trusted, as theirs is.
    let config = dir.join("bench-peers.toml");
    std::fs::write(
        &config,
        "[limits]\nsubmit_rate = 0\nmax_connections_per_ip = 0\n\n[queues.work]\nexecutor = \"pull\"\n",
    )?;
    let (db, config) = (db.display().to_string(), config.display().to_string());
    let server = Process::spawn_pinned(
        "0",
        &[
            "serve",
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--db",
            &db,
        ],
        "replyd listening on ",
    )
    .await?;
    let url = format!("http://{}/v1/jobs", server.addr);
    let post_lua = std::path::absolute(peers.join("post.lua"))?;
    let wrk = |secs: &str| {
        let (url, post_lua) = (url.clone(), post_lua.clone());
        let secs = secs.to_string();
        tokio::process::Command::new("taskset")
            .args(["-c", "1", "wrk", "-t1", "-c64", "-d"])
            .arg(secs)
            .arg("-s")
            .arg(post_lua)
            .arg(url)
            .output()
    };
    wrk("2s").await.context("wrk (warm-up)")?;
    let out = wrk("10s").await.context("wrk")?;
    drop(server);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("rps="))
        .and_then(Wrk::parse)
        .with_context(|| format!("wrk printed no figures: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_run_is_read() {
        let out = "== pgboss: node:http + pg-boss 10.4.2 on PostgreSQL 15.20, fsync on
   2026-12-06T11:03:23Z, 2 cores; server on cpu 0
contract ok: POST 202
peer     rps=1364 p50_ms=45.31 p99_ms=179.06 requests=13652 errors=0
ceiling  rps=19589 p50_ms=3.16 p99_ms=6.68 requests=197820 errors=0
ratio peer/ceiling = 0.07
e2e: enqueued 20000 jobs in 0.79 s
e2e: worker start -> 20000 completed in 2.45 s = 8174 jobs/s (first completion seen after 0.46 s)
";
        let f = PeerFigures::parse(out);
        assert_eq!(
            f.about,
            "pgboss: node:http + pg-boss 10.4.2 on PostgreSQL 15.20, fsync on"
        );
        assert_eq!(f.submit.as_ref().map(|w| w.rps), Some(1364.0));
        assert_eq!(f.submit.as_ref().map(|w| w.p99_ms), Some(179.06));
        assert_eq!(f.ceiling.as_ref().map(|w| w.rps), Some(19589.0));
        assert_eq!(f.e2e, Some(8174.0));
        // 20,000 jobs from the enqueue's start: 0.79 + 2.45 s.
        let with = f.e2e_with_enqueue.unwrap();
        assert!((with - 20_000.0 / 3.24).abs() < 0.01, "{with}");
    }

    #[test]
    fn a_run_without_figures_has_none() {
        let f = PeerFigures::parse("FAIL: not ready\n");
        assert_eq!(f, PeerFigures::default());
        assert_eq!(Wrk::parse("rps=12 p50_ms=1"), None);
    }
}
