//! MQTT 5: the `[mqtt]` section, behind the cargo feature `mqtt`.
//! its section is `config::brokers::mqtt`, `client.rs` the [`Broker`] on rumqttc; here
//! the broker's tasks start: a consumer per request topic, the reply
//! dispatcher, and the executors of `executor = "mqtt"` queues.
//!
//! [`Broker`]: crate::brokers::Broker

#[cfg(feature = "mqtt")]
pub mod client;

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::app::App;

/// Starts the broker's tasks, if `[mqtt]` is configured.
#[cfg(feature = "mqtt")]
pub fn start(app: &Arc<App>, tasks: &mut JoinSet<()>) {
    use crate::brokers::{Broker, Setup, request_sources, run};
    use crate::config::Executor;

    let Some(cfg) = &app.config.mqtt else {
        return;
    };
    let broker: Arc<dyn Broker> = match client::MqttBroker::new(cfg) {
        Ok(b) => Arc::new(b),
        // `validate` parsed the URL already.
        Err(e) => {
            tracing::error!(broker = "mqtt", error = %e, "cannot start");
            return;
        }
    };
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
        // As many as the publishing connection has in flight (client.rs).
        concurrency: 64,
        reply_schedule: cfg.reply_retry_schedule.clone(),
        reply_source: cfg.reply_topic.clone(),
        executor: Executor::Mqtt,
        default_work: |queue| format!("replyd/work/{queue}"),
    };
    run(app, tasks, setup);
}

/// Without the `mqtt` feature there is nothing to start (a configuration
/// with `[mqtt]` is refused when it is validated).
#[cfg(not(feature = "mqtt"))]
pub fn start(_: &Arc<App>, _: &mut JoinSet<()>) {}
