//! What the broker tests share beyond the contract suite: waiting until
//! replyd consumes a source, and what every broker's cluster test checks
//! once its nodes consume one request source.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use replyd_server::brokers::{Broker, Message, Props, Published, headers};

use super::{Names, TestServer};

/// Waits until `server` reports (`replyd_broker_consuming` in /metrics)
/// that it consumes `source`: a broker whose destinations exist only while
/// someone subscribes keeps nothing published before.
pub async fn until_consuming(server: &TestServer, source: &str) {
    let needle = format!("source=\"{source}\"}} 1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = server.client(None).get("/metrics").await;
        let text = String::from_utf8_lossy(&m.body);
        if text
            .lines()
            .any(|l| l.starts_with("replyd_broker_consuming") && l.ends_with(&needle))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replyd does not consume {source}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Request `i`: the demo queue's input, replying to `names.work`.
fn request(names: &Names, i: usize) -> Message {
    Message {
        body: format!(r#"{{"seconds": 0, "i": {i}}}"#).into(),
        props: Props {
            message_id: Some(format!("m-{i}")),
            correlation_id: Some(format!("c-{i}")),
            reply_to: Some(names.work.clone()),
            ..Props::default()
        },
    }
}

/// Publishes until the broker routes it (a topic nobody subscribes to yet
/// drops what comes).
async fn publish(broker: &Arc<dyn Broker>, to: &str, m: Message) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.publish(to, m.clone()).await.unwrap() != Published::Accepted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing consumes {to}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` requests to `names.requests`, consumed by `nodes` (on one store):
/// each becomes one job and gets one reply, however the broker spreads
/// them; then duplicates of 30 of them, spread over the nodes, make no new
/// job and get the reply again with the same correlation id and job.
/// `replies` receives at `names.work` (subscribed before the requests).
pub async fn one_job_and_one_reply_per_request(
    broker: &Arc<dyn Broker>,
    names: &Names,
    replies: &mut tokio::sync::mpsc::Receiver<replyd_server::brokers::Received>,
    nodes: &[TestServer],
    n: usize,
) {
    for i in 0..n {
        publish(broker, &names.requests, request(names, i)).await;
    }
    let collect = |got: &mut HashMap<String, Vec<String>>, m: &Message| {
        assert_eq!(m.props.header(headers::STATE), Some("succeeded"));
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let corr = m.props.correlation_id.clone().unwrap();
        assert_eq!(
            format!("c-{}", body["input"]["i"]),
            corr,
            "its own request's reply"
        );
        got.entry(corr)
            .or_default()
            .push(m.props.header(headers::JOB_ID).unwrap().to_string());
    };
    let mut first: HashMap<String, Vec<String>> = HashMap::new();
    while first.len() < n {
        let r = tokio::time::timeout(Duration::from_secs(30), replies.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} replies", first.len()))
            .unwrap();
        collect(&mut first, &r.message);
        r.settle.ack().await.unwrap();
    }
    // No more: one reply per request.
    if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(1), replies.recv()).await {
        panic!("a second reply: {:?}", r.message.props);
    }
    assert!(first.values().all(|jobs| jobs.len() == 1));
    let jobs: HashSet<&String> = first.values().flatten().collect();
    assert_eq!(jobs.len(), n, "a job per request");

    for i in 0..30 {
        publish(broker, &names.requests, request(names, i)).await;
    }
    let mut again: HashMap<String, Vec<String>> = HashMap::new();
    while again.len() < 30 {
        let r = tokio::time::timeout(Duration::from_secs(30), replies.recv())
            .await
            .expect("the duplicates' replies")
            .unwrap();
        collect(&mut again, &r.message);
        r.settle.ack().await.unwrap();
    }
    for (corr, jobs) in &again {
        assert_eq!(jobs, &first[corr], "{corr}: the same job");
    }
    let listed = nodes[1]
        .client(None)
        .get(&format!("/v1/jobs?queue=demo&limit={}", n + 50))
        .await
        .json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), n);
}
