//! `[queues.NAME]`: each job queue and who works it (its executor).

use serde::Deserialize;

use super::{is_http_url, valid_queue_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
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
    /// Published to workers over Kafka (`[kafka]`); their replies complete
    /// the jobs.
    Kafka,
    /// Published to an AWS SNS topic (`[sns]`) for workers that subscribe
    /// through SQS, HTTP or Lambda; their replies complete the jobs.
    Sns,
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

/// The most a priority level may be worth (a hundred years: strict).
pub const PRIORITY_STEP_MAX: f64 = 100.0 * 365.0 * 86_400.0;

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
    /// `replyd.work.<queue>`; `kafka`: a topic, default
    /// `replyd.work.<queue>`).
    pub work_queue: Option<String>,
    /// `executor = "exec"`: the program and its arguments.
    pub command: Option<Vec<String>>,
    /// `executor = "exec"`: stream the command's stdout, as it comes, to
    /// the job's output (a Durable Stream) with this content type.
    pub stream_output: Option<String>,
    /// `executor = "http"`: the URL each job's input is POSTed to.
    pub url: Option<String>,
    /// `executor = "http"`: whether a failed attempt is tried again
    /// (default `idempotent`: a POST is not).
    pub retry: Option<UpstreamRetry>,
    /// Seconds of waiting one level of priority is worth: a job of
    /// priority p is leased before the jobs that came in less than
    /// p × this before it (and after those that came earlier, so that none
    /// waits forever). A large value makes priorities strict.
    pub priority_step: f64,
    /// Jobs of the queue running at once, across every node and worker
    /// (and every executor: pull workers, brokers, in-process).
    pub max_running: Option<u32>,
    /// Jobs of the queue started per second, per minute or per hour across
    /// every node (`"100/s"`, `"30/min"`, `"500/h"`): a token bucket.
    pub rate: Option<String>,
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
            stream_output: None,
            url: None,
            retry: None,
            priority_step: 60.0,
            max_running: None,
            rate: None,
            http: None,
        }
    }
}

/// A rate as `"N/s"`, `"N/min"` or `"N/h"`: jobs per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (n, per) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: write it as N/s, N/min or N/h"))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {n:?} is not a number"))?;
    let secs = match per.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("{text:?}: per {other:?}? Use s, min or h")),
    };
    let per_sec = n / secs;
    if !(per_sec.is_finite() && per_sec > 0.0 && per_sec <= 1e7) {
        return Err(format!(
            "{text:?}: must be more than 0 and at most 10,000,000/s"
        ));
    }
    Ok(per_sec)
}

impl QueueConfig {
    /// What the store enforces at each lease of the queue.
    pub fn limits(&self) -> replyd_core::store::QueueLimits {
        replyd_core::store::QueueLimits {
            max_running: self.max_running,
            rate: self
                .rate
                .as_deref()
                .and_then(|r| parse_rate(r).ok())
                .map(replyd_core::store::Rate::per_second),
        }
    }

    /// Derives what the executor needs from the keys (an `http` queue's
    /// target).
    pub fn resolve(&mut self, name: &str) -> Result<(), String> {
        match (&self.url, self.executor) {
            (Some(url), Executor::Http) => {
                if !is_http_url(url) {
                    return Err(format!(
                        "queues.{name}.url must be an http:// or https:// URL"
                    ));
                }
                let retry = self.retry.unwrap_or(UpstreamRetry::Idempotent);
                self.http.get_or_insert_with(|| HttpTarget {
                    url: url.clone(),
                    gateway: false,
                    retry,
                    forward_headers: Vec::new(),
                    response_headers: RESPONSE_HEADERS.iter().map(|h| h.to_string()).collect(),
                });
                Ok(())
            }
            (None, Executor::Http) => Err(format!("queues.{name}: executor \"http\" needs a url")),
            (Some(_), _) => Err(format!("queues.{name}.url is for executor \"http\" only")),
            (None, _) if self.retry.is_some() => {
                Err(format!("queues.{name}.retry is for executor \"http\" only"))
            }
            (None, _) => Ok(()),
        }
    }

    /// Checks the queue's own keys (`max_ttl`: the longest a job is kept).
    pub fn check(&self, name: &str, max_ttl: f64) -> Result<(), String> {
        if !valid_queue_name(name) {
            return Err(format!(
                "queue name {name:?}: use 1-64 letters, digits, '.', '_' or '-'"
            ));
        }
        if self.max_attempts == 0 {
            return Err(format!("queues.{name}.max_attempts must be at least 1"));
        }
        if !(self.timeout > 0.0 && self.timeout <= 7.0 * 86_400.0) {
            return Err(format!(
                "queues.{name}.timeout must be in (0, 604800] seconds"
            ));
        }
        if !(self.ttl >= 0.0 && self.ttl <= max_ttl) {
            return Err(format!(
                "queues.{name}.ttl must be in [0, limits.max_ttl] seconds"
            ));
        }
        if self.concurrency == 0 {
            return Err(format!("queues.{name}.concurrency must be at least 1"));
        }
        if self.max_running == Some(0) {
            return Err(format!(
                "queues.{name}.max_running must be at least 1 (pause a queue to run none)"
            ));
        }
        if let Some(r) = &self.rate {
            parse_rate(r).map_err(|e| format!("queues.{name}.rate: {e}"))?;
        }
        if !(self.priority_step >= 0.0 && self.priority_step <= PRIORITY_STEP_MAX) {
            return Err(format!(
                "queues.{name}.priority_step must be in [0, {PRIORITY_STEP_MAX}] seconds"
            ));
        }
        match (&self.command, self.executor) {
            (Some(c), Executor::Exec) if c.first().is_some_and(|p| !p.is_empty()) => {}
            (_, Executor::Exec) => {
                return Err(format!(
                    "queues.{name}: executor \"exec\" needs a command, e.g. command = [\"./render.sh\"]"
                ));
            }
            (Some(_), _) => {
                return Err(format!(
                    "queues.{name}.command is for executor \"exec\" only"
                ));
            }
            (None, _) => {}
        }
        match (&self.stream_output, self.executor) {
            (Some(ct), Executor::Exec) if ct.contains('/') && ct.len() <= 255 => {}
            (Some(_), Executor::Exec) => {
                return Err(format!(
                    "queues.{name}.stream_output must be a content type, e.g. \"text/plain\""
                ));
            }
            (Some(_), _) => {
                return Err(format!(
                    "queues.{name}.stream_output is for executor \"exec\" only"
                ));
            }
            (None, _) => {}
        }
        if self.work_queue.is_some() && !self.executor.is_broker() {
            return Err(format!(
                "queues.{name}.work_queue is for the broker executors (\"amqp\", \"kafka\", \"mqtt\", \"nats\", \"sqs\", \"sns\") only"
            ));
        }
        if self
            .work_queue
            .as_ref()
            .is_some_and(|w| w.is_empty() || w.len() > 255)
        {
            return Err(format!("queues.{name}.work_queue must be 1 to 255 bytes"));
        }
        Ok(())
    }
}

impl Executor {
    /// The executors that hand jobs to workers over a message broker.
    pub fn is_broker(self) -> bool {
        matches!(
            self,
            Executor::Amqp
                | Executor::Mqtt
                | Executor::Nats
                | Executor::Sqs
                | Executor::Kafka
                | Executor::Sns
        )
    }
}
