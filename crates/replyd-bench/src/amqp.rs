//! `replyd bench --scenarios amqp` (issue 6, feature `amqp`): RPC round
//! trips over RabbitMQ.
//!
//! The client, the same for both servers: one lapin connection, requests
//! published (without confirms, as RabbitMQ's RPC tutorial does) to a
//! request queue with `reply_to` = the client's exclusive reply queue and a
//! fresh `correlation_id`; `--amqp-clients` requesters, each waiting for
//! its reply before sending the next, for `--duration` seconds. A round
//! trip is from the publish to the reply's arrival.
//!
//! - replyd: in this process, a fresh SQLite database at full durability,
//!   `[amqp]` consuming the request queue into a `demo` queue whose jobs
//!   take no time (`{"seconds": 0}`): each request is a job accepted
//!   (durable), leased, completed (durable), and its reply owed, claimed,
//!   published with a confirm and recorded.
//! - the ceiling: a bare lapin RPC echo server (consume, publish the body
//!   back to `reply_to` with the correlation id, ack), the broker's own
//!   round trip.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use replyd_server::config::Executor;
use replyd_server::config::brokers::amqp::AmqpConfig;
use tokio_util::sync::CancellationToken;

use crate::BenchArgs;
use crate::harness::{RoundTrips, Storage, Waiting, start_replyd_with};

/// The target: replyd's round trips per second over the ceiling's.
const TARGET_RATIO: f64 = 0.4;

pub async fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let url = args.amqp_url.clone();
    let clients = args.amqp_clients.max(1);
    let duration = Duration::from_secs_f64(args.duration);
    println!(
        "\namqp: {clients} RPC clients over RabbitMQ ({}), {:.0} s each, alternating; \
         replyd (SQLite, synchronous=FULL, a demo queue of no-op jobs) against a bare lapin echo server",
        redact(&url),
        args.duration
    );
    let suffix = format!("{:x}", std::process::id());
    let mut bare_runs = Vec::new();
    let mut replyd_runs = Vec::new();
    for round in 0..args.rounds.max(1) {
        // The ceiling.
        let queue = format!("replyd.bench.{suffix}.{round}.echo");
        let stop = CancellationToken::new();
        let echo = tokio::spawn(echo_server(url.clone(), queue.clone(), stop.clone()));
        wait_consumed(&url, &queue).await?;
        let bare = rpc_load(&url, &queue, clients, duration).await?;
        stop.cancel();
        echo.await??;
        delete(&url, &[&queue]).await;
        println!("{}", bare.line("bare lapin echo (ceiling)"));
        bare_runs.push(bare);

        // replyd.
        let queue = format!("replyd.bench.{suffix}.{round}.requests");
        let replies = format!("replyd.bench.{suffix}.{round}.replies");
        let db = dir.join(format!("bench-amqp-{round}.db"));
        let (q, u) = (queue.clone(), url.clone());
        let server = start_replyd_with(&Storage::Sqlite(db), move |c| {
            if let Some(b) = c.queues.get_mut("bench") {
                b.executor = Executor::Demo;
                b.concurrency = 256;
            }
            c.amqp = Some(AmqpConfig {
                url: u,
                request_queues: vec![q],
                queue: Some("bench".into()),
                reply_queue: replies,
                prefetch: 256,
                ..AmqpConfig::default()
            });
        })
        .await?;
        wait_consumed(&url, &queue).await?;
        let replyd = rpc_load(&url, &queue, clients, duration).await?;
        let batching = server.ops_per_commit();
        server.stop().await;
        delete(&url, &[&queue, &format!("{queue}.dead")]).await;
        println!(
            "{}   group commit {batching:.1} writes/commit",
            replyd.line("replyd (job + durable reply)")
        );
        replyd_runs.push(replyd);
    }
    RoundTrips::conclude(
        args.rounds,
        ("bare lapin echo (ceiling)", bare_runs),
        ("replyd (job + durable reply)", replyd_runs),
        &format!("target >= {TARGET_RATIO:.2}"),
    )
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "?".into(),
    }
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", redact(url)))
}

async fn declare(ch: &Channel, queue: &str) -> anyhow::Result<()> {
    ch.queue_declare(
        ShortString::from(queue),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Waits until something consumes `queue`.
async fn wait_consumed(url: &str, queue: &str) -> anyhow::Result<()> {
    let conn = connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ch = conn.create_channel().await?;
        declare(&ch, queue).await?;
        let q = ch
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        if q.consumer_count() > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("nothing consumes {queue}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    close(&conn).await;
    Ok(())
}

async fn delete(url: &str, queues: &[&str]) {
    let Ok(conn) = connect(url).await else { return };
    if let Ok(ch) = conn.create_channel().await {
        for q in queues {
            let _ = ch
                .queue_delete(ShortString::from(*q), QueueDeleteOptions::default())
                .await;
        }
    }
    close(&conn).await;
}

/// The ceiling: consumes `queue`, publishes each body back to its
/// `reply_to` with its correlation id, acks.
async fn echo_server(url: String, queue: String, stop: CancellationToken) -> anyhow::Result<()> {
    let conn = connect(&url).await?;
    let ch = conn.create_channel().await?;
    declare(&ch, &queue).await?;
    ch.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("echo"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            n = consumer.next() => n,
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        if let Some(to) = delivery.properties.reply_to().clone() {
            let mut props = BasicProperties::default();
            if let Some(c) = delivery.properties.correlation_id().clone() {
                props = props.with_correlation_id(c);
            }
            ch.basic_publish(
                ShortString::from(""),
                to,
                BasicPublishOptions::default(),
                &delivery.data,
                props,
            )
            .await?;
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    close(&conn).await;
    Ok(())
}

/// `clients` requesters send requests to `queue` one after another for
/// `duration`; round trips per second and their latencies.
async fn rpc_load(
    url: &str,
    queue: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<RoundTrips> {
    let conn = connect(url).await?;
    let replies = conn.create_channel().await?;
    let inbox = replies
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .clone();
    let mut consumer = replies
        .basic_consume(
            inbox.clone(),
            ShortString::from("client"),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let waiting = Waiting::default();
    let w = waiting.clone();
    let router = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            if let Some(corr) = d.properties.correlation_id() {
                w.arrived(corr.as_str(), Instant::now());
            }
        }
    });
    let publisher = conn.create_channel().await?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (publisher, waiting, inbox) = (publisher.clone(), waiting.clone(), inbox.clone());
        let queue = ShortString::from(queue);
        tasks.push(tokio::spawn(async move {
            let mut latency = Vec::new();
            let mut lost = 0;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let corr = format!("{c}.{i}");
                i += 1;
                let props = BasicProperties::default()
                    .with_correlation_id(ShortString::from(corr.as_str()))
                    .with_message_id(ShortString::from(corr.as_str()))
                    .with_reply_to(inbox.clone())
                    .with_content_type(ShortString::from("application/json"));
                let send = async {
                    publisher
                        .basic_publish(
                            ShortString::from(""),
                            queue.clone(),
                            BasicPublishOptions::default(),
                            br#"{"seconds":0}"#,
                            props,
                        )
                        .await?;
                    Ok(())
                };
                match waiting
                    .round_trip(&corr, Duration::from_secs(10), send)
                    .await?
                {
                    Some(ns) => latency.push(ns),
                    None => lost += 1,
                }
            }
            anyhow::Ok((latency, lost))
        }));
    }
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await??);
    }
    let elapsed = start.elapsed();
    router.abort();
    close(&conn).await;
    Ok(RoundTrips::of(per_client, elapsed))
}

/// Closes `conn`, waiting at most 10 s (lapin can leave a close unanswered).
async fn close(conn: &lapin::Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.close(200, "done".into())).await;
}
