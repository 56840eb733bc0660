//! `replyd bench`: the home of every benchmark, one file per scenario, and
//! what they share in `harness.rs` (and `process.rs`, a server in a process
//! of its own). Each scenario measures
//! replyd and, in the same run with the same client, a baseline that bounds
//! it, and prints both with their ratio.
//!
//! - `submit`: C keep-alive HTTP/1.1 clients POST jobs for D seconds against
//!   a real replyd (SQLite at full durability, a fresh database). Baseline: a
//!   bare axum endpoint that reads the body and answers 202 doing no work,
//!   this machine's HTTP ceiling.
//! - `e2e`: N no-op jobs submitted, leased in batches over the worker API and
//!   completed (a batch's outcomes per call, or one call per job); jobs/s
//!   from the first submit to the last completion; the median of
//!   `--rounds` runs, each on a fresh database.
//! - `drain`: the peers' end-to-end shape: N jobs enqueued first (not
//!   timed), then the workers' lease + complete is timed; the median of
//!   `--rounds` runs.
//! - `growth`: e2e with 20k, 200k and 1M finished jobs already in the
//!   table: throughput and submit latency as the database grows.
//! - `streams` (`streams.rs`): C idle SSE streams and C WebSocket
//!   subscriptions on a replyd in its own process while jobs complete at
//!   1,000/s: server RSS per idle connection and completion → client
//!   latency. Baseline: a bare hyper SSE broadcaster, also its own process.
//! - `webhooks` (`webhooks.rs`): completed jobs delivered to a local
//!   receiver (always 200; 500 to every tenth request; 1 s per answer):
//!   deliveries/s and completion → delivery latency. Baseline: a bare
//!   reqwest client posting the same payloads to the same receiver.
//! - `amqp` (`amqp.rs`, feature `amqp`): RPC round trips over
//!   RabbitMQ through replyd (a durable job and a durable reply each).
//!   Baseline: a bare lapin RPC echo server, the same client.
//! - `mqtt`, `nats` and `kafka` (`brokers.rs`, features `mqtt`, `nats`,
//!   `kafka`): request/response round trips through replyd. Baseline: a
//!   bare echo, the same client (Kafka: on librdkafka's mock cluster).
//! - `pg` (`pg.rs`, feature `postgres`): submit and e2e on PostgreSQL.
//! - `peers` (`peers.rs`): pg-boss, BullMQ and Celery (`../shared/peers`)
//!   measured by their own scripts, beside replyd in the same shapes.
//! - `dstreams` (`dstreams.rs`): appends to Durable Streams by 64 and 256
//!   writers, beside the protocol's Node reference server (in memory and
//!   file-backed), with the peer's own load generator.
//! - `tokens` (`tokens.rs`): 1,000 outputs appended at a model's token rate
//!   (50/s each), one SSE reader each: append → reader latency, loss, CPU
//!   and RSS, beside the reference server.
//! - `console` (`console.rs`): the console's job lists with 1M jobs in
//!   the table (SQLite, and PostgreSQL with `--database-url`): each list's
//!   store read beside the newest page's, and the first paint in Chromium.
//! - `telemetry` (`telemetry.rs`, feature `otel`): e2e with spans off and
//!   exported to an in-process OTLP sink, alternating rounds: the ratio.
//! - `exposure` (`exposure.rs`): what a stranger with no key can make a
//!   replyd hold, this build against `--baseline-bin` in the same run.

#[cfg(feature = "amqp")]
mod amqp;
mod args;
#[cfg(any(feature = "mqtt", feature = "nats", feature = "kafka", feature = "sqs"))]
mod brokers;
mod console;
mod dstreams;
mod e2e;
pub mod exposure;
mod flow;
mod harness;
mod peers;
#[cfg(feature = "postgres")]
mod pg;
mod process;
pub mod streams;
mod submit;
#[cfg(feature = "otel")]
mod telemetry;
mod tokens;
mod webhooks;

pub use args::BenchArgs;

use anyhow::bail;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!(
        "replyd bench: {} cores, {} clients, database in {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.clients,
        dir.display()
    );
    // The pg scenario's figures, for the peers' table after it.
    #[allow(unused_mut)]
    let mut pg_figures: Vec<peers::PgFigures> = Vec::new();
    for scenario in &args.scenarios {
        match scenario.as_str() {
            "submit" => submit::submit(&args, &dir).await?,
            "e2e" => e2e::e2e(&args, &dir).await?,
            "drain" => e2e::drain(&args, &dir).await?,
            "growth" => e2e::growth(&args, &dir).await?,
            #[cfg(feature = "postgres")]
            "pg" => pg_figures.extend(pg::run(&args).await?),
            "streams" => streams::run(&args, &dir).await?,
            "webhooks" => webhooks::run(&args, &dir).await?,
            "exposure" => exposure::run(&args, &dir).await?,
            "peers" => peers::run(&args, &dir, &pg_figures).await?,
            "dstreams" => dstreams::run(&args, &dir).await?,
            "tokens" => tokens::run(&args, &dir).await?,
            "console" => console::run(&args, &dir).await?,
            "flow" => flow::run(&args, &dir).await?,
            "limits" => flow::limits(&args, &dir).await?,
            "delay" => flow::delay(&args, &dir).await?,
            #[cfg(feature = "otel")]
            "telemetry" => telemetry::run(&args, &dir).await?,
            #[cfg(feature = "amqp")]
            "amqp" => amqp::run(&args, &dir).await?,
            #[cfg(feature = "mqtt")]
            "mqtt" => brokers::run(brokers::Kind::Mqtt, &args, &dir).await?,
            #[cfg(feature = "nats")]
            "nats" => brokers::run(brokers::Kind::Nats, &args, &dir).await?,
            #[cfg(feature = "sqs")]
            "sqs" => brokers::run(brokers::Kind::Sqs, &args, &dir).await?,
            #[cfg(feature = "sns")]
            "sns" => brokers::compare(brokers::Kind::Sqs, brokers::Kind::Sns, &args, &dir).await?,
            #[cfg(feature = "kafka")]
            "kafka" => {
                let kind = brokers::Kind::Kafka {
                    mock: args.kafka_brokers.is_none(),
                };
                brokers::run(kind, &args, &dir).await?
            }
            other => bail!(
                "unknown scenario {other:?} (known: submit, e2e, drain, growth, peers, dstreams, tokens, console, flow (limits, delay), streams, webhooks, exposure; \
                 with their features: pg, amqp, mqtt, nats, kafka, sqs, sns, telemetry)"
            ),
        }
    }
    Ok(())
}
