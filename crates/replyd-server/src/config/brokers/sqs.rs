//! `[sqs]`: AWS SQS.
//!
//! ```toml
//! [sqs]
//! region = "us-east-1"
//! request_queues = ["replyd-requests"]    # names or queue URLs
//! # endpoint_url = "http://127.0.0.1:5000"  # another SQS (ElasticMQ, LocalStack, moto)
//! # access_key_id = "…"                     # with secret_access_key; else AWS's own chain
//! # secret_access_key = "…"                 # (environment, profile, instance role…)
//! # tenant = "default"                      # whose jobs they become
//! # queue = "report"                        # a request's job queue without x-replyd-queue
//! # dead_letter_queue = "replyd-dead"       # default: "<request queue>-dead"
//! # prefetch = 64                           # requests handled at once, per request queue
//! # visibility_timeout = 60                 # seconds a received message is hidden from others
//! # reply_queue = "replyd-replies"          # where workers of `executor = "sqs"` queues reply
//! # reply_retry_schedule = [0, 1, 2, 5, 10, 30, 60, 300, 900, 3600]
//! ```

use serde::Deserialize;

use super::DEFAULT_SCHEDULE;
use super::Shared;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsConfig {
    pub region: String,
    /// Another SQS endpoint than AWS's (the operator's own).
    pub endpoint_url: Option<String>,
    /// Static credentials; without them, AWS's default credential chain.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Queues whose messages are requests: names (created if absent) or
    /// queue URLs.
    pub request_queues: Vec<String>,
    /// The tenant of the jobs that arrive this way.
    pub tenant: String,
    /// The job queue of a request without `x-replyd-queue`.
    pub queue: Option<String>,
    /// Where a request that cannot be accepted goes, with the reason in
    /// `x-replyd-error` (default: the request queue's name + `-dead`).
    pub dead_letter_queue: Option<String>,
    /// Requests handled (received and not yet deleted) at once, per queue.
    pub prefetch: u16,
    /// Seconds a received message stays hidden from other consumers; one
    /// not deleted by then is received again (and found a duplicate).
    pub visibility_timeout: u32,
    /// Where the workers of `executor = "sqs"` queues reply.
    pub reply_queue: String,
    /// Seconds before each attempt at a reply; after the last, the reply
    /// is dead (and can be replayed).
    pub reply_retry_schedule: Vec<f64>,
}

impl std::fmt::Debug for SqsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No secret.
        f.debug_struct("SqsConfig")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("request_queues", &self.request_queues)
            .finish_non_exhaustive()
    }
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig {
            region: "us-east-1".into(),
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            request_queues: Vec::new(),
            tenant: "default".into(),
            queue: None,
            dead_letter_queue: None,
            prefetch: 64,
            visibility_timeout: 60,
            reply_queue: "replyd-replies".into(),
            reply_retry_schedule: DEFAULT_SCHEDULE.to_vec(),
        }
    }
}

/// An SQS queue name (1 to 80 of `A-Z a-z 0-9 - _`, a FIFO queue's ending
/// in `.fifo`) or a queue URL.
pub fn valid_queue(q: &str) -> bool {
    if q.starts_with("https://") || q.starts_with("http://") {
        return url::Url::parse(q).is_ok();
    }
    let name = q.strip_suffix(".fifo").unwrap_or(q);
    !name.is_empty()
        && q.len() <= 80
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl SqsConfig {
    /// Checks the section; `queues` are the configured job queues.
    pub fn validate(&self, queues: &[&str]) -> Result<(), String> {
        let shared = Shared {
            section: "sqs",
            built: cfg!(feature = "sqs"),
            queue: self.queue.as_ref(),
            tenant: &self.tenant,
            prefetch: self.prefetch,
            reply_retry_schedule: &self.reply_retry_schedule,
        };
        shared.built()?;
        if self.region.is_empty() {
            return Err("sqs.region must not be empty".into());
        }
        if let Some(e) = &self.endpoint_url
            && !matches!(url::Url::parse(e), Ok(u) if matches!(u.scheme(), "http" | "https"))
        {
            return Err("sqs.endpoint_url must be an http:// or https:// URL".into());
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err("sqs.access_key_id and sqs.secret_access_key go together".into());
        }
        for q in self
            .request_queues
            .iter()
            .chain(&self.dead_letter_queue)
            .chain([&self.reply_queue])
        {
            if !valid_queue(q) {
                return Err(format!(
                    "sqs: {q:?} must be a queue URL or a name of 1 to 80 letters, digits, - or _"
                ));
            }
        }
        if !(1..=43_200).contains(&self.visibility_timeout) {
            return Err("sqs.visibility_timeout must be 1 to 43200 seconds".into());
        }
        if self.prefetch > 10 * 100 {
            return Err("sqs.prefetch must be at most 1000".into());
        }
        shared.check(queues)
    }

    /// The dead-letter queue of requests that arrive on `source` (a name,
    /// or the last segment of a URL).
    pub fn dead_letter_of(&self, source: &str) -> String {
        self.dead_letter_queue.clone().unwrap_or_else(|| {
            let name = source.rsplit('/').next().unwrap_or(source);
            match name.strip_suffix(".fifo") {
                Some(base) => format!("{base}-dead.fifo"),
                None => format!("{name}-dead"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_and_urls() {
        for ok in [
            "replyd-requests",
            "a_b",
            "jobs.fifo",
            "http://127.0.0.1:5000/123456789012/replyd",
        ] {
            assert!(valid_queue(ok), "{ok}");
        }
        for bad in ["", "a.b", "a b", &"x".repeat(81), ".fifo"] {
            assert!(!valid_queue(bad), "{bad:?}");
        }
        let c = SqsConfig::default();
        assert_eq!(c.dead_letter_of("in"), "in-dead");
        assert_eq!(c.dead_letter_of("https://sqs.test/1/in"), "in-dead");
        assert_eq!(c.dead_letter_of("in.fifo"), "in-dead.fifo");
    }
}
