//! Scheduled jobs: a job submitted with `delay` or `run_at` is `scheduled`
//! until it is due; the promoter queues it then (`job.queued`, which wakes
//! the workers waiting on its queue). The same loop fires the recurring
//! schedules' ticks as they come due (`crate::schedules`), within a second.
//!
//! This is the promoter's state, in `App`; its loop is `tasks::promoter`.
//! Every node runs a promoter; the store's `promote_due` lets them share
//! the work (PostgreSQL: `FOR UPDATE SKIP LOCKED`). A promoter sleeps until
//! the earliest job is due, looking again at least every [`LOOK_EVERY`]
//! (another node may have scheduled an earlier one), and at once when this
//! node schedules a job due before it meant to wake.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

/// The longest a promoter sleeps before it looks for due jobs again.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The shortest: rows another node holds are not retried in a spin.
pub const LOOK_AGAIN: Duration = Duration::from_millis(20);
/// Jobs queued per transaction.
pub const BATCH: u32 = 1000;

/// When this node's promoter means to wake, and its bell.
#[derive(Debug)]
pub struct Promoter {
    wake: Notify,
    /// Ms since the epoch.
    next: AtomicI64,
}

impl Default for Promoter {
    fn default() -> Self {
        Promoter {
            wake: Notify::new(),
            next: AtomicI64::new(i64::MAX),
        }
    }
}

impl Promoter {
    /// The promoter sleeps `wait` (until `until`), or until a job due
    /// sooner is scheduled here.
    pub async fn sleep(&self, until: DateTime<Utc>, wait: Duration) {
        self.next.store(until.timestamp_millis(), Ordering::Release);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.wake.notified() => {}
        }
        self.next.store(i64::MAX, Ordering::Release);
    }

    /// A job was scheduled here, due at `at`: the promoter wakes for it if
    /// it would sleep past it.
    pub fn scheduled(&self, at: DateTime<Utc>) {
        let at = at.timestamp_millis();
        if self.next.fetch_min(at, Ordering::AcqRel) > at {
            self.wake.notify_one();
        }
    }
}
