//! API.md §6 over AWS SQS: the broker contract (`common/broker_cases.rs`)
//! against a local SQS (moto_server on 127.0.0.1:5000), on the SQLite
//! store.
//!
//! Without it the tests skip, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "sqs")]

mod common;

use common::sqs::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");

fn boto3_here() -> bool {
    replyd_testkit::python_has("boto3", "boto3")
}

/// Runs a boto3 requester script with `args` against a server of its own
/// (a `demo` queue) and checks its replies: one correct reply per request,
/// each from a job of its own.
async fn boto3_requester(script: &str, n: usize, args: &[&str]) {
    let names = Names::new();
    // moto's account: replies may go to its topics (feature `sns`).
    let topics = if cfg!(feature = "sns") {
        "account_id = \"123456789012\"\n"
    } else {
        ""
    };
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 64\n{}{topics}",
        section(&names)
    );
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    common::brokers::until_consuming(&server, &names.requests).await;
    let script = format!("{}/tests/boto3/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(replyd_testkit::python())
        .arg(&script)
        .args([common::sqs::ENDPOINT, &names.requests, &n.to_string()])
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (sent, replies) = (v["sent"].as_object().unwrap(), &v["replies"]);
    assert_eq!(sent.len(), n);
    let mut jobs = std::collections::HashSet::new();
    for (corr, i) in sent {
        let got = replies[corr]
            .as_array()
            .unwrap_or_else(|| panic!("no reply to {corr}: {replies}"));
        assert_eq!(got.len(), 1, "one reply per request: {got:?}");
        let r = &got[0];
        assert_eq!(r["attributes"]["x-replyd-state"], "succeeded", "{r}");
        assert_eq!(r["attributes"]["ContentType"], "application/json");
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["input"]["i"], *i, "the reply of its own request");
        let job = r["attributes"]["x-replyd-job-id"].as_str().unwrap();
        assert!(jobs.insert(job.to_string()), "a job per request");
    }
    server.stop.cancel();
    let _ = server.task.await;
}

/// An SQS requester on boto3 (the AWS SDK for Python, not written for
/// replyd): `CorrelationId` and `ReplyTo` (its own queue's URL) as message
/// attributes; it gets one correct reply per request, each from a job of
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boto3_requester_gets_its_replies() {
    if client().await.is_none() || !boto3_here() {
        return;
    }
    boto3_requester("request_client.py", 30, &[]).await;
}

/// Requests published to an SNS topic that replyd's request queue is
/// subscribed to, with raw message delivery and with SNS's envelope: each
/// is one job, and its reply reaches the requester.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_an_sns_topic_raw_and_enveloped_get_their_replies() {
    if client().await.is_none() || !boto3_here() {
        return;
    }
    for mode in ["raw", "envelope"] {
        boto3_requester("sns_request_client.py", 20, &[mode]).await;
    }
}

/// Replies to an SNS topic: a requester whose ReplyTo is a topic ARN (its
/// queue subscribed to it) gets one reply per request through SNS, its
/// requests published to a topic with raw delivery and without.
#[cfg(feature = "sns")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_an_sns_topic_reach_its_subscribers() {
    if client().await.is_none() || !boto3_here() {
        return;
    }
    for mode in ["raw", "envelope"] {
        boto3_requester("sns_request_client.py", 20, &[mode, "topic"]).await;
    }
}

/// SNS delivers at least once: a notification that reaches the request
/// queue twice (the same SNS MessageId) is one job, and one reply.
#[tokio::test]
async fn an_sns_notification_delivered_twice_makes_one_job() {
    let Some(mut rig) = Rig::start("").await else {
        return;
    };
    let attr = |v: &str| json!({"Type": "String", "Value": v});
    let envelope = json!({
        "Type": "Notification",
        "MessageId": "0b6d0dc4-8f3a-4d0e-9a57-5b4d2d0e6c11",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:requests",
        "Message": "{\"n\":1}",
        "MessageAttributes": {
            "CorrelationId": attr("c-sns"),
            "ReplyTo": attr(&rig.inbox),
            "x-replyd-queue": attr("work"),
        },
    })
    .to_string();
    for _ in 0..2 {
        let m = Message {
            body: envelope.clone().into(),
            props: Props::default(),
        };
        rig.broker.publish(&rig.names.requests, m).await.unwrap();
    }
    let (id, lease_id) = lease(&rig.server, "work").await;
    let c = rig.server.client(None);
    assert_eq!(
        c.get(&format!("/v1/jobs/{id}")).await.json()["state"],
        "running"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.complete(&id, &lease_id, json!("once")).await;
    let reply = rig.reply().await;
    assert_eq!(reply.props.correlation_id.as_deref(), Some("c-sns"));
    assert_eq!(reply.props.header(headers::JOB_ID), Some(id.as_str()));
    quiet(&mut rig.replies, Duration::from_millis(500)).await;
    let jobs = c.get("/v1/jobs?queue=work").await.json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    rig.finish().await;
}
