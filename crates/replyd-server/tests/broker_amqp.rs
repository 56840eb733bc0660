//! API.md §6 over RabbitMQ: the broker contract (`common/broker_cases.rs`)
//! against the local RabbitMQ, on the SQLite store; then what is RabbitMQ's
//! own: a Python RPC client on pika (the RabbitMQ tutorial's, with an
//! exclusive callback queue, and with direct reply-to), and RabbitMQ
//! stopping and starting again mid-stream.
//!
//! Without RabbitMQ on 127.0.0.1:5672 the tests skip, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "amqp")]

mod common;

use common::amqp::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");

fn pika_here() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import pika"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !common::amqp::require(),
            "pika is required (REPLYD_REQUIRE_SERVICES=1): pip install pika"
        );
        eprintln!("skipped: python3 with pika is not installed (pip install pika)");
    }
    ok
}

/// Runs `tests/pika/rpc_client.py` against `queue`: (sent, replies).
async fn pika_rpc(mode: &str, queue: &str, n: usize) -> (serde_json::Value, serde_json::Value) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika/rpc_client.py");
    let out = tokio::process::Command::new("python3")
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
    server.stop.cancel();
    let _ = server.task.await;
    cleanup(&names).await;
}

fn rabbitmqctl(what: &str) {
    let status = std::process::Command::new("rabbitmqctl")
        .arg(what)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {what}");
}

/// RabbitMQ stops and starts again while requests flow: no request and no
/// reply is lost, and replyd's consumers resume by themselves. It stops
/// the machine's RabbitMQ, so it runs only in CI
/// (`REPLYD_REQUIRE_SERVICES=1`) or with `REPLYD_TEST_AMQP_RESTART=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_survive_a_rabbitmq_restart() {
    let allowed = common::amqp::require()
        || std::env::var("REPLYD_TEST_AMQP_RESTART").is_ok_and(|v| v == "1");
    if !allowed {
        eprintln!("skipped: it stops RabbitMQ; set REPLYD_TEST_AMQP_RESTART=1 to run it");
        return;
    }
    let Some(broker) = client().await else { return };
    let names = Names::new();
    // The requester's replies go to a durable queue of its own, which
    // outlives the outage (`names.work` is free in this case).
    let config = format!(
        r#"{PULL_QUEUES}
[queues.demo]
executor = "demo"
concurrency = 32
[amqp]
url = "{}"
request_queues = ["{}"]
queue = "demo"
reply_queue = "{}"
reply_retry_schedule = [0, 1, 2, 5, 10, 30]
"#,
        common::amqp::URL,
        names.requests,
        names.replies
    );
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    broker.declare(&names.requests).await.unwrap();
    broker.declare(&names.work).await.unwrap();
    let n = 120;
    let publisher = {
        let (broker, names) = (broker.clone(), names.clone());
        tokio::spawn(async move {
            let mut retried = 0;
            for i in 0..n {
                let m = Message {
                    body: format!(r#"{{"seconds": 0, "i": {i}}}"#).into(),
                    props: Props {
                        message_id: Some(format!("r-{i}")),
                        correlation_id: Some(format!("r-{i}")),
                        reply_to: Some(names.work.clone()),
                        ..Props::default()
                    },
                };
                // Until the broker confirms it: a request it did not
                // confirm may or may not have arrived; its message id
                // makes a second one harmless.
                while !matches!(
                    broker.publish(&names.requests, m.clone()).await,
                    Ok(Published::Accepted)
                ) {
                    retried += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            retried
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    tokio::task::spawn_blocking(|| {
        rabbitmqctl("stop_app");
        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl("start_app");
    })
    .await
    .unwrap();
    let retried = publisher.await.unwrap();
    assert!(retried > 0, "the outage came while requests flowed");
    // Every request's reply, from the durable queue (subscribing again if
    // the connection drops).
    let mut replies: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while replies.len() < n && tokio::time::Instant::now() < deadline {
        let Ok(mut rx) = broker.subscribe(&names.work, 64).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while replies.len() < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => {
                    let p = &r.message.props;
                    assert_eq!(p.header(headers::STATE), Some("succeeded"));
                    replies
                        .entry(p.correlation_id.clone().unwrap())
                        .or_default()
                        .insert(p.header(headers::JOB_ID).unwrap().to_string());
                    r.settle.ack().await.unwrap();
                }
                _ => break,
            }
        }
    }
    assert_eq!(replies.len(), n, "a reply to every request");
    for (corr, jobs) in &replies {
        assert_eq!(
            jobs.len(),
            1,
            "{corr}: one job (a duplicate reply names the same)"
        );
    }
    let listed = server
        .client(None)
        .get("/v1/jobs?queue=demo&limit=200")
        .await
        .json();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        n,
        "a job per request"
    );
    server.stop.cancel();
    let _ = server.task.await;
    cleanup(&names).await;
}
