//! API.md §6 over RabbitMQ: the broker contract (`common/broker_cases.rs`)
//! against the local RabbitMQ, on the SQLite store; then what is RabbitMQ's
//! own: a Python RPC client on pika (the RabbitMQ tutorial's, with an
//! exclusive callback queue, and with direct reply-to), and RabbitMQ
//! stopping and starting again mid-stream.
//!
//! Without RabbitMQ on 127.0.0.1:5672 the tests skip, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "amqp")]

mod common;

use lapin::options::QueueDeleteOptions;
use replyd_server::brokers::amqp::client::AmqpBroker;

const BACKEND: common::Backend = common::Backend::Sqlite;
const EXECUTOR: &str = "amqp";
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn require() -> bool {
    std::env::var("REPLYD_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

async fn client() -> Option<Arc<dyn Broker>> {
    if tokio::net::TcpStream::connect("127.0.0.1:5672")
        .await
        .is_err()
    {
        assert!(
            !require(),
            "RabbitMQ is required (REPLYD_REQUIRE_SERVICES=1) but 127.0.0.1:5672 is closed"
        );
        eprintln!("skipped: no RabbitMQ on 127.0.0.1:5672");
        return None;
    }
    Some(Arc::new(AmqpBroker::new(URL, "replyd-tests")))
}

fn section(names: &Names) -> String {
    format!(
        r#"
[amqp]
url = "{URL}"
request_queues = ["{}"]
queue = "work"
reply_queue = "{}"
reply_retry_schedule = [0, 0.2, 0.5, 1, 2]
"#,
        names.requests, names.replies
    )
}

async fn cleanup(names: &Names) {
    let Ok(conn) = lapin::Connection::connect(URL, lapin::ConnectionProperties::default()).await
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
}

include!("common/broker_cases.rs");
