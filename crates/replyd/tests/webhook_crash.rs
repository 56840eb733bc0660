//! Webhooks survive a crash: SIGKILL `replyd serve` while deliveries are
//! due and their receiver is down; once replyd restarts and the receiver
//! is back, every delivery arrives (duplicates allowed, with the same
//! `webhook-id`).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use bytes::Bytes;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use support::{Server, db_path, http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_owed_at_a_crash_arrive_after_the_restart() {
    // A port for the receiver, closed for now: every attempt fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let schedule = vec!["0.3"; 60].join(", ");
    let config = format!(
        "[webhooks]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
         allow_networks = [\"127.0.0.0/8\"]\nretry_schedule = [0, {schedule}]\ntimeout = 1\n\
         [queues.work]\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = db_path(dir.path()).display().to_string();
    let mut server = Server::start(dir.path(), Some(&config)).await;
    let client = http();
    let mut ids = HashSet::new();
    for i in 0..20 {
        let r = client
            .post(format!("{}/v1/jobs", server.url))
            .json(&json!({"queue": "work", "input": {"i": i},
                          "webhook": {"url": format!("http://127.0.0.1:{port}/hook")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = client
            .post(format!("{}/v1/jobs/{id}/cancel", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        ids.insert(id);
    }
    // Let some attempts fail, then crash.
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.signal(Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10)).await.unwrap();

    // The receiver comes up; then replyd.
    let seen: Arc<Mutex<HashMap<String, HashSet<String>>>> = Default::default();
    let s = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap();
                let job = v["data"]["id"].as_str().unwrap().to_string();
                let msg = headers["webhook-id"].to_str().unwrap().to_string();
                assert_eq!(v["type"], "job.canceled");
                s.lock().unwrap().entry(job).or_default().insert(msg);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let _server = Server::start_on(dir.path(), Some(&config), &["--db", &db]).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got: HashSet<String> = seen.lock().unwrap().keys().cloned().collect();
        if got == ids {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 20 deliveries arrived after the restart",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each job's deliveries (duplicates included) carried one webhook-id.
    for (job, msgs) in seen.lock().unwrap().iter() {
        assert_eq!(msgs.len(), 1, "job {job}: {msgs:?}");
    }
}
