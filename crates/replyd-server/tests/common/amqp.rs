//! What the RabbitMQ test binaries share: the client handle, the `[amqp]`
//! section of a case's destinations, and their cleanup (see
//! `broker_cases.rs`).

use std::sync::Arc;

use lapin::options::QueueDeleteOptions;
use replyd_server::brokers::Broker;
use replyd_server::brokers::amqp::client::AmqpBroker;

use super::Names;

pub const EXECUTOR: &str = "amqp";
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A handle on the local RabbitMQ; `None` (the test skips, saying so) when
/// it is absent, unless prerequisites are required (`replyd_testkit`).
pub async fn client() -> Option<Arc<dyn Broker>> {
    if !replyd_testkit::service(
        "RabbitMQ",
        5672,
        "run scripts/test, or: rabbitmq-server -detached",
    ) {
        return None;
    }
    Some(Arc::new(AmqpBroker::new(URL, "replyd-tests")))
}

pub fn section(names: &Names) -> String {
    format!(
        r#"
[amqp]
url = "{URL}"
request_queues = ["{}"]
dead_letter_queue = "{}"
queue = "work"
reply_queue = "{}"
reply_retry_schedule = [0, 0.2, 0.5, 1, 2]
"#,
        names.requests, names.dead, names.replies
    )
}

/// Deletes a case's queues.
pub async fn cleanup(names: &Names) {
    // Best effort, and bounded: a close lapin never sees answered must not
    // hold the suite.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let Ok(conn) =
            lapin::Connection::connect(URL, lapin::ConnectionProperties::default()).await
        else {
            return;
        };
        if let Ok(ch) = conn.create_channel().await {
            for q in [&names.requests, &names.dead, &names.replies, &names.work] {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "done".into()).await;
    })
    .await;
}
