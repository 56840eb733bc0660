//! `[nats]`: NATS, core request-reply.
//!
//! ```toml
//! [nats]
//! url = "nats://127.0.0.1:4222"        # tls:// for TLS; nats://user:password@host for credentials
//! request_subjects = ["replyd.requests"]   # requests arrive here
//! # queue_group = "replyd"             # the nodes split each subject
//! # tenant = "default"                 # whose jobs they become
//! # queue = "report"                   # a request's job queue without x-replyd-queue
//! # dead_letter_subject = "replyd.dead"   # default: "<request subject>.dead"
//! # prefetch = 64                      # requests handled at once, per subject
//! # reply_subject = "replyd.replies"   # where workers of `executor = "nats"` queues reply
//! # reply_retry_schedule = [0, 1, 2, 5, 10, 30, 60, 300, 900, 3600]
//! ```

use serde::Deserialize;

use super::DEFAULT_SCHEDULE;
use super::Shared;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// The server: `nats://[user:password@]host[:port]` (`tls://` for TLS).
    pub url: String,
    /// Subjects whose messages are requests (no wildcards).
    pub request_subjects: Vec<String>,
    /// The queue group by which the nodes split each subject.
    pub queue_group: String,
    /// The tenant of the jobs that arrive this way.
    pub tenant: String,
    /// The job queue of a request without `x-replyd-queue`.
    pub queue: Option<String>,
    /// Where a request that cannot be accepted goes, with the reason in
    /// `x-replyd-error` (default: the request subject + `.dead`).
    pub dead_letter_subject: Option<String>,
    /// Requests handled at once, per request subject.
    pub prefetch: u16,
    /// Where the workers of `executor = "nats"` queues reply.
    pub reply_subject: String,
    /// Seconds before each attempt at a reply; after the last, the reply
    /// is dead (and can be replayed).
    pub reply_retry_schedule: Vec<f64>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            request_subjects: Vec::new(),
            queue_group: "replyd".into(),
            tenant: "default".into(),
            queue: None,
            dead_letter_subject: None,
            prefetch: 64,
            reply_subject: "replyd.replies".into(),
            reply_retry_schedule: DEFAULT_SCHEDULE.to_vec(),
        }
    }
}

/// A subject replyd publishes or subscribes to: dot-separated tokens, none
/// empty, no wildcards (`*`, `>`), no whitespace.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 4096
        && s.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && !t.contains(|c: char| c.is_whitespace())
        })
        && !s.contains(['*', '>'])
}

impl NatsConfig {
    /// Checks the section; `queues` are the configured job queues.
    pub fn validate(&self, queues: &[&str]) -> Result<(), String> {
        let shared = Shared {
            section: "nats",
            built: cfg!(feature = "nats"),
            queue: self.queue.as_ref(),
            tenant: &self.tenant,
            prefetch: self.prefetch,
            reply_retry_schedule: &self.reply_retry_schedule,
        };
        shared.built()?;
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "nats" | "tls") && u.host_str().is_some() => {}
            _ => return Err("nats.url must be a nats:// or tls:// URL with a host".into()),
        }
        if self.queue_group.is_empty() || self.queue_group.contains(char::is_whitespace) {
            return Err("nats.queue_group must be a name without whitespace".into());
        }
        for s in self
            .request_subjects
            .iter()
            .chain(&self.dead_letter_subject)
            .chain([&self.reply_subject])
        {
            if !valid_subject(s) {
                return Err(format!(
                    "nats: subject {s:?} must be dot-separated tokens without wildcards (*, >) or spaces"
                ));
            }
        }
        shared.check(queues)
    }

    /// The dead-letter subject of requests that arrive on `source`.
    pub fn dead_letter_of(&self, source: &str) -> String {
        self.dead_letter_subject
            .clone()
            .unwrap_or_else(|| format!("{source}.dead"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_replyd_uses_are_names_not_wildcards() {
        for ok in ["replyd.requests", "a", "reports.v1.in", "_INBOX.abc"] {
            assert!(valid_subject(ok), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.*.b", "a.>", "a b", "a.b*"] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }

    #[cfg(feature = "nats")]
    #[test]
    fn a_bad_section_says_what_is_wrong() {
        let ok = NatsConfig {
            request_subjects: vec!["replyd.requests".into()],
            queue: Some("report".into()),
            ..NatsConfig::default()
        };
        assert_eq!(ok.validate(&["report"]), Ok(()));
        type Case = (fn(&mut NatsConfig), &'static str);
        let cases: &[Case] = &[
            (|c| c.url = "amqp://127.0.0.1".into(), "nats.url"),
            (|c| c.queue_group = String::new(), "nats.queue_group"),
            (|c| c.request_subjects = vec!["in.>".into()], "in.>"),
            (|c| c.reply_subject = "a b".into(), "a b"),
            (|c| c.queue = Some("nope".into()), "no queue named"),
            (|c| c.prefetch = 0, "nats.prefetch"),
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
