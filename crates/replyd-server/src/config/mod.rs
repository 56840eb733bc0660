//! One typed configuration, layered: built-in defaults < `replyd.toml` <
//! `REPLYD_*` environment < command-line flags. The file layer is parsed
//! here (unknown keys are errors that name the key); the binary applies the
//! environment and flags through [`Overrides`], so this module never reads
//! the process environment itself.
//!
//! Configuration is a leaf: each section is a type of its own (one file
//! each below, brokers in `brokers/`) with its defaults and its checks, and
//! nothing here uses the runtime; the runtime reads configuration, never
//! the other way round.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod brokers;
pub mod console;
pub mod durable;
pub mod keys;
pub mod limits;
pub mod operations;
pub mod queues;
pub mod routes;
pub mod schedules;
pub mod storage;
pub mod streams;
pub mod telemetry;
pub mod webhooks;

pub use console::Console;
pub use durable::DurableStreams;
pub use keys::{ApiKey, Role};
pub use limits::{Limits, Quota, TenantLimits};
pub use operations::Operations;
pub use queues::{
    Executor, FORWARD_HEADERS, HttpTarget, QueueConfig, RESPONSE_HEADERS, UpstreamRetry,
};
pub use routes::Route;
pub use storage::Storage;
pub use streams::Streams;
pub use telemetry::Telemetry;
pub use webhooks::{TenantWebhooks, Webhooks};

/// The whole configuration of a replyd server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to listen. Loopback by default.
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` with no API keys configured.
    pub insecure: bool,
    /// The URL clients reach this server at (behind a proxy, the proxy's):
    /// the issuer of webhook tokens. `http://{listen}` when unset.
    pub public_url: Option<String>,
    pub storage: Storage,
    pub api_keys: Vec<ApiKey>,
    /// Queues by name. A `demo` queue is added unless one is configured.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Gateway mode: requests under these paths become jobs that replay
    /// them to an upstream (each route gets a queue of its own).
    pub routes: Vec<Route>,
    /// Recurring jobs by name.
    pub schedules: BTreeMap<String, schedules::ScheduleConfig>,
    pub limits: Limits,
    /// Live channels: Server-Sent Events and WebSockets.
    pub streams: Streams,
    /// The Durable Streams server.
    pub durable_streams: DurableStreams,
    /// Webhook delivery.
    pub webhooks: Webhooks,
    /// Dead letters and failing endpoints: thresholds, the operational
    /// webhook.
    pub operations: Operations,
    /// The web console.
    pub console: Console,
    /// OpenTelemetry: spans exported over OTLP.
    pub telemetry: Telemetry,
    /// RabbitMQ (AMQP 0-9-1): request queues, replies, `executor = "amqp"`.
    pub amqp: Option<brokers::amqp::AmqpConfig>,
    /// MQTT 5: request topics, replies, `executor = "mqtt"`.
    pub mqtt: Option<brokers::mqtt::MqttConfig>,
    /// NATS: request subjects, replies, `executor = "nats"`.
    pub nats: Option<brokers::nats::NatsConfig>,
    /// AWS SQS: request queues, replies, `executor = "sqs"`.
    pub sqs: Option<brokers::sqs::SqsConfig>,
    /// Apache Kafka: request topics, replies, `executor = "kafka"`.
    pub kafka: Option<brokers::kafka::KafkaConfig>,
    /// AWS SNS (on `[sqs]`'s AWS settings): request topics, SNS's HTTP
    /// push, replies, `executor = "sns"`.
    pub sns: Option<brokers::sns::SnsConfig>,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_grace: f64,
    /// Seconds between sweeps for expired leases.
    pub reaper_interval: f64,
    /// Seconds between garbage collections of expired jobs.
    pub gc_interval: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8202)),
            insecure: false,
            public_url: None,
            storage: Storage::default(),
            api_keys: Vec::new(),
            queues: BTreeMap::new(),
            routes: Vec::new(),
            schedules: BTreeMap::new(),
            limits: Limits::default(),
            streams: Streams::default(),
            durable_streams: DurableStreams::default(),
            webhooks: Webhooks::default(),
            operations: Operations::default(),
            console: Console::default(),
            telemetry: Telemetry::default(),
            amqp: None,
            mqtt: None,
            nats: None,
            sqs: None,
            kafka: None,
            sns: None,
            shutdown_grace: 10.0,
            reaper_interval: 1.0,
            gc_interval: 60.0,
        }
    }
}

/// What the environment and the command line may override.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub sqlite: Option<PathBuf>,
    pub postgres_url: Option<String>,
    pub insecure: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file (if any), then `overrides`; validated.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::from_toml(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                })?
            }
            None => Config::default(),
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Parses the file layer. The message names the offending key.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.listen {
            self.listen = v;
        }
        if let Some(v) = o.sqlite {
            self.storage.sqlite = v;
        }
        if let Some(v) = o.postgres_url {
            self.storage.postgres_url = Some(v);
        }
        if let Some(v) = o.insecure {
            self.insecure = v;
        }
    }

    /// Resolves what is derived from the keys (each gateway route's
    /// queue, the built-in `demo` queue, `http` targets), then checks every
    /// section: two steps, each section's rules with its type.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.resolve()
            .and_then(|()| self.check())
            .map_err(ConfigError::Invalid)
    }

    fn resolve(&mut self) -> Result<(), String> {
        routes::resolve(&self.routes, &mut self.queues, self.limits.max_ttl)?;
        self.queues
            .entry("demo".into())
            .or_insert_with(|| QueueConfig {
                executor: Executor::Demo,
                ..QueueConfig::default()
            });
        for (name, q) in self.queues.iter_mut() {
            q.resolve(name)?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        if let Some(u) = &self.public_url
            && !is_http_url(u)
        {
            return Err("public_url must be an http:// or https:// URL".into());
        }
        self.storage.check()?;
        keys::check(&self.api_keys)?;
        for (name, q) in &self.queues {
            q.check(name, self.limits.max_ttl)?;
            brokers::check_executor(name, q, &self.brokers())?;
        }
        let names: Vec<&str> = self.queues.keys().map(String::as_str).collect();
        for (name, s) in &self.schedules {
            s.check(name, &names)?;
        }
        if let Some(a) = &self.amqp {
            a.validate(&names)?;
        }
        if let Some(m) = &self.mqtt {
            m.validate(&names)?;
        }
        if let Some(n) = &self.nats {
            n.validate(&names)?;
        }
        if let Some(q) = &self.sqs {
            q.validate(&names)?;
        }
        if let Some(k) = &self.kafka {
            k.validate(&names)?;
        }
        if let Some(s) = &self.sns {
            s.validate(&names, self.sqs.as_ref())?;
        }
        for (what, v) in [
            ("shutdown_grace", self.shutdown_grace),
            ("reaper_interval", self.reaper_interval),
            ("gc_interval", self.gc_interval),
        ] {
            if !(v > 0.0 && v < 86_400.0) {
                return Err(format!("{what} must be a positive number of seconds"));
            }
        }
        self.limits.check()?;
        self.streams.check()?;
        self.durable_streams.check()?;
        self.operations.check()?;
        self.console.check()?;
        self.telemetry.check()?;
        if self.operations.webhook_url.is_some() && self.webhooks.secret.is_none() {
            return Err(
                "operations.webhook_url needs webhooks.secret (it signs like every webhook)".into(),
            );
        }
        self.webhooks.check()
    }

    /// The broker sections present.
    fn brokers(&self) -> brokers::Present {
        brokers::Present {
            amqp: self.amqp.is_some(),
            mqtt: self.mqtt.is_some(),
            nats: self.nats.is_some(),
            sqs: self.sqs.is_some(),
            kafka: self.kafka.is_some(),
            sns: self.sns.is_some(),
        }
    }

    /// The route that takes a request for `method` at `path`: the longest
    /// matching prefix.
    pub fn route_for(&self, method: &str, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.matches(method, path))
            .max_by_key(|r| r.path.len())
    }

    /// The URL clients reach this server at, without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    /// The `iss` of webhook tokens.
    pub fn webhook_issuer(&self) -> String {
        self.webhooks
            .jwt_issuer
            .clone()
            .unwrap_or_else(|| self.public_url())
    }

    /// Whether the server runs without authentication.
    pub fn is_open(&self) -> bool {
        self.api_keys.is_empty()
    }
}

/// Seconds as a `Duration`, for values `validate` has checked.
pub fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(Duration::ZERO)
}

fn is_http_url(u: &str) -> bool {
    url::Url::parse(u)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

pub fn valid_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_keys_parse() {
        let c = Config::from_toml(
            r#"
            listen = "127.0.0.1:9000"
            insecure = false
            [storage]
            sqlite = "/tmp/x.db"
            [[api_keys]]
            key = "k-acme-client"
            tenant = "acme"
            role = "client"
            [queues.report]
            executor = "pull"
            max_attempts = 3
            timeout = 60
            ttl = 86400
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.api_keys[0].role, Role::Client);
        assert_eq!(c.queues["report"].timeout, 60.0);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("lisen = \"x\"").unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::from_toml("[queues.a]\nexecutr = \"pull\"").unwrap_err();
        assert!(e.contains("executr"), "{e}");
    }

    #[test]
    fn overrides_win_and_demo_is_added() {
        let mut c = Config::from_toml("listen = \"127.0.0.1:1\"").unwrap();
        c.apply(Overrides {
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Overrides::default()
        });
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.queues["demo"].executor, Executor::Demo);
    }

    /// A broker section this replyd was built without is refused, saying
    /// which feature to build with; with the feature it is taken.
    #[test]
    fn a_broker_section_needs_its_feature() {
        for (section, built) in [
            ("amqp", cfg!(feature = "amqp")),
            ("mqtt", cfg!(feature = "mqtt")),
            ("nats", cfg!(feature = "nats")),
            ("sqs", cfg!(feature = "sqs")),
            ("kafka", cfg!(feature = "kafka")),
            ("sns", cfg!(feature = "sns")),
        ] {
            // SNS takes its AWS settings from [sqs].
            let with = if section == "sns" { "[sqs]\n" } else { "" };
            let mut c = Config::from_toml(&format!("{with}[{section}]")).unwrap();
            match c.validate() {
                Ok(()) => assert!(built, "{section} taken without its feature"),
                Err(e) => {
                    assert!(!built, "{section}: {e}");
                    assert!(
                        e.to_string().contains(&format!("--features {section}")),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn validation_names_the_problem() {
        for (toml, needle) in [
            ("[queues.a]\nmax_attempts = 0", "max_attempts"),
            ("[queues.\"a b\"]", "queue name"),
            (
                "[[api_keys]]\nkey = \"short\"\ntenant = \"t\"\nrole = \"client\"",
                "shorter",
            ),
            (
                "[[api_keys]]\nkey = \"long-enough\"\ntenant = \"*\"\nrole = \"client\"",
                "tenant \"*\"",
            ),
            ("[streams]\nbuffer = 0", "streams.buffer"),
            (
                "[durable_streams]\nlong_poll = 0",
                "durable_streams.long_poll",
            ),
            (
                "[durable_streams]\nmax_append = 10",
                "durable_streams.max_append",
            ),
            ("[limits]\nappend_rate = -1", "append_rate"),
            (
                "[queues.q]\nexecutor = \"exec\"\ncommand = [\"true\"]\nstream_output = \"text\"",
                "queues.q.stream_output",
            ),
            (
                "[queues.q]\nexecutor = \"pull\"\nstream_output = \"text/plain\"",
                "queues.q.stream_output",
            ),
            ("[streams]\nkeepalive = -1", "streams.keepalive"),
            (
                "[streams]\nmax_subscriptions = 0",
                "streams.max_subscriptions",
            ),
            ("[limits]\nheader_timeout = 0", "limits.header_timeout"),
            ("[webhooks]\nsecret = \"hunter2\"", "webhooks.secret"),
            (
                "[webhooks.tenants.a]\nsecret = \"whsec_!!\"",
                "webhooks.secret",
            ),
            (
                "[webhooks]\nsigning_keys = [\"whsk_x\"]",
                "webhooks.signing_keys",
            ),
            (
                "[webhooks]\nallow_networks = [\"10.0.0.0/33\"]",
                "allow_networks",
            ),
            ("[webhooks]\nretry_schedule = []", "retry_schedule"),
            ("[webhooks]\nretry_schedule = [-1]", "retry_schedule"),
            ("[webhooks]\ntimeout = 0", "webhooks.timeout"),
            ("[webhooks]\nper_endpoint = 0", "per_endpoint"),
            ("[webhooks]\nproxy = \"socks://x\"", "webhooks.proxy"),
            (
                "[queues.a]\nexecutor = \"mqtt\"",
                "executor \"mqtt\" needs an [mqtt] section",
            ),
            (
                "[queues.a]\nwork_queue = \"w\"",
                "work_queue is for the broker executors",
            ),
            (
                "[queues.a]\nexecutor = \"mqtt\"\nwork_queue = \"w/#\"\n[mqtt]\nrequest_topics = []",
                "work_queue must be an MQTT topic",
            ),
        ] {
            let mut c = Config::from_toml(toml).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{toml}: {e}");
        }
    }
}
