//! NATS: the `[nats]` section, behind the cargo feature `nats`.
//! its section is `config::brokers::nats`, `client.rs` the [`Broker`] on async-nats;
//! here the broker's tasks start: a consumer per request subject, the reply
//! dispatcher, and the executors of `executor = "nats"` queues.
//!
//! [`Broker`]: crate::brokers::Broker

#[cfg(feature = "nats")]
pub mod client;

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::app::App;

/// Starts the broker's tasks, if `[nats]` is configured.
#[cfg(feature = "nats")]
pub fn start(app: &Arc<App>, tasks: &mut JoinSet<()>) {
    use crate::brokers::{Broker, Setup, request_sources, run};
    use crate::config::Executor;

    let Some(cfg) = &app.config.nats else {
        return;
    };
    let broker: Arc<dyn Broker> = Arc::new(client::NatsBroker::new(cfg, "replyd"));
    let requests = request_sources(
        &cfg.request_subjects,
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
        reply_source: cfg.reply_subject.clone(),
        executor: Executor::Nats,
        default_work: |queue| format!("replyd.work.{queue}"),
    };
    run(app, tasks, setup);
}

/// Without the `nats` feature there is nothing to start (a configuration
/// with `[nats]` is refused when it is validated).
#[cfg(not(feature = "nats"))]
pub fn start(_: &Arc<App>, _: &mut JoinSet<()>) {}
