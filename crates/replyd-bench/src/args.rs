//! `replyd bench`'s arguments: which scenarios, and each one's knobs.

use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenarios to run.
    #[arg(long, value_delimiter = ',', default_values = ["submit", "e2e"])]
    pub scenarios: Vec<String>,
    /// Concurrent HTTP clients. Durable writes need concurrency to share
    /// fsyncs: throughput is clients / latency.
    #[arg(long, default_value_t = 256)]
    pub clients: usize,
    /// Seconds each submit measurement runs.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Alternating rounds (ceiling, replyd) of the submit scenario, and
    /// how many times e2e and drain run (each on a fresh database): single
    /// runs on a shared machine spread widely, so the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Submit scenario: jobs per `POST /v1/jobs:batch` in its batch
    /// measurement (made by an eighth of `--clients`).
    #[arg(long, default_value_t = 100)]
    pub submit_batch: usize,
    /// Jobs in the end-to-end scenario.
    #[arg(long, default_value_t = 50_000)]
    pub jobs: usize,
    /// Growth scenario: the table sizes (finished jobs already held) at
    /// which the end-to-end measurement runs.
    #[arg(long, value_delimiter = ',', default_values_t = [20_000, 200_000, 1_000_000])]
    pub growth: Vec<usize>,
    /// Console scenario: jobs in the table whose lists are read.
    #[arg(long, default_value_t = 1_000_000)]
    pub console_jobs: usize,
    /// Concurrent workers in the end-to-end scenario.
    #[arg(long, default_value_t = 32)]
    pub workers: usize,
    /// Jobs per lease call in the end-to-end scenario.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// End to end: how workers report: `lease`, a leased batch's outcomes
    /// sent with the next lease call (one round trip per batch); `batch`,
    /// one `POST /v1/workers/complete` per leased batch; or `each`, one
    /// `POST /v1/jobs/{id}/complete` per job.
    #[arg(long, default_value = "batch", value_parser = ["lease", "batch", "each"])]
    pub complete: String,
    /// Delay scenario: jobs scheduled to come due over 5 s.
    #[arg(long, default_value_t = 100_000)]
    pub scheduled: usize,
    /// PostgreSQL for the `pg` scenario (a fresh schema per measurement).
    #[arg(long, env = "REPLYD_BENCH_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Node counts the `pg` scenario runs with.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3])]
    pub nodes: Vec<usize>,
    /// `pg` scenario: the connections all its nodes keep to PostgreSQL
    /// together, shared evenly (each node's `storage.postgres_pool_size`,
    /// at least 4), as an operator sizes a cluster to its database; the
    /// bare client gets as many. The default is one node's default pool:
    /// on this 2-core machine 96 connections (3 nodes × 32) made the bare
    /// client itself about 40 % slower than 32 did (BENCHMARKS.md).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub pg_connections: u32,
    /// Streams scenario: C, the idle SSE streams and (as many) WebSocket
    /// subscriptions held at once; one measurement per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 5_000, 20_000])]
    pub stream_conns: Vec<usize>,
    /// Streams scenario: jobs completed per second while they are held.
    #[arg(long, default_value_t = 1_000.0)]
    pub stream_rate: f64,
    /// Tokens scenario: outputs streamed at once, each appended 50 times a
    /// second and followed by one SSE reader.
    #[arg(long, default_value_t = 1000)]
    pub token_streams: usize,
    /// Streams scenario: jobs completed per measurement (at most 2C), half
    /// watched over SSE, half over WebSocket; the other connections stay
    /// idle throughout.
    #[arg(long, default_value_t = 10_000)]
    pub stream_completions: usize,
    /// Webhooks scenario: deliveries owed per drain (the 1 s receiver's
    /// case takes fewer).
    #[arg(long, default_value_t = 20_000)]
    pub webhook_jobs: usize,
    /// Webhooks scenario: deliveries in flight (replyd's
    /// `webhooks.concurrency` and `per_endpoint`, and the ceiling's).
    #[arg(long, default_value_t = 64)]
    pub webhook_concurrency: usize,
    /// Webhooks scenario: replyd's `per_endpoint` (default: the
    /// concurrency, so that it may use as many requests as the ceiling).
    #[arg(long)]
    pub webhook_per_endpoint: Option<usize>,
    /// Webhooks scenario: completions per second of the steady measurement.
    #[arg(long, default_value_t = 500.0)]
    pub webhook_rate: f64,
    /// AMQP scenario: the RabbitMQ to use.
    #[arg(
        long,
        env = "REPLYD_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_name = "URL"
    )]
    pub amqp_url: String,
    /// AMQP scenario: requesters, each with one request in flight.
    #[arg(long, default_value_t = 128)]
    pub amqp_clients: usize,
    /// MQTT scenario: the broker to use.
    #[arg(
        long,
        env = "REPLYD_BENCH_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883",
        value_name = "URL"
    )]
    pub mqtt_url: String,
    /// NATS scenario: the server to use.
    #[arg(
        long,
        env = "REPLYD_BENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_name = "URL"
    )]
    pub nats_url: String,
    /// SQS and SNS scenarios: the endpoint of both (moto_server, or
    /// LocalStack), with static test credentials.
    #[arg(
        long,
        env = "REPLYD_BENCH_AWS_ENDPOINT",
        default_value = "http://127.0.0.1:5000",
        value_name = "URL"
    )]
    pub aws_endpoint: String,
    /// MQTT, NATS, SQS and SNS scenarios: requesters, each with one
    /// request in flight.
    #[arg(long, alias = "mqtt-clients", default_value_t = 128)]
    pub broker_clients: usize,
    /// Kafka scenario: the cluster to use (`bootstrap.servers`); default:
    /// librdkafka's mock cluster (3 brokers) in this process.
    #[arg(long, env = "REPLYD_BENCH_KAFKA_BROKERS", value_name = "HOST:PORT,...")]
    pub kafka_brokers: Option<String>,
    /// Kafka scenario: requesters (each with one request in flight); one
    /// measurement per value.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 128, 256])]
    pub kafka_clients: Vec<usize>,
    /// Exposure scenario: idle connections two attackers open, half each.
    #[arg(long, default_value_t = 21_000)]
    pub exposure_conns: usize,
    /// Exposure scenario: another replyd binary (an older build) measured
    /// first, in the same run, as the baseline.
    #[arg(long, value_name = "PATH")]
    pub baseline_bin: Option<PathBuf>,
    /// Peers scenario: which of the peers to run beside replyd.
    #[arg(long, value_delimiter = ',', default_values = ["pgboss", "bullmq", "celery"],
          value_parser = ["pgboss", "bullmq", "celery"])]
    pub peers: Vec<String>,
    /// Peers scenario: the peers' folder, made ready by
    /// `scripts/peers-setup` (a copy of `../shared/peers` with its Node
    /// modules and Python venv).
    #[arg(
        long,
        env = "REPLYD_PEERS_DIR",
        default_value = "target/peers",
        value_name = "DIR"
    )]
    pub peers_dir: PathBuf,
    /// Peers scenario: jobs each end-to-end measurement runs (the peers'
    /// `N`).
    #[arg(long, default_value_t = 20_000)]
    pub peer_jobs: usize,
    /// Where the benchmark databases go (default: a temporary directory).
    /// Put it on the disk replyd will run on: fsync cost is the point.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}
