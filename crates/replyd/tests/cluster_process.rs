//! Three `replyd serve` processes on one PostgreSQL database; one is
//! SIGKILLed under load. Nothing accepted is lost, the jobs it was running
//! are retried through the others once their leases expire, and its clients
//! carry on at another node.

#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

mod support;
use support::{Server, http};

/// Node A runs the `demo` queue in process; B and C serve the same queue to
/// pull workers (this test is the worker once A is gone).
const NODE_A: &str = "reaper_interval = 0.2
[queues.demo]
executor = \"demo\"
timeout = 4
max_attempts = 5
";
const OTHERS: &str = "reaper_interval = 0.2
[queues.demo]
executor = \"pull\"
timeout = 4
max_attempts = 5
";

/// Submits with an Idempotency-Key, going on to the next node when one does
/// not answer, as a client behind a load balancer would.
async fn submit_anywhere(
    client: &reqwest::Client,
    urls: &[String],
    start: usize,
    key: &str,
    seconds: u64,
) -> Option<String> {
    for i in 0..urls.len() {
        let url = &urls[(start + i) % urls.len()];
        let sent = client
            .post(format!("{url}/v1/jobs"))
            .header("idempotency-key", key)
            .json(&json!({"queue": "demo", "input": {"seconds": seconds}}))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                let v: Value = r.json().await.unwrap();
                return Some(v["id"].as_str().unwrap().to_string());
            }
            Ok(r) => assert!(
                r.status() == StatusCode::CONFLICT || r.status().is_server_error(),
                "unexpected {}",
                r.status()
            ),
            Err(_) => {} // that node is gone: the next one
        }
    }
    None
}

async fn get(client: &reqwest::Client, url: &str, id: &str) -> (StatusCode, Value) {
    let r = client
        .get(format!("{url}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_node_under_load_loses_nothing() {
    let Some(db) = replyd_store::postgres::testing::fresh_schema("killnode").await else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let config = if i == 0 { NODE_A } else { OTHERS };
        nodes.push(Server::start_on(dir.path(), Some(config), &["--database-url", &db]).await);
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let client = http();

    // A 3 s job that node A is running when it dies, long-polled on A.
    let held = submit_anywhere(&client, &urls[..1], 0, "held", 3)
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while get(&client, &urls[0], &held).await.1["state"] != "running" {
        assert!(Instant::now() < until, "node A never started the held job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let poll = {
        let (client, url, id) = (client.clone(), urls[0].clone(), held.clone());
        tokio::spawn(async move {
            let r = client
                .get(format!("{url}/v1/jobs/{id}"))
                .header("prefer", "wait=30");
            r.send().await.is_err()
        })
    };

    // Load: 12 clients, round robin over the nodes, for 2.5 s.
    let accepted = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for t in 0..12 {
        let (client, urls, accepted) = (client.clone(), urls.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                let key = format!("k-{t}-{n}");
                if let Some(id) = submit_anywhere(&client, &urls, t + n, &key, 0).await {
                    accepted.lock().unwrap().insert(key, id);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    nodes[0].signal(Signal::SIGKILL);
    nodes[0]
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("node A is gone");
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        poll.await.unwrap(),
        "the long poll on the killed node was cut off"
    );
    // Its client carries on at node B, which answers when the job ends.
    let carried_on = {
        let (client, url, id) = (client.clone(), urls[1].clone(), held.clone());
        tokio::spawn(async move {
            let r = client
                .get(format!("{url}/v1/jobs/{id}"))
                .header("prefer", "wait=30");
            let r = r.send().await.unwrap();
            (r.status(), Instant::now())
        })
    };

    let mut accepted = accepted.lock().unwrap().clone();
    accepted.insert("held".into(), held.clone());
    assert!(
        accepted.len() >= 50,
        "only {} jobs were accepted",
        accepted.len()
    );
    // Work off everything through node B, as a pull worker. The jobs A held
    // come back once their leases expire.
    let mut completed = HashMap::new();
    let work_by = Instant::now() + Duration::from_secs(30);
    let mut done_at = None;
    while completed.len() < accepted.len() {
        assert!(
            Instant::now() < work_by,
            "{} of {} done",
            completed.len(),
            accepted.len()
        );
        let r = client
            .post(format!("{}/v1/queues/demo/lease", urls[1]))
            .json(&json!({"batch": 100, "wait": 1}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NO_CONTENT {
            // Finished by A before it died? Count those as done.
            for id in accepted.values() {
                if !completed.contains_key(id) && get(&client, &urls[2], id).await.0 == 303 {
                    completed.insert(id.clone(), 1);
                }
            }
            continue;
        }
        let leases: Value = r.json().await.unwrap();
        for l in leases["leases"].as_array().unwrap() {
            let id = l["job"]["id"].as_str().unwrap().to_string();
            let r = client
                .post(format!("{}/v1/jobs/{id}/complete", urls[1]))
                .json(&json!({"lease_id": l["lease_id"], "result": "ok"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            if id == held {
                done_at = Some(Instant::now());
            }
            completed.insert(id, l["job"]["attempt"].as_u64().unwrap());
        }
    }
    // Every accepted job succeeded (checked on node C), and nothing else ran.
    for id in accepted.values() {
        assert_eq!(
            get(&client, &urls[2], id).await.0,
            StatusCode::SEE_OTHER,
            "job {id}"
        );
    }
    assert_eq!(
        completed.len(),
        accepted.len(),
        "a job no client was told of"
    );
    assert!(
        completed[&held] >= 2,
        "the held job was retried after A's lease expired"
    );
    let (status, answered_at) = carried_on.await.unwrap();
    assert_eq!(status, StatusCode::SEE_OTHER);
    let done_at = done_at.expect("this worker completed the held job");
    assert!(
        answered_at.duration_since(done_at) < Duration::from_secs(3),
        "node B answered the long poll promptly"
    );
}
