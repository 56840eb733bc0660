//! `replyd bench --scenarios mqtt` (feature `mqtt`): MQTT 5
//! request/response round trips.
//!
//! The client, the same for both servers: one MQTT connection publishing
//! requests at QoS 1 (each waits for its PUBACK) to a request topic, with
//! `Response Topic` = the client's own response topic and fresh
//! `Correlation Data`; `--mqtt-clients` requesters, each waiting for its
//! reply before sending the next, for `--duration` seconds. A round trip
//! is from the publish to the reply's arrival.
//!
//! - replyd: in this process, a fresh SQLite database at full durability,
//!   `[mqtt]` consuming the request topic into a `demo` queue whose jobs
//!   take no time: each request is a job accepted (durable, then the
//!   PUBACK), leased, completed (durable), and its reply owed, claimed,
//!   published at QoS 1 and recorded once the broker acknowledged it.
//! - the ceiling: a bare echo on the same broker client (subscribe,
//!   publish the body back to the response topic with the correlation data
//!   at QoS 1, acknowledge), the broker's own round trip.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use replyd_server::brokers::mqtt::client::MqttBroker;
use replyd_server::brokers::mqtt::config::MqttConfig;
use replyd_server::brokers::{Broker, Message, Props, Published};
use replyd_server::config::Executor;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{BenchArgs, RoundTrips, Storage, start_replyd_with};

/// The target the AMQP scenario has (no issue names one for MQTT yet).
const TARGET_RATIO: f64 = 0.4;

fn handle(url: &str, name: &str) -> anyhow::Result<Arc<dyn Broker>> {
    let cfg = MqttConfig {
        url: url.to_string(),
        client_id: format!("replyd-bench-{name}-{:x}", std::process::id()),
        share_group: String::new(),
        session_expiry: 60,
        ..MqttConfig::default()
    };
    Ok(Arc::new(
        MqttBroker::new(&cfg).map_err(|e| anyhow::anyhow!(e))?,
    ))
}

pub async fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let url = args.mqtt_url.clone();
    let clients = args.mqtt_clients.max(1);
    let duration = Duration::from_secs_f64(args.duration);
    println!(
        "\nmqtt: {clients} request/response clients over MQTT 5 ({url}), {:.0} s each, alternating; \
         replyd (SQLite, synchronous=FULL, a demo queue of no-op jobs) against a bare echo",
        args.duration
    );
    let suffix = format!("{:x}", std::process::id());
    let mut bare_runs = Vec::new();
    let mut replyd_runs = Vec::new();
    for round in 0..args.rounds.max(1) {
        // The ceiling.
        let topic = format!("replyd/bench/{suffix}/{round}/echo");
        let stop = CancellationToken::new();
        let echo = tokio::spawn(echo_server(
            handle(&url, "echo")?,
            topic.clone(),
            stop.clone(),
        ));
        let bare = load(&url, &topic, clients, duration).await?;
        stop.cancel();
        echo.await??;
        println!("{}", bare.line("bare MQTT echo (ceiling)"));
        bare_runs.push(bare);

        // replyd.
        let topic = format!("replyd/bench/{suffix}/{round}/requests");
        let db = dir.join(format!("bench-mqtt-{round}.db"));
        let (t, u, client_id) = (
            topic.clone(),
            url.clone(),
            format!("replyd-bench-{suffix}-{round}"),
        );
        let server = start_replyd_with(&Storage::Sqlite(db), move |c| {
            if let Some(b) = c.queues.get_mut("bench") {
                b.executor = Executor::Demo;
                b.concurrency = 256;
            }
            c.mqtt = Some(MqttConfig {
                url: u,
                client_id,
                request_topics: vec![t],
                queue: Some("bench".into()),
                prefetch: 256,
                session_expiry: 60,
                ..MqttConfig::default()
            });
        })
        .await?;
        let replyd = load(&url, &topic, clients, duration).await?;
        let batching = server.ops_per_commit();
        server.stop().await;
        println!(
            "{}   group commit {batching:.1} writes/commit",
            replyd.line("replyd (job + durable reply)")
        );
        replyd_runs.push(replyd);
    }
    RoundTrips::conclude(
        args.rounds,
        ("bare MQTT echo (ceiling)", bare_runs),
        ("replyd (job + durable reply)", replyd_runs),
        &format!("the AMQP scenario's target: >= {TARGET_RATIO:.2}"),
    )
}

/// The ceiling: each request's body back to its response topic, with its
/// correlation data; then the request is acknowledged.
async fn echo_server(
    broker: Arc<dyn Broker>,
    topic: String,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut rx = broker.subscribe(&topic, 256).await?;
    loop {
        let r = tokio::select! {
            _ = stop.cancelled() => break,
            r = rx.recv() => r,
        };
        let Some(r) = r else { break };
        let broker = broker.clone();
        tokio::spawn(async move {
            if let Some(to) = r.message.props.reply_to.clone() {
                let reply = Message {
                    body: r.message.body.clone(),
                    props: Props {
                        correlation_id: r.message.props.correlation_id.clone(),
                        ..Props::default()
                    },
                };
                let _ = broker.publish(&to, reply).await;
            }
            let _ = r.settle.ack().await;
        });
    }
    Ok(())
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// `clients` requesters send requests to `topic` one after another for
/// `duration` (once something consumes it); round trips per second and
/// their latencies.
async fn load(
    url: &str,
    topic: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<RoundTrips> {
    let broker = handle(url, "client")?;
    let (inbox, mut replies) = broker.inbox().await?;
    let waiting: Waiting = Arc::default();
    let w = waiting.clone();
    let router = tokio::spawn(async move {
        while let Some(r) = replies.recv().await {
            let at = Instant::now();
            let Some(corr) = &r.message.props.correlation_id else {
                continue;
            };
            if let Some(tx) = w.lock().unwrap().remove(corr) {
                let _ = tx.send(at);
            }
        }
    });
    let request = move |corr: &str| Message {
        body: br#"{"seconds":0}"#.as_slice().into(),
        props: Props {
            correlation_id: Some(corr.to_string()),
            message_id: Some(corr.to_string()),
            reply_to: Some(inbox.clone()),
            content_type: Some("application/json".into()),
            ..Props::default()
        },
    };
    // Until something subscribes, the broker drops what comes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.publish(topic, request("probe")).await? != Published::Accepted {
        if Instant::now() > deadline {
            bail!("nothing consumes {topic}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (broker, waiting, topic) = (broker.clone(), waiting.clone(), topic.to_string());
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Vec::new();
            let mut lost = 0;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let corr = format!("{c}.{i}");
                i += 1;
                let (tx, rx) = oneshot::channel();
                waiting.lock().unwrap().insert(corr.clone(), tx);
                let sent = Instant::now();
                broker.publish(&topic, request(&corr)).await?;
                match tokio::time::timeout(Duration::from_secs(10), rx).await {
                    Ok(Ok(at)) => latency.push((at - sent).as_nanos() as i64),
                    _ => {
                        waiting.lock().unwrap().remove(&corr);
                        lost += 1;
                    }
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
    Ok(RoundTrips::of(per_client, elapsed))
}
