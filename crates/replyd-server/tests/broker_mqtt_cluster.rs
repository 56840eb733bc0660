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

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::mqtt::{URL, client};
use common::{Names, TestServer};
use replyd_server::brokers::{Message, Props, Published, headers};

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
    let mut rx = broker.subscribe(&names.work, 64).await.unwrap();
    let request = |i: usize| Message {
        body: format!(r#"{{"seconds": 0, "i": {i}}}"#).into(),
        props: Props {
            message_id: Some(format!("m-{i}")),
            correlation_id: Some(format!("c-{i}")),
            reply_to: Some(names.work.clone()),
            ..Props::default()
        },
    };
    // Unroutable until a node has subscribed; then a moment for the others.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.publish(&names.requests, request(0)).await.unwrap() != Published::Accepted {
        assert!(tokio::time::Instant::now() < deadline, "no node subscribes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = 150;
    for i in 1..n {
        assert_eq!(
            broker.publish(&names.requests, request(i)).await.unwrap(),
            Published::Accepted
        );
    }
    let mut replies: HashMap<String, Vec<String>> = HashMap::new();
    let collect = |replies: &mut HashMap<String, Vec<String>>, m: &Message| {
        assert_eq!(m.props.header(headers::STATE), Some("succeeded"));
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let corr = m.props.correlation_id.clone().unwrap();
        assert_eq!(
            format!("c-{}", body["input"]["i"]),
            corr,
            "its own request's reply"
        );
        replies
            .entry(corr)
            .or_default()
            .push(m.props.header(headers::JOB_ID).unwrap().to_string());
    };
    while replies.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} replies", replies.len()))
            .unwrap();
        collect(&mut replies, &r.message);
        r.settle.ack().await.unwrap();
    }
    // No more: one reply per request.
    if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
        panic!("a second reply: {:?}", r.message.props);
    }
    assert!(replies.values().all(|jobs| jobs.len() == 1));
    let jobs: HashSet<&String> = replies.values().flatten().collect();
    assert_eq!(jobs.len(), n, "a job per request");

    // Duplicates of finished requests, spread over the nodes: no new job;
    // the reply again, with the same correlation data and job.
    for i in 0..30 {
        broker.publish(&names.requests, request(i)).await.unwrap();
    }
    let mut again: HashMap<String, Vec<String>> = HashMap::new();
    while again.len() < 30 {
        let r = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the duplicates' replies")
            .unwrap();
        collect(&mut again, &r.message);
        r.settle.ack().await.unwrap();
    }
    for (corr, jobs) in &again {
        assert_eq!(jobs, &replies[corr], "{corr}: the same job");
    }
    let listed = nodes[1]
        .client(None)
        .get("/v1/jobs?queue=demo&limit=200")
        .await
        .json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), n);
    for node in nodes {
        node.stop.cancel();
        let _ = node.task.await;
    }
}
