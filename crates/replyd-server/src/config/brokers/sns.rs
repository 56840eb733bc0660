//! `[sns]`: AWS SNS, on `[sqs]`'s AWS settings (its region, endpoint and
//! credentials: an SNS topic reaches replyd through an SQS queue, so both
//! are needed anyway).
//!
//! ```toml
//! [sqs]
//! region = "us-east-1"
//!
//! [sns]
//! request_topics = ["replyd-requests"]   # names or topic ARNs; each is read through an
//! #                                        SQS queue of the same name subscribed to it
//! # tenant = "default"                   # whose jobs they become
//! # queue = "report"                     # a request's job queue without x-replyd-queue
//! # dead_letter_topic = "replyd-dead"    # default: "<request topic>-dead"
//! # prefetch = 64                        # requests handled at once, per request topic
//! # reply_topic = "replyd-sns-replies"   # where workers of `executor = "sns"` queues reply
//! # reply_retry_schedule = [0, 1, 2, 5, 10, 30, 60, 300, 900, 3600]
//! # trusted_origins = []                 # SNS besides AWS's sns.REGION.amazonaws.com that may
//! #                                        sign push messages (LocalStack: "http://127.0.0.1:4566")
//!
//! [sns.push.orders]                      # SNS's HTTP(S) push: POST /v1/sns/orders
//! topics = ["arn:aws:sns:us-east-1:123456789012:orders"]
//! # tenant = "default"
//! # queue = "report"
//! ```
//!
//! Replies to a `ReplyTo` topic follow `[sqs]`'s `account_id` and
//! `reply_topics`, plus the topics this section names.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::sqs::SqsConfig;
use super::{DEFAULT_SCHEDULE, Shared};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnsConfig {
    /// Topics whose messages are requests: names (created if absent) or
    /// topic ARNs. Each is read through an SQS queue of the topic's name
    /// subscribed to it with raw message delivery (created, with a queue
    /// policy that lets the topic send to it).
    pub request_topics: Vec<String>,
    /// The tenant of the jobs that arrive this way.
    pub tenant: String,
    /// The job queue of a request without `x-replyd-queue`.
    pub queue: Option<String>,
    /// Where a request that cannot be accepted goes (a topic), with the
    /// reason in `x-replyd-error` (default: the request topic's name +
    /// `-dead`).
    pub dead_letter_topic: Option<String>,
    /// Requests handled at once, per request topic.
    pub prefetch: u16,
    /// Where the workers of `executor = "sns"` queues reply: a topic (and
    /// the SQS queue of its name replyd reads it through).
    pub reply_topic: String,
    /// Seconds before each attempt at a reply; after the last, the reply
    /// is dead (and can be replayed).
    pub reply_retry_schedule: Vec<f64>,
    /// Origins (`scheme://host[:port]`) besides AWS's
    /// `https://sns.REGION.amazonaws.com` whose signing certificates and
    /// subscription links push messages may name: another SNS the operator
    /// runs. Nothing else is ever fetched.
    pub trusted_origins: Vec<String>,
    /// SNS's HTTP(S) push subscriptions, by the name in their URL
    /// (`POST /v1/sns/NAME`).
    pub push: BTreeMap<String, PushConfig>,
}

impl Default for SnsConfig {
    fn default() -> Self {
        SnsConfig {
            request_topics: Vec::new(),
            tenant: "default".into(),
            queue: None,
            dead_letter_topic: None,
            prefetch: 64,
            reply_topic: "replyd-sns-replies".into(),
            reply_retry_schedule: DEFAULT_SCHEDULE.to_vec(),
            trusted_origins: Vec::new(),
            push: BTreeMap::new(),
        }
    }
}

/// One push endpoint: which topics may push to it, and whose jobs their
/// notifications become.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The topic ARNs whose messages are taken (any other: 403).
    pub topics: Vec<String>,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The job queue of a notification without `x-replyd-queue`.
    #[serde(default)]
    pub queue: Option<String>,
}

fn default_tenant() -> String {
    "default".into()
}

/// An SNS topic name: 1 to 256 letters, digits, `-` or `_` (a FIFO
/// topic's ending in `.fifo`).
pub fn valid_topic_name(t: &str) -> bool {
    let name = t.strip_suffix(".fifo").unwrap_or(t);
    !name.is_empty()
        && t.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A topic ARN's parts: (partition, region, account, name).
pub fn topic_arn(arn: &str) -> Option<(&str, &str, &str, &str)> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts[..] {
        ["arn", partition, "sns", region, account, name]
            if !partition.is_empty()
                && !region.is_empty()
                && !account.is_empty()
                && valid_topic_name(name) =>
        {
            Some((partition, region, account, name))
        }
        _ => None,
    }
}

/// A topic's name or ARN.
pub fn valid_topic(t: &str) -> bool {
    valid_topic_name(t) || topic_arn(t).is_some()
}

/// The name of a topic given by name or ARN.
pub fn topic_name(t: &str) -> &str {
    topic_arn(t).map_or(t, |(.., name)| name)
}

/// A push subscription's name: 1 to 64 letters, digits, `-` or `_`.
fn valid_push_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl SnsConfig {
    /// Checks the section; `queues` are the configured job queues, `sqs`
    /// the section whose AWS settings it uses.
    pub fn validate(&self, queues: &[&str], sqs: Option<&SqsConfig>) -> Result<(), String> {
        let shared = Shared {
            section: "sns",
            built: cfg!(feature = "sns"),
            queue: self.queue.as_ref(),
            tenant: &self.tenant,
            prefetch: self.prefetch,
            reply_retry_schedule: &self.reply_retry_schedule,
        };
        shared.built()?;
        if sqs.is_none() {
            return Err(
                "[sns] uses [sqs]'s AWS settings (region, endpoint, credentials): add an [sqs] section"
                    .into(),
            );
        }
        for t in self
            .request_topics
            .iter()
            .chain(&self.dead_letter_topic)
            .chain([&self.reply_topic])
        {
            if !valid_topic(t) {
                return Err(format!(
                    "sns: {t:?} must be a topic ARN or a name of 1 to 256 letters, digits, - or _"
                ));
            }
        }
        if self.prefetch > 1000 {
            return Err("sns.prefetch must be at most 1000".into());
        }
        for o in &self.trusted_origins {
            let ok = url::Url::parse(o).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
                    && matches!(u.path(), "" | "/")
            });
            if !ok {
                return Err(format!(
                    "sns.trusted_origins: {o:?} must be an origin, scheme://host[:port]"
                ));
            }
        }
        for (name, p) in &self.push {
            if !valid_push_name(name) {
                return Err(format!(
                    "sns.push.{name}: a name is 1 to 64 letters, digits, - or _"
                ));
            }
            if p.topics.is_empty() {
                return Err(format!(
                    "sns.push.{name}.topics must name the topic ARNs that may push to it"
                ));
            }
            if let Some(t) = p.topics.iter().find(|t| topic_arn(t).is_none()) {
                return Err(format!(
                    "sns.push.{name}.topics: {t:?} is not a topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
                ));
            }
            Shared {
                section: "sns.push",
                built: true,
                queue: p.queue.as_ref(),
                tenant: &p.tenant,
                prefetch: 1,
                reply_retry_schedule: &self.reply_retry_schedule,
            }
            .check(queues)?;
        }
        shared.check(queues)
    }

    /// The dead-letter topic of requests that arrive on `source`.
    pub fn dead_letter_of(&self, source: &str) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| super::sqs::dead_name(topic_name(source)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_by_name_or_arn() {
        for ok in [
            "replyd-requests",
            "a_b",
            "jobs.fifo",
            "arn:aws:sns:us-east-1:123456789012:orders",
            "arn:aws-cn:sns:cn-north-1:123456789012:orders.fifo",
        ] {
            assert!(valid_topic(ok), "{ok}");
        }
        for bad in [
            "",
            "a.b",
            "a b",
            &"x".repeat(257),
            ".fifo",
            "arn:aws:sqs:us-east-1:123456789012:q",
            "arn:aws:sns:us-east-1:123456789012:",
            "arn:aws:sns:us-east-1:123456789012:a:b",
            "arn:aws:sns::123456789012:a",
        ] {
            assert!(!valid_topic(bad), "{bad:?}");
        }
        assert_eq!(
            topic_name("arn:aws:sns:us-east-1:123456789012:orders"),
            "orders"
        );
        let c = SnsConfig::default();
        assert_eq!(c.dead_letter_of("in"), "in-dead");
        assert_eq!(
            c.dead_letter_of("arn:aws:sns:us-east-1:1:in.fifo"),
            "in-dead.fifo"
        );
    }

    #[test]
    fn a_push_subscription_names_its_topics_and_sns_needs_sqs() {
        let sqs = SqsConfig::default();
        let push = |topics: Vec<&str>| {
            let mut c = SnsConfig::default();
            c.push.insert(
                "orders".into(),
                PushConfig {
                    topics: topics.into_iter().map(String::from).collect(),
                    tenant: "default".into(),
                    queue: None,
                },
            );
            c
        };
        if !cfg!(feature = "sns") {
            let e = push(vec![]).validate(&[], Some(&sqs)).unwrap_err();
            assert!(e.contains("--features sns"), "{e}");
            return;
        }
        let ok = push(vec!["arn:aws:sns:us-east-1:123456789012:orders"]);
        ok.validate(&[], Some(&sqs)).unwrap();
        let e = ok.validate(&[], None).unwrap_err();
        assert!(e.contains("[sqs]"), "{e}");
        let e = push(vec![]).validate(&[], Some(&sqs)).unwrap_err();
        assert!(e.contains("topics"), "{e}");
        let e = push(vec!["orders"]).validate(&[], Some(&sqs)).unwrap_err();
        assert!(e.contains("not a topic ARN"), "{e}");
        let mut bad = SnsConfig {
            trusted_origins: vec!["http://127.0.0.1:4566/path".into()],
            ..SnsConfig::default()
        };
        assert!(bad.validate(&[], Some(&sqs)).is_err());
        bad.trusted_origins = vec!["http://127.0.0.1:4566".into()];
        bad.validate(&[], Some(&sqs)).unwrap();
    }
}
