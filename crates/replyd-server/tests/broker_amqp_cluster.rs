//! Three replyd nodes on one PostgreSQL database consume one RabbitMQ
//! request queue: each request becomes one job and gets one reply, however
//! the broker spreads them; a duplicate (the same message id, on whichever
//! node) makes no second job, and its reply carries the same correlation id
//! and job.
//!
//! Without RabbitMQ or PostgreSQL the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(all(feature = "amqp", feature = "postgres"))]

mod common;

use std::time::Duration;

use common::amqp::{URL, cleanup, client};
use common::{Names, TestServer};
use lapin::options::QueueDeclareOptions;

const BACKEND: common::Backend = common::Backend::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_make_one_job_and_one_reply_per_request() {
    let Some(broker) = client().await else { return };
    let Some(url) = replyd_store::postgres::testing::fresh_schema("amqp_nodes").await else {
        return;
    };
    let names = Names::new();
    let config = format!(
        r#"
[queues.demo]
executor = "demo"
concurrency = 16
[amqp]
url = "{URL}"
request_queues = ["{}"]
queue = "demo"
reply_queue = "{}"
prefetch = 8
"#,
        names.requests, names.replies
    );
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestServer::start_on(&config, &url).await);
    }
    broker.declare(&names.requests).await.unwrap();
    broker.declare(&names.work).await.unwrap();
    // All three consume the queue.
    let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let q = ch
            .queue_declare(
                names.requests.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        if q.consumer_count() == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} consumers",
            q.consumer_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.close(200, "done".into())).await;

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
    cleanup(&names).await;
}
