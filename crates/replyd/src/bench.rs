//! `replyd bench`: the home of every benchmark. Each scenario measures
//! replyd and, in the same run with the same client, a baseline that bounds
//! it, and prints both with their ratio.
//!
//! - `submit`: C keep-alive HTTP/1.1 clients POST jobs for D seconds against
//!   a real replyd (SQLite at full durability, a fresh database). Baseline: a
//!   bare axum endpoint that reads the body and answers 202 doing no work,
//!   this machine's HTTP ceiling.
//! - `e2e`: N no-op jobs submitted, leased in batches over the worker API and
//!   completed one by one; jobs/s from the first submit to the last
//!   completion.
//! - `streams` (`bench/streams.rs`): C idle SSE streams and C WebSocket
//!   subscriptions on a replyd in its own process while jobs complete at
//!   1,000/s: server RSS per idle connection and completion → client
//!   latency. Baseline: a bare hyper SSE broadcaster, also its own process.
//! - `webhooks` (`bench/webhooks.rs`): completed jobs delivered to a local
//!   receiver (always 200; 500 to every tenth request; 1 s per answer):
//!   deliveries/s and completion → delivery latency. Baseline: a bare
//!   reqwest client posting the same payloads to the same receiver.
//! - `amqp` (`bench/amqp.rs`, feature `amqp`): RPC round trips over
//!   RabbitMQ through replyd (a durable job and a durable reply each).
//!   Baseline: a bare lapin RPC echo server, the same client.
//! - `mqtt` and `nats` (`bench/brokers.rs`, features `mqtt`, `nats`):
//!   request/response round trips through replyd. Baseline: a bare echo,
//!   the same client.
//! - `pg` (`bench/pg.rs`, feature `postgres`): submit and e2e on PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[cfg(feature = "amqp")]
mod amqp;
#[cfg(any(feature = "mqtt", feature = "nats"))]
mod brokers;
pub mod exposure;
#[cfg(feature = "postgres")]
mod pg;
pub mod streams;
mod webhooks;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use replyd_core::Clock;
use replyd_server::config::{Executor, QueueConfig};
use replyd_server::{Config, Server};
use replyd_store::{SqliteOptions, SqliteStore};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Scenarios to run.
    #[arg(long, value_delimiter = ',', default_values = ["submit", "e2e"])]
    scenarios: Vec<String>,
    /// Concurrent HTTP clients. Durable writes need concurrency to share
    /// fsyncs: throughput is clients / latency.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Seconds each submit measurement runs.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Alternating rounds (ceiling, replyd) of the submit scenario; the
    /// median of each is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Jobs in the end-to-end scenario.
    #[arg(long, default_value_t = 50_000)]
    jobs: usize,
    /// Concurrent workers in the end-to-end scenario.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Jobs per lease call in the end-to-end scenario.
    #[arg(long, default_value_t = 100)]
    batch: u32,
    /// PostgreSQL for the `pg` scenario (a fresh schema per measurement).
    #[arg(long, env = "REPLYD_BENCH_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// Node counts the `pg` scenario runs with.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3])]
    nodes: Vec<usize>,
    /// Streams scenario: C, the idle SSE streams and (as many) WebSocket
    /// subscriptions held at once; one measurement per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 5_000, 20_000])]
    stream_conns: Vec<usize>,
    /// Streams scenario: jobs completed per second while they are held.
    #[arg(long, default_value_t = 1_000.0)]
    stream_rate: f64,
    /// Streams scenario: jobs completed per measurement (at most 2C), half
    /// watched over SSE, half over WebSocket; the other connections stay
    /// idle throughout.
    #[arg(long, default_value_t = 10_000)]
    stream_completions: usize,
    /// Webhooks scenario: deliveries owed per drain (the 1 s receiver's
    /// case takes fewer).
    #[arg(long, default_value_t = 20_000)]
    webhook_jobs: usize,
    /// Webhooks scenario: deliveries in flight (replyd's
    /// `webhooks.concurrency` and `per_endpoint`, and the ceiling's).
    #[arg(long, default_value_t = 64)]
    webhook_concurrency: usize,
    /// Webhooks scenario: replyd's `per_endpoint` (default: the
    /// concurrency, so that it may use as many requests as the ceiling).
    #[arg(long)]
    webhook_per_endpoint: Option<usize>,
    /// Webhooks scenario: completions per second of the steady measurement.
    #[arg(long, default_value_t = 500.0)]
    webhook_rate: f64,
    /// AMQP scenario: the RabbitMQ to use.
    #[arg(
        long,
        env = "REPLYD_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_name = "URL"
    )]
    amqp_url: String,
    /// AMQP scenario: requesters, each with one request in flight.
    #[arg(long, default_value_t = 128)]
    amqp_clients: usize,
    /// MQTT scenario: the broker to use.
    #[arg(
        long,
        env = "REPLYD_BENCH_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883",
        value_name = "URL"
    )]
    mqtt_url: String,
    /// NATS scenario: the server to use.
    #[arg(
        long,
        env = "REPLYD_BENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_name = "URL"
    )]
    nats_url: String,
    /// MQTT and NATS scenarios: requesters, each with one request in
    /// flight.
    #[arg(long, alias = "mqtt-clients", default_value_t = 128)]
    broker_clients: usize,
    /// Exposure scenario: idle connections two attackers open, half each.
    #[arg(long, default_value_t = 21_000)]
    exposure_conns: usize,
    /// Exposure scenario: another replyd binary (an older build) measured
    /// first, in the same run, as the baseline.
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,
    /// Where the benchmark databases go (default: a temporary directory).
    /// Put it on the disk replyd will run on: fsync cost is the point.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const SUBMIT_BODY: &[u8] = br#"{"queue":"bench","input":{"n":1}}"#;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!(
        "replyd bench: {} cores, {} clients, database in {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.clients,
        dir.display()
    );
    for scenario in &args.scenarios {
        match scenario.as_str() {
            "submit" => submit(&args, &dir).await?,
            "e2e" => e2e(&args, &dir).await?,
            #[cfg(feature = "postgres")]
            "pg" => pg::run(&args).await?,
            "streams" => streams::run(&args, &dir).await?,
            "webhooks" => webhooks::run(&args, &dir).await?,
            "exposure" => exposure::run(&args, &dir).await?,
            #[cfg(feature = "amqp")]
            "amqp" => amqp::run(&args, &dir).await?,
            #[cfg(feature = "mqtt")]
            "mqtt" => brokers::run(brokers::Kind::Mqtt, &args, &dir).await?,
            #[cfg(feature = "nats")]
            "nats" => brokers::run(brokers::Kind::Nats, &args, &dir).await?,
            other => bail!(
                "unknown scenario {other:?} (known: submit, e2e, streams, webhooks, exposure; \
                 with their features: pg, amqp, mqtt, nats)"
            ),
        }
    }
    Ok(())
}

/// Where a benchmark's replyd keeps its jobs.
enum Storage {
    /// A fresh SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (several nodes may share it).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres(String),
}

/// A replyd on 127.0.0.1:0 with a `bench` pull queue.
struct Replyd {
    addr: SocketAddr,
    /// The SQLite store, for its group-commit figures.
    sqlite: Option<SqliteStore>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start_replyd(storage: &Storage) -> anyhow::Result<Replyd> {
    start_replyd_with(storage, |_| {}).await
}

/// [`start_replyd`], with the configuration adjusted by `tweak`.
async fn start_replyd_with(
    storage: &Storage,
    tweak: impl FnOnce(&mut Config),
) -> anyhow::Result<Replyd> {
    let mut config = Config::default();
    match storage {
        Storage::Sqlite(db) => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
            config.storage.sqlite = db.clone();
        }
        Storage::Postgres(url) => config.storage.postgres_url = Some(url.clone()),
    }
    config.queues.insert(
        "bench".into(),
        QueueConfig {
            executor: Executor::Pull,
            max_attempts: 1,
            ..QueueConfig::default()
        },
    );
    // The bench's clients are a load it trusts: what clients may hold and
    // how fast they may submit is not what it measures.
    config.limits = config.limits.clone().unbounded();
    tweak(&mut config);
    config.validate()?;
    let (store, sqlite): (Arc<dyn replyd_core::Store>, _) = match storage {
        Storage::Sqlite(db) => {
            let s = SqliteStore::open(db, SqliteOptions::default()).await?;
            (Arc::new(s.clone()), Some(s))
        }
        Storage::Postgres(_) => (replyd_server::open_store(&config).await?, None),
    };
    let server = Server::with_store(config, store, Clock::system()).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = server.run(listener, s.cancelled_owned()).await {
            eprintln!("bench server: {e}");
        }
    });
    Ok(Replyd {
        addr,
        sqlite,
        stop,
        task,
    })
}

impl Replyd {
    /// Write operations per commit so far: how well group commit batches.
    fn ops_per_commit(&self) -> f64 {
        let Some(store) = &self.sqlite else {
            return 0.0;
        };
        let s = store.stats();
        s.ops.load(Ordering::Relaxed) as f64 / s.commits.load(Ordering::Relaxed).max(1) as f64
    }

    /// (write operations, commits) of the SQLite store so far.
    fn writes(&self) -> (u64, u64) {
        self.sqlite.as_ref().map_or((0, 0), |s| {
            let s = s.stats();
            (
                s.ops.load(Ordering::Relaxed),
                s.commits.load(Ordering::Relaxed),
            )
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The ceiling: an axum endpoint that reads the body and answers 202.
async fn start_bare() -> anyhow::Result<(SocketAddr, CancellationToken)> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/jobs",
        post(|_body: Bytes| async {
            (
                StatusCode::ACCEPTED,
                [("location", "/v1/jobs/0"), ("retry-after", "1")],
                r#"{"id":"0","state":"queued"}"#,
            )
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await;
    });
    Ok((addr, stop))
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<(StatusCode, Bytes)> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

struct LoadResult {
    ok: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// `clients` connections POST `body` to `path` for `duration`.
/// `clients` connections, spread over `addrs`, POST jobs for `duration`.
async fn load(
    addrs: &[SocketAddr],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let addr = addrs[i % addrs.len()];
        let mut conn = Conn::open(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                match conn.post("/v1/jobs", Bytes::from_static(SUBMIT_BODY)).await {
                    Ok((StatusCode::ACCEPTED, _)) => lat.push(t.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        match Conn::open(addr).await {
                            Ok(c) => conn = c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, err) = t.await?;
        latencies.extend(lat);
        errors += err;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(LoadResult {
        ok: latencies.len(),
        errors,
        elapsed,
        latencies,
    })
}

/// Request → reply round trips of one measurement (the broker scenarios).
#[cfg(any(feature = "amqp", feature = "mqtt", feature = "nats"))]
struct RoundTrips {
    done: usize,
    rate: f64,
    /// Nanoseconds, sorted.
    latency: Vec<i64>,
    lost: usize,
}

#[cfg(any(feature = "amqp", feature = "mqtt", feature = "nats"))]
impl RoundTrips {
    /// From each requester's latencies (nanoseconds) and unanswered count,
    /// over `elapsed`.
    fn of(per_client: Vec<(Vec<i64>, usize)>, elapsed: Duration) -> RoundTrips {
        let mut latency = Vec::new();
        let mut lost = 0;
        for (l, n) in per_client {
            latency.extend(l);
            lost += n;
        }
        latency.sort_unstable();
        RoundTrips {
            done: latency.len(),
            rate: latency.len() as f64 / elapsed.as_secs_f64(),
            latency,
            lost,
        }
    }

    fn line(&self, name: &str) -> String {
        format!(
            "  {name:<32} {:>8.0} round trips/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} done, {} unanswered)",
            self.rate,
            percentile_ms(&self.latency, 0.50),
            percentile_ms(&self.latency, 0.99),
            self.done,
            self.lost
        )
    }

    /// The median run (by rate) of alternating rounds.
    fn median(mut runs: Vec<RoundTrips>) -> RoundTrips {
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        runs.swap_remove(runs.len() / 2)
    }

    /// Prints the medians of the rounds and their ratio; fails if any
    /// round trip went unanswered.
    fn conclude(
        rounds: usize,
        (bare_name, bare): (&str, Vec<RoundTrips>),
        (replyd_name, replyd): (&str, Vec<RoundTrips>),
        target: &str,
    ) -> anyhow::Result<()> {
        let (bare, replyd) = (RoundTrips::median(bare), RoundTrips::median(replyd));
        if rounds > 1 {
            println!("  median of {rounds} rounds:");
            println!("{}", bare.line(bare_name));
            println!("{}", replyd.line(replyd_name));
        }
        println!(
            "  ratio to ceiling: {:.2}  ({target})",
            replyd.rate / bare.rate
        );
        if replyd.lost > 0 || bare.lost > 0 {
            bail!("round trips went unanswered");
        }
        Ok(())
    }
}

/// The `p` quantile of sorted nanoseconds, in milliseconds.
fn percentile_ms(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, r: &LoadResult) {
    println!(
        "  {name:<34} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ok, {} errors)",
        r.rate(),
        ms(r.percentile(0.50)),
        ms(r.percentile(0.99)),
        r.ok,
        r.errors
    );
}

async fn submit(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
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
    Ok(())
}

async fn e2e(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "\ne2e: {} no-op jobs: {} clients submit, {} workers lease (batch {}) and complete",
        args.jobs, args.clients, args.workers, args.batch
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
async fn e2e_run(args: &BenchArgs, addrs: &[SocketAddr]) -> anyhow::Result<(usize, Duration)> {
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
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await?.context("a bench client failed")?;
    }
    Ok((completed.load(Ordering::Relaxed), start.elapsed()))
}
