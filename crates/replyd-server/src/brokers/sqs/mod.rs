//! AWS SQS: the `[sqs]` section, behind the cargo feature `sqs`.
//! its section is `config::brokers::sqs`, `client.rs` the [`Broker`] on the AWS SDK;
//! here the broker's tasks start: a consumer per request queue, the reply
//! dispatcher, and the executors of `executor = "sqs"` queues.
//!
//! [`Broker`]: crate::brokers::Broker

#[cfg(feature = "sqs")]
pub mod client;
#[cfg(feature = "sqs")]
pub mod envelope;
#[cfg(feature = "sns")]
pub mod topics;

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::app::App;

/// Starts the broker's tasks, if `[sqs]` is configured.
#[cfg(feature = "sqs")]
pub fn start(app: &Arc<App>, tasks: &mut JoinSet<()>) {
    use crate::brokers::{Broker, Setup, request_sources, run};
    use crate::config::Executor;

    let Some(cfg) = &app.config.sqs else {
        return;
    };
    let broker: Arc<dyn Broker> = Arc::new(client::SqsBroker::new(cfg));
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
        concurrency: 64,
        reply_schedule: cfg.reply_retry_schedule.clone(),
        reply_source: cfg.reply_queue.clone(),
        executor: Executor::Sqs,
        default_work: |queue| format!("replyd-work-{queue}"),
    };
    run(app, tasks, setup);
}

/// Without the `sqs` feature there is nothing to start (a configuration
/// with `[sqs]` is refused when it is validated).
#[cfg(not(feature = "sqs"))]
pub fn start(_: &Arc<App>, _: &mut JoinSet<()>) {}
