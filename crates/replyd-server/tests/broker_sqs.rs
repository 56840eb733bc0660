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

/// An SQS requester on boto3 (the AWS SDK for Python, not written for
/// replyd): `CorrelationId` and `ReplyTo` (its own queue's URL) as message
/// attributes; it gets one correct reply per request, each from a job of
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boto3_requester_gets_its_replies() {
    if client().await.is_none() || !boto3_here() {
        return;
    }
    let names = Names::new();
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 64\n{}",
        section(&names)
    );
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    common::brokers::until_consuming(&server, &names.requests).await;
    let n = 30;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boto3/request_client.py");
    let out = tokio::process::Command::new(replyd_testkit::python())
        .arg(script)
        .args([common::sqs::ENDPOINT, &names.requests, &n.to_string()])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "request_client.py: {}",
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
