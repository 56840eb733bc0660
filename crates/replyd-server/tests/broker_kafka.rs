//! API.md §6 over Kafka: the broker contract (`common/broker_cases.rs`)
//! against librdkafka's mock cluster, on the SQLite store.

#![cfg(feature = "kafka")]

mod common;

use common::kafka::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");

fn confluent_kafka_here() -> bool {
    replyd_testkit::python_has("confluent_kafka", "confluent-kafka")
}

/// A requester on confluent-kafka that speaks Spring's
/// `ReplyingKafkaTemplate` wire format gets one correct reply per request:
/// on the partition it named, with its key, and its correlation id echoed
/// byte for byte, whether a UUID's 16 raw bytes or a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spring_format_requester_gets_its_replies_byte_for_byte() {
    if !confluent_kafka_here() {
        return;
    }
    let names = Names::new();
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 64\n{}",
        section(&names)
    )
    .replace("queue = \"work\"", "queue = \"demo\"");
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    common::brokers::until_consuming(&server, &names.requests).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/kafka_py/spring_requester.py"
    );
    let mut jobs = std::collections::HashSet::new();
    for mode in ["uuid", "string"] {
        let n = 40;
        let out = tokio::process::Command::new(replyd_testkit::python())
            .arg(script)
            .args([
                common::kafka::mock().bootstrap_servers(),
                &names.requests,
                &names.replies,
                "1",
                &n.to_string(),
                mode,
            ])
            .output()
            .await
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "spring_requester.py {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let (sent, replies) = (v["sent"].as_object().unwrap(), &v["replies"]);
        assert_eq!(sent.len(), n);
        for (corr, req) in sent {
            if mode == "uuid" {
                assert_eq!(corr.len(), 32, "16 raw bytes");
            }
            let got = replies[corr]
                .as_array()
                .unwrap_or_else(|| panic!("{mode}: no reply to {corr}: {replies}"));
            assert_eq!(got.len(), 1, "{mode}: one reply per request: {got:?}");
            let r = &got[0];
            assert_eq!(r["partition"], 1, "{mode}: on the partition it named");
            assert_eq!(r["key"], req["key"], "{mode}: the request's key");
            assert_eq!(r["headers"]["kafka_correlationId"], *corr);
            let text = |h: &str| {
                let hex = r["headers"][h].as_str().unwrap_or_default();
                String::from_utf8(hex::decode(hex).unwrap()).unwrap()
            };
            assert_eq!(text("x-replyd-state"), "succeeded", "{r}");
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            assert_eq!(
                body["input"]["i"], req["i"],
                "{mode}: its own request's reply"
            );
            assert!(jobs.insert(text("x-replyd-job-id")), "a job per request");
        }
    }
    assert_eq!(jobs.len(), 80);
    server.stop.cancel();
    let _ = server.task.await;
}
