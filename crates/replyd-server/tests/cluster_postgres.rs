//! Three replyd nodes on one PostgreSQL database, sharing nothing else: a
//! job submitted on A and leased on B is long-polled on C, which answers as
//! soon as the job changes (LISTEN/NOTIFY), not at its next timer tick.

#![cfg(feature = "postgres")]

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;

const BACKEND: common::Backend = common::Backend::Postgres;

const CONFIG: &str = "[queues.work]\nexecutor = \"pull\"\n";

async fn cluster(n: usize) -> Option<Vec<TestServer>> {
    let url = replyd_store::postgres::testing::fresh_schema("nodes").await?;
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(TestServer::start_on(CONFIG, &url).await);
    }
    Some(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_node_wakes_on_a_change_made_on_another() {
    let Some(nodes) = cluster(3).await else {
        return;
    };
    let (a, b, c) = (
        nodes[0].client(None),
        nodes[1].client(None),
        nodes[2].client(None),
    );
    let id = a.submit("work", json!({"n": 1})).await;
    let r = c.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(r.status, 202, "C sees the job A accepted");
    let etag = r.header("etag").unwrap();
    let b2 = b.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        b2.lease("work").await
    });
    let t = Instant::now();
    let r = c
        .send(
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}"),
            &[("if-none-match", &etag), ("prefer", "wait=30")],
            None,
        )
        .await;
    let took = t.elapsed();
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["state"], "running", "B's lease reached C");
    assert!(took < Duration::from_secs(3), "C answered after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waiting_on_one_node_gets_a_job_submitted_on_another() {
    let Some(nodes) = cluster(2).await else {
        return;
    };
    let (a, b) = (nodes[0].client(None), nodes[1].client(None));
    let a2 = a.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        a2.submit("work", json!("from A")).await
    });
    let t = Instant::now();
    let r = b.post("/v1/queues/work/lease", json!({"wait": 30})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["job"]["input"], "from A");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}
