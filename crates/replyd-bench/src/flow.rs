//! `flow`: what flow control (issue 18) costs, and how exact it is.
//!
//! 1. **Limits**: end to end with the `bench` queue unlimited, then with
//!    `max_running` and `rate` set too high to bind (1,000,000 and
//!    10,000,000/s: every lease counts the running jobs and spends tokens,
//!    and on PostgreSQL takes the queue's lock), alternating for
//!    `--rounds` rounds on SQLite, and on PostgreSQL when
//!    `--database-url` is given; the median jobs/s of each and their ratio.
//! 2. **Delay**: `--scheduled` jobs submitted in batches to come due over 5 s,
//!    from 8 s ahead; workers lease them as they come due. How late each
//!    was leased after its due time: p50, p99, the latest.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::bail;
use axum::body::Bytes;
use axum::http::StatusCode;

use crate::BenchArgs;
use crate::e2e::e2e_run;
use crate::harness::*;

pub(crate) async fn run(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    limits(args, dir).await?;
    delay(args, dir).await
}

fn limited(c: &mut replyd_server::Config) {
    if let Some(q) = c.queues.get_mut("bench") {
        q.max_running = Some(1_000_000);
        q.rate = Some("10000000/s".into());
    }
}

pub(crate) async fn limits(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "\nflow, limits: e2e ({} jobs, {} clients, {} workers) unlimited and with max_running = 1000000, rate = \"10000000/s\", {} alternating rounds",
        args.jobs,
        args.clients,
        args.workers,
        args.rounds.max(1)
    );
    #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
    let mut stores: Vec<(&str, Option<String>)> = vec![("SQLite", None)];
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.database_url {
        stores.push(("PostgreSQL", Some(url.clone())));
    }
    for (name, url) in stores {
        let (mut plain, mut with) = (Vec::new(), Vec::new());
        for round in 0..args.rounds.max(1) {
            for limits in [false, true] {
                let storage = match &url {
                    None => Storage::Sqlite(dir.join(format!("bench-flow-{round}-{limits}.db"))),
                    #[cfg(feature = "postgres")]
                    Some(u) => Storage::Postgres(
                        replyd_store::postgres::testing::fresh_schema_at(u, "bench")
                            .await
                            .ok_or_else(|| anyhow::anyhow!("no PostgreSQL answered at {u}"))?,
                    ),
                    #[cfg(not(feature = "postgres"))]
                    Some(_) => unreachable!(),
                };
                let server = start_replyd_with(&storage, |c| {
                    if limits {
                        limited(c)
                    }
                })
                .await?;
                let run = e2e_run(args, &[server.addr]).await?;
                server.stop().await;
                println!(
                    "  {name} round {}: {}: {:.0} jobs/s",
                    round + 1,
                    if limits { "limited" } else { "unlimited" },
                    run.rate()
                );
                if limits { &mut with } else { &mut plain }.push(run.rate());
            }
        }
        let (plain, with) = (median(&mut plain), median(&mut with));
        println!(
            "  {name} median: unlimited {plain:.0} jobs/s, limited {with:.0} jobs/s: ratio {:.2}",
            with / plain
        );
    }
    Ok(())
}

pub(crate) async fn delay(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let n = args.scheduled;
    println!(
        "\nflow, delay: {n} jobs due over 5 s from 8 s ahead, {} workers",
        args.workers
    );
    let server = start_replyd(&Storage::Sqlite(dir.join("bench-flow-delay.db"))).await?;
    let mut conn = Conn::open(server.addr).await?;
    let now_ms = || chrono::Utc::now().timestamp_millis();
    let first = now_ms() + 8_000;
    let started = std::time::Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let jobs: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let due = first + (i as i64 * 5_000) / n as i64;
                let at = chrono::DateTime::from_timestamp_millis(due).unwrap_or_default();
                serde_json::json!({"queue": "bench", "input": {"due": due}, "run_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "jobs": jobs }))?;
        let (status, body) = conn.post("/v1/jobs:batch", Bytes::from(body)).await?;
        if status != StatusCode::OK && status != StatusCode::MULTI_STATUS {
            bail!(
                "batch submit answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    println!("  scheduled in {:.1} s", started.elapsed().as_secs_f64());
    let late = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        workers.push(tokio::spawn(work(server.addr, n, late.clone())));
    }
    for w in workers {
        w.await??;
    }
    server.stop().await;
    let mut late = late.lock().unwrap().clone();
    late.sort_unstable();
    let at = |q: f64| late[((late.len() as f64 * q) as usize).min(late.len() - 1)];
    let early = late.iter().filter(|&&l| l < 0).count();
    println!(
        "  leased after their due time: p50 {} ms, p99 {} ms, latest {} ms; {early} before it",
        at(0.5),
        at(0.99),
        late.last().copied().unwrap_or_default()
    );
    Ok(())
}

/// Leases and completes jobs until `n` are done, noting how late each
/// lease was.
async fn work(
    addr: SocketAddr,
    n: usize,
    late: Arc<std::sync::Mutex<Vec<i64>>>,
) -> anyhow::Result<()> {
    let mut conn = Conn::open(addr).await?;
    let lease = Bytes::from_static(br#"{"worker":"bench","lease":120,"wait":1,"batch":100}"#);
    while late.lock().unwrap().len() < n {
        let (status, body) = conn.post("/v1/queues/bench/lease", lease.clone()).await?;
        if status == StatusCode::NO_CONTENT {
            continue;
        }
        if status != StatusCode::OK {
            bail!(
                "lease answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let now = chrono::Utc::now().timestamp_millis();
        let batch: replyd_proto::LeaseBatch = serde_json::from_slice(&body)?;
        let outcomes: Vec<_> = batch
            .leases
            .iter()
            .map(|l| {
                let due = l
                    .job
                    .input
                    .as_ref()
                    .and_then(|i| i["due"].as_i64())
                    .unwrap_or(now);
                late.lock().unwrap().push(now - due);
                serde_json::json!({"job_id": l.job.id, "lease_id": l.lease_id})
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "outcomes": outcomes }))?;
        let (status, body) = conn.post("/v1/workers/complete", Bytes::from(body)).await?;
        if status != StatusCode::OK {
            bail!(
                "complete answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
