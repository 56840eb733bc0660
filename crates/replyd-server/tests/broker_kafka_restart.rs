//! Kafka goes away, or answers with errors, while requests flow; nothing is
//! lost. Each case has a mock cluster of its own (librdkafka's: there is
//! no Kafka server here), so taking its brokers down touches nothing else.
//! The restart is `common::brokers::requests_and_replies_survive_a_restart`,
//! as for every broker.

#![cfg(feature = "kafka")]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::brokers::{Requesters, requests_and_replies_survive_a_restart};
use common::kafka::{client_on, section_on};
use common::{Names, PULL_QUEUES, TestServer};
use replyd_server::brokers::kafka::testing::{MockKafka, RDKafkaApiKey, RDKafkaRespErr};
use replyd_server::brokers::{Message, Props, Published, headers};

const BACKEND: common::Backend = common::Backend::Sqlite;

/// A server on `mock` whose requests go to its demo queue, with replies
/// retried for long enough to outlast an outage.
async fn server_on(mock: &MockKafka, names: &Names) -> TestServer {
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 32\n{}",
        section_on(mock, names)
    )
    .replace("queue = \"work\"", "queue = \"demo\"")
    .replace(
        "reply_retry_schedule = [0, 0.2, 0.5, 1, 2]",
        "reply_retry_schedule = [0, 0.5, 1, 2, 5, 10, 10, 10]",
    );
    TestServer::start(&config).await.expect("a server")
}

/// Every broker of the cluster stops taking connections for 10 s (longer
/// than a publish waits: requesters see their publishes fail) and comes
/// back: every request gets its reply, each from one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_survive_a_kafka_outage() {
    let mock = Arc::new(MockKafka::start(3).unwrap());
    let broker = client_on(&mock);
    let names = Names::new();
    let server = server_on(&mock, &names).await;
    let outage = {
        let mock = mock.clone();
        async move {
            mock.broker_down(-1).unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            mock.broker_up(-1).unwrap();
        }
    };
    requests_and_replies_survive_a_restart(
        &broker,
        &names,
        &server,
        Requesters::UntilConfirmed,
        outage,
    )
    .await;
    server.stop.cancel();
    let _ = server.task.await;
}

/// While requests flow, the cluster answers with errors: fetches and
/// publishes cut off mid-request, a partition's leader gone, commits
/// refused, and a rebalance forced on replyd's group (its partitions are
/// taken away and given back: what it had not committed is read again).
/// Every request gets its reply; every reply names the one job of its
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_mid_stream_lose_nothing() {
    let mock = MockKafka::start(3).unwrap();
    let broker = client_on(&mock);
    let names = Names::new();
    let server = server_on(&mock, &names).await;
    common::brokers::until_consuming(&server, &names.requests).await;
    let mut replies = broker.subscribe(&names.work, 64).await.unwrap();
    let n = 150;
    let publisher = {
        let (broker, names) = (broker.clone(), names.clone());
        tokio::spawn(async move {
            for i in 0..n {
                let m = Message {
                    body: format!(r#"{{"seconds": 0, "i": {i}}}"#).into(),
                    props: Props {
                        correlation_id: Some(format!("e-{i}")),
                        reply_to: Some(names.work.clone()),
                        ..Props::default()
                    },
                };
                while !matches!(
                    broker.publish(&names.requests, m.clone()).await,
                    Ok(Published::Accepted)
                ) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    use RDKafkaRespErr::*;
    for (api, errors) in [
        (RDKafkaApiKey::Fetch, vec![RD_KAFKA_RESP_ERR__TRANSPORT; 3]),
        (
            RDKafkaApiKey::Produce,
            vec![
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RD_KAFKA_RESP_ERR__TRANSPORT,
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            ],
        ),
        (
            RDKafkaApiKey::OffsetCommit,
            vec![RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 3],
        ),
        (
            RDKafkaApiKey::Heartbeat,
            vec![RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 2],
        ),
    ] {
        mock.request_errors(api, &errors).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut got: HashMap<String, HashSet<String>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while got.len() < n {
        let r = tokio::time::timeout_at(deadline, replies.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} requests have replies", got.len()))
            .expect("the reply subscription lasts");
        let p = &r.message.props;
        assert_eq!(p.header(headers::STATE), Some("succeeded"));
        let body: serde_json::Value = serde_json::from_slice(&r.message.body).unwrap();
        let corr = p.correlation_id.clone().unwrap();
        assert_eq!(format!("e-{}", body["input"]["i"]), corr, "its own reply");
        got.entry(corr)
            .or_default()
            .insert(p.header(headers::JOB_ID).unwrap().to_string());
        r.settle.ack().await.unwrap();
    }
    publisher.await.unwrap();
    for (corr, jobs) in &got {
        assert_eq!(jobs.len(), 1, "{corr}: one job: {jobs:?}");
    }
    let listed = server
        .client(None)
        .get("/v1/jobs?queue=demo&limit=500")
        .await
        .json();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        n,
        "a job per request"
    );
    server.stop.cancel();
    let _ = server.task.await;
}
