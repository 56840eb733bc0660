//! `e2e`: N no-op jobs submitted, leased in batches over the worker API
//! and completed (`--complete batch`: a leased batch's outcomes in one
//! call; `each`: one call per job); jobs/s from the first submit to the
//! last completion.

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::BenchArgs;
use crate::harness::*;

pub(crate) async fn e2e(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "\ne2e: {} no-op jobs: {} clients submit, {} workers lease (batch {}) and complete ({})",
        args.jobs, args.clients, args.workers, args.batch, args.complete
    );
    let server = start_replyd(&Storage::Sqlite(dir.join("bench-e2e.db"))).await?;
    let (done, elapsed) = e2e_run(args, &[server.addr]).await?;
    let batching = server.ops_per_commit();
    server.stop().await;
    println!(
        "  {done} jobs in {:.2} s: {:.0} jobs/s end to end (submit + lease + complete, each durable)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64()
    );
    println!("  group commit: {batching:.1} writes per commit");
    Ok(())
}

/// Submits `args.jobs` jobs and works them off through the worker API,
/// clients and workers spread over `addrs`. Returns the jobs done and the
/// time from the first submit to the last completion.
pub(crate) async fn e2e_run(
    args: &BenchArgs,
    addrs: &[SocketAddr],
) -> anyhow::Result<(usize, Duration)> {
    let n = args.jobs;
    let completed = Arc::new(AtomicUsize::new(0));
    let submitted = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();

    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let submitted = submitted.clone();
        let mut conn = Conn::open(addrs[i % addrs.len()]).await?;
        tasks.push(tokio::spawn(async move {
            while submitted.fetch_add(1, Ordering::Relaxed) < n {
                let (status, body) = conn
                    .post("/v1/jobs", Bytes::from_static(SUBMIT_BODY))
                    .await?;
                if status != StatusCode::ACCEPTED {
                    bail!(
                        "submit answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
            Ok(())
        }));
    }
    let lease_body = Bytes::from(format!(
        r#"{{"worker":"bench","lease":120,"wait":1,"batch":{}}}"#,
        args.batch
    ));
    let each = args.complete == "each";
    for i in 0..args.workers {
        let completed = completed.clone();
        let lease_body = lease_body.clone();
        let mut conn = Conn::open(addrs[i % addrs.len()]).await?;
        tasks.push(tokio::spawn(async move {
            while completed.load(Ordering::Relaxed) < n {
                let (status, body) = conn
                    .post("/v1/queues/bench/lease", lease_body.clone())
                    .await?;
                if status == StatusCode::NO_CONTENT {
                    continue;
                }
                if status != StatusCode::OK {
                    bail!(
                        "lease answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                let batch: replyd_proto::LeaseBatch = serde_json::from_slice(&body)?;
                if each {
                    for lease in batch.leases {
                        let path = format!("/v1/jobs/{}/complete", lease.job.id);
                        let body = format!(r#"{{"lease_id":"{}","result":null}}"#, lease.lease_id);
                        let (status, body) = conn.post(&path, Bytes::from(body)).await?;
                        if status != StatusCode::OK {
                            bail!(
                                "complete answered {status}: {}",
                                String::from_utf8_lossy(&body)
                            );
                        }
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    let outcomes: Vec<_> = batch
                        .leases
                        .iter()
                        .map(|l| serde_json::json!({"job_id": l.job.id, "lease_id": l.lease_id}))
                        .collect();
                    let body = serde_json::to_vec(&serde_json::json!({ "outcomes": outcomes }))?;
                    let (status, body) =
                        conn.post("/v1/workers/complete", Bytes::from(body)).await?;
                    let answer: replyd_proto::OutcomesAnswer = match status {
                        StatusCode::OK => serde_json::from_slice(&body)?,
                        _ => bail!(
                            "complete answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        ),
                    };
                    if let Some(bad) = answer.outcomes.iter().find(|o| o.status != 200) {
                        bail!("an outcome answered {}: {:?}", bad.status, bad.problem);
                    }
                    completed.fetch_add(answer.outcomes.len(), Ordering::Relaxed);
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await?.context("a bench client failed")?;
    }
    Ok((completed.load(Ordering::Relaxed), start.elapsed()))
}
