//! SIGKILL of replyd while RabbitMQ requests flow: every request gets its
//! job and its reply (`support::requests_in_flight_at_a_crash`). A request
//! is acknowledged only once its job is durable, and the reply is owed in
//! the job's transaction, so the crash loses neither.

#![cfg(feature = "amqp")]

mod support;

use std::sync::Arc;

use replyd_server::brokers::Broker;
use replyd_server::brokers::amqp::client::AmqpBroker;
use support::fresh_id;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_a_crash_get_their_jobs_and_replies() {
    if !replyd_testkit::service(
        "RabbitMQ",
        5672,
        "run scripts/test, or: rabbitmq-server -detached",
    ) {
        return;
    }
    let id = fresh_id();
    let (requests, replies, mine) = (
        format!("replyd.crash.{id}.requests"),
        format!("replyd.crash.{id}.replies"),
        format!("replyd.crash.{id}.mine"),
    );
    let config = format!(
        "[queues.demo]\nexecutor = \"demo\"\nconcurrency = 16\n\
         [amqp]\nurl = \"{URL}\"\nrequest_queues = [\"{requests}\"]\nqueue = \"demo\"\n\
         reply_queue = \"{replies}\"\nreply_retry_schedule = [0, 0.5, 1, 2, 5, 10]\n"
    );
    let broker: Arc<dyn Broker> = Arc::new(AmqpBroker::new(URL, "replyd-crash-test"));
    broker.declare(&requests).await.unwrap();
    broker.declare(&mine).await.unwrap();
    let rx = broker.subscribe(&mine, 64).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::requests_in_flight_at_a_crash(&broker, &requests, &mine, rx, &config, dir.path())
        .await;
    let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in [&requests, &replies, &mine, &format!("{requests}.dead")] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
}
