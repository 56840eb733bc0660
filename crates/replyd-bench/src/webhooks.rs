//! `replyd bench --scenarios webhooks` (issue 5): completed jobs delivered
//! as signed webhooks to a local receiver that
//! (a) always answers 200, (b) answers 500 to every tenth request, or
//! (c) takes 1 s to answer 200.
//!
//! For each receiver, replyd (in this process, a fresh SQLite database)
//! takes jobs submitted with a webhook to it; a worker leases them all
//! first, then completes them. The receiver records the instant each job's
//! first 2xx arrived. Two measurements:
//!
//! - **drain**: N jobs are completed while the receiver holds every request
//!   unanswered (an endpoint that is down), so N deliveries are owed; then
//!   it answers. Printed: deliveries/s from that instant, over the first
//!   pass (deliveries whose first attempt succeeded: all of them in (a));
//!   and when the last delivery, retries included, arrived.
//! - **steady**: completions paced below capacity (`--webhook-rate`, or
//!   half the concurrency per second for the 1 s receiver): completion →
//!   delivery p50/p99 of a dispatcher that keeps up. It is the instant the
//!   delivery arrived minus the instant the `complete` call's answer
//!   returned (the completion is durable then), and may be negative when
//!   the webhook beats the answer.
//!
//! The ceiling, in the same run, against the same receiver: a bare reqwest
//! client (no replyd logic) that posts the very payloads replyd sent (body
//! and signature headers, captured by the receiver) with as many requests
//! in flight as replyd may have (`--webhook-concurrency`, which the bench
//! gives replyd as both `webhooks.concurrency` and `per_endpoint`), and
//! retries a 500 at once: as fast as it can (drain), then paced the same
//! way (steady, where latency runs from the instant a request was due).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::extract::State;
use axum::http::HeaderMap;
use bytes::Bytes;
use hyper::StatusCode;
use replyd_server::config::Webhooks;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::BenchArgs;
use crate::harness::{Conn, Storage, percentile_ms, start_replyd_with};

/// Connections that complete jobs.
const COMPLETERS: usize = 32;
/// The signing secret (any will do: the receiver does not verify; the
/// official verifier is exercised by the test suite).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Retries come quickly in a benchmark: the 10% answered 500 are retried
/// after about a second (with jitter).
const RETRY_SCHEDULE: [f64; 6] = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0];
/// The target of case (a): replyd's deliveries/s over the ceiling's.
const TARGET_RATIO: f64 = 0.5;
/// How long a measurement may wait for its last delivery.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Always200,
    FailTenth,
    Slow(Duration),
}

impl Behaviour {
    fn label(self) -> &'static str {
        match self {
            Behaviour::Always200 => "(a) always 200",
            Behaviour::FailTenth => "(b) 500 to every tenth request",
            Behaviour::Slow(_) => "(c) 1 s per answer",
        }
    }
}

/// A local webhook receiver.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Received>,
    stop: CancellationToken,
}

struct Received {
    behaviour: Behaviour,
    /// While false, requests wait unanswered (the endpoint is "down").
    open: watch::Sender<bool>,
    /// Requests held at the closed gate.
    waiting: AtomicUsize,
    record: Mutex<Record>,
}

/// What arrived since the last [`Receiver::take`].
#[derive(Default)]
struct Record {
    requests: usize,
    /// Message ids seen.
    seen: HashSet<String>,
    /// Job (simple id, from the `webhook-id`) → when its first 2xx arrived.
    delivered: HashMap<String, Instant>,
    /// Those whose very first attempt got the 2xx.
    first_pass: HashMap<String, Instant>,
    /// The first attempt of each message, as sent (for the ceiling).
    captured: Vec<Captured>,
}

#[derive(Clone)]
struct Captured {
    job: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// `msg_{job}_{delivery}` → job.
fn job_of(webhook_id: &str) -> Option<&str> {
    webhook_id.strip_prefix("msg_")?.split('_').next()
}

async fn hook(State(r): State<Arc<Received>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(job) = job_of(&id).map(str::to_string) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut open = r.open.subscribe();
    if !*open.borrow() {
        r.waiting.fetch_add(1, Ordering::Relaxed);
        let _ = open.wait_for(|o| *o).await;
        r.waiting.fetch_sub(1, Ordering::Relaxed);
    }
    let (n, first) = {
        let mut rec = r.record.lock().unwrap();
        rec.requests += 1;
        let first = rec.seen.insert(id);
        if first {
            let keep = [
                "content-type",
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature",
            ];
            let headers = keep
                .iter()
                .filter_map(|k| Some((k.to_string(), headers.get(*k)?.to_str().ok()?.to_string())))
                .collect();
            rec.captured.push(Captured {
                job: job.clone(),
                headers,
                body,
            });
        }
        (rec.requests, first)
    };
    let status = match r.behaviour {
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK
        }
        Behaviour::FailTenth if n % 10 == 0 => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    if status.is_success() {
        let now = Instant::now();
        let mut rec = r.record.lock().unwrap();
        rec.delivered.entry(job.clone()).or_insert(now);
        if first {
            rec.first_pass.insert(job, now);
        }
    }
    status
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> anyhow::Result<Receiver> {
        let state = Arc::new(Received {
            behaviour,
            open: watch::Sender::new(true),
            waiting: AtomicUsize::new(0),
            record: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        Ok(Receiver { addr, state, stop })
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn set_open(&self, open: bool) {
        self.state.open.send_replace(open);
    }

    /// Takes what arrived so far, and starts a new record.
    fn take(&self) -> Record {
        std::mem::take(&mut *self.state.record.lock().unwrap())
    }

    /// Waits until `n` jobs have been delivered.
    async fn wait_for(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            let got = self.state.record.lock().unwrap().delivered.len();
            if got >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {got} of {n} deliveries arrived");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until `n` requests are held at the closed gate.
    async fn wait_held(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRAIN_LIMIT;
        while self.state.waiting.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!(
                    "only {} requests reached the receiver",
                    self.state.waiting.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// A drain: how fast a backlog of owed deliveries went out.
struct Drain {
    delivered: usize,
    requests: usize,
    first_pass: usize,
    /// First-pass deliveries per second, from the instant the gate opened
    /// (or the posting began) to the last first-pass arrival.
    rate: f64,
    /// When the last delivery (retries included) arrived, after the start.
    all: Duration,
}

impl Drain {
    fn of(rec: &Record, t0: Instant) -> Drain {
        let since = |m: &HashMap<String, Instant>| {
            m.values()
                .max()
                .map_or(Duration::ZERO, |l| l.saturating_duration_since(t0))
        };
        let first = since(&rec.first_pass);
        Drain {
            delivered: rec.delivered.len(),
            requests: rec.requests,
            first_pass: rec.first_pass.len(),
            rate: rec.first_pass.len() as f64 / first.as_secs_f64().max(1e-9),
            all: since(&rec.delivered),
        }
    }

    fn line(&self, name: &str) -> String {
        format!(
            "    {name:<24} {:>8.0} deliveries/s ({} first pass); all {} delivered {:>7.3} s after the start ({} requests)",
            self.rate,
            self.first_pass,
            self.delivered,
            self.all.as_secs_f64(),
            self.requests,
        )
    }
}

/// Nanoseconds from each job's start to its delivery, sorted (may be
/// negative).
fn latencies(rec: &Record, started: &HashMap<String, Instant>) -> Vec<i64> {
    let mut ns: Vec<i64> = started
        .iter()
        .filter_map(|(job, s)| {
            let a = rec.delivered.get(job)?;
            Some(match a.checked_duration_since(*s) {
                Some(d) => d.as_nanos() as i64,
                None => -(s.duration_since(*a).as_nanos() as i64),
            })
        })
        .collect();
    ns.sort_unstable();
    ns
}

fn latency_line(name: &str, ns: &[i64], of: usize) -> String {
    format!(
        "    {name:<24} p50 {:>8.2} ms   p99 {:>8.2} ms   ({} of {of} delivered)",
        percentile_ms(ns, 0.50),
        percentile_ms(ns, 0.99),
        ns.len(),
    )
}

pub async fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let w = args.webhook_concurrency.max(1);
    let per_endpoint = args.webhook_per_endpoint.unwrap_or(w).max(1);
    println!(
        "\nwebhooks: each completed job owes one delivery to a local receiver \
         (replyd: webhooks.concurrency = {w}, per_endpoint = {per_endpoint}; the ceiling: {w} requests at once); \
         retry schedule {RETRY_SCHEDULE:?} s"
    );
    let mut ratio_a = None;
    for behaviour in [
        Behaviour::Always200,
        Behaviour::FailTenth,
        Behaviour::Slow(Duration::from_secs(1)),
    ] {
        let (n, rate) = match behaviour {
            // A 1 s receiver takes w per second at most: 8 s of them, and
            // a steady pace of half that.
            Behaviour::Slow(_) => {
                let w = w.min(per_endpoint);
                ((w * 8).min(args.webhook_jobs), w as f64 / 2.0)
            }
            _ => (args.webhook_jobs, args.webhook_rate),
        };
        let steady = ((rate * 5.0) as usize).clamp(1, n);
        println!("\n  {}:", behaviour.label());
        let receiver = Receiver::start(behaviour).await?;
        let db = dir.join("bench-webhooks.db");
        let server = start_replyd_with(&Storage::Sqlite(db), |c| {
            c.webhooks = Webhooks {
                secret: Some(SECRET.into()),
                allow_networks: vec!["127.0.0.0/8".into()],
                retry_schedule: RETRY_SCHEDULE.to_vec(),
                concurrency: w,
                per_endpoint,
                timeout: 120.0,
                ..Webhooks::default()
            };
            if let Some(q) = c.queues.get_mut("bench") {
                q.timeout = 3600.0;
            }
        })
        .await?;
        let jobs = submit(server.addr, &receiver.url(), n + steady).await?;
        let leases = lease_all(server.addr, jobs.len()).await?;
        let (drain_leases, steady_leases) = leases.split_at(n);

        // replyd: a backlog owed to a closed endpoint, then it opens.
        receiver.set_open(false);
        complete(server.addr, drain_leases, None).await?;
        receiver.wait_held(w.min(per_endpoint).min(n)).await?;
        let t0 = Instant::now();
        let writes = server.writes();
        receiver.set_open(true);
        receiver.wait_for(n).await?;
        let rec = receiver.take();
        let writes = (server.writes().0 - writes.0, server.writes().1 - writes.1);
        let replyd_drain = Drain::of(&rec, t0);
        let captured = rec.captured;
        // replyd: steady.
        let completed = complete(server.addr, steady_leases, Some(rate)).await?;
        receiver.wait_for(steady).await?;
        let replyd_steady = latencies(&receiver.take(), &completed);
        server.stop().await;

        // The ceiling: the same payloads, the same receiver.
        let t0 = Instant::now();
        post_all(receiver.url(), &captured, w, None).await?;
        receiver.wait_for(captured.len()).await?;
        let bare_drain = Drain::of(&receiver.take(), t0);
        let due = post_all(receiver.url(), &captured[..steady], w, Some(rate)).await?;
        receiver.wait_for(steady).await?;
        let bare_steady = latencies(&receiver.take(), &due);
        receiver.stop.cancel();

        let ratio = replyd_drain.rate / bare_drain.rate;
        println!("   drain of {n} deliveries owed to an endpoint that was down:");
        println!("{}", replyd_drain.line("replyd"));
        println!("{}", bare_drain.line("bare reqwest (ceiling)"));
        println!(
            "    ratio to ceiling: {ratio:.2}; replyd's store: {:.2} write operations and {:.3} commits per delivery",
            writes.0 as f64 / n as f64,
            writes.1 as f64 / n as f64
        );
        println!("   steady, {steady} completions paced at {rate:.0}/s: completion → delivery");
        println!("{}", latency_line("replyd", &replyd_steady, steady));
        println!(
            "{}",
            latency_line("bare reqwest (ceiling)", &bare_steady, steady)
        );
        if behaviour == Behaviour::Always200 {
            ratio_a = Some(ratio);
        }
    }
    if let Some(r) = ratio_a {
        println!("\n  case (a): ratio {r:.2} (target >= {TARGET_RATIO:.2})");
    }
    Ok(())
}

/// Submits `n` jobs to queue `bench` with a webhook to `url`; their ids.
async fn submit(dst: SocketAddr, url: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let body = Bytes::from(format!(
        r#"{{"queue":"bench","input":{{"n":1}},"webhook":{{"url":"{url}"}}}}"#
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64.min(n) {
        let (next, body) = (next.clone(), body.clone());
        let mut conn = Conn::open(dst).await?;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let (status, answer) = conn.post("/v1/jobs", body.clone()).await?;
                if status != StatusCode::ACCEPTED {
                    bail!(
                        "submit answered {status}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
                let job: replyd_proto::Job = serde_json::from_slice(&answer)?;
                ids.push(job.id);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await?.context("a submitter failed")?);
    }
    Ok(ids)
}

/// A leased job: its id and the `complete` call that finishes it.
struct Lease {
    job: String,
    path: String,
    body: Bytes,
}

/// Leases `n` jobs of queue `bench`, in batches of 100.
async fn lease_all(dst: SocketAddr, n: usize) -> anyhow::Result<Vec<Lease>> {
    let mut conn = Conn::open(dst).await?;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let body = format!(
            r#"{{"worker":"bench","lease":600,"wait":5,"batch":{}}}"#,
            (n - out.len()).min(100)
        );
        let (status, answer) = conn
            .post("/v1/queues/bench/lease", Bytes::from(body))
            .await?;
        if status != StatusCode::OK {
            bail!(
                "lease answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        let batch: replyd_proto::LeaseBatch = serde_json::from_slice(&answer)?;
        for l in batch.leases {
            out.push(Lease {
                job: l.job.id.replace('-', ""),
                path: format!("/v1/jobs/{}/complete", l.job.id),
                body: Bytes::from(format!(
                    r#"{{"lease_id":"{}","result":{{"ok":true}}}}"#,
                    l.lease_id
                )),
            });
        }
    }
    Ok(out)
}

/// Completes `leases` over [`COMPLETERS`] connections, as fast as they go
/// or paced at `rate` per second; each job (simple id) → when its
/// completion's answer returned.
async fn complete(
    dst: SocketAddr,
    leases: &[Lease],
    rate: Option<f64>,
) -> anyhow::Result<HashMap<String, Instant>> {
    let items: Arc<Vec<(String, Bytes)>> = Arc::new(
        leases
            .iter()
            .map(|l| (l.path.clone(), l.body.clone()))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for _ in 0..COMPLETERS.min(items.len()) {
        let (items, next) = (items.clone(), next.clone());
        let mut conn = Conn::open(dst).await?;
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, body)) = items.get(k) else {
                    return anyhow::Ok(done);
                };
                if let Some(rate) = rate {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate))
                        .await;
                }
                let (status, answer) = conn.post(path, body.clone()).await?;
                if status != StatusCode::OK {
                    bail!(
                        "{path} answered {status}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
                done.push((k, Instant::now()));
            }
        }));
    }
    let mut out = HashMap::with_capacity(leases.len());
    for t in tasks {
        for (k, at) in t.await?.context("a completer failed")? {
            out.insert(leases[k].job.clone(), at);
        }
    }
    Ok(out)
}

/// The ceiling: posts `payloads` to `url` with `w` requests in flight, as
/// fast as it can or each at its due time at `rate` per second, retrying
/// a failure at once; each job → when its request was sent (or due).
async fn post_all(
    url: String,
    payloads: &[Captured],
    w: usize,
    rate: Option<f64>,
) -> anyhow::Result<HashMap<String, Instant>> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let items = Arc::new(payloads.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::new();
    for _ in 0..w.min(items.len()) {
        let (items, next, client, url) = (items.clone(), next.clone(), client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = items.get(k) else {
                    return anyhow::Ok(sent);
                };
                let due = match rate {
                    Some(rate) => {
                        let due = start + Duration::from_secs_f64(k as f64 / rate);
                        tokio::time::sleep_until(due).await;
                        due.into_std()
                    }
                    None => Instant::now(),
                };
                for tries in 1.. {
                    let mut req = client.post(&url).body(p.body.clone());
                    for (k, v) in &p.headers {
                        req = req.header(k, v);
                    }
                    let res = req.send().await?;
                    let ok = res.status().is_success();
                    res.bytes().await?;
                    if ok {
                        break;
                    }
                    if tries >= 100 {
                        bail!("the receiver refused a payload 100 times");
                    }
                }
                sent.push((p.job.clone(), due));
            }
        }));
    }
    let mut out = HashMap::with_capacity(payloads.len());
    for t in tasks {
        out.extend(t.await?.context("a ceiling client failed")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_id_names_its_job() {
        assert_eq!(
            job_of("msg_0198c2a57f3e7b619a2c5d4e3f2a1b0c_17"),
            Some("0198c2a57f3e7b619a2c5d4e3f2a1b0c")
        );
        assert_eq!(job_of("evt_1"), None);
    }

    #[test]
    fn a_drain_runs_from_the_start_to_the_last_first_pass_arrival() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut rec = Record {
            requests: 3,
            ..Record::default()
        };
        rec.delivered = [("a".to_string(), at(500)), ("b".to_string(), at(2000))].into();
        rec.first_pass = [("a".to_string(), at(500))].into();
        let d = Drain::of(&rec, t0);
        assert_eq!((d.delivered, d.first_pass, d.requests), (2, 1, 3));
        assert!((d.rate - 2.0).abs() < 1e-6, "{}", d.rate);
        assert_eq!(d.all, Duration::from_millis(2000));
        let started = [("a".to_string(), at(400)), ("b".to_string(), at(2500))].into();
        assert_eq!(latencies(&rec, &started), vec![-500_000_000, 100_000_000]);
    }
}
