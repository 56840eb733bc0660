//! `[schedules.NAME]`: recurring jobs defined in the file (see
//! `crate::schedules`), kept in the store as the file says at each start.
//!
//! ```toml
//! [schedules.nightly-report]
//! cron = "0 2 * * *"            # or six fields, seconds first; @daily…
//! timezone = "Europe/Paris"     # IANA; default UTC
//! tenant = "acme"               # whose jobs (default: the open tenant's)
//! job = { queue = "reports", input = { kind = "nightly" }, priority = 3 }
//! ```

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use replyd_proto as proto;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub cron: String,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default = "open_tenant")]
    pub tenant: String,
    pub job: proto::SubmitRequest,
}

fn open_tenant() -> String {
    replyd_core::Tenant::open().0
}

impl ScheduleConfig {
    /// The schedule as the API would take it.
    pub fn request(&self) -> proto::ScheduleRequest {
        proto::ScheduleRequest {
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            job: self.job.clone(),
        }
    }

    /// Checks what can be checked before the server runs.
    pub fn check(&self, name: &str, queues: &[&str]) -> Result<(), String> {
        if !valid_name(name) {
            return Err(format!(
                "schedule name {name:?}: use 1-128 letters, digits, '.', '_' or '-'"
            ));
        }
        Ticks::parse(&self.cron, self.timezone.as_deref())
            .map_err(|e| format!("schedules.{name}: {e}"))?;
        if !queues.contains(&self.job.queue.as_str()) {
            return Err(format!(
                "schedules.{name}.job.queue: no queue named {:?} is configured",
                self.job.queue
            ));
        }
        if self.job.delay.is_some() || self.job.run_at.is_some() {
            return Err(format!(
                "schedules.{name}.job: no delay or run_at (the ticks are its times)"
            ));
        }
        Ok(())
    }
}

/// A schedule's cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct Ticks {
    cron: croner::Cron,
    tz: Tz,
}

impl Ticks {
    /// Parses a cron expression (five fields, or six with seconds) and an
    /// IANA time zone (`None`: UTC).
    pub fn parse(cron: &str, timezone: Option<&str>) -> Result<Ticks, String> {
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name)
                .map_err(|_| format!("timezone {name:?} is not an IANA time zone"))?,
        };
        if cron.len() > 256 {
            return Err("cron is longer than 256 characters".into());
        }
        let cron = croner::Cron::new(cron)
            .with_seconds_optional()
            .parse()
            .map_err(|e| format!("cron {cron:?}: {e}"))?;
        Ok(Ticks { cron, tz })
    }

    /// The first tick after `after`, if there is one (a cron can name a
    /// day that never comes: the 30th of February).
    pub fn after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Whether `name` may name a schedule.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
