//! RabbitMQ (AMQP 0-9-1): the `[amqp]` section, behind the cargo feature
//! `amqp`. `config.rs` is the section, `client.rs` the [`Broker`] on lapin;
//! here the broker's tasks start: a consumer per request queue, the reply
//! dispatcher, and the executors of `executor = "amqp"` queues.
//!
//! [`Broker`]: crate::brokers::Broker

#[cfg(feature = "amqp")]
pub mod client;
pub mod config;

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::app::App;

/// Starts the broker's tasks, if `[amqp]` is configured.
#[cfg(feature = "amqp")]
pub fn start(app: &Arc<App>, tasks: &mut JoinSet<()>) {
    use crate::brokers::{Broker, executor, ingress, replies};
    use crate::config::{Executor, secs};
    use crate::outbox::{Limits, Schedule};

    let Some(cfg) = &app.config.amqp else {
        return;
    };
    let broker: Arc<dyn Broker> = Arc::new(client::AmqpBroker::new(&cfg.url, "replyd"));
    for source in &cfg.request_queues {
        let settings = ingress::Settings {
            tenant: replyd_core::Tenant(cfg.tenant.clone()),
            default_queue: cfg.queue.clone(),
            dead_letter: cfg.dead_letter_of(source),
            prefetch: cfg.prefetch,
        };
        tasks.spawn(ingress::run(
            app.clone(),
            broker.clone(),
            source.clone(),
            settings,
        ));
    }
    let replies = Arc::new(replies::Replies {
        broker: broker.clone(),
        limits: Limits {
            concurrency: cfg.concurrency,
            per_endpoint: cfg.concurrency,
            attempt_timeout: replies::CONFIRM_TIMEOUT,
            schedule: Schedule {
                delays: cfg.reply_retry_schedule.iter().map(|d| secs(*d)).collect(),
                max_retry_after: std::time::Duration::ZERO,
                jitter: 0.1,
            },
        },
    });
    tasks.spawn(crate::outbox::dispatch::run(app.clone(), replies));
    let mut executors = app
        .config
        .queues
        .iter()
        .filter(|(_, q)| q.executor == Executor::Amqp)
        .peekable();
    if executors.peek().is_some() {
        tasks.spawn(executor::consume_replies(
            app.clone(),
            broker.clone(),
            cfg.reply_queue.clone(),
        ));
    }
    for (name, q) in executors {
        let settings = executor::Settings {
            queue: name.clone(),
            work: q
                .work_queue
                .clone()
                .unwrap_or_else(|| format!("replyd.work.{name}")),
            replies: cfg.reply_queue.clone(),
            concurrency: q.concurrency as usize,
        };
        tasks.spawn(executor::run(app.clone(), broker.clone(), settings));
    }
}

/// Without the `amqp` feature there is nothing to start (a configuration
/// with `[amqp]` is refused when it is validated).
#[cfg(not(feature = "amqp"))]
pub fn start(_: &Arc<App>, _: &mut JoinSet<()>) {}
