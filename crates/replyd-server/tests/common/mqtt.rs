//! What the MQTT test binaries share: the client handle, the `[mqtt]`
//! section of a case's destinations, and their cleanup (see
//! `broker_cases.rs`).

use std::sync::Arc;

use replyd_server::brokers::Broker;
use replyd_server::brokers::mqtt::client::MqttBroker;
use replyd_server::config::brokers::mqtt::MqttConfig;

use super::Names;

pub const EXECUTOR: &str = "mqtt";
pub const URL: &str = "mqtt://127.0.0.1:1883";

/// A handle on the local Mosquitto, with a client id of its own (the
/// test's subscriptions are sessions apart from replyd's); `None` (the
/// test skips, saying so) when it is absent, unless
/// `REPLYD_REQUIRE_SERVICES=1`.
pub async fn client() -> Option<Arc<dyn Broker>> {
    if !replyd_testkit::service(
        "Mosquitto (an MQTT 5 broker)",
        1883,
        "run scripts/test, or: mosquitto -d -c /etc/mosquitto/mosquitto.conf",
    ) {
        return None;
    }
    let cfg = MqttConfig {
        url: URL.into(),
        client_id: format!(
            "replyd-tests-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        // Plain subscriptions, as a requester's own response topic (and a
        // lone worker's) has them.
        share_group: String::new(),
        session_expiry: 60,
        ..MqttConfig::default()
    };
    Some(Arc::new(MqttBroker::new(&cfg).expect("a valid URL")))
}

/// The section of a case: a client id of its own (a node's sessions are
/// named after it), short-lived sessions.
pub fn section(names: &Names) -> String {
    format!(
        r#"
[mqtt]
url = "{URL}"
client_id = "replyd-{}"
request_topics = ["{}"]
dead_letter_topic = "{}"
queue = "work"
reply_topic = "{}"
session_expiry = 60
reply_retry_schedule = [0, 0.2, 0.5, 1, 2]
"#,
        &uuid::Uuid::new_v4().simple().to_string()[..8],
        names.requests,
        names.dead,
        names.replies
    )
}

/// Topics need no cleanup; the sessions expire by themselves.
pub async fn cleanup(_: &Names) {}
