//! API.md §6 over RabbitMQ: the broker contract (`common/broker_cases.rs`)
//! against the local RabbitMQ, on the SQLite store; then what is RabbitMQ's
//! own: a Python RPC client on pika (the RabbitMQ tutorial's, with an
//! exclusive callback queue, and with direct reply-to). RabbitMQ stopping
//! mid-stream is `broker_amqp_restart.rs`.
//!
//! Without RabbitMQ on 127.0.0.1:5672 the tests skip, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "amqp")]

mod common;

use common::amqp::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");

fn pika_here() -> bool {
    replyd_testkit::python_has("pika", "pika")
}

/// Runs `tests/pika/rpc_client.py` against `queue`: (sent, replies).
async fn pika_rpc(mode: &str, queue: &str, n: usize) -> (serde_json::Value, serde_json::Value) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika/rpc_client.py");
    let out = tokio::process::Command::new(replyd_testkit::python())
        .arg(script)
        .args([mode, common::amqp::URL, queue, &n.to_string()])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "rpc_client.py {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["sent"].clone(), v["replies"].clone())
}

/// A Python RPC client on pika, written as RabbitMQ's tutorial does (not
/// for replyd), gets one correct reply per request: with an exclusive
/// callback queue, and through direct reply-to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_rpc_client_gets_its_replies_both_ways() {
    if client().await.is_none() || !pika_here() {
        return;
    }
    let names = Names::new();
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 64\n{}",
        section(&names)
    );
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    // The request queue exists once replyd consumes it.
    client()
        .await
        .unwrap()
        .declare(&names.requests)
        .await
        .unwrap();
    let mut jobs = std::collections::HashSet::new();
    for mode in ["callback", "direct"] {
        let n = 40;
        let (sent, replies) = pika_rpc(mode, &names.requests, n).await;
        let sent = sent.as_object().unwrap();
        assert_eq!(sent.len(), n);
        for (corr, i) in sent {
            let got = replies[corr]
                .as_array()
                .unwrap_or_else(|| panic!("{mode}: no reply to {corr}: {replies}"));
            assert_eq!(got.len(), 1, "{mode}: one reply per request: {got:?}");
            let r = &got[0];
            assert_eq!(r["headers"]["x-replyd-state"], "succeeded", "{r}");
            assert_eq!(r["content_type"], "application/json");
            let body: serde_json::Value =
                serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            assert_eq!(
                body["input"]["i"], *i,
                "{mode}: the reply of its own request"
            );
            assert!(
                jobs.insert(
                    r["headers"]["x-replyd-job-id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                )
            );
        }
    }
    assert_eq!(jobs.len(), 80, "a job per request");
    // And each reply is recorded as delivered (RabbitMQ returns direct
    // reply-to messages it delivered as unroutable when they are
    // mandatory: they must not be recorded as lost).
    let c = server.client(None);
    for id in &jobs {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = c.get(&format!("/v1/jobs/{id}/deliveries")).await.json();
            let d = &log["deliveries"][0];
            if d["state"] == "delivered" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{d}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    server.stop.cancel();
    let _ = server.task.await;
    cleanup(&names).await;
}
