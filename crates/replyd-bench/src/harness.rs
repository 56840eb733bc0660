//! What every scenario shares: a replyd to measure (in process, on a
//! fresh store), its bare ceiling, an HTTP/1.1 keep-alive client, a load
//! of concurrent clients, and figures (percentiles, medians, ratios).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use replyd_core::Clock;
use replyd_server::config::{Executor, QueueConfig};
use replyd_server::{Config, Server};
use replyd_store::{SqliteOptions, SqliteStore};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub(crate) const SUBMIT_BODY: &[u8] = br#"{"queue":"bench","input":{"n":1}}"#;

/// Where a benchmark's replyd keeps its jobs.
pub(crate) enum Storage {
    /// A fresh SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (several nodes may share it).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres(String),
}

/// A replyd on 127.0.0.1:0 with a `bench` pull queue.
pub(crate) struct Replyd {
    pub(crate) addr: SocketAddr,
    /// The SQLite store, for its group-commit figures.
    pub(crate) sqlite: Option<SqliteStore>,
    /// The store it serves (a scenario may fill it or read it directly).
    #[allow(dead_code)]
    pub(crate) store: Arc<dyn replyd_core::Store>,
    pub(crate) stop: CancellationToken,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

pub(crate) async fn start_replyd(storage: &Storage) -> anyhow::Result<Replyd> {
    start_replyd_with(storage, |_| {}).await
}

/// [`start_replyd`], with the configuration adjusted by `tweak`.
pub(crate) async fn start_replyd_with(
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
    let server = Server::with_store(config, store.clone(), Clock::system()).await?;
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
        store,
        stop,
        task,
    })
}

impl Replyd {
    /// Write operations per commit so far: how well group commit batches.
    pub(crate) fn ops_per_commit(&self) -> f64 {
        let Some(store) = &self.sqlite else {
            return 0.0;
        };
        let s = store.stats();
        s.ops.load(Ordering::Relaxed) as f64 / s.commits.load(Ordering::Relaxed).max(1) as f64
    }

    /// (write operations, commits) of the SQLite store so far.
    pub(crate) fn writes(&self) -> (u64, u64) {
        self.sqlite.as_ref().map_or((0, 0), |s| {
            let s = s.stats();
            (
                s.ops.load(Ordering::Relaxed),
                s.commits.load(Ordering::Relaxed),
            )
        })
    }

    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The ceiling: an axum endpoint that reads the body and answers 202.
pub(crate) async fn start_bare() -> anyhow::Result<(SocketAddr, CancellationToken)> {
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
pub(crate) struct Conn {
    pub(crate) sender: SendRequest<Full<Bytes>>,
    pub(crate) host: String,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    pub(crate) async fn post(
        &mut self,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send(Method::POST, path, "application/json", body)
            .await
    }

    /// Any request, with `content_type`, and its answer's status and body.
    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", content_type)
            .body(Full::new(body))?;
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

pub(crate) struct LoadResult {
    pub(crate) ok: usize,
    pub(crate) errors: usize,
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

impl LoadResult {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// `clients` connections, spread over `addrs`, POST jobs for `duration`.
pub(crate) async fn load(
    addrs: &[SocketAddr],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let post = Post {
        path: "/v1/jobs",
        body: Bytes::from_static(SUBMIT_BODY),
        status: StatusCode::ACCEPTED,
        jobs: 1,
    };
    load_with(addrs, clients, duration, post).await
}

/// What each request of a load is: `jobs` jobs to `path`, answered
/// `status`.
#[derive(Clone)]
pub(crate) struct Post {
    pub(crate) path: &'static str,
    pub(crate) body: Bytes,
    pub(crate) status: StatusCode,
    pub(crate) jobs: usize,
}

/// `clients` connections, spread over `addrs`, send `post` for
/// `duration`; `ok` counts jobs, the latencies are the requests'.
pub(crate) async fn load_with(
    addrs: &[SocketAddr],
    clients: usize,
    duration: Duration,
    post: Post,
) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let addr = addrs[i % addrs.len()];
        let mut conn = Conn::open(addr).await?;
        let post = post.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                match conn.post(post.path, post.body.clone()).await {
                    Ok((status, _)) if status == post.status => lat.push(t.elapsed()),
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
        ok: latencies.len() * post.jobs,
        errors,
        elapsed,
        latencies,
    })
}

/// Requests awaiting their replies, by correlation id (the broker
/// scenarios): a requester registers one and sends it; the task that reads
/// the replies says when each arrived.
#[cfg(any(
    feature = "amqp",
    feature = "mqtt",
    feature = "nats",
    feature = "kafka",
    feature = "sqs"
))]
#[derive(Clone, Default)]
pub(crate) struct Waiting(
    Arc<std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Instant>>>>,
);

#[cfg(any(
    feature = "amqp",
    feature = "mqtt",
    feature = "nats",
    feature = "kafka",
    feature = "sqs"
))]
impl Waiting {
    /// The reply to `corr` arrived `at`.
    pub(crate) fn arrived(&self, corr: &str, at: Instant) {
        if let Some(tx) = self.0.lock().unwrap().remove(corr) {
            let _ = tx.send(at);
        }
    }

    /// Sends the request `corr` with `send` and waits up to `within` for
    /// its reply: the round trip in nanoseconds, or `None` (unanswered).
    pub(crate) async fn round_trip(
        &self,
        corr: &str,
        within: Duration,
        send: impl std::future::Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<Option<i64>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.lock().unwrap().insert(corr.to_string(), tx);
        let sent = Instant::now();
        send.await?;
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(at)) => Ok(Some((at - sent).as_nanos() as i64)),
            _ => {
                self.0.lock().unwrap().remove(corr);
                Ok(None)
            }
        }
    }
}

/// Request → reply round trips of one measurement (the broker scenarios).
#[cfg(any(
    feature = "amqp",
    feature = "mqtt",
    feature = "nats",
    feature = "kafka",
    feature = "sqs"
))]
pub(crate) struct RoundTrips {
    pub(crate) done: usize,
    pub(crate) rate: f64,
    /// Nanoseconds, sorted.
    pub(crate) latency: Vec<i64>,
    pub(crate) lost: usize,
}

#[cfg(any(
    feature = "amqp",
    feature = "mqtt",
    feature = "nats",
    feature = "kafka",
    feature = "sqs"
))]
impl RoundTrips {
    /// From each requester's latencies (nanoseconds) and unanswered count,
    /// over `elapsed`.
    pub(crate) fn of(per_client: Vec<(Vec<i64>, usize)>, elapsed: Duration) -> RoundTrips {
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

    pub(crate) fn line(&self, name: &str) -> String {
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
    pub(crate) fn median(mut runs: Vec<RoundTrips>) -> RoundTrips {
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        runs.swap_remove(runs.len() / 2)
    }

    /// Prints the medians of the rounds and their ratio; fails if any
    /// round trip went unanswered.
    pub(crate) fn conclude(
        rounds: usize,
        bare: (&str, Vec<RoundTrips>),
        replyd: (&str, Vec<RoundTrips>),
        target: &str,
    ) -> anyhow::Result<()> {
        RoundTrips::conclude_as("ratio to ceiling", rounds, bare, replyd, target)
    }

    /// The medians of each side's rounds and their ratio (`what` names
    /// it).
    pub(crate) fn conclude_as(
        what: &str,
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
        println!("  {what}: {:.2}  ({target})", replyd.rate / bare.rate);
        if replyd.lost > 0 || bare.lost > 0 {
            anyhow::bail!("round trips went unanswered");
        }
        Ok(())
    }
}

/// The `p` quantile of sorted nanoseconds, in milliseconds.
pub(crate) fn percentile_ms(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn report(name: &str, r: &LoadResult) {
    println!(
        "  {name:<34} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ok, {} errors)",
        r.rate(),
        ms(r.percentile(0.50)),
        ms(r.percentile(0.99)),
        r.ok,
        r.errors
    );
}
