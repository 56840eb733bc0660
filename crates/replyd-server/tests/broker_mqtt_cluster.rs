//! Three replyd nodes on one PostgreSQL database share one MQTT request
//! topic (a shared subscription, each node with its own client id): each
//! request becomes one job and gets one reply, however the broker spreads
//! them; a duplicate (the same message id, on whichever node) makes no
//! second job, and its reply carries the same correlation data and job.
//!
//! Without Mosquitto or PostgreSQL the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(all(feature = "mqtt", feature = "postgres"))]

mod common;

use std::time::Duration;

use common::mqtt::{URL, client};
use common::{Names, TestServer};
use replyd_server::brokers::{Message, Props, Published};

const BACKEND: common::Backend = common::Backend::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_make_one_job_and_one_reply_per_request() {
    let Some(broker) = client().await else { return };
    let Some(url) = replyd_store::postgres::testing::fresh_schema("mqtt_nodes").await else {
        return;
    };
    let names = Names::new();
    let mut nodes = Vec::new();
    for node in 0..3 {
        let config = format!(
            r#"
[queues.demo]
executor = "demo"
concurrency = 16
[mqtt]
url = "{URL}"
client_id = "replyd-{}-node{node}"
request_topics = ["{}"]
queue = "demo"
prefetch = 8
session_expiry = 60
"#,
            &names.requests[12..24],
            names.requests
        );
        nodes.push(TestServer::start_on(&config, &url).await);
    }
    let mut replies = broker.subscribe(&names.work, 64).await.unwrap();
    // Until every node has subscribed, the topic's messages go to those
    // that have: wait for the first, then a moment for the others.
    let probe = Message {
        body: "not json".into(),
        props: Props::default(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker
        .publish(&names.requests, probe.clone())
        .await
        .unwrap()
        != Published::Accepted
    {
        assert!(tokio::time::Instant::now() < deadline, "no node subscribes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    common::brokers::one_job_and_one_reply_per_request(
        &broker,
        &names,
        &mut replies,
        &nodes,
        150,
        common::brokers::Rereads::Never,
    )
    .await;
    for node in nodes {
        node.stop.cancel();
        let _ = node.task.await;
    }
}
