//! A crowd of pull workers on one or more nodes, measuring what a queue's
//! limits let through: how many of its jobs ran at once, and when each
//! was leased.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Client;

/// What the workers saw.
#[derive(Debug)]
pub struct Crowd {
    /// The most jobs the workers held at once.
    pub most_at_once: usize,
    /// When each job was leased, from the start, in order.
    pub leased_at: Vec<Duration>,
}

impl Crowd {
    /// Jobs leased per second from the first lease to the last, less the
    /// `burst` a full bucket lets through at once.
    pub fn rate(&self, burst: usize) -> f64 {
        let n = self.leased_at.len();
        let first = self.leased_at[burst.min(n - 1)];
        let last = self.leased_at[n - 1];
        (n - 1 - burst.min(n - 1)) as f64 / (last - first).as_secs_f64()
    }
}

/// `workers` workers (spread over `nodes` in turn) lease jobs of `queue`
/// one at a time and hold each `hold` before completing it, until `jobs`
/// are done. A worker counts a job as held from its lease until just
/// before it asks to complete it, so what it counts is never more than
/// what the server counts as running.
pub async fn crowd(
    nodes: &[Client],
    queue: &str,
    workers: usize,
    jobs: usize,
    hold: Duration,
) -> Crowd {
    let held = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let leased_at = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let c = nodes[w % nodes.len()].clone();
        let (held, most, done, leased_at) =
            (held.clone(), most.clone(), done.clone(), leased_at.clone());
        let queue = queue.to_string();
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < jobs {
                let r = c
                    .post(
                        &format!("/v1/queues/{queue}/lease"),
                        json!({"worker": format!("w{w}"), "lease": 60, "wait": 1}),
                    )
                    .await;
                if r.status == 204 {
                    continue;
                }
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                leased_at.lock().unwrap().push(start.elapsed());
                let l = r.json();
                tokio::time::sleep(hold).await;
                held.fetch_sub(1, Ordering::SeqCst);
                let id = l["job"]["id"].as_str().unwrap();
                let lease = l["lease_id"].as_str().unwrap();
                assert_eq!(c.complete(id, lease, json!({})).await.status, 200);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let all = futures::future::join_all(tasks);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the crowd finished its jobs in time")
        .into_iter()
        .for_each(|t| t.unwrap());
    let mut leased_at = leased_at.lock().unwrap().clone();
    leased_at.sort();
    Crowd {
        most_at_once: most.load(Ordering::SeqCst),
        leased_at,
    }
}

/// Both limits, measured by a crowd of workers: at most `max_running`
/// at once (and that many reached), and the rate at most 5% over (and
/// at most 15% under, on a loaded machine).
pub const LIMITED: &str = "[queues.capped]\nmax_running = 4\n[queues.paced]\nrate = \"40/s\"\n";

pub async fn limits_hold(nodes: &[Client]) {
    for i in 0..40 {
        nodes[i % nodes.len()].submit("capped", json!(i)).await;
    }
    // Each job held long enough that a freed slot is taken again (on
    // another node too, woken by its listener) while the others still run.
    let capped = crowd(nodes, "capped", 12, 40, Duration::from_millis(250)).await;
    assert_eq!(capped.most_at_once, 4, "max_running = 4, with 12 workers");
    for i in 0..100 {
        nodes[i % nodes.len()].submit("paced", json!(i)).await;
    }
    let paced = crowd(nodes, "paced", 8, 100, Duration::ZERO).await;
    // A full bucket is a tenth of a second's: 4 jobs at once. Never over
    // the rate (5% for the clock); under it only as far as a loaded
    // machine's workers lag (three nodes, PostgreSQL and the crowd on 2
    // cores, beside the binary's other tests: 37/s seen).
    let rate = paced.rate(4);
    assert!(
        (34.0..=42.0).contains(&rate),
        "rate = \"40/s\": {rate:.1}/s"
    );
    replyd_testkit::note(&format!(
        "{} node(s): max_running = 4, 12 workers held at most {} at once; rate = \"40/s\" measured {rate:.2}/s",
        nodes.len(),
        capped.most_at_once
    ));
}

/// A schedule that fires every second.
pub const SCHEDULED: &str = "[queues.work]\n[schedules.every-second]\ncron = \"* * * * * *\"\njob = { queue = \"work\", input = { n = 1 } }\n";

/// Each tick of `every-second` made exactly one job, whichever of `nodes`
/// fired it: over four ticks or more, one job under each tick's key.
pub async fn each_tick_fires_once(nodes: &[Client]) {
    let c = &nodes[0];
    let schedule = |c: Client| async move {
        let r = c.get("/v1/schedules/every-second").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let first = schedule(c.clone()).await;
    assert_eq!(first["source"], "config");
    let start: chrono::DateTime<chrono::Utc> = first["next_at"].as_str().unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        assert!(
            Instant::now() < deadline,
            "the schedule fired no 4 ticks in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = schedule(c.clone()).await;
        if let Some(l) = s["last_at"].as_str() {
            let l: chrono::DateTime<chrono::Utc> = l.parse().unwrap();
            if (l - start).num_seconds() >= 3 {
                break l;
            }
        }
    };
    let mut tick = start;
    let mut ticks = 0;
    while tick <= last {
        let key = format!("schedule:every-second:{}", tick.timestamp_millis());
        let r = c.get(&format!("/v1/jobs?idempotency_key={key}")).await;
        assert_eq!(r.status, 200);
        let jobs = r.json()["jobs"].as_array().unwrap().len();
        assert_eq!(jobs, 1, "the tick {tick} made {jobs} jobs");
        tick += chrono::Duration::seconds(1);
        ticks += 1;
    }
    replyd_testkit::note(&format!(
        "{} node(s): {ticks} ticks of a schedule firing every second, one job each",
        nodes.len()
    ));
}
