//! RabbitMQ stops and starts again while requests flow (its own test
//! binary: it would cut the connections of tests running beside it). It
//! runs with `REPLYD_TEST_RESTARTS=1` (`scripts/test` sets it), since it
//! stops the machine's RabbitMQ; the case itself is
//! `common::brokers::requests_and_replies_survive_a_restart`.

#![cfg(feature = "amqp")]

mod common;

use common::brokers::{Requesters, requests_and_replies_survive_a_restart};
use common::{Names, PULL_QUEUES, TestServer};

const BACKEND: common::Backend = common::Backend::Sqlite;

fn rabbitmqctl(what: &str) {
    let status = std::process::Command::new("rabbitmqctl")
        .arg(what)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_survive_a_rabbitmq_restart() {
    if !replyd_testkit::may_restart("RabbitMQ") {
        return;
    }
    let Some(broker) = common::amqp::client().await else {
        return;
    };
    let names = Names::new();
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 32\n{}",
        common::amqp::section(&names)
    )
    .replace("queue = \"work\"", "queue = \"demo\"")
    // Replies outlast the outage.
    .replace("[0, 0.2, 0.5, 1, 2]", "[0, 1, 2, 5, 10, 30]");
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    broker.declare(&names.requests).await.unwrap();
    // The requester's replies: a durable queue of its own, which outlives
    // the outage.
    broker.declare(&names.work).await.unwrap();
    let restart = async {
        tokio::task::spawn_blocking(|| {
            rabbitmqctl("stop_app");
            std::thread::sleep(std::time::Duration::from_secs(2));
            rabbitmqctl("start_app");
        })
        .await
        .unwrap();
    };
    requests_and_replies_survive_a_restart(
        &broker,
        &names,
        &server,
        Requesters::UntilConfirmed,
        restart,
    )
    .await;
    server.stop.cancel();
    let _ = server.task.await;
    common::amqp::cleanup(&names).await;
}
