//! RabbitMQ (AMQP 0-9-1): the `[amqp]` section, behind the cargo feature
//! `amqp`. its section is `config::brokers::amqp`, `client.rs` the [`Broker`] on lapin;
//! here the broker's tasks start: a consumer per request queue, the reply
//! dispatcher, and the executors of `executor = "amqp"` queues.
//!
//! [`Broker`]: crate::brokers::Broker

#[cfg(feature = "amqp")]
pub mod client;

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::app::App;

/// Starts the broker's tasks, if `[amqp]` is configured.
#[cfg(feature = "amqp")]
pub fn start(app: &Arc<App>, tasks: &mut JoinSet<()>) {
    use crate::brokers::{Broker, Setup, request_sources, run};
    use crate::config::Executor;

    let Some(cfg) = &app.config.amqp else {
        return;
    };
    let broker: Arc<dyn Broker> = Arc::new(client::AmqpBroker::new(&cfg.url, "replyd"));
    let requests = request_sources(
        &cfg.request_queues,
        &cfg.tenant,
        cfg.queue.as_ref(),
        cfg.prefetch,
        |source| cfg.dead_letter_of(source),
    );
    let setup = Setup {
        broker,
        requests,
        concurrency: cfg.concurrency,
        reply_schedule: cfg.reply_retry_schedule.clone(),
        reply_source: cfg.reply_queue.clone(),
        executor: Executor::Amqp,
        default_work: |queue| format!("replyd.work.{queue}"),
    };
    run(app, tasks, setup);
}

/// Without the `amqp` feature there is nothing to start (a configuration
/// with `[amqp]` is refused when it is validated).
#[cfg(not(feature = "amqp"))]
pub fn start(_: &Arc<App>, _: &mut JoinSet<()>) {}
