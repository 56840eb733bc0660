//! Identifiers. Newtypes inside, strings only at the edges.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's id: a UUIDv7, so ids sort by creation time and are unguessable
/// enough to be opaque (access is still checked on every read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new() -> JobId {
        JobId(Uuid::now_v7())
    }

    /// The lowest id a job created at `at` can have: its millisecond
    /// timestamp, then zeros. Every job created at or after `at` sorts at
    /// or above it, every one created before sorts below.
    pub fn first_at(at: chrono::DateTime<chrono::Utc>) -> JobId {
        let ms = u64::try_from(at.timestamp_millis())
            .unwrap_or(0)
            .min((1 << 48) - 1);
        JobId(Uuid::from_u128(u128::from(ms) << 80))
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// A string that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a job id: expected a hyphenated UUID")]
pub struct BadId;

impl FromStr for JobId {
    type Err = BadId;

    /// Only the canonical hyphenated form is accepted, so each job has
    /// exactly one URL.
    fn from_str(s: &str) -> Result<JobId, BadId> {
        if s.len() != 36 {
            return Err(BadId);
        }
        Uuid::try_parse(s).map(JobId).map_err(|_| BadId)
    }
}

/// A lease's fencing token: a worker must present it to act on the job, and a
/// new lease of the same job gets a new one, so a stale worker is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub String);

impl LeaseId {
    pub fn new() -> LeaseId {
        LeaseId(Uuid::new_v4().simple().to_string())
    }
}

impl Default for LeaseId {
    fn default() -> Self {
        LeaseId::new()
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner of a job. Every read and write is scoped to one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tenant(pub String);

impl Tenant {
    /// The tenant of a server that runs without API keys.
    pub fn open() -> Tenant {
        Tenant("default".to_string())
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_parse_only_in_canonical_form() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
        assert!("nope".parse::<JobId>().is_err());
        assert!(id.0.simple().to_string().parse::<JobId>().is_err());
        assert!(format!("{{{id}}}").parse::<JobId>().is_err());
        assert!("../../etc/passwd".parse::<JobId>().is_err());
    }

    #[test]
    fn job_ids_sort_by_creation() {
        let a = JobId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = JobId::new();
        assert!(a < b);
    }
}
