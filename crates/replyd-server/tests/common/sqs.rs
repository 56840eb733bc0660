//! What the SQS test binaries share: the client handle, the `[sqs]`
//! section of a case's queues, and their cleanup (see `broker_cases.rs`).
//! The SQS is `moto_server` (PyPI's `moto[server]`) on 127.0.0.1:5000,
//! which `.ci/run` starts; static test credentials, so that nothing asks
//! AWS for any.

use std::sync::Arc;

use replyd_server::brokers::Broker;
use replyd_server::brokers::sqs::client::SqsBroker;
use replyd_server::config::brokers::sqs::SqsConfig;

use super::Names;

pub const EXECUTOR: &str = "sqs";
pub const ENDPOINT: &str = "http://127.0.0.1:5000";

/// The AWS settings of every SQS and SNS test: moto, test credentials.
pub fn config() -> SqsConfig {
    SqsConfig {
        region: "us-east-1".into(),
        endpoint_url: Some(ENDPOINT.into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        ..SqsConfig::default()
    }
}

/// A handle on the local SQS; `None` (the test skips, saying so) when it is
/// absent, unless prerequisites are required (`replyd_testkit`).
pub async fn client() -> Option<Arc<dyn Broker>> {
    if !replyd_testkit::service(
        "an SQS (moto_server)",
        5000,
        "run scripts/test, or: moto_server -H 127.0.0.1 -p 5000 (pip install moto[server])",
    ) {
        return None;
    }
    Some(Arc::new(SqsBroker::new(&config())))
}

/// `[sqs]`'s AWS settings in a configuration: moto, test credentials.
pub const AWS: &str = r#"[sqs]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:5000"
access_key_id = "testing"
secret_access_key = "testing"
"#;

pub fn section(names: &Names) -> String {
    format!(
        r#"
{AWS}request_queues = ["{}"]
dead_letter_queue = "{}"
queue = "work"
reply_queue = "{}"
visibility_timeout = 30
reply_retry_schedule = [0, 0.2, 0.5, 1, 2]
"#,
        names.requests, names.dead, names.replies
    )
}

/// moto keeps its queues in memory; nothing to clean.
pub async fn cleanup(_: &Names) {}
