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
        if !crate::schedules::valid_name(name) {
            return Err(format!(
                "schedule name {name:?}: use 1-128 letters, digits, '.', '_' or '-'"
            ));
        }
        crate::schedules::Ticks::parse(&self.cron, self.timezone.as_deref())
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
