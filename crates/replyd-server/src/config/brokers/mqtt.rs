//! `[mqtt]`: an MQTT 5 broker (Mosquitto, EMQX, HiveMQ…).
//!
//! ```toml
//! [mqtt]
//! url = "mqtt://127.0.0.1:1883"      # mqtts:// for TLS; user:password@ for credentials
//! client_id = "replyd-node-a"        # unique per node, stable across its restarts
//! request_topics = ["replyd/requests"]   # requests arrive here
//! # share_group = "replyd"           # the nodes share each topic ($share/<group>/<topic>); "" = not shared
//! # tenant = "default"               # whose jobs they become
//! # queue = "report"                 # a request's job queue without x-replyd-queue
//! # dead_letter_topic = "replyd/dead"   # default: "<request topic>/dead"
//! # prefetch = 64                    # requests handled at once (MQTT's receive maximum)
//! # session_expiry = 86400           # seconds the broker keeps replyd's sessions while it is away
//! # reply_topic = "replyd/replies"   # where workers of `executor = "mqtt"` queues reply
//! # reply_retry_schedule = [0, 1, 2, 5, 10, 30, 60, 300, 900, 3600]
//! ```

use serde::Deserialize;

use super::DEFAULT_SCHEDULE;
use super::Shared;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The broker: `mqtt://[user:password@]host[:port]` (`mqtts://` for
    /// TLS with the system's roots).
    pub url: String,
    /// This node's client id. Its persistent sessions are named after it,
    /// so it must be unique per node and the same after a restart (then
    /// requests that arrived while the node was away are delivered to it).
    pub client_id: String,
    /// Topics whose messages are requests (no wildcards).
    pub request_topics: Vec<String>,
    /// The shared-subscription group by which the nodes split each topic;
    /// empty: plain subscriptions (one node alone; unlike shared ones, some
    /// brokers, Mosquitto among them, keep these across their own restart).
    pub share_group: String,
    /// The tenant of the jobs that arrive this way.
    pub tenant: String,
    /// The job queue of a request without `x-replyd-queue`.
    pub queue: Option<String>,
    /// Where a request that cannot be accepted goes, with the reason in
    /// `x-replyd-error` (default: the request topic + `/dead`).
    pub dead_letter_topic: Option<String>,
    /// Requests handled (unacknowledged) at once, per request topic.
    pub prefetch: u16,
    /// Seconds the broker keeps a session (its subscriptions and the
    /// messages owed to it) while replyd is disconnected.
    pub session_expiry: u32,
    /// Where the workers of `executor = "mqtt"` queues reply.
    pub reply_topic: String,
    /// Seconds before each attempt at a reply; after the last, the reply
    /// is dead (and can be replayed).
    pub reply_retry_schedule: Vec<f64>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "replyd".into(),
            request_topics: Vec::new(),
            share_group: "replyd".into(),
            tenant: "default".into(),
            queue: None,
            dead_letter_topic: None,
            prefetch: 64,
            session_expiry: 86_400,
            reply_topic: "replyd/replies".into(),
            reply_retry_schedule: DEFAULT_SCHEDULE.to_vec(),
        }
    }
}

/// A topic replyd publishes or subscribes to: not empty, no wildcards, no
/// `$` system prefix, no NUL, within MQTT's 65,535 bytes.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty() && t.len() <= 65_535 && !t.starts_with('$') && !t.contains(['+', '#', '\0'])
}

impl MqttConfig {
    /// Checks the section; `queues` are the configured job queues.
    pub fn validate(&self, queues: &[&str]) -> Result<(), String> {
        let shared = Shared {
            section: "mqtt",
            built: cfg!(feature = "mqtt"),
            queue: self.queue.as_ref(),
            tenant: &self.tenant,
            prefetch: self.prefetch,
            reply_retry_schedule: &self.reply_retry_schedule,
        };
        shared.built()?;
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "mqtt" | "mqtts") && u.host_str().is_some() => {}
            _ => return Err("mqtt.url must be an mqtt:// or mqtts:// URL with a host".into()),
        }
        if self.client_id.is_empty() || self.client_id.len() > 200 {
            return Err("mqtt.client_id must be 1 to 200 bytes".into());
        }
        if self.share_group.contains(['/', '+', '#']) {
            return Err("mqtt.share_group must be a name without '/', '+' or '#'".into());
        }
        for t in self
            .request_topics
            .iter()
            .chain(&self.dead_letter_topic)
            .chain([&self.reply_topic])
        {
            if !valid_topic(t) {
                return Err(format!(
                    "mqtt: topic {t:?} must be a topic name without wildcards (+, #) or a leading $"
                ));
            }
        }
        shared.check(queues)
    }

    /// The dead-letter topic of requests that arrive on `source`.
    pub fn dead_letter_of(&self, source: &str) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{source}/dead"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "mqtt")]
    #[test]
    fn a_bad_section_says_what_is_wrong() {
        let ok = MqttConfig {
            request_topics: vec!["replyd/requests".into()],
            queue: Some("report".into()),
            ..MqttConfig::default()
        };
        assert_eq!(ok.validate(&["report"]), Ok(()));
        type Case = (fn(&mut MqttConfig), &'static str);
        let cases: &[Case] = &[
            (|c| c.url = "amqp://127.0.0.1".into(), "mqtt.url"),
            (|c| c.url = "mqtt://".into(), "mqtt.url"),
            (|c| c.client_id = String::new(), "mqtt.client_id"),
            (|c| c.share_group = "a/b".into(), "mqtt.share_group"),
            (|c| c.request_topics = vec!["in/#".into()], "in/#"),
            (|c| c.reply_topic = "$SYS/x".into(), "$SYS/x"),
            (|c| c.queue = Some("nope".into()), "no queue named"),
            (|c| c.prefetch = 0, "mqtt.prefetch"),
            (|c| c.reply_retry_schedule = vec![], "reply_retry_schedule"),
            (|c| c.tenant = String::new(), "mqtt.tenant"),
        ];
        for (spoil, says) in cases {
            let mut c = ok.clone();
            spoil(&mut c);
            let e = c.validate(&["report"]).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        // Plain subscriptions are allowed.
        let plain = MqttConfig {
            share_group: String::new(),
            ..ok
        };
        assert_eq!(plain.validate(&["report"]), Ok(()));
    }

    #[test]
    fn topics_replyd_uses_are_names_not_filters() {
        for ok in ["replyd/requests", "a", "reports/v1/in"] {
            assert!(valid_topic(ok), "{ok}");
        }
        for bad in ["", "a/+/b", "a/#", "$SYS/x", "$share/g/t", "a\0b"] {
            assert!(!valid_topic(bad), "{bad:?}");
        }
    }
}
