//! `replyd bench --scenarios mqtt` (feature `mqtt`), `nats` (feature
//! `nats`), `kafka` (feature `kafka`) and `sqs` (feature `sqs`):
//! request/response round trips over a broker, through replyd and through
//! a bare echo, with the same client: replyd's own `Broker` of that
//! broker, so that both sides pay the same client costs. Kafka runs on
//! librdkafka's mock cluster in this process unless `--kafka-brokers`
//! names a cluster; SQS and SNS on `--aws-endpoint` (moto_server).
//!
//! `sns` (feature `sns`) compares two paths through replyd in alternating
//! rounds: requests to an SQS queue and replies to the requester's queue,
//! against requests published to an SNS topic (read through the SQS queue
//! subscribed to it) and replies published to the requester's topic (read
//! through its own queue).
//!
//! The client: requests published to a request destination (MQTT: at
//! QoS 1, each waiting for its PUBACK; NATS: flushed) with the reply going
//! to the client's own inbox (MQTT: its response topic; NATS: a reply
//! inbox; Kafka: an inbox topic, acks=all) and a fresh correlation id;
//! `--broker-clients` (Kafka: `--kafka-clients`) requesters, each waiting
//! for its reply before sending the next, for `--duration` seconds, once
//! one request has had its reply (consumer groups take seconds to settle).
//! A round trip is from the publish to the reply's arrival.
//!
//! - replyd: in this process, a fresh SQLite database at full durability,
//!   the broker's section consuming the request destination into a `demo`
//!   queue whose jobs take no time: each request is a job accepted
//!   (durable; MQTT: then the PUBACK), leased, completed (durable), and its
//!   reply owed, claimed, published and recorded.
//! - the ceiling: a bare echo on the same client (receive; publish the
//!   body back to the reply address with the correlation id; settle), the
//!   broker's own round trip.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use replyd_server::Config;
use replyd_server::brokers::{Broker, Message, Props, Received};
use replyd_server::config::Executor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::BenchArgs;
use crate::harness::{RoundTrips, Storage, Waiting, start_replyd_with};

/// The goal the AMQP and Kafka issues set.
const TARGET_RATIO: f64 = 0.4;

/// The brokers this scenario measures.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    #[cfg(feature = "mqtt")]
    Mqtt,
    #[cfg(feature = "nats")]
    Nats,
    /// `mock`: on librdkafka's mock cluster, started for the run.
    #[cfg(feature = "kafka")]
    Kafka { mock: bool },
    #[cfg(feature = "sqs")]
    Sqs,
    #[cfg(feature = "sns")]
    Sns,
}

/// moto's account: the SNS requester's inbox topics are in it.
#[cfg(feature = "sns")]
const AWS_ACCOUNT: &str = "123456789012";

/// The AWS settings of the SQS and SNS scenarios (`[sqs]`'s).
#[cfg(feature = "sqs")]
fn aws(endpoint: &str) -> replyd_server::config::brokers::sqs::SqsConfig {
    replyd_server::config::brokers::sqs::SqsConfig {
        region: "us-east-1".into(),
        endpoint_url: Some(endpoint.to_string()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        #[cfg(feature = "sns")]
        account_id: Some(AWS_ACCOUNT.into()),
        ..Default::default()
    }
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "mqtt")]
            Kind::Mqtt => "MQTT 5",
            #[cfg(feature = "nats")]
            Kind::Nats => "NATS",
            #[cfg(feature = "kafka")]
            Kind::Kafka { .. } => "Kafka",
            #[cfg(feature = "sqs")]
            Kind::Sqs => "SQS",
            #[cfg(feature = "sns")]
            Kind::Sns => "SNS",
        }
    }

    /// The broker's address, and what keeps it up for the run (Kafka:
    /// librdkafka's mock cluster, unless `--kafka-brokers` names one).
    fn url(
        self,
        args: &BenchArgs,
    ) -> anyhow::Result<(String, Option<Box<dyn std::any::Any + Send>>)> {
        match self {
            #[cfg(feature = "mqtt")]
            Kind::Mqtt => Ok((args.mqtt_url.clone(), None)),
            #[cfg(feature = "nats")]
            Kind::Nats => Ok((args.nats_url.clone(), None)),
            #[cfg(feature = "sqs")]
            Kind::Sqs => Ok((args.aws_endpoint.clone(), None)),
            #[cfg(feature = "sns")]
            Kind::Sns => Ok((args.aws_endpoint.clone(), None)),
            #[cfg(feature = "kafka")]
            Kind::Kafka { mock } => match &args.kafka_brokers {
                Some(brokers) if !mock => Ok((brokers.clone(), None)),
                _ => {
                    use replyd_server::brokers::kafka::testing::MockKafka;
                    let mock = MockKafka::start(3).map_err(|e| anyhow::anyhow!(e))?;
                    Ok((mock.bootstrap_servers().to_string(), Some(Box::new(mock))))
                }
            },
        }
    }

    /// Requesters per measurement.
    fn clients(self, args: &BenchArgs) -> Vec<usize> {
        match self {
            #[cfg(feature = "kafka")]
            Kind::Kafka { .. } => args.kafka_clients.clone(),
            #[allow(unreachable_patterns)]
            _ => vec![args.broker_clients],
        }
    }

    /// A destination of this run, in the broker's own spelling.
    fn destination(self, suffix: &str, round: usize, what: &str) -> String {
        match self {
            #[cfg(feature = "mqtt")]
            Kind::Mqtt => format!("replyd/bench/{suffix}/{round}/{what}"),
            #[cfg(feature = "nats")]
            Kind::Nats => format!("replyd.bench.{suffix}.{round}.{what}"),
            #[cfg(feature = "kafka")]
            Kind::Kafka { .. } => format!("replyd-bench-{suffix}-{round}-{what}"),
            #[cfg(feature = "sqs")]
            Kind::Sqs => format!("replyd-bench-{suffix}-{round}-{what}"),
            // An ARN: any handle may publish to it (a name is only its
            // declarer's).
            #[cfg(feature = "sns")]
            Kind::Sns => {
                format!("arn:aws:sns:us-east-1:{AWS_ACCOUNT}:replyd-bench-{suffix}-{round}-{what}")
            }
        }
    }

    /// A client handle, as `name`.
    fn handle(self, url: &str, name: &str) -> anyhow::Result<Arc<dyn Broker>> {
        let _ = (url, name);
        match self {
            #[cfg(feature = "mqtt")]
            Kind::Mqtt => {
                use replyd_server::brokers::mqtt::client::MqttBroker;
                use replyd_server::config::brokers::mqtt::MqttConfig;
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
            #[cfg(feature = "nats")]
            Kind::Nats => {
                use replyd_server::brokers::nats::client::NatsBroker;
                use replyd_server::config::brokers::nats::NatsConfig;
                let cfg = NatsConfig {
                    url: url.to_string(),
                    queue_group: format!("replyd-bench-{name}"),
                    ..NatsConfig::default()
                };
                Ok(Arc::new(NatsBroker::new(&cfg, name)))
            }
            #[cfg(feature = "kafka")]
            Kind::Kafka { mock } => {
                use replyd_server::brokers::kafka::client::KafkaBroker;
                use replyd_server::config::brokers::kafka::KafkaConfig;
                let cfg = KafkaConfig {
                    brokers: url.to_string(),
                    group: format!("replyd-bench-{name}-{:x}", std::process::id()),
                    properties: kafka_properties(mock),
                    ..KafkaConfig::default()
                };
                Ok(Arc::new(KafkaBroker::new(&cfg, name)))
            }
            #[cfg(feature = "sqs")]
            Kind::Sqs => Ok(Arc::new(
                replyd_server::brokers::sqs::client::SqsBroker::new(&aws(url)),
            )),
            #[cfg(feature = "sns")]
            Kind::Sns => Ok(Arc::new(
                replyd_server::brokers::sns::client::SnsBroker::new(&aws(url)),
            )),
        }
    }

    /// replyd's section: consume `requests` into the `bench` queue.
    fn configure(self, c: &mut Config, url: String, requests: String, id: String) {
        let _ = (&c, &url, &requests, &id);
        match self {
            #[cfg(feature = "mqtt")]
            Kind::Mqtt => {
                use replyd_server::config::brokers::mqtt::MqttConfig;
                c.mqtt = Some(MqttConfig {
                    url,
                    client_id: id,
                    request_topics: vec![requests],
                    queue: Some("bench".into()),
                    prefetch: 256,
                    session_expiry: 60,
                    ..MqttConfig::default()
                });
            }
            #[cfg(feature = "nats")]
            Kind::Nats => {
                use replyd_server::config::brokers::nats::NatsConfig;
                c.nats = Some(NatsConfig {
                    url,
                    request_subjects: vec![requests],
                    queue: Some("bench".into()),
                    prefetch: 256,
                    ..NatsConfig::default()
                });
            }
            #[cfg(feature = "kafka")]
            Kind::Kafka { mock } => {
                use replyd_server::config::brokers::kafka::KafkaConfig;
                c.kafka = Some(KafkaConfig {
                    brokers: url,
                    group: id,
                    request_topics: vec![requests],
                    queue: Some("bench".into()),
                    prefetch: 256,
                    properties: kafka_properties(mock),
                    ..KafkaConfig::default()
                });
            }
            #[cfg(feature = "sqs")]
            Kind::Sqs => {
                c.sqs = Some(replyd_server::config::brokers::sqs::SqsConfig {
                    request_queues: vec![requests],
                    queue: Some("bench".into()),
                    prefetch: 256,
                    ..aws(&url)
                });
            }
            #[cfg(feature = "sns")]
            Kind::Sns => {
                c.sqs = Some(aws(&url));
                c.sns = Some(replyd_server::config::brokers::sns::SnsConfig {
                    request_topics: vec![requests],
                    queue: Some("bench".into()),
                    prefetch: 256,
                    ..Default::default()
                });
            }
        }
    }
}

/// Every Kafka client's extra settings, the same on both sides. The mock
/// cluster answers a fetch that finds nothing only after the fetch's whole
/// wait (`fetch.wait.max.ms`, 500 ms by default), even when records arrive
/// meanwhile, where a Kafka broker answers as soon as they do: with the
/// default, every hop would take 500 ms and both sides measure the mock.
#[cfg(feature = "kafka")]
fn kafka_properties(mock: bool) -> std::collections::BTreeMap<String, String> {
    let mut p = std::collections::BTreeMap::new();
    if mock {
        p.insert("fetch.wait.max.ms".into(), "2".into());
    }
    p
}

pub async fn run(kind: Kind, args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let (url, _cluster) = kind.url(args)?;
    for clients in kind.clients(args) {
        measure(kind, &url, clients.max(1), args, dir).await?;
    }
    Ok(())
}

async fn measure(
    kind: Kind,
    url: &str,
    clients: usize,
    args: &BenchArgs,
    dir: &Path,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.duration);
    println!(
        "\n{}: {clients} request/response clients ({url}), {:.0} s each, alternating; \
         replyd (SQLite, synchronous=FULL, a demo queue of no-op jobs) against a bare echo",
        kind.name(),
        args.duration
    );
    let suffix = format!("{:x}-{clients}", std::process::id());
    let mut bare_runs = Vec::new();
    let mut replyd_runs = Vec::new();
    for round in 0..args.rounds.max(1) {
        // The ceiling.
        let requests = kind.destination(&suffix, round, "echo");
        let echo = kind.handle(url, "echo")?;
        echo.declare(&requests).await?;
        let rx = echo.subscribe(&requests, 256).await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(echo_server(echo, rx, stop.clone()));
        let bare = load(kind, url, &requests, clients, duration).await?;
        stop.cancel();
        task.await?;
        println!("{}", bare.line("bare echo (ceiling)"));
        bare_runs.push(bare);

        let replyd = replyd_round(
            kind,
            url,
            clients,
            duration,
            (&suffix, round),
            dir,
            "replyd (job + durable reply)",
        )
        .await?;
        replyd_runs.push(replyd);
    }
    RoundTrips::conclude(
        args.rounds,
        ("bare echo (ceiling)", bare_runs),
        ("replyd (job + durable reply)", replyd_runs),
        &format!("target: >= {TARGET_RATIO:.2} (the AMQP and Kafka issues' goal)"),
    )
}

/// One measurement of replyd: a fresh replyd in this process consuming a
/// request destination of `kind` (this run's `suffix` and `round`) into
/// no-op demo jobs, printed as `label`.
async fn replyd_round(
    kind: Kind,
    url: &str,
    clients: usize,
    duration: Duration,
    (suffix, round): (&str, usize),
    dir: &Path,
    label: &str,
) -> anyhow::Result<RoundTrips> {
    let requests = kind.destination(suffix, round, "requests");
    kind.handle(url, "declare")?.declare(&requests).await?;
    let db = dir.join(format!("bench-broker-{suffix}-{round}.db"));
    let (r, u, id) = (
        requests.clone(),
        url.to_string(),
        format!("replyd-bench-{suffix}-{round}"),
    );
    let server = start_replyd_with(&Storage::Sqlite(db), move |c| {
        if let Some(b) = c.queues.get_mut("bench") {
            b.executor = Executor::Demo;
            b.concurrency = 256;
        }
        kind.configure(c, u, r, id);
    })
    .await?;
    until_consuming(&requests).await?;
    let replyd = load(kind, url, &requests, clients, duration).await?;
    let batching = server.ops_per_commit();
    server.stop().await;
    println!(
        "{}   group commit {batching:.1} writes/commit",
        replyd.line(label)
    );
    Ok(replyd)
}

/// Round trips through replyd over `base` and over `other`, in
/// alternating rounds, as a ratio (other / base).
#[cfg(feature = "sns")]
pub async fn compare(base: Kind, other: Kind, args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let (base_url, _a) = base.url(args)?;
    let (other_url, _b) = other.url(args)?;
    let clients = args.broker_clients.max(1);
    let duration = Duration::from_secs_f64(args.duration);
    println!(
        "\n{} against {}, both through replyd: {clients} request/response clients, {:.0} s each, \
         alternating (SQLite, synchronous=FULL, a demo queue of no-op jobs)",
        other.name(),
        base.name(),
        args.duration
    );
    let suffix = format!("{:x}-{clients}", std::process::id());
    let (a, b) = (
        format!("replyd over {}", base.name()),
        format!("replyd over {}", other.name()),
    );
    let (mut base_runs, mut other_runs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let (sa, sb) = (format!("{suffix}-a"), format!("{suffix}-b"));
        let r = replyd_round(base, &base_url, clients, duration, (&sa, round), dir, &a);
        base_runs.push(r.await?);
        let r = replyd_round(other, &other_url, clients, duration, (&sb, round), dir, &b);
        other_runs.push(r.await?);
    }
    RoundTrips::conclude_as(
        &format!("ratio {} / {}", other.name(), base.name()),
        args.rounds,
        (&a, base_runs),
        (&b, other_runs),
        "the same client, server and store; only the path differs",
    )
}

/// Waits until this process's replyd reports that it consumes `source`.
async fn until_consuming(source: &str) -> anyhow::Result<()> {
    let needle = format!("source=\"{source}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = replyd_server::http::ops::prometheus().render();
        if text
            .lines()
            .any(|l| l.starts_with("replyd_broker_consuming") && l.ends_with(&needle))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("replyd does not consume {source}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ceiling: each request's body back to its reply address, with its
/// correlation id; then the request is settled.
async fn echo_server(
    broker: Arc<dyn Broker>,
    mut rx: mpsc::Receiver<Received>,
    stop: CancellationToken,
) {
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
}

/// `clients` requesters send requests to `requests` one after another for
/// `duration`; round trips per second and their latencies.
async fn load(
    kind: Kind,
    url: &str,
    requests: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<RoundTrips> {
    let broker = kind.handle(url, "client")?;
    let (inbox, mut replies) = broker.inbox().await?;
    let waiting = Waiting::default();
    let w = waiting.clone();
    let router = tokio::spawn(async move {
        while let Some(r) = replies.recv().await {
            if let Some(corr) = &r.message.props.correlation_id {
                w.arrived(corr, Instant::now());
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
    // One round trip first: until it, consumers may still be joining
    // their groups (Kafka: seconds), which is not what is measured.
    let warm_up = async {
        broker.publish(requests, request("warm-up")).await?;
        Ok(())
    };
    if waiting
        .round_trip("warm-up", Duration::from_secs(60), warm_up)
        .await?
        .is_none()
    {
        bail!("no reply to a first request in 60 s");
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (broker, waiting, requests) = (broker.clone(), waiting.clone(), requests.to_string());
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Vec::new();
            let mut lost = 0;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let corr = format!("{c}.{i}");
                i += 1;
                let send = async {
                    broker.publish(&requests, request(&corr)).await?;
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
    Ok(RoundTrips::of(per_client, elapsed))
}
