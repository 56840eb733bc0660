//! MQTT requests survive a crash of replyd: SIGKILL `replyd serve` while
//! requests arrive and jobs run; once it restarts (with the same client id,
//! so it resumes its sessions), every request has its job and its reply (a
//! duplicate reply, after the crash, carries the same correlation data and
//! names the same job). A request is acknowledged (PUBACK) only once its
//! job is durable, and the broker keeps what replyd's session has not
//! acknowledged, and what arrives while it is away.
//!
//! Without an MQTT broker on 127.0.0.1:1883 the test skips, saying so,
//! unless `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "mqtt")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use replyd_server::brokers::mqtt::client::MqttBroker;
use replyd_server::brokers::{Broker, Message, Props, Published};
use replyd_server::config::brokers::mqtt::MqttConfig;
use support::{Server, db_path};

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
    let id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
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
    let mut rx = broker.subscribe(&mine, 64).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = db_path(dir.path()).display().to_string();
    let mut server = Server::start(dir.path(), Some(&config)).await;

    let n = 200;
    let publisher = {
        let (broker, requests, mine) = (broker.clone(), requests.clone(), mine.clone());
        tokio::spawn(async move {
            for i in 0..n {
                let m = Message {
                    body: format!(r#"{{"seconds": 0.1, "i": {i}}}"#).into(),
                    props: Props {
                        message_id: Some(format!("m-{i}")),
                        correlation_id: Some(format!("c-{i}")),
                        reply_to: Some(mine.clone()),
                        ..Props::default()
                    },
                };
                // Unroutable only until replyd first subscribes: from then
                // on its session keeps what comes, even while it is down.
                while broker.publish(&requests, m.clone()).await.unwrap() != Published::Accepted {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.signal(Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10)).await.unwrap();
    publisher.await.unwrap();
    let server = Server::start_on(dir.path(), Some(&config), &["--db", &db]).await;

    support::every_request_has_its_job_and_reply(&mut rx, n, &server).await;
}
