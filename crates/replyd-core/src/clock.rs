//! The one source of "now". Leases, retries and TTLs read time here, so tests
//! can stop time and move it by hand instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Wall-clock time for the domain, to the millisecond.
///
/// `Clock::system()` is the real clock. `Clock::manual(t)` is paused at `t`
/// and moves only when a test calls [`Clock::advance`]; clones share it.
#[derive(Debug, Clone)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A paused clock showing `start`.
    pub fn manual(start: DateTime<Utc>) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(start.timestamp_millis()))),
        }
    }

    /// Moves a manual clock forward. Does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(ms) = &self.manual {
            let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            ms.fetch_add(by, Ordering::SeqCst);
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let ms = match &self.manual {
            Some(ms) => ms.load(Ordering::SeqCst),
            // The milliseconds since the epoch, straight from the system
            // clock (`Utc::now()` would build a calendar date only for
            // it to be taken apart again).
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        };
        DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = Clock::manual(start);
        let shared = clock.clone();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), start);
        shared.advance(Duration::from_secs(3600));
        assert_eq!((clock.now() - start).num_seconds(), 3600);
    }

    #[test]
    fn the_system_clock_has_millisecond_precision() {
        let now = Clock::system().now();
        assert_eq!(now.timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
