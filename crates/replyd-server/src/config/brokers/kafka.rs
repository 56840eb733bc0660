//! `[kafka]`: Apache Kafka, request-reply as Spring's
//! `ReplyingKafkaTemplate` does it (and with plain headers for others).
//!
//! ```toml
//! [kafka]
//! brokers = "127.0.0.1:9092"            # bootstrap servers, comma-separated
//! request_topics = ["replyd.requests"]  # requests arrive here
//! # group = "replyd"                    # the consumer group the nodes share (replies: "<group>.replies")
//! # tenant = "default"                  # whose jobs they become
//! # queue = "report"                    # a request's job queue without x-replyd-queue
//! # dead_letter_topic = "replyd.dead"   # default: "<request topic>.dead"
//! # prefetch = 64                       # requests handled at once, per topic
//! # reply_topic = "replyd.replies"      # where workers of `executor = "kafka"` queues reply
//! # reply_retry_schedule = [0, 1, 2, 5, 10, 30, 60, 300, 900, 3600]
//!
//! # [kafka.headers]                     # the Spring names, by default
//! # correlation = "kafka_correlationId"
//! # reply_topic = "kafka_replyTopic"
//! # reply_partition = "kafka_replyPartition"
//!
//! # [kafka.properties]                  # librdkafka settings: TLS, SASL, …
//! # "security.protocol" = "SASL_SSL"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::DEFAULT_SCHEDULE;
use super::Shared;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// The bootstrap servers: `host:port`, comma-separated.
    pub brokers: String,
    /// The consumer group by which the nodes split the request topics'
    /// partitions; the reply topic's are split by a group of its own,
    /// this one + [`REPLY_GROUP_SUFFIX`] (see [`KafkaConfig::group_of`]).
    pub group: String,
    /// Topics whose records are requests.
    pub request_topics: Vec<String>,
    /// The tenant of the jobs that arrive this way.
    pub tenant: String,
    /// The job queue of a request without `x-replyd-queue`.
    pub queue: Option<String>,
    /// Where a request that cannot be accepted goes, with the reason in
    /// `x-replyd-error` (default: the request topic + `.dead`).
    pub dead_letter_topic: Option<String>,
    /// Requests handled (not yet committed) at once, per request topic.
    pub prefetch: u16,
    /// Where the workers of `executor = "kafka"` queues reply.
    pub reply_topic: String,
    /// Seconds before each attempt at a reply; after the last, the reply
    /// is dead (and can be replayed).
    pub reply_retry_schedule: Vec<f64>,
    /// The names of the request-reply headers (Spring's by default).
    pub headers: KafkaHeaders,
    /// librdkafka settings for the clients (`security.protocol`,
    /// `sasl.*`, `ssl.*`, …). What replyd's guarantees rest on (the group,
    /// commits, acks, idempotence) cannot be set here.
    pub properties: BTreeMap<String, String>,
}

/// The headers a Spring requester uses, by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaHeaders {
    /// The correlation id: 16 bytes (a UUID) or text, echoed byte for byte.
    pub correlation: String,
    /// The topic the reply goes to (UTF-8).
    pub reply_topic: String,
    /// The reply's partition (a 4-byte big-endian integer).
    pub reply_partition: String,
}

impl Default for KafkaHeaders {
    fn default() -> Self {
        KafkaHeaders {
            correlation: "kafka_correlationId".into(),
            reply_topic: "kafka_replyTopic".into(),
            reply_partition: "kafka_replyPartition".into(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group: "replyd".into(),
            request_topics: Vec::new(),
            tenant: "default".into(),
            queue: None,
            dead_letter_topic: None,
            prefetch: 64,
            reply_topic: "replyd.replies".into(),
            reply_retry_schedule: DEFAULT_SCHEDULE.to_vec(),
            headers: KafkaHeaders::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// What follows `group` in the name of the reply topic's consumer group.
pub const REPLY_GROUP_SUFFIX: &str = ".replies";

/// The librdkafka settings replyd sets itself: its delivery guarantees
/// rest on them.
pub const OWN_PROPERTIES: [&str; 9] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "isolation.level",
    "auto.offset.reset",
];

/// A topic name Kafka takes: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or
/// `..`.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KafkaConfig {
    /// Checks the section; `queues` are the configured job queues.
    pub fn validate(&self, queues: &[&str]) -> Result<(), String> {
        let shared = Shared {
            section: "kafka",
            built: cfg!(feature = "kafka"),
            queue: self.queue.as_ref(),
            tenant: &self.tenant,
            prefetch: self.prefetch,
            reply_retry_schedule: &self.reply_retry_schedule,
        };
        shared.built()?;
        let servers: Vec<&str> = self.brokers.split(',').map(str::trim).collect();
        if servers
            .iter()
            .any(|s| s.is_empty() || s.contains(char::is_whitespace) || !s.contains(':'))
        {
            return Err("kafka.brokers must list host:port, comma-separated".into());
        }
        if self.group.is_empty() || self.group.len() > 255 {
            return Err("kafka.group must be a name of 1 to 255 bytes".into());
        }
        for t in self
            .request_topics
            .iter()
            .chain(&self.dead_letter_topic)
            .chain([&self.reply_topic])
        {
            if !valid_topic(t) {
                return Err(format!(
                    "kafka: topic {t:?} must be 1 to 249 of a-z A-Z 0-9 . _ -"
                ));
            }
        }
        let h = &self.headers;
        for (key, name) in [
            ("correlation", &h.correlation),
            ("reply_topic", &h.reply_topic),
            ("reply_partition", &h.reply_partition),
        ] {
            if name.is_empty() {
                return Err(format!("kafka.headers.{key} must not be empty"));
            }
        }
        if let Some(own) = self
            .properties
            .keys()
            .find(|k| OWN_PROPERTIES.contains(&k.as_str()))
        {
            return Err(format!(
                "kafka.properties: {own:?} is replyd's to set (its guarantees rest on it)"
            ));
        }
        shared.check(queues)
    }

    /// The consumer group that reads `source`: `group` for a request topic
    /// (or any other), `group` + [`REPLY_GROUP_SUFFIX`] for the reply topic.
    /// One replyd's reply consumer and request consumer are not members of
    /// one group: a rebalance of either would take the other's partitions
    /// away too (see `brokers/kafka/client.rs`).
    pub fn group_of(&self, source: &str) -> String {
        if source == self.reply_topic && !self.request_topics.iter().any(|t| t == source) {
            format!("{}{REPLY_GROUP_SUFFIX}", self.group)
        } else {
            self.group.clone()
        }
    }

    /// The dead-letter topic of requests that arrive on `source`.
    pub fn dead_letter_of(&self, source: &str) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{source}.dead"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_what_kafka_takes() {
        for ok in ["replyd.requests", "a", "Reports_v1-in", &"t".repeat(249)] {
            assert!(valid_topic(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", &"t".repeat(250)] {
            assert!(!valid_topic(bad), "{bad:?}");
        }
    }

    /// The reply topic is read by a group of its own; the request topics
    /// (and a topic that is both) by `group`.
    #[test]
    fn the_reply_topic_has_a_group_of_its_own() {
        let mut c = KafkaConfig {
            group: "g".into(),
            request_topics: vec!["in.a".into(), "in.b".into()],
            reply_topic: "back".into(),
            ..KafkaConfig::default()
        };
        assert_eq!(c.group_of("in.a"), "g");
        assert_eq!(c.group_of("in.b"), "g");
        assert_eq!(c.group_of("back"), "g.replies");
        c.reply_topic = "in.b".into();
        assert_eq!(c.group_of("in.b"), "g");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn a_bad_section_says_what_is_wrong() {
        let ok = KafkaConfig {
            request_topics: vec!["replyd.requests".into()],
            queue: Some("report".into()),
            ..KafkaConfig::default()
        };
        assert_eq!(ok.validate(&["report"]), Ok(()));
        type Case = (fn(&mut KafkaConfig), &'static str);
        let cases: &[Case] = &[
            (|c| c.brokers = "nohost".into(), "kafka.brokers"),
            (|c| c.brokers = "a:1, ,b:2".into(), "kafka.brokers"),
            (|c| c.group = String::new(), "kafka.group"),
            (|c| c.request_topics = vec!["in/x".into()], "in/x"),
            (|c| c.reply_topic = "a b".into(), "a b"),
            (
                |c| c.headers.correlation = String::new(),
                "headers.correlation",
            ),
            (
                |c| {
                    c.properties
                        .insert("enable.auto.commit".into(), "true".into());
                },
                "enable.auto.commit",
            ),
            (|c| c.queue = Some("nope".into()), "no queue named"),
            (|c| c.prefetch = 0, "kafka.prefetch"),
            (
                |c| c.reply_retry_schedule = vec![-1.0],
                "reply_retry_schedule",
            ),
        ];
        for (spoil, says) in cases {
            let mut c = ok.clone();
            spoil(&mut c);
            let e = c.validate(&["report"]).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
