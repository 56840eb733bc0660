//! The broker sections (`[amqp]`, `[kafka]`, `[mqtt]`, `[nats]`, `[sqs]`, `[sns]`), one file
//! each, and what they share: the keys every broker section has
//! ([`Shared`], checked in one place), the reply retry schedule's default,
//! and the rules of a queue whose executor is a broker.

pub mod amqp;
pub mod kafka;
pub mod mqtt;
pub mod nats;
pub mod sns;
pub mod sqs;

use super::queues::{Executor, QueueConfig};

/// A broker reply channel's retry schedule (seconds before each attempt):
/// quick at first, for a broker that blinked, then patient, about 1.4 hours
/// in all before the reply is dead-lettered (and can be replayed).
pub const DEFAULT_SCHEDULE: [f64; 10] =
    [0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// What every broker's section has, checked alike (`section` names it in
/// the messages).
pub struct Shared<'a> {
    pub section: &'static str,
    /// Whether this replyd was built with the broker's cargo feature (of
    /// the section's name).
    pub built: bool,
    pub queue: Option<&'a String>,
    pub tenant: &'a str,
    pub prefetch: u16,
    pub reply_retry_schedule: &'a [f64],
}

impl Shared<'_> {
    /// A section of a broker this replyd was built without is refused at
    /// once, saying how to get it.
    pub fn built(&self) -> Result<(), String> {
        if self.built {
            return Ok(());
        }
        let s = self.section;
        Err(format!(
            "this replyd was built without {}: rebuild with `--features {s}`",
            s.to_uppercase()
        ))
    }

    /// The shared keys; `queues` are the configured job queues.
    pub fn check(&self, queues: &[&str]) -> Result<(), String> {
        let s = self.section;
        if let Some(q) = self.queue
            && !queues.contains(&q.as_str())
        {
            return Err(format!("{s}.queue: no queue named {q:?} is configured"));
        }
        if self.tenant.is_empty() {
            return Err(format!("{s}.tenant must not be empty"));
        }
        if self.prefetch == 0 {
            return Err(format!("{s}.prefetch must be at least 1"));
        }
        if self.reply_retry_schedule.is_empty()
            || self
                .reply_retry_schedule
                .iter()
                .any(|d| !(*d >= 0.0 && *d <= 7.0 * 86_400.0))
        {
            return Err(format!(
                "{s}.reply_retry_schedule must list 1 or more delays of 0 to 604800 seconds"
            ));
        }
        Ok(())
    }
}

/// Which broker sections a configuration has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Present {
    pub amqp: bool,
    pub mqtt: bool,
    pub nats: bool,
    pub sqs: bool,
    pub kafka: bool,
    pub sns: bool,
}

/// A queue whose executor is a broker needs that broker's section, and a
/// `work_queue` its broker can name.
pub fn check_executor(name: &str, q: &QueueConfig, present: &Present) -> Result<(), String> {
    let (section, here, article) = match q.executor {
        Executor::Amqp => ("amqp", present.amqp, "an"),
        Executor::Mqtt => ("mqtt", present.mqtt, "an"),
        Executor::Nats => ("nats", present.nats, "a"),
        Executor::Sqs => ("sqs", present.sqs, "an"),
        Executor::Kafka => ("kafka", present.kafka, "a"),
        Executor::Sns => ("sns", present.sns, "an"),
        _ => return Ok(()),
    };
    if !here {
        return Err(format!(
            "queues.{name}: executor \"{section}\" needs {article} [{section}] section"
        ));
    }
    let Some(w) = q.work_queue.as_deref() else {
        return Ok(());
    };
    let (ok, what) = match q.executor {
        Executor::Sqs => (sqs::valid_queue(w), "an SQS queue name or URL"),
        Executor::Nats => (nats::valid_subject(w), "a NATS subject without wildcards"),
        Executor::Mqtt => (mqtt::valid_topic(w), "an MQTT topic name without wildcards"),
        Executor::Kafka => (kafka::valid_topic(w), "a Kafka topic name"),
        Executor::Sns => (sns::valid_topic(w), "an SNS topic name or ARN"),
        _ => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("queues.{name}.work_queue must be {what}"))
    }
}
