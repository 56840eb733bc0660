//! One typed configuration, layered: built-in defaults < `replyd.toml` <
//! `REPLYD_*` environment < command-line flags. The file layer is parsed
//! here (unknown keys are errors that name the key); the binary applies the
//! environment and flags through [`Overrides`], so this module never reads
//! the process environment itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration of a replyd server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to listen. Loopback by default.
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` with no API keys configured.
    pub insecure: bool,
    pub storage: Storage,
    pub api_keys: Vec<ApiKey>,
    /// Queues by name. A `demo` queue is added unless one is configured.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Gateway mode: requests under these paths become jobs that replay
    /// them to an upstream (each route gets a queue of its own).
    pub routes: Vec<Route>,
    pub limits: Limits,
    /// Live channels: Server-Sent Events and WebSockets.
    pub streams: Streams,
    /// Webhook delivery.
    pub webhooks: Webhooks,
    /// RabbitMQ (AMQP 0-9-1): request queues, replies, `executor = "amqp"`.
    pub amqp: Option<crate::brokers::amqp::config::AmqpConfig>,
    /// MQTT 5: request topics, replies, `executor = "mqtt"`.
    pub mqtt: Option<crate::brokers::mqtt::config::MqttConfig>,
    /// NATS: request subjects, replies, `executor = "nats"`.
    pub nats: Option<crate::brokers::nats::config::NatsConfig>,
    /// AWS SQS: request queues, replies, `executor = "sqs"`.
    pub sqs: Option<crate::brokers::sqs::config::SqsConfig>,
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
            storage: Storage::default(),
            api_keys: Vec::new(),
            queues: BTreeMap::new(),
            routes: Vec::new(),
            limits: Limits::default(),
            streams: Streams::default(),
            webhooks: Webhooks::default(),
            amqp: None,
            mqtt: None,
            nats: None,
            sqs: None,
            shutdown_grace: 10.0,
            reaper_interval: 1.0,
            gc_interval: 60.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// The SQLite database file.
    pub sqlite: PathBuf,
    /// PostgreSQL instead of SQLite: many nodes may share it.
    pub postgres_url: Option<String>,
    /// Connections this node keeps to PostgreSQL.
    pub postgres_pool_size: u32,
    /// Seconds a request waits for a free connection before it is answered
    /// 503 (also how quickly requests fail while the database is down).
    pub postgres_acquire_timeout: f64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            sqlite: PathBuf::from("./replyd.db"),
            postgres_url: None,
            postgres_pool_size: 32,
            postgres_acquire_timeout: 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Worker,
    Admin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The bearer token.
    pub key: String,
    /// The tenant whose jobs the key sees; `"*"` (admin and worker keys
    /// only) sees every tenant's.
    pub tenant: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// Workers lease jobs over HTTP (API.md §5).
    Pull,
    /// The built-in demo: sleeps `input.seconds` (default 3) reporting
    /// progress, then echoes the input.
    Demo,
    /// Published to workers over RabbitMQ (`[amqp]`); their replies
    /// complete the jobs.
    Amqp,
    /// Published to workers over MQTT 5 (`[mqtt]`); their replies complete
    /// the jobs.
    Mqtt,
    /// Published to workers over NATS (`[nats]`); their replies complete
    /// the jobs.
    Nats,
    /// Published to workers over AWS SQS (`[sqs]`); their replies complete
    /// the jobs.
    Sqs,
    /// A command per job, run by the server (`command`).
    Exec,
    /// An HTTP request per job to an upstream service (`url`): the job's
    /// input POSTed, the answer stored as the result.
    Http,
}

/// When a failed attempt at an upstream is tried again (a timeout, an
/// unreachable upstream, 408, 425, 429, 500, 502, 503, 504; any other
/// answer is final).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamRetry {
    /// Only requests whose method is idempotent (GET, HEAD, PUT, DELETE,
    /// OPTIONS, TRACE).
    Idempotent,
    Always,
    Never,
}

impl UpstreamRetry {
    pub fn allows(self, method: &str) -> bool {
        match self {
            UpstreamRetry::Always => true,
            UpstreamRetry::Never => false,
            UpstreamRetry::Idempotent => matches!(
                method.to_ascii_uppercase().as_str(),
                "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
            ),
        }
    }
}

/// The request headers a gateway route forwards unless told otherwise.
pub const FORWARD_HEADERS: &[&str] = &[
    "accept",
    "accept-language",
    "content-type",
    "content-language",
    "user-agent",
];

/// The upstream answer's headers kept (and replayed at `/result`) unless
/// told otherwise.
pub const RESPONSE_HEADERS: &[&str] = &[
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-type",
    "etag",
    "last-modified",
    "location",
];

/// Gateway mode: `method` requests under `path` become jobs of a queue of
/// their own, whose executor replays them to `upstream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `POST`, `GET`, …, or `*` for any.
    pub method: String,
    /// A path prefix (`/reports` takes `/reports` and `/reports/…`).
    pub path: String,
    /// The service's base URL; the request's path and query follow it.
    pub upstream: String,
    /// Seconds the upstream may take to answer.
    #[serde(default = "Route::default_timeout")]
    pub timeout: f64,
    /// The route's job queue (default: `gateway` and the path, `/` as `.`).
    #[serde(default)]
    pub queue: Option<String>,
    /// Requests in flight to the upstream at once, per node.
    #[serde(default = "Route::default_concurrency")]
    pub concurrency: u32,
    /// Attempts for a request that may be retried.
    #[serde(default = "Route::default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "Route::default_retry")]
    pub retry: UpstreamRetry,
    /// Seconds a finished job (the stored answer) is kept.
    #[serde(default = "Route::default_ttl")]
    pub ttl: f64,
    /// Request headers passed on (lower case).
    #[serde(default = "Route::default_forward")]
    pub forward_headers: Vec<String>,
    /// Answer headers kept and replayed (lower case).
    #[serde(default = "Route::default_response")]
    pub response_headers: Vec<String>,
}

impl Route {
    fn default_timeout() -> f64 {
        60.0
    }
    fn default_concurrency() -> u32 {
        16
    }
    fn default_attempts() -> u32 {
        3
    }
    fn default_retry() -> UpstreamRetry {
        UpstreamRetry::Idempotent
    }
    fn default_ttl() -> f64 {
        86_400.0
    }
    fn default_forward() -> Vec<String> {
        FORWARD_HEADERS.iter().map(|h| h.to_string()).collect()
    }
    fn default_response() -> Vec<String> {
        RESPONSE_HEADERS.iter().map(|h| h.to_string()).collect()
    }

    /// The route's job queue.
    pub fn queue_name(&self) -> String {
        self.queue.clone().unwrap_or_else(|| {
            let path: String = self
                .path
                .trim_matches('/')
                .chars()
                .map(|c| match c {
                    '/' => '.',
                    c if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' => c,
                    _ => '_',
                })
                .collect();
            let name = if path.is_empty() {
                "gateway".to_string()
            } else {
                format!("gateway.{path}")
            };
            name.chars().take(64).collect()
        })
    }

    /// Whether it takes a request for `method` at `path`.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.method == "*" || self.method.eq_ignore_ascii_case(method))
            && (path == self.path
                || self.path.ends_with('/') && path.starts_with(&self.path)
                || path
                    .strip_prefix(&self.path)
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

/// What an `http` queue's executor sends, and keeps of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTarget {
    /// The URL (an `http` queue's), or the base URL (a gateway route's).
    pub url: String,
    /// A gateway route's queue: the job is a captured request, replayed.
    pub gateway: bool,
    pub retry: UpstreamRetry,
    pub forward_headers: Vec<String>,
    pub response_headers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub executor: Executor,
    pub max_attempts: u32,
    /// Seconds one attempt may take.
    pub timeout: f64,
    /// Seconds a finished job is kept.
    pub ttl: f64,
    /// Jobs one in-process executor runs at once (demo), or has published
    /// and not yet seen answered (amqp), per node.
    pub concurrency: u32,
    /// A broker executor: where its jobs are published (`amqp`: a queue,
    /// default `replyd.work.<queue>`; `mqtt`: a topic, default
    /// `replyd/work/<queue>`; `nats`: a subject, default
    /// `replyd.work.<queue>`).
    pub work_queue: Option<String>,
    /// `executor = "exec"`: the program and its arguments.
    pub command: Option<Vec<String>>,
    /// `executor = "http"`: the URL each job's input is POSTed to.
    pub url: Option<String>,
    /// `executor = "http"`: whether a failed attempt is tried again
    /// (default `idempotent`: a POST is not).
    pub retry: Option<UpstreamRetry>,
    /// Set by `validate` for `http` queues and gateway routes.
    #[serde(skip)]
    pub http: Option<HttpTarget>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            executor: Executor::Pull,
            max_attempts: 3,
            timeout: 60.0,
            ttl: 86_400.0,
            concurrency: 16,
            work_queue: None,
            command: None,
            url: None,
            retry: None,
            http: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Bytes of a request body (a submission, a worker call).
    pub max_body: usize,
    /// Bytes of a worker's result.
    pub max_result: usize,
    /// Highest `max_attempts` a submission may ask for.
    pub max_attempts: u32,
    /// Longest `ttl` a submission may ask for, in seconds.
    pub max_ttl: f64,
    /// Seconds a client may take to send a request's headers (slowloris),
    /// and the longest a connection may stay idle between requests
    /// (HTTP/1.1 keep-alive and HTTP/2 alike).
    pub header_timeout: f64,
    /// Seconds a client may take to send a request's body, from the end of
    /// its headers (408 after that).
    pub body_timeout: f64,
    /// Connections open at once. Default: seven eighths of the process's
    /// open-file limit (which replyd raises to its hard limit and logs at
    /// start), at most 100,000; the rest is kept for the database, brokers
    /// and outbound calls. 0: no limit.
    pub max_connections: Option<usize>,
    /// Connections open at once from one client address (an IPv6 client:
    /// its /64). Default: an eighth of `max_connections`. 0: no limit
    /// (behind a reverse proxy every connection has the proxy's address).
    pub max_connections_per_ip: Option<usize>,
    /// Jobs a tenant may submit per second, on average (HTTP, WebSocket,
    /// gateway; a token bucket); 0: no limit.
    pub submit_rate: f64,
    /// Jobs a tenant may submit at once after being quiet (the bucket's
    /// size). Default: twice `submit_rate`.
    pub submit_burst: Option<f64>,
    /// Server-Sent Events streams open at once.
    pub streams: Quota,
    /// WebSocket sessions open at once.
    pub websockets: Quota,
    /// WebSocket subscriptions held at once, over all sessions.
    pub subscriptions: Quota,
    /// Requests held waiting at once: long polls (`Prefer: wait`) and
    /// lease requests that wait for work.
    pub waits: Quota,
    /// A tenant's own submission rate, in place of the above.
    pub tenants: BTreeMap<String, TenantLimits>,
}

/// How many of something may be held at once: in all, from one client
/// address, by one tenant. 0: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub total: usize,
    pub per_ip: usize,
    pub per_tenant: usize,
}

impl Quota {
    pub const fn new(total: usize, per_ip: usize, per_tenant: usize) -> Quota {
        Quota {
            total,
            per_ip,
            per_tenant,
        }
    }

    /// No limit at all.
    pub const UNLIMITED: Quota = Quota::new(0, 0, 0);
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    pub submit_rate: Option<f64>,
    pub submit_burst: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1024 * 1024,
            max_result: 10 * 1024 * 1024,
            max_attempts: 100,
            max_ttl: 30.0 * 86_400.0,
            header_timeout: 30.0,
            body_timeout: 60.0,
            max_connections: None,
            max_connections_per_ip: None,
            submit_rate: 1000.0,
            submit_burst: None,
            streams: Quota::new(10_000, 500, 5_000),
            websockets: Quota::new(10_000, 500, 5_000),
            subscriptions: Quota::new(100_000, 5_000, 50_000),
            waits: Quota::new(10_000, 1_000, 5_000),
            tenants: BTreeMap::new(),
        }
    }
}

impl Limits {
    /// No limit on what clients hold or how fast they submit (the size
    /// and time limits stay): for a load the operator trusts, such as a
    /// benchmark's.
    pub fn unbounded(self) -> Limits {
        Limits {
            max_connections: Some(0),
            max_connections_per_ip: Some(0),
            submit_rate: 0.0,
            streams: Quota::UNLIMITED,
            websockets: Quota::UNLIMITED,
            subscriptions: Quota::UNLIMITED,
            waits: Quota::UNLIMITED,
            ..self
        }
    }

    /// Connections at once, in all and per client address, given the
    /// open-file limit in force (0: no limit).
    pub fn connections(&self, nofile: u64) -> (usize, usize) {
        let total = self.max_connections.unwrap_or_else(|| {
            let usable = nofile.saturating_sub(nofile / 8).min(100_000) as usize;
            usable.max(64)
        });
        let per_ip = self
            .max_connections_per_ip
            .unwrap_or_else(|| (total / 8).max(16));
        (total, per_ip)
    }

    /// A tenant's submission bucket: (jobs per second, burst); a rate of 0
    /// is no limit.
    pub fn submit_bucket(&self, tenant: &str) -> (f64, f64) {
        let own = self.tenants.get(tenant);
        let rate = own.and_then(|t| t.submit_rate).unwrap_or(self.submit_rate);
        let burst = own
            .and_then(|t| t.submit_burst)
            .or(self.submit_burst)
            .unwrap_or(rate * 2.0);
        (rate, burst.max(1.0))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Streams {
    /// Seconds between SSE keep-alive comments on a quiet stream.
    pub keepalive: f64,
    /// Milliseconds an EventSource waits before it reconnects (`retry:`).
    pub retry_ms: u64,
    /// Events held for one connection that is not reading; past that the
    /// connection is closed as a slow consumer (it resumes from its last id).
    pub buffer: usize,
    /// Seconds between WebSocket Ping frames; a peer that answers none of
    /// two is dropped.
    pub ping_interval: f64,
    /// Seconds a write to a peer may stall before the peer is dropped.
    pub write_timeout: f64,
    /// Subscriptions one WebSocket connection may hold.
    pub max_subscriptions: usize,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            keepalive: 15.0,
            retry_ms: 1000,
            buffer: 256,
            ping_interval: 20.0,
            write_timeout: 30.0,
            max_subscriptions: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// The signing secret (`whsec_…`). Without one, submissions with a
    /// webhook are refused.
    pub secret: Option<String>,
    /// Secrets that also sign during a rotation (receivers may still know
    /// only these).
    pub previous_secrets: Vec<String>,
    /// Ed25519 keys (`whsk_…`) that add a `v1a` signature to every
    /// delivery.
    pub signing_keys: Vec<String>,
    /// Networks the SSRF guard lets through (e.g. `127.0.0.0/8` for local
    /// development). Empty by default.
    pub allow_networks: Vec<String>,
    /// Seconds before each attempt.
    pub retry_schedule: Vec<f64>,
    /// Seconds one attempt may take.
    pub timeout: f64,
    /// The longest, in seconds, a receiver's Retry-After may delay the next
    /// attempt.
    pub max_retry_after: f64,
    /// Bytes of a receiver's answer kept (in the attempt log).
    pub max_response: usize,
    /// Attempts in flight at once, over all endpoints.
    pub concurrency: usize,
    /// Attempts in flight at once to one endpoint (scheme, host, port).
    pub per_endpoint: usize,
    /// Secrets of particular tenants, in place of `secret`.
    pub tenants: BTreeMap<String, TenantWebhooks>,
    /// An HTTP(S) proxy every delivery goes through (e.g. an egress proxy
    /// that enforces its own allow-list). Proxy settings in the
    /// environment are never used.
    pub proxy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantWebhooks {
    pub secret: Option<String>,
    pub previous_secrets: Vec<String>,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            secret: None,
            previous_secrets: Vec::new(),
            signing_keys: Vec::new(),
            allow_networks: Vec::new(),
            retry_schedule: vec![0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
            timeout: 15.0,
            max_retry_after: 3600.0,
            max_response: 4096,
            concurrency: 64,
            per_endpoint: 4,
            tenants: BTreeMap::new(),
            proxy: None,
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

    /// Checks what serde cannot, and adds the built-in `demo` queue.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.storage.postgres_url.is_some() && !cfg!(feature = "postgres") {
            return bad(
                "this replyd was built without PostgreSQL: rebuild with `--features postgres`"
                    .into(),
            );
        }
        if !(1..=1000).contains(&self.storage.postgres_pool_size) {
            return bad("storage.postgres_pool_size must be between 1 and 1000".into());
        }
        if !(self.storage.postgres_acquire_timeout > 0.0
            && self.storage.postgres_acquire_timeout <= 600.0)
        {
            return bad("storage.postgres_acquire_timeout must be in (0, 600] seconds".into());
        }
        self.validate_routes()?;
        self.queues
            .entry("demo".into())
            .or_insert_with(|| QueueConfig {
                executor: Executor::Demo,
                ..QueueConfig::default()
            });
        for (name, q) in self.queues.iter_mut() {
            match (&q.url, q.executor) {
                (Some(url), Executor::Http) => {
                    if !is_http_url(url) {
                        return bad(format!(
                            "queues.{name}.url must be an http:// or https:// URL"
                        ));
                    }
                    let retry = q.retry.unwrap_or(UpstreamRetry::Idempotent);
                    q.http.get_or_insert_with(|| HttpTarget {
                        url: url.clone(),
                        gateway: false,
                        retry,
                        forward_headers: Vec::new(),
                        response_headers: Route::default_response(),
                    });
                }
                (None, Executor::Http) => {
                    return bad(format!("queues.{name}: executor \"http\" needs a url"));
                }
                (Some(_), _) => {
                    return bad(format!("queues.{name}.url is for executor \"http\" only"));
                }
                (None, _) if q.retry.is_some() => {
                    return bad(format!("queues.{name}.retry is for executor \"http\" only"));
                }
                (None, _) => {}
            }
        }
        for (name, q) in &self.queues {
            if !valid_queue_name(name) {
                return bad(format!(
                    "queue name {name:?}: use 1-64 letters, digits, '.', '_' or '-'"
                ));
            }
            if q.max_attempts == 0 {
                return bad(format!("queues.{name}.max_attempts must be at least 1"));
            }
            if !(q.timeout > 0.0 && q.timeout <= 7.0 * 86_400.0) {
                return bad(format!(
                    "queues.{name}.timeout must be in (0, 604800] seconds"
                ));
            }
            if !(q.ttl >= 0.0 && q.ttl <= self.limits.max_ttl) {
                return bad(format!(
                    "queues.{name}.ttl must be in [0, limits.max_ttl] seconds"
                ));
            }
            if q.concurrency == 0 {
                return bad(format!("queues.{name}.concurrency must be at least 1"));
            }
            if q.executor == Executor::Amqp && self.amqp.is_none() {
                return bad(format!(
                    "queues.{name}: executor \"amqp\" needs an [amqp] section"
                ));
            }
            if q.executor == Executor::Mqtt && self.mqtt.is_none() {
                return bad(format!(
                    "queues.{name}: executor \"mqtt\" needs an [mqtt] section"
                ));
            }
            if q.executor == Executor::Nats && self.nats.is_none() {
                return bad(format!(
                    "queues.{name}: executor \"nats\" needs a [nats] section"
                ));
            }
            if q.executor == Executor::Sqs && self.sqs.is_none() {
                return bad(format!(
                    "queues.{name}: executor \"sqs\" needs an [sqs] section"
                ));
            }
            if q.work_queue.is_some()
                && !matches!(
                    q.executor,
                    Executor::Amqp | Executor::Mqtt | Executor::Nats | Executor::Sqs
                )
            {
                return bad(format!(
                    "queues.{name}.work_queue is for the broker executors (\"amqp\", \"mqtt\", \"nats\", \"sqs\") only"
                ));
            }
            if q.executor == Executor::Sqs
                && q.work_queue
                    .as_deref()
                    .is_some_and(|t| !crate::brokers::sqs::config::valid_queue(t))
            {
                return bad(format!(
                    "queues.{name}.work_queue must be an SQS queue name or URL"
                ));
            }
            if q.executor == Executor::Nats
                && q.work_queue
                    .as_deref()
                    .is_some_and(|t| !crate::brokers::nats::config::valid_subject(t))
            {
                return bad(format!(
                    "queues.{name}.work_queue must be a NATS subject without wildcards"
                ));
            }
            if q.executor == Executor::Mqtt
                && q.work_queue
                    .as_deref()
                    .is_some_and(|t| !crate::brokers::mqtt::config::valid_topic(t))
            {
                return bad(format!(
                    "queues.{name}.work_queue must be an MQTT topic name without wildcards"
                ));
            }
            match (&q.command, q.executor) {
                (Some(c), Executor::Exec) if c.first().is_some_and(|p| !p.is_empty()) => {}
                (_, Executor::Exec) => {
                    return bad(format!(
                        "queues.{name}: executor \"exec\" needs a command, e.g. command = [\"./render.sh\"]"
                    ));
                }
                (Some(_), _) => {
                    return bad(format!(
                        "queues.{name}.command is for executor \"exec\" only"
                    ));
                }
                (None, _) => {}
            }
            if q.work_queue
                .as_ref()
                .is_some_and(|w| w.is_empty() || w.len() > 255)
            {
                return bad(format!("queues.{name}.work_queue must be 1 to 255 bytes"));
            }
        }
        let names: Vec<&str> = self.queues.keys().map(String::as_str).collect();
        if let Some(a) = &self.amqp {
            a.validate(&names).map_err(ConfigError::Invalid)?;
        }
        if let Some(m) = &self.mqtt {
            m.validate(&names).map_err(ConfigError::Invalid)?;
        }
        if let Some(n) = &self.nats {
            n.validate(&names).map_err(ConfigError::Invalid)?;
        }
        if let Some(q) = &self.sqs {
            q.validate(&names).map_err(ConfigError::Invalid)?;
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.api_keys {
            if k.key.len() < 8 {
                return bad(format!(
                    "api key of tenant {:?} is shorter than 8 characters",
                    k.tenant
                ));
            }
            if !seen.insert(&k.key) {
                return bad(format!("api key of tenant {:?} is listed twice", k.tenant));
            }
            if k.tenant.is_empty() {
                return bad("an api key has an empty tenant".into());
            }
            if k.tenant == "*" && k.role == Role::Client {
                return bad("a client key cannot have tenant \"*\"".into());
            }
        }
        for (what, v) in [
            ("shutdown_grace", self.shutdown_grace),
            ("reaper_interval", self.reaper_interval),
            ("gc_interval", self.gc_interval),
            ("limits.header_timeout", self.limits.header_timeout),
            ("limits.body_timeout", self.limits.body_timeout),
            ("streams.keepalive", self.streams.keepalive),
            ("streams.ping_interval", self.streams.ping_interval),
            ("streams.write_timeout", self.streams.write_timeout),
        ] {
            if !(v > 0.0 && v < 86_400.0) {
                return bad(format!("{what} must be a positive number of seconds"));
            }
        }
        let w = &self.webhooks;
        let tenant_secrets = w
            .tenants
            .values()
            .flat_map(|t| t.secret.iter().chain(&t.previous_secrets));
        for s in w
            .secret
            .iter()
            .chain(&w.previous_secrets)
            .chain(tenant_secrets)
        {
            if s.parse::<crate::webhooks::signing::Secret>().is_err() {
                return bad("webhooks.secret and webhooks.previous_secrets must be whsec_ followed by base64 of 24 to 64 bytes".into());
            }
        }
        for k in &w.signing_keys {
            if k.parse::<crate::webhooks::signing::SigningKey>().is_err() {
                return bad("webhooks.signing_keys must be whsk_ followed by base64 of a 32-byte Ed25519 seed".into());
            }
        }
        for n in &w.allow_networks {
            if n.parse::<ipnet::IpNet>().is_err() {
                return bad(format!(
                    "webhooks.allow_networks: {n:?} is not a CIDR network"
                ));
            }
        }
        if let Some(p) = &w.proxy
            && !is_http_url(p)
        {
            return bad("webhooks.proxy must be an http:// or https:// URL".into());
        }
        if w.retry_schedule.is_empty()
            || w.retry_schedule
                .iter()
                .any(|d| !(*d >= 0.0 && *d <= 7.0 * 86_400.0))
        {
            return bad(
                "webhooks.retry_schedule must list 1 or more delays of 0 to 604800 seconds".into(),
            );
        }
        if !(w.timeout > 0.0 && w.timeout <= 300.0) {
            return bad("webhooks.timeout must be in (0, 300] seconds".into());
        }
        if !(0.0..=86_400.0).contains(&w.max_retry_after) {
            return bad("webhooks.max_retry_after must be in [0, 86400] seconds".into());
        }
        if w.concurrency == 0 || w.per_endpoint == 0 || w.max_response > 1 << 20 {
            return bad("webhooks.concurrency and per_endpoint must be at least 1; max_response at most 1 MiB".into());
        }
        if !(1..=1_000_000).contains(&self.streams.buffer) {
            return bad("streams.buffer must be between 1 and 1000000 events".into());
        }
        if !(1..=100_000).contains(&self.streams.max_subscriptions) {
            return bad("streams.max_subscriptions must be between 1 and 100000".into());
        }
        if self.streams.retry_ms > 3_600_000 {
            return bad("streams.retry_ms must be at most 3600000".into());
        }
        let l = &self.limits;
        let rates = std::iter::once(("limits", l.submit_rate, l.submit_burst)).chain(
            l.tenants.values().map(|t| {
                (
                    "limits.tenants",
                    t.submit_rate.unwrap_or(0.0),
                    t.submit_burst,
                )
            }),
        );
        for (at, rate, burst) in rates {
            if !(0.0..=1e9).contains(&rate) || burst.is_some_and(|b| !(1.0..=1e9).contains(&b)) {
                return bad(format!(
                    "{at}: submit_rate must be 0 to 1e9 jobs per second and submit_burst 1 to 1e9"
                ));
            }
        }
        if self.limits.max_body < 1024 || self.limits.max_result < 1024 {
            return bad("limits.max_body and limits.max_result must be at least 1024 bytes".into());
        }
        Ok(())
    }

    /// Checks the gateway routes and gives each its queue.
    fn validate_routes(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}] ({} {})", r.method, r.path);
            let method_ok = r.method == "*"
                || (!r.method.is_empty() && r.method.bytes().all(|b| b.is_ascii_alphabetic()));
            if !method_ok {
                return bad(format!("{at}: method must be an HTTP method or \"*\""));
            }
            if !r.path.starts_with('/') || r.path.contains(['?', '#', ' ']) || r.path.len() > 512 {
                return bad(format!(
                    "{at}: path must be a path prefix such as \"/reports\""
                ));
            }
            let reserved = ["/v1", "/healthz", "/readyz", "/metrics", "/openapi.json"];
            if r.path == "/"
                || reserved
                    .iter()
                    .any(|p| r.path == *p || r.path.starts_with(&format!("{p}/")))
            {
                return bad(format!(
                    "{at}: the path is replyd's own (/, /v1, /healthz, /readyz, /metrics, /openapi.json)"
                ));
            }
            if !is_http_url(&r.upstream) || r.upstream.contains(['?', '#']) {
                return bad(format!(
                    "{at}: upstream must be an http:// or https:// base URL"
                ));
            }
            if !(r.timeout > 0.0 && r.timeout <= 7.0 * 86_400.0) {
                return bad(format!("{at}: timeout must be in (0, 604800] seconds"));
            }
            if r.concurrency == 0 || r.max_attempts == 0 {
                return bad(format!(
                    "{at}: concurrency and max_attempts must be at least 1"
                ));
            }
            if !(r.ttl >= 0.0 && r.ttl <= self.limits.max_ttl) {
                return bad(format!("{at}: ttl must be in [0, limits.max_ttl] seconds"));
            }
            if !seen.insert((r.method.to_ascii_uppercase(), r.path.clone())) {
                return bad(format!("{at}: listed twice"));
            }
            let queue = r.queue_name();
            let base = r.upstream.trim_end_matches('/').to_string();
            let made_before = self
                .queues
                .get(&queue)
                .is_some_and(|q| q.http.as_ref().is_some_and(|h| h.gateway && h.url == base));
            if made_before {
                continue;
            }
            if self.queues.contains_key(&queue) {
                return bad(format!(
                    "{at}: its queue {queue:?} is configured already (name another with `queue`)"
                ));
            }
            let lower = |hs: &[String]| hs.iter().map(|h| h.to_ascii_lowercase()).collect();
            self.queues.insert(
                queue,
                QueueConfig {
                    executor: Executor::Http,
                    max_attempts: if r.retry == UpstreamRetry::Never {
                        1
                    } else {
                        r.max_attempts
                    },
                    timeout: r.timeout,
                    ttl: r.ttl,
                    concurrency: r.concurrency,
                    url: Some(r.upstream.clone()),
                    retry: Some(r.retry),
                    http: Some(HttpTarget {
                        url: base,
                        gateway: true,
                        retry: r.retry,
                        forward_headers: lower(&r.forward_headers),
                        response_headers: lower(&r.response_headers),
                    }),
                    ..QueueConfig::default()
                },
            );
        }
        Ok(())
    }

    /// The route that takes a request for `method` at `path`: the longest
    /// matching prefix.
    pub fn route_for(&self, method: &str, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.matches(method, path))
            .max_by_key(|r| r.path.len())
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
        ] {
            let mut c = Config::from_toml(&format!("[{section}]")).unwrap();
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
