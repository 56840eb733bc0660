//! The one source of "now". Leases, retries and TTLs read time here, so tests
//! can drive them with tokio's paused time instead of sleeping.

use chrono::{DateTime, Utc};

/// Wall-clock time for the domain.
///
/// `Clock::system()` is the real clock. `Clock::tokio()` starts at the real
/// time and then advances with tokio's clock, so under
/// `tokio::time::pause()` a test moves it with `tokio::time::advance`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    System,
    Tokio {
        base: DateTime<Utc>,
        start: tokio::time::Instant,
    },
}

impl Clock {
    pub fn system() -> Clock {
        Clock { kind: Kind::System }
    }

    /// A clock that follows tokio's (pausable) time. Needs a tokio runtime.
    pub fn tokio() -> Clock {
        Clock {
            kind: Kind::Tokio {
                base: Utc::now(),
                start: tokio::time::Instant::now(),
            },
        }
    }

    /// Now, to the millisecond (what the stores keep and the API shows).
    pub fn now(&self) -> DateTime<Utc> {
        let now = match self.kind {
            Kind::System => Utc::now(),
            Kind::Tokio { base, start } => {
                let elapsed =
                    chrono::Duration::from_std(start.elapsed()).unwrap_or(chrono::Duration::MAX);
                base + elapsed
            }
        };
        DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
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

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let t0 = clock.now();
        tokio::time::advance(std::time::Duration::from_secs(3600)).await;
        let dt = clock.now() - t0;
        assert_eq!(dt.num_seconds(), 3600);
    }
}
