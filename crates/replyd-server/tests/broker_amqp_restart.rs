//! RabbitMQ stops and starts again while requests flow (its own test
//! binary: it would cut the connections of tests running beside it).
//! Without RabbitMQ the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`; it runs only with
//! `REPLYD_TEST_RESTARTS=1` (`scripts/test` sets it), since it stops the machine's RabbitMQ.

#![cfg(feature = "amqp")]

mod common;

use std::time::Duration;

use common::amqp::client;
use common::{Names, PULL_QUEUES, TestServer};
use replyd_server::brokers::{Message, Props, Published, headers};

const BACKEND: common::Backend = common::Backend::Sqlite;

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
/// with `REPLYD_TEST_RESTARTS=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_survive_a_rabbitmq_restart() {
    if !replyd_testkit::may_restart("RabbitMQ") {
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
    common::amqp::cleanup(&names).await;
}
