//! What the SNS test binaries share: the client handle, the `[sns]`
//! section of a case's destinations (on `[sqs]`'s settings), and their
//! cleanup (see `broker_cases.rs`). SNS and SQS are `moto_server` (PyPI's
//! `moto[server]`, both in one process) on 127.0.0.1:5000, which
//! `.ci/run` starts; static test credentials, so that nothing asks AWS
//! for any.

use std::sync::Arc;

use replyd_server::brokers::Broker;
use replyd_server::brokers::sns::client::SnsBroker;

use super::Names;

pub const EXECUTOR: &str = "sns";
pub const ENDPOINT: &str = super::sqs::ENDPOINT;

/// A handle on the local SNS; `None` (the test skips, saying so) when it
/// is absent, unless prerequisites are required (`replyd_testkit`).
pub async fn client() -> Option<Arc<dyn Broker>> {
    super::sqs::client().await?;
    Some(Arc::new(SnsBroker::new(&super::sqs::config())))
}

pub fn section(names: &Names) -> String {
    format!(
        r#"
{}# Replies to moto's account's topics (the requesters' inboxes).
account_id = "123456789012"

[sns]
request_topics = ["{}"]
dead_letter_topic = "{}"
queue = "work"
reply_topic = "{}"
reply_retry_schedule = [0, 0.2, 0.5, 1, 2]
"#,
        super::sqs::AWS,
        names.requests,
        names.dead,
        names.replies
    )
}

/// moto keeps its topics and queues in memory; nothing to clean.
pub async fn cleanup(_: &Names) {}
