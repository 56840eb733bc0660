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

/// Leases a job of `work` through `worker`, reports `percents` through it,
/// and completes it through `finisher` (possibly another node). Returns
/// the job's id.
async fn work_one(
    worker: &common::Client,
    finisher: &common::Client,
    j: usize,
    percents: &[u32],
) -> String {
    let r = worker
        .post(
            "/v1/queues/work/lease",
            json!({"worker": format!("w{j}"), "lease": 60, "wait": 10}),
        )
        .await;
    assert_eq!(r.status, 200);
    let l = r.json();
    let id = l["job"]["id"].as_str().unwrap().to_string();
    let lease = l["lease_id"].as_str().unwrap().to_string();
    for p in percents {
        let r = worker
            .post(
                &format!("/v1/jobs/{id}/progress"),
                json!({"lease_id": lease, "percent": p}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        finisher.complete(&id, &lease, json!({"j": j})).await.status,
        200
    );
    id
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

/// SSE and WebSocket clients on A see, live, the events of jobs that are
/// submitted, worked and completed through B and C; an all-jobs stream cut
/// off on A resumes on C from its last id with no gap and no duplicate,
/// while writes keep committing on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_follow_every_node_and_resume_on_another() {
    use common::streams::{Sse, ws_connect, ws_recv, ws_send};
    let Some(nodes) = cluster(3).await else {
        return;
    };
    let base = |i: usize| format!("http://{}", nodes[i].addr);
    let wait = Duration::from_secs(15);
    let mut all_on_a = Sse::open(&base(0), "/v1/events?queue=work", None, &[]).await;
    assert_eq!(all_on_a.status, 200);
    all_on_a.next(wait).await.unwrap(); // retry:
    let mut ws = ws_connect(nodes[0].addr, None).await;
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "ref": "all", "all": true}),
    )
    .await;
    assert_eq!(ws_recv(&mut ws).await["type"], "ack");

    // 12 jobs submitted on B and C, worked through all three nodes at once.
    let jobs = 12;
    let mut work = Vec::new();
    for j in 0..jobs {
        let submit_on = nodes[1 + j % 2].client(None);
        let worker = nodes[j % 3].client(None);
        let finisher = nodes[(j + 1) % 3].client(None);
        work.push(tokio::spawn(async move {
            let id = submit_on.submit("work", json!({"j": j})).await;
            work_one(&worker, &finisher, j, &[30, 60]).await;
            id
        }));
    }
    // Take the first half of the all-jobs stream on A, then cut it.
    let total = jobs * 5; // accepted, started, 2 progress, succeeded
    let mut got: Vec<(i64, String, String)> = Vec::new();
    while got.len() < total / 2 {
        let f = all_on_a.next_event(wait).await.expect("A's stream ended");
        got.push((
            f.id(),
            f.json()["id"].as_str().unwrap().to_string(),
            f.event.clone().unwrap(),
        ));
    }
    let last = got.last().unwrap().0;
    drop(all_on_a);
    let mut ids = Vec::new();
    for w in work {
        ids.push(w.await.unwrap());
    }
    // Resume on C from the last id A delivered.
    let mut on_c = Sse::open(
        &base(2),
        "/v1/events?queue=work",
        None,
        &[("last-event-id", &last.to_string())],
    )
    .await;
    while got.len() < total {
        let f = on_c.next_event(wait).await.expect("C's stream ended");
        got.push((
            f.id(),
            f.json()["id"].as_str().unwrap().to_string(),
            f.event.clone().unwrap(),
        ));
    }
    let positions: Vec<i64> = got.iter().map(|g| g.0).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in log order, none twice: {positions:?}"
    );
    // Exactly each job's log, as any node reads it.
    let b = nodes[1].client(None);
    for id in &ids {
        let mine: Vec<(i64, String)> = got
            .iter()
            .filter(|g| g.1 == *id)
            .map(|g| (g.0, g.2.clone()))
            .collect();
        let log: Vec<(i64, String)> =
            Sse::open(&base(1), &format!("/v1/jobs/{id}/events"), None, &[])
                .await
                .until_terminal(wait)
                .await
                .iter()
                .map(|f| (f.id(), f.event.clone().unwrap()))
                .collect();
        assert_eq!(mine, log, "job {id}");
        assert_eq!(b.state(id).await, "succeeded");
    }
    // The WebSocket on A saw the same events with the same ids.
    let mut ws_got = Vec::new();
    while ws_got.len() < total {
        let e = ws_recv(&mut ws).await;
        assert_eq!(e["type"], "event");
        ws_got.push(e["id"].as_i64().unwrap());
    }
    assert_eq!(ws_got, positions);
}

/// Dispatchers on three nodes share one outbox: every delivery is sent
/// once (no node crashed), and each job's deliveries arrive in event order,
/// whichever nodes the job's events were written on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dispatchers_send_each_delivery_once_and_in_order() {
    use std::sync::{Arc, Mutex};
    let Some(url) = replyd_store::postgres::testing::fresh_schema("hooks").await else {
        return;
    };
    // The receiver: (job, event type, webhook-id) in arrival order.
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Default::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let s = s.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                s.lock().unwrap().push((
                    v["data"]["id"].as_str().unwrap().to_string(),
                    v["type"].as_str().unwrap().to_string(),
                    headers["webhook-id"].to_str().unwrap().to_string(),
                ));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = format!(
        "{CONFIG}[webhooks]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
         allow_networks = [\"127.0.0.0/8\"]\n"
    );
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestServer::start_on(&config, &url).await);
    }
    let jobs = 15;
    let mut work = Vec::new();
    for j in 0..jobs {
        let submit_on = nodes[j % 3].client(None);
        let worker = nodes[(j + 1) % 3].client(None);
        let finisher = nodes[(j + 2) % 3].client(None);
        let hook = hook.clone();
        work.push(tokio::spawn(async move {
            let r = submit_on
                .post(
                    "/v1/jobs",
                    json!({"queue": "work", "webhook": {"url": hook, "events": ["job.started", "job.progress"]}}),
                )
                .await;
            assert_eq!(r.status, 202);
            work_one(&worker, &finisher, j, &[25, 50, 75]).await
        }));
    }
    let mut ids = Vec::new();
    for w in work {
        ids.push(w.await.unwrap());
    }
    let owed = jobs * 5; // started, 3 progress, succeeded
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < owed {
        assert!(
            Instant::now() < deadline,
            "{} of {owed} deliveries arrived",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A little longer: nothing more (no duplicate) arrives.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), owed, "each delivery once");
    let distinct: std::collections::HashSet<&String> = seen.iter().map(|s| &s.2).collect();
    assert_eq!(distinct.len(), owed);
    for id in &ids {
        let order: Vec<&str> = seen
            .iter()
            .filter(|s| s.0 == *id)
            .map(|s| s.1.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "job.started",
                "job.progress",
                "job.progress",
                "job.progress",
                "job.succeeded"
            ],
            "job {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_publishes_and_signs_with_the_same_webhook_keys() {
    use replyd_server::webhooks::jwt;
    let Some(nodes) = cluster(2).await else {
        return;
    };
    let jwks = |s: &TestServer| {
        let c = s.client(None);
        async move {
            let r = c.get("/.well-known/jwks.json").await;
            assert_eq!(r.status, 200);
            r.json()
        }
    };
    let (a, b) = (jwks(&nodes[0]).await, jwks(&nodes[1]).await);
    assert_eq!(a["keys"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a, b, "the first node's key, kept in the database");
    // A rotation (what `replyd keys generate --activate-in 0` does): both
    // nodes publish both keys and sign with the new one once they re-read.
    let now = chrono::Utc::now();
    let (kid, _) = jwt::add_key(&*nodes[0].app.store, now, now).await.unwrap();
    for n in &nodes {
        n.app
            .webhooks
            .jwt_keys
            .load(&*n.app.store, now)
            .await
            .unwrap();
        let keys = n.app.webhooks.jwt_keys.get();
        assert_eq!(keys.keys.len(), 2);
        assert_eq!(keys.signer(chrono::Utc::now()).unwrap().kid, kid);
    }
    let (a, b) = (jwks(&nodes[0]).await, jwks(&nodes[1]).await);
    assert_eq!(a, b);
    assert_eq!(a["keys"].as_array().unwrap().len(), 2);
    // The key that signs cannot be retired; the old one can.
    let old = a["keys"][0]["kid"].as_str().unwrap().to_string();
    let refused = jwt::retire_key(&*nodes[1].app.store, &kid, chrono::Utc::now()).await;
    assert!(matches!(refused, Ok(Err(jwt::RetireError::Signing(_)))));
    jwt::retire_key(&*nodes[1].app.store, &old, chrono::Utc::now())
        .await
        .unwrap()
        .unwrap();
    nodes[0]
        .app
        .webhooks
        .jwt_keys
        .load(&*nodes[0].app.store, now)
        .await
        .unwrap();
    assert_eq!(jwks(&nodes[0]).await["keys"].as_array().unwrap().len(), 1);
}

/// A queue's limits hold across three nodes: `max_running` counted over
/// every node's workers, one token bucket for the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_limits_hold_across_three_nodes() {
    let Some(url) = replyd_store::postgres::testing::fresh_schema("limits").await else {
        return;
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestServer::start_on(common::flow::LIMITED, &url).await);
    }
    let clients: Vec<_> = nodes.iter().map(|n| n.client(None)).collect();
    common::flow::limits_hold(&clients).await;
}

/// Each tick of a schedule makes one job though three nodes fire it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_each_tick_once_across_three_nodes() {
    let Some(url) = replyd_store::postgres::testing::fresh_schema("ticks").await else {
        return;
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestServer::start_on(common::flow::SCHEDULED, &url).await);
    }
    let clients: Vec<_> = nodes.iter().map(|n| n.client(None)).collect();
    common::flow::each_tick_fires_once(&clients).await;
}
