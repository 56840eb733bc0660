//! PostgreSQL goes down under a running node and comes back: meanwhile
//! requests get 503 with Retry-After quickly instead of hanging, and then
//! the node recovers by itself (pool, sequencer and LISTEN included).
//!
//! It stops and starts the machine's PostgreSQL cluster (`pg_ctlcluster`),
//! so it lives alone in its own test binary. It runs only where it may:
//! with `REPLYD_TEST_RESTARTS=1` (`scripts/test` sets it).

#![cfg(feature = "postgres")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;

const BACKEND: common::Backend = common::Backend::Postgres;

fn cluster_version() -> Option<String> {
    std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .next()
}

fn pg_ctl(action: &str) {
    let version = cluster_version().expect("a PostgreSQL cluster in /etc/postgresql");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .args(if action == "stop" {
            &["-m", "fast"][..]
        } else {
            &[][..]
        })
        .status()
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

/// Starts PostgreSQL again even if the test fails half way.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &cluster_version().unwrap_or_default(),
                "main",
                "start",
            ])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_gives_quick_503s_then_recovers() {
    if !replyd_testkit::may_restart("PostgreSQL") {
        return;
    }
    let Some(node) = TestServer::start("[queues.work]\nexecutor = \"pull\"\n").await else {
        return;
    };
    let c = node.client(None);
    c.submit("work", json!(1)).await;

    let _guard = Restart;
    pg_ctl("stop");
    let t = Instant::now();
    let r = c.post("/v1/jobs", json!({"queue": "work"})).await;
    let p = r.problem(503);
    assert!(r.header("retry-after").is_some(), "{p}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "503 after {:?}",
        t.elapsed()
    );
    assert_eq!(c.get("/readyz").await.status, 503);

    pg_ctl("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .post("/v1/jobs", json!({"queue": "work", "input": "after"}))
            .await;
        if r.status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", r.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.get("/readyz").await.status, 200);
    // The event bus is back too: a waiting worker wakes on a new job.
    let first = c.post("/v1/queues/work/lease", json!({"batch": 10})).await;
    assert_eq!(first.status, 200, "the two queued jobs");
    let c2 = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c2.submit("work", json!("late")).await
    });
    let t = Instant::now();
    let r = c.post("/v1/queues/work/lease", json!({"wait": 20})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["job"]["input"], "late");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}
