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
//! # account_id = "123456789012"            # feature `sns`: replies to this account's
//! #                                         # topics in `region` (a ReplyTo topic ARN)
//! # reply_topics = ["arn:aws:sns:us-east-1:123456789012:replies"]   # or ARN prefixes ending in ':'
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
    /// Feature `sns`: the account whose SNS topics in `region` a request's
    /// `ReplyTo` may name.
    pub account_id: Option<String>,
    /// Feature `sns`: other SNS topics a `ReplyTo` may name: topic ARNs, or
    /// prefixes of them ending in `:` (`arn:aws:sns:REGION:ACCOUNT:`). A
    /// reply to any other topic is unroutable: never an arbitrary ARN.
    pub reply_topics: Vec<String>,
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
            account_id: None,
            reply_topics: Vec::new(),
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
        if (self.account_id.is_some() || !self.reply_topics.is_empty()) && !cfg!(feature = "sns") {
            return Err(
                "sqs.account_id and sqs.reply_topics are for replies to SNS topics: build with --features sns"
                    .into(),
            );
        }
        if let Some(a) = &self.account_id
            && !(a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err("sqs.account_id must be 12 digits".into());
        }
        for t in &self.reply_topics {
            if !(t.starts_with("arn:") && t.split(':').nth(2) == Some("sns")) {
                return Err(format!(
                    "sqs.reply_topics: {t:?} is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME) or a prefix of one"
                ));
            }
        }
        shared.check(queues)
    }

    /// The dead-letter queue of requests that arrive on `source` (a name,
    /// or the last segment of a URL).
    pub fn dead_letter_of(&self, source: &str) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| dead_name(source.rsplit('/').next().unwrap_or(source)))
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

/// Whether a reply may go to the SNS topic `arn` (see
/// [`SqsConfig::reply_topics`]): one of the configured account's topics in
/// the configured region, or one the allow-list names.
pub fn reply_topic_allowed(c: &SqsConfig, arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    // arn:PARTITION:sns:REGION:ACCOUNT:NAME
    if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" || parts[5].is_empty() {
        return false;
    }
    if c.account_id.as_deref() == Some(parts[4]) && parts[3] == c.region {
        return true;
    }
    c.reply_topics
        .iter()
        .any(|t| t == arn || (t.ends_with(':') && arn.starts_with(t.as_str())))
}

/// The dead-letter destination of queue or topic `name`: `name-dead`
/// (`base-dead.fifo` for a FIFO one).
pub fn dead_name(name: &str) -> String {
    match name.strip_suffix(".fifo") {
        Some(base) => format!("{base}-dead.fifo"),
        None => format!("{name}-dead"),
    }
}

/// Whether `to` names an SNS topic (`arn:…:sns:…`) rather than a queue.
pub fn is_topic(to: &str) -> bool {
    to.starts_with("arn:") && to.split(':').nth(2) == Some("sns")
}

#[cfg(test)]
mod topic_tests {
    use super::*;

    #[test]
    fn only_the_accounts_topics_and_the_allowed_ones_are_answered() {
        let c = SqsConfig {
            account_id: Some("123456789012".into()),
            reply_topics: vec![
                "arn:aws:sns:eu-west-1:210987654321:replies".into(),
                "arn:aws:sns:us-west-2:111111111111:".into(),
            ],
            ..SqsConfig::default()
        };
        for (arn, ok) in [
            ("arn:aws:sns:us-east-1:123456789012:replies", true),
            ("arn:aws:sns:us-east-1:123456789012:replies.fifo", true),
            ("arn:aws:sns:eu-west-1:123456789012:replies", false),
            ("arn:aws:sns:us-east-1:999999999999:replies", false),
            ("arn:aws:sns:eu-west-1:210987654321:replies", true),
            ("arn:aws:sns:eu-west-1:210987654321:other", false),
            ("arn:aws:sns:us-west-2:111111111111:anything", true),
            ("arn:aws:sns:us-west-2:111111111111:", false),
            ("arn:aws:sqs:us-east-1:123456789012:replies", false),
            ("arn:aws:sns:us-east-1:123456789012:a:b", false),
        ] {
            assert_eq!(reply_topic_allowed(&c, arn), ok, "{arn}");
        }
        assert!(is_topic("arn:aws:sns:us-east-1:123456789012:replies"));
        assert!(!is_topic("https://sqs.us-east-1.amazonaws.com/1/replies"));
        assert!(!is_topic("replies"));
        let none = SqsConfig::default();
        assert!(!reply_topic_allowed(
            &none,
            "arn:aws:sns:us-east-1:123456789012:replies"
        ));
    }
}
