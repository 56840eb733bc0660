//! Three replyd nodes on one PostgreSQL database share one NATS request
//! subject (a queue group): each request becomes one job and gets one
//! reply, however the server spreads them; a duplicate (the same
//! `Nats-Msg-Id`, on whichever node) makes no second job, and its reply
//! carries the same correlation id and job.
//!
//! Without NATS or PostgreSQL the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(all(feature = "nats", feature = "postgres"))]

mod common;

use common::nats::{URL, client};
use common::{Names, TestServer};

const BACKEND: common::Backend = common::Backend::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_make_one_job_and_one_reply_per_request() {
    let Some(broker) = client().await else { return };
    let Some(url) = replyd_store::postgres::testing::fresh_schema("nats_nodes").await else {
        return;
    };
    let names = Names::new();
    let config = format!(
        r#"
[queues.demo]
executor = "demo"
concurrency = 16
[nats]
url = "{URL}"
request_subjects = ["{}"]
queue = "demo"
prefetch = 8
"#,
        names.requests
    );
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestServer::start_on(&config, &url).await);
    }
    // The gauge is the process's (the nodes share one metrics recorder), so
    // this says that one node consumes, not all three: the others join the
    // queue group within moments, and what reaches the first meanwhile is
    // its to answer.
    common::brokers::until_consuming(&nodes[0], &names.requests).await;
    let mut replies = broker.subscribe(&names.work, 64).await.unwrap();
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
