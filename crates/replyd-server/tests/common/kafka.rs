//! What the Kafka test binaries share: librdkafka's mock cluster (one per
//! test binary, on loopback: there is no Kafka server here), a client
//! handle on it, the `[kafka]` section of a case's topics (created with 3
//! partitions, so that offsets are tracked per partition), and their
//! cleanup (see `broker_cases.rs`).

use std::sync::{Arc, OnceLock};

use replyd_server::brokers::Broker;
use replyd_server::brokers::kafka::client::KafkaBroker;
use replyd_server::brokers::kafka::testing::MockKafka;
use replyd_server::config::brokers::kafka::KafkaConfig;

use super::Names;

pub const EXECUTOR: &str = "kafka";

/// This test binary's mock cluster (3 brokers).
pub fn mock() -> &'static MockKafka {
    static MOCK: OnceLock<MockKafka> = OnceLock::new();
    MOCK.get_or_init(|| MockKafka::start(3).expect("librdkafka's mock cluster starts"))
}

/// A handle on `mock`, in a consumer group of its own (the test's
/// subscriptions do not split records with replyd's).
pub fn client_on(mock: &MockKafka) -> Arc<dyn Broker> {
    let cfg = KafkaConfig {
        brokers: mock.bootstrap_servers().to_string(),
        group: format!("replyd-tests-{}", uuid::Uuid::new_v4().simple()),
        ..KafkaConfig::default()
    };
    Arc::new(KafkaBroker::new(&cfg, "replyd-tests"))
}

/// A handle on this binary's mock cluster (always there: it is in the
/// process).
pub async fn client() -> Option<Arc<dyn Broker>> {
    Some(client_on(mock()))
}

/// The `[kafka]` section of `names`' topics on `mock`, after creating them;
/// with `REPLYD_TEST_KAFKA_DEBUG` set, replyd's clients log librdkafka's
/// `debug` contexts it names (`cgrp,consumer,fetch`; see
/// `REPLYD_TEST_LOG` in `mod.rs`).
pub fn section_on(mock: &MockKafka, names: &Names) -> String {
    for topic in [&names.requests, &names.dead, &names.replies, &names.work] {
        mock.create_topic(topic, 3).expect("a topic");
    }
    format!(
        r#"
[kafka]
brokers = "{}"
group = "replyd-{}"
request_topics = ["{}"]
dead_letter_topic = "{}"
queue = "work"
reply_topic = "{}"
reply_retry_schedule = [0, 0.2, 0.5, 1, 2]
{}"#,
        mock.bootstrap_servers(),
        names.requests,
        names.requests,
        names.dead,
        names.replies,
        std::env::var("REPLYD_TEST_KAFKA_DEBUG")
            .map(|d| format!("[kafka.properties]\ndebug = \"{d}\"\n"))
            .unwrap_or_default()
    )
}

pub fn section(names: &Names) -> String {
    section_on(mock(), names)
}

/// The mock cluster goes with the test binary.
pub async fn cleanup(_: &Names) {}
