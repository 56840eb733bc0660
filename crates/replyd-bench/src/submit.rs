//! `submit`: C keep-alive HTTP/1.1 clients POST jobs for D seconds against
//! a real replyd (SQLite at full durability, a fresh database) and against
//! a bare axum endpoint that reads the body and answers 202 (this
//! machine's HTTP ceiling); alternating rounds, medians, the ratio.

use anyhow::bail;
use std::time::Duration;

use crate::BenchArgs;
use crate::harness::*;

pub(crate) async fn submit(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.duration);
    println!(
        "\nsubmit: {} clients POST /v1/jobs; {} rounds of {:.0} s against each, alternating",
        args.clients, args.rounds, args.duration
    );
    let (bare_addr, bare_stop) = start_bare().await?;
    let server = start_replyd(&Storage::Sqlite(dir.join("bench-submit.db"))).await?;
    // Warm up both.
    load(&[bare_addr], args.clients, Duration::from_secs(1)).await?;
    load(&[server.addr], args.clients, Duration::from_secs(1)).await?;
    let mut bare_runs = Vec::new();
    let mut replyd_runs = Vec::new();
    for _ in 0..args.rounds {
        // Alternate, so drift on a shared machine touches both alike.
        let bare = load(&[bare_addr], args.clients, duration).await?;
        report("bare axum 202 (ceiling)", &bare);
        let replyd = load(&[server.addr], args.clients, duration).await?;
        report("replyd, SQLite synchronous=FULL", &replyd);
        if replyd.errors > 0 {
            bail!("{} submissions failed", replyd.errors);
        }
        bare_runs.push(bare);
        replyd_runs.push(replyd);
    }
    let batching = server.ops_per_commit();
    // Batch submit: each call carries `--submit-batch` jobs, one commit.
    let n = args.submit_batch.max(1);
    let jobs = vec![serde_json::json!({"queue": "bench", "input": {"n": 1}}); n];
    let post = Post {
        path: "/v1/jobs:batch",
        body: serde_json::to_vec(&serde_json::json!({ "jobs": jobs }))?.into(),
        status: hyper::StatusCode::OK,
        jobs: n,
    };
    let clients = (args.clients / 8).max(1);
    let batch = load_with(&[server.addr], clients, duration, post).await?;
    if batch.errors > 0 {
        bail!("{} batch submissions failed", batch.errors);
    }
    server.stop().await;
    bare_stop.cancel();
    let median = |runs: &mut Vec<LoadResult>| {
        runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        runs.remove(runs.len() / 2)
    };
    let bare = median(&mut bare_runs);
    let replyd = median(&mut replyd_runs);
    println!("  median of {} rounds:", args.rounds);
    report("bare axum 202 (ceiling)", &bare);
    report("replyd, SQLite synchronous=FULL", &replyd);
    println!("  group commit: {batching:.1} writes per commit (one fsync each)");
    println!(
        "  ratio to ceiling: {:.2}  (target >= 0.50)",
        replyd.rate() / bare.rate()
    );
    println!(
        "  batch submit, {clients} clients x {n} jobs per POST /v1/jobs:batch: {:.0} jobs/s \
         (p50 {:.2} ms, p99 {:.2} ms per call); {:.1}x replyd's single submits",
        batch.rate(),
        ms(batch.percentile(0.50)),
        ms(batch.percentile(0.99)),
        batch.rate() / replyd.rate()
    );
    Ok(())
}
