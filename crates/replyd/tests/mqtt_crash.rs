//! SIGKILL of replyd while MQTT 5 requests flow: every request gets its job
//! and its reply (`support::requests_in_flight_at_a_crash`). replyd's
//! persistent session keeps what it had not acknowledged, and what arrives
//! while it is away.

#![cfg(feature = "mqtt")]

mod support;

use std::sync::Arc;

use replyd_server::brokers::Broker;
use replyd_server::brokers::mqtt::client::MqttBroker;
use replyd_server::config::brokers::mqtt::MqttConfig;
use support::fresh_id;

const URL: &str = "mqtt://127.0.0.1:1883";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_a_crash_get_their_jobs_and_replies() {
    if !replyd_testkit::service(
        "Mosquitto (an MQTT 5 broker)",
        1883,
        "run scripts/test, or: mosquitto -d -c /etc/mosquitto/mosquitto.conf",
    ) {
        return;
    }
    let id = fresh_id();
    let (requests, mine) = (
        format!("replyd/crash/{id}/requests"),
        format!("replyd/crash/{id}/mine"),
    );
    let config = format!(
        "[queues.demo]\nexecutor = \"demo\"\nconcurrency = 16\n\
         [mqtt]\nurl = \"{URL}\"\nclient_id = \"replyd-crash-{id}\"\n\
         request_topics = [\"{requests}\"]\nqueue = \"demo\"\nsession_expiry = 120\n\
         reply_retry_schedule = [0, 0.5, 1, 2, 5, 10]\n"
    );
    // The requester: its own response topic, a plain persistent
    // subscription made before it asks.
    let broker: Arc<dyn Broker> = Arc::new(
        MqttBroker::new(&MqttConfig {
            url: URL.into(),
            client_id: format!("requester-{id}"),
            share_group: String::new(),
            session_expiry: 120,
            ..MqttConfig::default()
        })
        .unwrap(),
    );
    let rx = broker.subscribe(&mine, 64).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::requests_in_flight_at_a_crash(&broker, &requests, &mine, rx, &config, dir.path())
        .await;
}
