//! Mosquitto stops and starts again while requests flow (its own test
//! binary: it would cut the connections of tests running beside it). It
//! runs with `REPLYD_TEST_RESTARTS=1` (`scripts/test` sets it), since it
//! stops the machine's Mosquitto; the case itself is
//! `common::brokers::requests_and_replies_survive_a_restart`.

#![cfg(feature = "mqtt")]

mod common;

use common::brokers::{
    Requesters, pid_of, requests_and_replies_survive_a_restart, restart_service,
};
use common::{Names, PULL_QUEUES, TestServer};

const BACKEND: common::Backend = common::Backend::Sqlite;

/// Stops Mosquitto (SIGTERM: it saves its sessions) and starts it again.
async fn restart_mosquitto() {
    let pid = std::fs::read_to_string("/run/mosquitto/mosquitto.pid")
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| pid_of("mosquitto"));
    let mut start = std::process::Command::new("mosquitto");
    start.args(["-d", "-c", "/etc/mosquitto/mosquitto.conf"]);
    restart_service("Mosquitto", 1883, pid, &mut start).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_survive_a_mosquitto_restart() {
    if !replyd_testkit::may_restart("Mosquitto") {
        return;
    }
    let Some(broker) = common::mqtt::client().await else {
        return;
    };
    let names = Names::new();
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 32\n{}",
        common::mqtt::section(&names)
    )
    .replace("queue = \"work\"", "queue = \"demo\"");
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    // The requester's replies go to a topic its persistent session
    // subscribes to, which outlives the outage.
    requests_and_replies_survive_a_restart(
        &broker,
        &names,
        &server,
        Requesters::UntilConfirmed,
        restart_mosquitto(),
    )
    .await;
    server.stop.cancel();
    let _ = server.task.await;
}
