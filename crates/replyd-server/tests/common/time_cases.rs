// Test cases shared by the `time` test binaries (one per store);
// included with `include!`, so `BACKEND` and `common` come from the includer.


use std::time::Duration;

use chrono::{DateTime, Utc};
use common::TestServer;
use replyd_core::Clock;
use serde_json::json;

const CONFIG: &str = r#"
reaper_interval = 0.02
gc_interval = 0.02
[queues.work]
executor = "pull"
max_attempts = 2
timeout = 60
ttl = 60
"#;

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

/// Gives the (real-time) reaper and GC a few sweeps.
async fn sweeps() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn an_expired_lease_retries_with_backoff_then_fails() {
    let clock = Clock::manual(start());
    let Some(s) = TestServer::start_with(CONFIG, clock.clone()).await else { return };
    let c = s.client(None);
    let id = c.submit("work", json!({})).await;
    let (_, lease) = c.lease("work").await;
    clock.advance(Duration::from_secs(29));
    sweeps().await;
    assert_eq!(
        c.state(&id).await,
        "running",
        "the 30 s lease has not run out"
    );
    clock.advance(Duration::from_secs(2));
    let v = c.wait_state(&id, "queued").await;
    assert_eq!(v["attempt"], 1);
    assert_eq!(v["error"]["code"], "lease_expired");
    // The old lease is fenced off.
    c.complete(&id, &lease, json!(1)).await.problem(409);
    // Backoff: not leasable until it ends (1 s minus jitter).
    let r = c.post("/v1/queues/work/lease", json!({})).await;
    assert_eq!(r.status, 204, "still in its backoff");
    clock.advance(Duration::from_secs(1));
    let (job, _) = c.lease("work").await;
    assert_eq!(job["attempt"], 2);
    clock.advance(Duration::from_secs(31));
    let v = c.wait_state(&id, "failed").await;
    assert_eq!(v["error"]["code"], "lease_expired");
    assert_eq!(v["attempt"], 2);
}

#[tokio::test]
async fn heartbeats_keep_a_lease_until_the_timeout() {
    let clock = Clock::manual(start());
    let Some(s) = TestServer::start_with(CONFIG, clock.clone()).await else { return };
    let c = s.client(None);
    let id = c.submit("work", json!({})).await;
    let (_, lease) = c.lease("work").await;
    for _ in 0..2 {
        clock.advance(Duration::from_secs(25));
        let r = c
            .post(
                &format!("/v1/jobs/{id}/heartbeat"),
                json!({"lease_id": lease}),
            )
            .await;
        assert_eq!(r.status, 200);
        sweeps().await;
        assert_eq!(c.state(&id).await, "running");
    }
    // 50 s in: the next heartbeat cannot carry the lease past the 60 s timeout.
    let r = c
        .post(
            &format!("/v1/jobs/{id}/heartbeat"),
            json!({"lease_id": lease}),
        )
        .await;
    let until: DateTime<Utc> = r.json()["lease_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(until, start() + chrono::Duration::seconds(60));
    clock.advance(Duration::from_secs(10));
    let v = c.wait_state(&id, "queued").await;
    assert_eq!(v["error"]["code"], "lease_expired");
}

#[tokio::test]
async fn finished_jobs_expire_with_410_then_are_collected() {
    let clock = Clock::manual(start());
    let Some(s) = TestServer::start_with(CONFIG, clock.clone()).await else { return };
    let c = s.client(None);
    let id = c.submit("work", json!({})).await;
    let (_, lease) = c.lease("work").await;
    c.complete(&id, &lease, json!("r")).await;
    let v = c.get(&format!("/v1/jobs/{id}")).await.json();
    let expires: DateTime<Utc> = v["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        expires,
        start() + chrono::Duration::seconds(60),
        "ttl = 60 s"
    );
    clock.advance(Duration::from_secs(59));
    sweeps().await;
    assert_eq!(c.get(&format!("/v1/jobs/{id}/result")).await.status, 200);
    clock.advance(Duration::from_secs(1));
    c.get(&format!("/v1/jobs/{id}")).await.problem(410);
    c.get(&format!("/v1/jobs/{id}/result")).await.problem(410);
    sweeps().await; // the GC purges it, leaving a tombstone
    c.get(&format!("/v1/jobs/{id}")).await.problem(410);
    let list = c.get("/v1/jobs").await.json();
    assert!(list["jobs"].as_array().unwrap().is_empty());
    let m = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        m.contains(r#"replyd_jobs{queue="work",state="succeeded"} 0"#),
        "{m}"
    );
    clock.advance(replyd_core::store::TOMBSTONE_RETENTION);
    sweeps().await;
    c.get(&format!("/v1/jobs/{id}")).await.problem(404);
}

/// The ticks of a schedule (every second here) that its node fires late
/// each fire, once and in order, up to a minute back; after a longer gap
/// the first missed tick fires and those older than a minute are skipped.
#[tokio::test]
async fn late_ticks_fire_each_once_up_to_a_minute_back() {
    let clock = Clock::manual(start());
    let config = format!(
        "{CONFIG}[schedules.tick]\ncron = \"* * * * * *\"\njob = {{ queue = \"work\", input = {{}} }}\n"
    );
    let Some(s) = TestServer::start_with(&config, clock.clone()).await else { return };
    let c = s.client(None);
    let jobs = || async {
        c.get("/v1/jobs?queue=work&limit=1000").await.json()["jobs"]
            .as_array()
            .unwrap()
            .len()
    };
    // Each scheduler look is at most a (real) second apart.
    let look = || tokio::time::sleep(Duration::from_millis(1300));
    // 5 s late: the 5 ticks, each once.
    clock.advance(Duration::from_secs(5));
    look().await;
    assert_eq!(jobs().await, 5);
    look().await;
    assert_eq!(jobs().await, 5, "no tick twice");
    // 10 minutes late: the first missed tick, then the last minute's 60.
    clock.advance(Duration::from_secs(600));
    for _ in 0..4 {
        look().await;
    }
    assert_eq!(jobs().await, 5 + 1 + 60);
    let s = c.get("/v1/schedules/tick").await.json();
    let next: DateTime<Utc> = s["next_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, start() + chrono::Duration::seconds(606));
}
