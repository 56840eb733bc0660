//! The outbox's senders: what every channel's dispatcher shares.
//!
//! Each channel (webhooks, each message broker) implements [`Sender`]: one
//! attempt at one claimed delivery, and the limits it runs under. The one
//! dispatcher ([`dispatch::run`]) claims, paces, attempts and records for
//! every channel alike; the retry [`Schedule`] decides what a failed attempt
//! becomes.

pub mod dispatch;

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use replyd_core::outbox::{Channel, Delivery};
use replyd_core::store::Claimed;

/// What a dispatcher works with: the store, the clock, and when to stop.
#[derive(Clone)]
pub struct Context {
    pub store: std::sync::Arc<dyn replyd_core::Store>,
    pub clock: replyd_core::Clock,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// What recording attempts watches for operators.
    pub watch: replyd_core::ops::Watch,
    /// Where each attempt's span goes.
    pub telemetry: crate::telemetry::Telemetry,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
}

/// A succeeded job whose worker gave no result of its own (`null`, no
/// upstream answer) but streamed output has its output as its result, on
/// every channel: when it is at most `INLINE_RESULT` bytes, the claimed
/// delivery carries it (else the receiver reads `links.output`, whose
/// length the job's `output` gives).
async fn output_as_result(cx: &Context, c: &Claimed) -> Option<replyd_core::store::JobOutput> {
    use replyd_core::stream::{Found, StreamKey, output_path};
    let d = &c.delivery;
    let no_result = c
        .result
        .as_ref()
        .is_some_and(|r| r.upstream.is_none() && &r.body[..] == b"null");
    if d.kind != replyd_core::EventKind::Succeeded || !no_result || d.job.output.is_none() {
        return None;
    }
    let key = StreamKey {
        tenant: d.job.tenant.clone(),
        path: output_path(d.job.id),
    };
    let cap = replyd_core::outbox::INLINE_RESULT;
    let streams = cx.store.streams()?;
    let Ok(Found::Live((s, read))) = streams.stream_read(&key, 0, cap, cx.now()).await else {
        return None;
    };
    if s.tail > cap as u64 || read.next < s.tail {
        return None;
    }
    Some(replyd_core::store::JobOutput {
        content_type: s.content_type.clone(),
        body: read.body(&s),
        upstream: None,
    })
}

/// Delivers one channel's deliveries.
#[async_trait]
pub trait Sender: Send + Sync + 'static {
    fn channel(&self) -> Channel;

    /// How it may be dispatched.
    fn limits(&self) -> &Limits;

    /// What per-endpoint limits count by (a webhook's scheme, host and
    /// port; a broker).
    fn endpoint(&self, d: &Delivery) -> String;

    /// One attempt, made at `now`. It never takes much longer than
    /// `limits().attempt_timeout`.
    async fn attempt(&self, c: &Claimed, now: chrono::DateTime<chrono::Utc>) -> Attempt;
}

/// How a channel's deliveries may be dispatched.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Attempts in flight at once, over all endpoints.
    pub concurrency: usize,
    /// Attempts in flight at once to one endpoint.
    pub per_endpoint: usize,
    /// The longest one attempt may take.
    pub attempt_timeout: Duration,
    pub schedule: Schedule,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx.
    Delivered,
    /// Worth trying again (5xx, 429, 3xx, other 4xx, timeouts, refused
    /// connections).
    Retry,
    /// `410 Gone`: the receiver wants no more.
    Gone,
    /// The URL may not be called (SSRF guard): retrying will not help.
    Refused,
}

/// One attempt's record (the attempt log shows these).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub verdict: Verdict,
    pub status: Option<u16>,
    pub latency: Duration,
    /// Why it failed, or the start of the answer's body.
    pub error: Option<String>,
    /// The receiver's `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
}

/// When to try again.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Delay before each attempt (the first is usually 0).
    pub delays: Vec<Duration>,
    /// The longest a receiver's `Retry-After` may push the next attempt.
    pub max_retry_after: Duration,
    /// ± this fraction of each delay, at random, so that retries of many
    /// messages do not arrive together.
    pub jitter: f64,
}

impl Default for Schedule {
    /// Close to the Standard Webhooks example: 0, 5 s, 5 min, 30 min, 2 h,
    /// 5 h, 10 h, 10 h.
    fn default() -> Schedule {
        Schedule {
            delays: [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_retry_after: Duration::from_secs(3600),
            jitter: 0.1,
        }
    }
}

impl Schedule {
    /// The delay before attempt `next` (1-based; attempt 1 is the first),
    /// or `None` when the schedule is spent: the message is dead-lettered.
    pub fn delay(&self, next: usize, retry_after: Option<Duration>) -> Option<Duration> {
        let base = *self.delays.get(next.checked_sub(1)?)?;
        let jittered = if base.is_zero() || self.jitter <= 0.0 {
            base
        } else {
            let f = rand::rng().random_range(1.0 - self.jitter..=1.0 + self.jitter);
            base.mul_f64(f)
        };
        Some(match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_retry_after)),
            None => jittered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_the_standard_webhooks_one_with_jitter() {
        let s = Schedule::default();
        assert_eq!(s.delay(1, None), Some(Duration::ZERO));
        for (n, secs) in [(2, 5.0), (3, 300.0), (4, 1800.0), (8, 36000.0)] {
            let d = s.delay(n, None).unwrap().as_secs_f64();
            assert!((secs * 0.9..=secs * 1.1).contains(&d), "attempt {n}: {d}");
        }
        assert_eq!(s.delay(9, None), None, "spent: dead letter");
        assert_eq!(s.delay(0, None), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_cap() {
        let s = Schedule {
            jitter: 0.0,
            ..Schedule::default()
        };
        assert_eq!(
            s.delay(2, Some(Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            s.delay(2, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(5)),
            "never sooner than the schedule"
        );
        assert_eq!(
            s.delay(2, Some(Duration::from_secs(86_400))),
            Some(Duration::from_secs(3600)),
            "capped"
        );
    }
}
