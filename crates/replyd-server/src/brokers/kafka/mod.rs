//! Apache Kafka: the `[kafka]` section, behind the cargo feature `kafka`.
//! Its section is `config::brokers::kafka`, `client.rs` the [`Broker`] on
//! rdkafka, `testing.rs` librdkafka's mock cluster for tests and benches;
//! here the broker's tasks start: a consumer per request topic, the reply
//! dispatcher, and the executors of `executor = "kafka"` queues.
//!
//! [`Broker`]: crate::brokers::Broker

#[cfg(feature = "kafka")]
pub mod client;
#[cfg(feature = "kafka")]
pub mod testing;

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::app::App;

/// Starts the broker's tasks, if `[kafka]` is configured.
#[cfg(feature = "kafka")]
pub fn start(app: &Arc<App>, tasks: &mut JoinSet<()>) {
    use crate::brokers::{Broker, Setup, request_sources, run};
    use crate::config::Executor;

    let Some(cfg) = &app.config.kafka else {
        return;
    };
    let broker: Arc<dyn Broker> = Arc::new(client::KafkaBroker::new(cfg, "replyd"));
    let requests = request_sources(
        &cfg.request_topics,
        &cfg.tenant,
        cfg.queue.as_ref(),
        cfg.prefetch,
        |source| cfg.dead_letter_of(source),
    );
    let setup = Setup {
        broker,
        requests,
        concurrency: 64,
        reply_schedule: cfg.reply_retry_schedule.clone(),
        reply_source: cfg.reply_topic.clone(),
        executor: Executor::Kafka,
        default_work: |queue| format!("replyd.work.{queue}"),
    };
    run(app, tasks, setup);
}

/// Without the `kafka` feature there is nothing to start (a configuration
/// with `[kafka]` is refused when it is validated).
#[cfg(not(feature = "kafka"))]
pub fn start(_: &Arc<App>, _: &mut JoinSet<()>) {}
