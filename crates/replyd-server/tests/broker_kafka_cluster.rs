//! Three replyd nodes on one PostgreSQL database share one Kafka request
//! topic (3 partitions) through one consumer group, on librdkafka's mock
//! cluster: each request becomes one job and gets its reply, whichever
//! node reads it (a request read again after a rebalance is answered again
//! with the same job); a duplicate (the same `message_id`, on whichever node
//! its partition is) makes no second job, and its reply carries the same
//! correlation id and job.
//!
//! Without PostgreSQL the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(all(feature = "kafka", feature = "postgres"))]

mod common;

use std::time::Duration;

use common::kafka::{client, section};
use common::{Names, TestServer};

const BACKEND: common::Backend = common::Backend::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_make_one_job_and_one_reply_per_request() {
    let Some(broker) = client().await else { return };
    let Some(url) = replyd_store::postgres::testing::fresh_schema("kafka_nodes").await else {
        return;
    };
    let names = Names::new();
    let config = format!(
        "[queues.demo]\nexecutor = \"demo\"\nconcurrency = 16\n{}",
        section(&names)
    )
    .replace("queue = \"work\"", "queue = \"demo\"");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestServer::start_on(&config, &url).await);
    }
    common::brokers::until_consuming(&nodes[0], &names.requests).await;
    // The three join one group; the mock cluster assigns partitions once
    // its group has been quiet for 3 s. Requests read before a later
    // rebalance are read again (and answered again, as API.md allows):
    // the group settles first, and a late rebalance on a loaded machine
    // may still repeat a reply, never a job (`Rereads::AfterRebalance`).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut replies = broker.subscribe(&names.work, 64).await.unwrap();
    common::brokers::one_job_and_one_reply_per_request(
        &broker,
        &names,
        &mut replies,
        &nodes,
        150,
        common::brokers::Rereads::AfterRebalance,
    )
    .await;
    for node in nodes {
        node.stop.cancel();
        let _ = node.task.await;
    }
}
