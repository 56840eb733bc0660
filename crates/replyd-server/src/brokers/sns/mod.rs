//! AWS SNS: the `[sns]` section, behind the cargo feature `sns`, on
//! `[sqs]`'s AWS settings. Its section is `config::brokers::sns`,
//! `client.rs` the [`Broker`] (topics, read through SQS queues subscribed
//! to them), `push.rs` SNS's HTTP(S) push (`POST /v1/sns/NAME`, its
//! signatures checked; SNS's JSON message is `sqs/envelope.rs`, which the
//! SQS broker reads too, for a queue subscribed to a topic without raw
//! delivery);
//! here the broker's tasks start: a consumer per request topic, the reply
//! dispatcher, and the executors of `executor = "sns"` queues.
//!
//! [`Broker`]: crate::brokers::Broker

#[cfg(feature = "sns")]
pub mod client;
#[cfg(feature = "sns")]
pub mod push;

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::app::App;

/// Starts the broker's tasks, if `[sns]` is configured.
#[cfg(feature = "sns")]
pub fn start(app: &Arc<App>, tasks: &mut JoinSet<()>) {
    use crate::brokers::{Broker, Setup, request_sources, run};
    use crate::config::Executor;

    let (Some(cfg), Some(aws)) = (&app.config.sns, &app.config.sqs) else {
        return;
    };
    let broker: Arc<dyn Broker> =
        Arc::new(client::SnsBroker::new(aws).with_reply_topic(&cfg.reply_topic));
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
        executor: Executor::Sns,
        default_work: |queue| format!("replyd-work-{queue}"),
    };
    run(app, tasks, setup);
}

/// Without the `sns` feature there is nothing to start (a configuration
/// with `[sns]` is refused when it is validated).
#[cfg(not(feature = "sns"))]
pub fn start(_: &Arc<App>, _: &mut JoinSet<()>) {}
