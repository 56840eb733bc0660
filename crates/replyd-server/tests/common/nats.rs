//! What the NATS test binaries share: the client handle, the `[nats]`
//! section of a case's destinations, and their cleanup (see
//! `broker_cases.rs`).

use std::sync::Arc;

use replyd_server::brokers::Broker;
use replyd_server::brokers::nats::client::NatsBroker;
use replyd_server::config::brokers::nats::NatsConfig;

use super::Names;

pub const EXECUTOR: &str = "nats";
pub const URL: &str = "nats://127.0.0.1:4222";

/// A handle on the local NATS server, in a queue group of its own (the
/// test's subscriptions do not split messages with replyd's); `None` (the
/// test skips, saying so) when it is absent, unless
/// `REPLYD_REQUIRE_SERVICES=1`.
pub async fn client() -> Option<Arc<dyn Broker>> {
    if !replyd_testkit::service(
        "NATS",
        4222,
        "run scripts/test, or start nats-server -a 127.0.0.1 -p 4222 -js",
    ) {
        return None;
    }
    let cfg = NatsConfig {
        url: URL.into(),
        queue_group: "replyd-tests".into(),
        ..NatsConfig::default()
    };
    Some(Arc::new(NatsBroker::new(&cfg, "replyd-tests")))
}

pub fn section(names: &Names) -> String {
    format!(
        r#"
[nats]
url = "{URL}"
request_subjects = ["{}"]
dead_letter_subject = "{}"
queue = "work"
reply_subject = "{}"
reply_retry_schedule = [0, 0.2, 0.5, 1, 2]
"#,
        names.requests, names.dead, names.replies
    )
}

/// Subjects need no cleanup.
pub async fn cleanup(_: &Names) {}
