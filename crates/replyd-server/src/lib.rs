//! The replyd server: configuration, the HTTP API, auth, executors and
//! background tasks, around a [`replyd_core::Store`].
//!
//! One entry point, [`serve`], is what `replyd serve` and the tests call.
//! [`Server::start`] opens the store and starts the background tasks;
//! [`Server::router`] is the HTTP app for in-memory tests.

pub mod app;
pub mod auth;
pub mod bells;
pub mod brokers;
pub mod cluster;
pub mod config;
pub mod error;
pub mod executors;
pub mod finisher;
pub mod http;
pub mod limits;
pub mod live;
pub mod outbound;
pub mod outbox;
pub mod outputs;
pub mod render;
pub mod scheduler;
pub mod schedules;
pub mod stats;
pub mod tails;
pub mod tasks;
pub mod telemetry;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use replyd_core::{Clock, Store};
use replyd_store::{SqliteOptions, SqliteStore};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use app::App;
pub use config::Config;

use crate::config::{Executor, secs};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0} with no API keys configured: add [[api_keys]] or pass --insecure"
    )]
    Insecure(SocketAddr),
    #[error("cannot open the store: {0}")]
    Store(#[from] replyd_core::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error("schedules: {0}")]
    Schedules(String),
}

/// A started server: the store is open, background tasks are running.
pub struct Server {
    app: Arc<App>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the configured store and starts the background tasks.
    pub async fn start(config: Config, clock: Clock) -> Result<Server, ServeError> {
        let store = open_store(&config).await?;
        Server::with_store(config, store, clock).await
    }

    /// Starts a server on a store the caller opened.
    pub async fn with_store(
        config: Config,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Result<Server, ServeError> {
        // The metrics recorder, before anything records: what is counted
        // before it is installed is lost (and a handle taken then stays
        // dead).
        http::ops::prometheus();
        let secret = store.cluster_secret().await?;
        let (telemetry, spans) = telemetry::Telemetry::configured(&config.telemetry);
        let app = Arc::new(App::new(
            config,
            store,
            clock,
            secret,
            telemetry,
            CancellationToken::new(),
        ));
        app.webhooks.jwt_keys.load(&*app.store, app.now()).await?;
        schedules::sync_config(&app)
            .await
            .map_err(ServeError::Schedules)?;
        let mut tasks = JoinSet::new();
        tasks.spawn(app.webhooks.jwt_keys.clone().refresh(
            app.store.clone(),
            app.clock.clone(),
            app.shutdown.clone(),
        ));
        tasks.spawn(
            app.hub
                .clone()
                .run(app.store.subscribe(), app.shutdown.clone()),
        );
        tasks.spawn(tasks::reaper(app.clone()));
        tasks.spawn(tasks::promoter(app.clone()));
        tasks.spawn(tasks::stats(app.clone()));
        tasks.spawn(outbox::dispatch::run(app.outbox(), app.webhooks.clone()));
        tasks.spawn(tasks::garbage_collector(app.clone()));
        if let Some(url) = &app.config.operations.webhook_url {
            tasks.spawn(webhooks::operational::run(
                app.store.clone(),
                app.webhooks.clone(),
                url.clone(),
                app.clock.clone(),
                app.shutdown.clone(),
            ));
        }
        if let Some(streams) = app.store.streams() {
            tasks.spawn(
                app.tails
                    .clone()
                    .run(streams.stream_ticks(), app.shutdown.clone()),
            );
            tasks.spawn(tasks::stream_collector(app.clone()));
            tasks.spawn(tasks::stream_usage(app.clone()));
            tasks.spawn(
                app.outputs
                    .clone()
                    .run(app.clock.clone(), app.shutdown.clone()),
            );
        }
        #[cfg(feature = "otel")]
        if let Some(spans) = spans {
            let exporter = Arc::new(
                telemetry::otlp::Exporter::new(&app.config.telemetry)
                    .map_err(ServeError::Telemetry)?,
            );
            tasks.spawn(telemetry::otlp::run_queue(
                exporter.clone(),
                spans,
                app.shutdown.clone(),
            ));
            tasks.spawn(telemetry::otlp::run_log(
                exporter,
                app.store.clone(),
                app.clock.clone(),
                app.shutdown.clone(),
            ));
        }
        #[cfg(not(feature = "otel"))]
        drop(spans);
        brokers::start(&app, &mut tasks);
        for (name, q) in &app.config.queues {
            match q.executor {
                Executor::Demo => {
                    tasks.spawn(executors::demo::run(
                        app.clone(),
                        name.clone(),
                        q.concurrency,
                    ));
                }
                Executor::Exec => {
                    tasks.spawn(executors::exec::run(app.clone(), name.clone()));
                }
                Executor::Http => {
                    tasks.spawn(executors::http::run(app.clone(), name.clone()));
                }
                Executor::Pull
                | Executor::Amqp
                | Executor::Mqtt
                | Executor::Nats
                | Executor::Sqs
                | Executor::Kafka
                | Executor::Sns => {}
            }
        }
        Ok(Server { app, tasks })
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    pub fn router(&self) -> http::front::Api {
        http::router(self.app.clone())
    }

    /// Serves `listener` until `shutdown` resolves, then drains: stops
    /// accepting, lets in-flight requests finish within `shutdown_grace`,
    /// stops the background tasks.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = listener.local_addr()?;
        let token = self.app.shutdown.clone();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        tracing::info!("replyd listening on http://{addr}");
        let server = http::serve::serve(
            listener,
            self.router(),
            self.app.limits.clone(),
            secs(self.app.config.limits.header_timeout),
            token.clone(),
        );
        let grace = secs(self.app.config.shutdown_grace);
        tokio::select! {
            () = server => {},
            _ = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace = ?grace, "requests still running after the grace period; closing them");
            }
        }
        token.cancel();
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("background tasks did not stop in time");
        }
        tracing::info!("replyd stopped");
        Ok(())
    }
}

/// Opens (and migrates) the store the configuration names: PostgreSQL when
/// `storage.postgres_url` is set, else the SQLite file.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    #[cfg(feature = "postgres")]
    if let Some(url) = &config.storage.postgres_url {
        let options = replyd_store::PgOptions {
            max_connections: config.storage.postgres_pool_size,
            acquire_timeout: secs(config.storage.postgres_acquire_timeout),
            ..replyd_store::PgOptions::default()
        };
        let store = replyd_store::PgStore::connect(url, options).await?;
        return Ok(Arc::new(store));
    }
    let store = SqliteStore::open(&config.storage.sqlite, SqliteOptions::default()).await?;
    Ok(Arc::new(store))
}

/// Starts a server from `config` on `listener` and runs it until `shutdown`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    if config.is_open() && !config.insecure && !addr.ip().is_loopback() {
        return Err(ServeError::Insecure(addr));
    }
    // The address it is reachable at (`--listen 127.0.0.1:0` names none):
    // what `public_url` defaults to, such as the webhook JWTs' issuer.
    let mut config = config;
    config.listen = addr;
    Server::start(config, Clock::system())
        .await?
        .run(listener, shutdown)
        .await
}
