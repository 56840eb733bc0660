//! Scheduled jobs: a job submitted with `delay` or `run_at` is `scheduled`
//! until it is due; the promoter queues it then (`job.queued`, which wakes
//! the workers waiting on its queue). The same loop fires the recurring
//! schedules' ticks as they come due (`crate::schedules`), within a second.
//!
//! Every node runs a promoter; the store's `promote_due` lets them share
//! the work (PostgreSQL: `FOR UPDATE SKIP LOCKED`). A promoter sleeps until
//! the earliest job is due, looking again at least every [`LOOK_EVERY`]
//! (another node may have scheduled an earlier one), and at once when this
//! node schedules a job due before it meant to wake.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::app::App;

/// The longest a promoter sleeps before it looks for due jobs again.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The shortest: rows another node holds are not retried in a spin.
const LOOK_AGAIN: Duration = Duration::from_millis(20);
/// Jobs queued per transaction.
const BATCH: u32 = 1000;

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
    /// A job was scheduled here, due at `at`: the promoter wakes for it if
    /// it would sleep past it.
    pub fn scheduled(&self, at: DateTime<Utc>) {
        let at = at.timestamp_millis();
        if self.next.fetch_min(at, Ordering::AcqRel) > at {
            self.wake.notify_one();
        }
    }
}

/// Queues scheduled jobs as they come due, until shutdown.
pub async fn promoter(app: Arc<App>) {
    let p = &app.promoter;
    loop {
        let mut promoted = 0;
        loop {
            match app.store.promote_due(app.now(), BATCH).await {
                Ok(n) => {
                    promoted += n;
                    if (n as u32) < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot queue the scheduled jobs that are due");
                    break;
                }
            }
        }
        if promoted > 0 {
            tracing::debug!(jobs = promoted, "queued scheduled jobs that came due");
        }
        if let Err(e) = crate::schedules::fire_due(&app).await {
            tracing::warn!(error = %e, "cannot fire the schedules that are due");
        }
        let now = app.now();
        let wait = match app.store.next_due().await {
            Ok(Some(at)) => (at - now).to_std().unwrap_or_default(),
            Ok(None) => LOOK_EVERY,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read when the next scheduled job is due");
                LOOK_EVERY
            }
        }
        .clamp(LOOK_AGAIN, LOOK_EVERY);
        let until = now + chrono::Duration::from_std(wait).unwrap_or_default();
        p.next.store(until.timestamp_millis(), Ordering::Release);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = p.wake.notified() => {}
            _ = app.shutdown.cancelled() => return,
        }
        p.next.store(i64::MAX, Ordering::Release);
    }
}
