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
    let rounds = args.rounds.max(1);
    println!(
        "\ne2e: {} no-op jobs: {} clients submit, {} workers lease (batch {}) and complete ({}); \
         {rounds} rounds, each on a fresh database",
        args.jobs, args.clients, args.workers, args.batch, args.complete
    );
    let mut runs = Vec::new();
    for round in 1..=rounds {
        let db = dir.join(format!("bench-e2e-{round}.db"));
        let server = start_replyd(&Storage::Sqlite(db)).await?;
        let run = e2e_run(args, &[server.addr]).await;
        let batching = server.ops_per_commit();
        server.stop().await;
        let run = run?;
        println!(
            "  round {round}: {} jobs in {:.2} s: {:.0} jobs/s; {batching:.1} writes per commit",
            run.done,
            run.elapsed.as_secs_f64(),
            run.rate()
        );
        runs.push(run);
    }
    let (run, low, high) = median_by(runs, E2eRun::rate);
    println!(
        "  median of {rounds} rounds: {:.0} jobs/s end to end (submit + lease + complete, each \
         durable; rounds {low:.0} to {high:.0})",
        run.rate()
    );
    println!("  {}", run.submit_line());
    Ok(())
}

/// `drain`: the peers' end-to-end shape alone: N jobs enqueued first, then
/// the workers' drain is timed; `--rounds` times, each on a fresh
/// database, and the median.
pub(crate) async fn drain(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let rounds = args.rounds.max(1);
    println!(
        "\ndrain: {} no-op jobs enqueued first (jobs:batch, not timed), then {} workers lease \
         (batch {}) and complete ({}); {rounds} rounds, each on a fresh database",
        args.jobs, args.workers, args.batch, args.complete
    );
    let mut rates = Vec::new();
    for round in 1..=rounds {
        let db = dir.join(format!("bench-drain-{round}.db"));
        let server = start_replyd(&Storage::Sqlite(db)).await?;
        let took = drain_run(args, &[server.addr], args.jobs).await;
        let batching = server.ops_per_commit();
        server.stop().await;
        let took = took?;
        let rate = args.jobs as f64 / took.as_secs_f64();
        println!(
            "  round {round}: {} jobs in {:.2} s: {rate:.0} jobs/s; {batching:.1} writes per commit",
            args.jobs,
            took.as_secs_f64(),
        );
        rates.push(rate);
    }
    let (rate, low, high) = median_by(rates, |r| *r);
    println!(
        "  median of {rounds} rounds: {rate:.0} jobs/s drained (lease + complete, each durable; \
         rounds {low:.0} to {high:.0})"
    );
    Ok(())
}

/// The median of `runs` (not empty) by `rate`, and the lowest and highest
/// rates.
fn median_by<T>(mut runs: Vec<T>, rate: impl Fn(&T) -> f64) -> (T, f64, f64) {
    runs.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let (low, high) = (rate(&runs[0]), rate(&runs[runs.len() - 1]));
    (runs.swap_remove(runs.len() / 2), low, high)
}

/// `growth`: the e2e measurement with ever more finished jobs already in
/// the table (kept until their TTL, as they would be): at each of
/// `--growth` sizes, jobs are added (enqueued and worked off, not timed)
/// until the table holds that many, then `--jobs` more run end to end.
/// Throughput and submit latency should not fall as the table grows.
pub(crate) async fn growth(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "\ngrowth: e2e ({} jobs, {} clients, {} workers, complete {}) with {:?} jobs already in the table",
        args.jobs, args.clients, args.workers, args.complete, args.growth
    );
    // The probe's jobs go to a queue of their own that no worker serves:
    // they stay in the table and never count as the e2e's completions.
    let server = start_replyd_with(&Storage::Sqlite(dir.join("bench-growth.db")), |c| {
        c.queues.insert(
            "probe".into(),
            replyd_server::config::QueueConfig {
                executor: replyd_server::config::Executor::Pull,
                ..Default::default()
            },
        );
    })
    .await?;
    let mut held = 0usize;
    let mut first: Option<f64> = None;
    for &size in &args.growth {
        if size > held {
            let added = Instant::now();
            drain_run(args, &[server.addr], size - held).await?;
            println!(
                "  (added {} jobs in {:.1} s)",
                size - held,
                added.elapsed().as_secs_f64()
            );
            held = size;
        }
        // Submit latency alone (no workers), at a load that does not
        // queue: 32 clients for 3 s.
        let post = Post {
            path: "/v1/jobs",
            body: Bytes::from_static(br#"{"queue":"probe","input":{"n":1}}"#),
            status: StatusCode::ACCEPTED,
            jobs: 1,
        };
        let probe = load_with(&[server.addr], 32, Duration::from_secs(3), post).await?;
        println!(
            "  {held:>9} in the table: submit alone (32 clients): {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            probe.rate(),
            probe.percentile(0.50).as_secs_f64() * 1e3,
            probe.percentile(0.99).as_secs_f64() * 1e3
        );
        held += probe.ok;
        let run = e2e_run(args, &[server.addr]).await?;
        let rate = run.rate();
        let base = *first.get_or_insert(rate);
        println!(
            "  {held:>9} in the table: e2e {rate:>7.0} jobs/s ({:+.0}% from the first), submit p50 {:.2} ms, p99 {:.2} ms",
            (rate / base - 1.0) * 100.0,
            run.submit_p50.as_secs_f64() * 1e3,
            run.submit_p99.as_secs_f64() * 1e3
        );
        held += run.done;
    }
    let db = dir.join("bench-growth.db");
    server.stop().await;
    if let Ok(meta) = std::fs::metadata(&db) {
        println!("  database file: {:.0} MiB", meta.len() as f64 / 1048576.0);
    }
    Ok(())
}

/// What an end-to-end run measured.
pub(crate) struct E2eRun {
    /// Jobs completed.
    pub done: usize,
    /// From the first submit to the last completion.
    pub elapsed: Duration,
    /// From the first submit to the last 202.
    pub submitted: Duration,
    /// Jobs completed by the time the last 202 came.
    pub done_when_submitted: usize,
    /// Submit latency (request sent to 202 received), median and 99th
    /// percentile.
    pub submit_p50: Duration,
    pub submit_p99: Duration,
}

impl E2eRun {
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }

    /// Where the time went: submitting, and the workers' drain after it.
    pub fn submit_line(&self) -> String {
        format!(
            "all submitted after {:.2} s ({} completed by then), drained {:.2} s later; \
             submit p50 {:.2} ms, p99 {:.2} ms",
            self.submitted.as_secs_f64(),
            self.done_when_submitted,
            self.elapsed.saturating_sub(self.submitted).as_secs_f64(),
            self.submit_p50.as_secs_f64() * 1e3,
            self.submit_p99.as_secs_f64() * 1e3
        )
    }
}

/// Jobs completed, and when the last of `n` was: the run ends there, not
/// when the last idle worker's long poll gives up.
struct Tally {
    n: usize,
    start: Instant,
    done: AtomicUsize,
    finished: std::sync::OnceLock<Duration>,
}

impl Tally {
    fn new(n: usize, start: Instant) -> Self {
        Tally {
            n,
            start,
            done: AtomicUsize::new(0),
            finished: std::sync::OnceLock::new(),
        }
    }

    fn add(&self, k: usize) {
        if self.done.fetch_add(k, Ordering::Relaxed) + k >= self.n {
            let _ = self.finished.set(self.start.elapsed());
        }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    fn finished(&self) -> Option<Duration> {
        self.finished.get().copied()
    }
}

/// Submits `args.jobs` jobs and works them off through the worker API,
/// clients and workers spread over `addrs`.
pub(crate) async fn e2e_run(args: &BenchArgs, addrs: &[SocketAddr]) -> anyhow::Result<E2eRun> {
    let n = args.jobs;
    let start = Instant::now();
    let completed = Arc::new(Tally::new(n, start));
    let submitted = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let last_accept = Arc::new(std::sync::Mutex::new((Duration::ZERO, 0)));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));

    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let (submitted, accepted) = (submitted.clone(), accepted.clone());
        let (completed, last_accept) = (completed.clone(), last_accept.clone());
        let latencies = latencies.clone();
        let mut conn = Conn::open(addrs[i % addrs.len()]).await?;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while submitted.fetch_add(1, Ordering::Relaxed) < n {
                let sent = Instant::now();
                let (status, body) = conn
                    .post("/v1/jobs", Bytes::from_static(SUBMIT_BODY))
                    .await?;
                mine.push(sent.elapsed());
                if status != StatusCode::ACCEPTED {
                    bail!(
                        "submit answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                if accepted.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    *last_accept.lock().unwrap() = (start.elapsed(), completed.done());
                }
            }
            latencies.lock().unwrap().extend(mine);
            Ok(())
        }));
    }
    tasks.extend(spawn_workers(args, addrs, &completed).await?);
    for t in tasks {
        t.await?.context("a bench client failed")?;
    }
    let (submitted, done_when_submitted) = *last_accept.lock().unwrap();
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort_unstable();
    let at = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(E2eRun {
        submit_p50: at(0.50),
        submit_p99: at(0.99),
        done: completed.done(),
        elapsed: completed.finished().unwrap_or_else(|| start.elapsed()),
        submitted,
        done_when_submitted,
    })
}

/// Starts `args.workers` workers (spread over `addrs`) that lease in
/// batches and report as `args.complete` says until `completed` reaches
/// its count.
async fn spawn_workers(
    args: &BenchArgs,
    addrs: &[SocketAddr],
    completed: &Arc<Tally>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let n = completed.n;
    let mut tasks = Vec::new();
    let lease_body = Bytes::from(format!(
        r#"{{"worker":"bench","lease":120,"wait":1,"batch":{}}}"#,
        args.batch
    ));
    let mode = args.complete.clone();
    let batch_size = args.batch;
    for i in 0..args.workers {
        let completed = completed.clone();
        let (lease_body, mode) = (lease_body.clone(), mode.clone());
        let mut conn = Conn::open(addrs[i % addrs.len()]).await?;
        tasks.push(tokio::spawn(async move {
            // `lease` mode: the last batch's outcomes, sent with the next lease.
            let mut carried: Vec<serde_json::Value> = Vec::new();
            while completed.done() < n {
                let body = if carried.is_empty() {
                    lease_body.clone()
                } else {
                    // A short wait: their answers come back with the lease's.
                    Bytes::from(serde_json::to_vec(&serde_json::json!({
                        "worker": "bench", "lease": 120, "wait": 0, "batch": batch_size,
                        "outcomes": std::mem::take(&mut carried),
                    }))?)
                };
                let (status, body) = conn.post("/v1/queues/bench/lease", body).await?;
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
                completed.add(all_ok(&batch.outcomes)?);
                let outcomes = || -> Vec<serde_json::Value> {
                    batch
                        .leases
                        .iter()
                        .map(|l| serde_json::json!({"job_id": l.job.id, "lease_id": l.lease_id}))
                        .collect()
                };
                match mode.as_str() {
                    "each" => {
                        for lease in &batch.leases {
                            let path = format!("/v1/jobs/{}/complete", lease.job.id);
                            let body =
                                format!(r#"{{"lease_id":"{}","result":null}}"#, lease.lease_id);
                            let (status, body) = conn.post(&path, Bytes::from(body)).await?;
                            if status != StatusCode::OK {
                                bail!(
                                    "complete answered {status}: {}",
                                    String::from_utf8_lossy(&body)
                                );
                            }
                            completed.add(1);
                        }
                    }
                    "lease" => carried = outcomes(),
                    _ if batch.leases.is_empty() => {}
                    _ => {
                        let body =
                            serde_json::to_vec(&serde_json::json!({ "outcomes": outcomes() }))?;
                        let (status, body) =
                            conn.post("/v1/workers/complete", Bytes::from(body)).await?;
                        let answer: replyd_proto::OutcomesAnswer = match status {
                            StatusCode::OK => serde_json::from_slice(&body)?,
                            _ => bail!(
                                "complete answered {status}: {}",
                                String::from_utf8_lossy(&body)
                            ),
                        };
                        completed.add(all_ok(&answer.outcomes)?);
                    }
                }
            }
            Ok(())
        }));
    }
    Ok(tasks)
}

/// How many outcomes were answered, each 200 (else the first that was not).
fn all_ok(answers: &[replyd_proto::OutcomeAnswer]) -> anyhow::Result<usize> {
    if let Some(bad) = answers.iter().find(|o| o.status != 200) {
        bail!("an outcome answered {}: {:?}", bad.status, bad.problem);
    }
    Ok(answers.len())
}

/// The peers' end-to-end shape: `n` jobs enqueued beforehand (through
/// `POST /v1/jobs:batch`, not timed), then the workers start; returns the
/// time from their start until the last job completed.
pub(crate) async fn drain_run(
    args: &BenchArgs,
    addrs: &[SocketAddr],
    n: usize,
) -> anyhow::Result<Duration> {
    let item = r#"{"queue":"bench","input":{"n":1}}"#;
    let mut conn = Conn::open(addrs[0]).await?;
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let body = format!(r#"{{"jobs":[{}]}}"#, vec![item; k].join(","));
        let (status, answer) = conn.post("/v1/jobs:batch", Bytes::from(body)).await?;
        if status != StatusCode::OK {
            bail!(
                "batch submit answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        left -= k;
    }
    let completed = Arc::new(Tally::new(n, Instant::now()));
    for t in spawn_workers(args, addrs, &completed).await? {
        t.await?.context("a bench worker failed")?;
    }
    completed
        .finished()
        .context("the workers stopped before every job was done")
}
