//! The NATS server stops and starts again while requests flow (its own
//! test binary: it would cut the connections of tests running beside it).
//! It runs with `REPLYD_TEST_RESTARTS=1` (`scripts/test` sets it), since it
//! stops the machine's NATS server; the case itself is
//! `common::brokers::requests_and_replies_survive_a_restart`, with
//! requesters that do as NATS requesters do: a request without a reply in
//! time is sent again, with the same `Nats-Msg-Id`.

#![cfg(feature = "nats")]

mod common;

use common::brokers::{
    Requesters, pid_of, requests_and_replies_survive_a_restart, restart_service,
};
use common::{Names, PULL_QUEUES, TestServer};

const BACKEND: common::Backend = common::Backend::Sqlite;

/// Stops nats-server and starts it as CI does.
async fn restart_nats() {
    let mut start = std::process::Command::new("start-stop-daemon");
    start.args([
        "--start",
        "--oknodo",
        "--background",
        "--exec",
        "/usr/sbin/nats-server",
        "--",
        "-a",
        "127.0.0.1",
        "-p",
        "4222",
        "-js",
        "-sd",
        "/var/lib/nats-server",
        "-l",
        "/var/log/nats-server.log",
    ]);
    restart_service("nats-server", 4222, pid_of("nats-server"), &mut start).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_survive_a_nats_restart() {
    if !replyd_testkit::may_restart("NATS") {
        return;
    }
    let Some(broker) = common::nats::client().await else {
        return;
    };
    let names = Names::new();
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 32\n{}",
        common::nats::section(&names)
    )
    .replace("queue = \"work\"", "queue = \"demo\"");
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    requests_and_replies_survive_a_restart(
        &broker,
        &names,
        &server,
        Requesters::UntilAnswered,
        restart_nats(),
    )
    .await;
    server.stop.cancel();
    let _ = server.task.await;
}
