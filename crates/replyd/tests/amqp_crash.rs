//! RabbitMQ requests survive a crash of replyd: SIGKILL `replyd serve`
//! while requests arrive and jobs run; once it restarts, every request has
//! its job and its reply (a duplicate reply, after the crash, carries the
//! same correlation id and names the same job). A request is acknowledged
//! only once its job is durable, and a reply is owed in the job's own
//! transaction, so the crash loses neither.
//!
//! Without RabbitMQ on 127.0.0.1:5672 the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "amqp")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use replyd_server::brokers::amqp::client::AmqpBroker;
use replyd_server::brokers::{Broker, Message, Props, Published};
use support::{Server, db_path};

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
    let id = uuid_like();
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
                assert_eq!(
                    broker.publish(&requests, m).await.unwrap(),
                    Published::Accepted
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal(Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10)).await.unwrap();
    publisher.await.unwrap();
    let server = Server::start_on(dir.path(), Some(&config), &["--db", &db]).await;

    let mut rx = broker.subscribe(&mine, 64).await.unwrap();
    support::every_request_has_its_job_and_reply(&mut rx, n, &server).await;
    drop(server);
    let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in [&requests, &replies, &mine, &format!("{requests}.dead")] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
