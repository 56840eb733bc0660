//! Each configured queue's traffic over the last hour, a minute at a time,
//! for the console's charts: jobs in, out and failed, leases that ran out,
//! and submit-to-finish latency percentiles.
//!
//! Counted from the event log, which every node receives whole (a
//! PostgreSQL cluster's too), so any node shows the cluster's traffic
//! since it started; a restart starts the hour over (the log itself stays
//! the record). Bounded: configured queues only, 60 minutes each, and the
//! latencies in a fixed histogram of [`BUCKETS`] counters.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use replyd_core::Store;
use replyd_core::event::{EventKind, EventRecord};
use replyd_core::store::{StateCount, StoreResult};
use replyd_proto as proto;

/// Minutes kept per queue.
pub const MINUTES: usize = 60;
/// Latency histogram buckets: four per doubling from 1 ms, up to about
/// 2^30 ms (12 days); a longer one counts in the last.
const BUCKETS: usize = 120;

#[derive(Debug, Default)]
pub struct Stats {
    queues: Mutex<HashMap<String, VecDeque<Bucket>>>,
    /// Jobs by queue and state as last read, and when: a count reads the
    /// whole table, so views share one read for [`COUNTS_FOR`].
    counts: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<StateCount>>)>>,
}

/// How long a count of the jobs by queue and state is shown before it is
/// read again.
const COUNTS_FOR: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone)]
struct Bucket {
    /// Minutes since the epoch.
    minute: i64,
    accepted: u64,
    out: u64,
    failed: u64,
    expiries: u64,
    latency: [u32; BUCKETS],
}

impl Bucket {
    fn new(minute: i64) -> Bucket {
        Bucket {
            minute,
            accepted: 0,
            out: 0,
            failed: 0,
            expiries: 0,
            latency: [0; BUCKETS],
        }
    }

    /// The latency under which `q` of the finished jobs came in (the upper
    /// edge of its bucket).
    fn percentile(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.latency.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(upper_ms(i));
            }
        }
        None
    }
}

fn bucket_of(ms: u64) -> usize {
    let b = ((ms.max(1) as f64).log2() * 4.0).floor() as usize;
    b.min(BUCKETS - 1)
}

fn upper_ms(bucket: usize) -> u64 {
    2f64.powf((bucket + 1) as f64 / 4.0).ceil() as u64
}

fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

impl Stats {
    /// Jobs by queue and state, read at most every [`COUNTS_FOR`] (one
    /// read at a time however many ask).
    pub async fn counts(&self, store: &dyn Store) -> StoreResult<Arc<Vec<StateCount>>> {
        let mut cached = self.counts.lock().await;
        if let Some((at, counts)) = &*cached
            && at.elapsed() < COUNTS_FOR
        {
            return Ok(counts.clone());
        }
        let counts = Arc::new(store.counts().await?);
        *cached = Some((std::time::Instant::now(), counts.clone()));
        Ok(counts)
    }

    /// Counts a batch of events of the queues in `known`.
    pub fn count(&self, events: &[EventRecord], known: impl Fn(&str) -> bool) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if !known(&e.queue) {
                continue;
            }
            let ring = queues.entry(e.queue.clone()).or_default();
            let minute = minute_of(e.at);
            let b = match ring.iter_mut().rev().find(|b| b.minute == minute) {
                Some(b) => b,
                None => {
                    // Events come in commit order: a new minute is the
                    // newest (one from a node's lagging clock joins the
                    // newest rather than reorder the ring).
                    if ring.back().is_none_or(|b| b.minute < minute) {
                        ring.push_back(Bucket::new(minute));
                        while ring.len() > MINUTES {
                            ring.pop_front();
                        }
                    }
                    ring.back_mut().expect("just pushed")
                }
            };
            let expired = e
                .job
                .error
                .as_ref()
                .is_some_and(|err| err.code == "lease_expired");
            match e.kind {
                EventKind::Accepted => b.accepted += 1,
                EventKind::Retrying if expired => b.expiries += 1,
                k if k.is_terminal() => {
                    b.out += 1;
                    if k == EventKind::Failed {
                        b.failed += 1;
                        b.expiries += u64::from(expired);
                    }
                    let took = (e.at - e.job.created_at).num_milliseconds().max(0) as u64;
                    b.latency[bucket_of(took)] += 1;
                }
                _ => {}
            }
        }
    }

    /// The last hour of `queue` up to `now`, oldest minute first, every
    /// minute present (zeros where nothing happened).
    pub fn minutes(&self, queue: &str, now: DateTime<Utc>) -> Vec<proto::Minute> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let ring = queues.get(queue);
        let last = minute_of(now);
        (last - MINUTES as i64 + 1..=last)
            .map(|m| {
                let b = ring
                    .and_then(|r| r.iter().find(|b| b.minute == m))
                    .cloned()
                    .unwrap_or_else(|| Bucket::new(m));
                proto::Minute {
                    at: DateTime::from_timestamp(m * 60, 0).unwrap_or_default(),
                    accepted: b.accepted,
                    out: b.out,
                    failed: b.failed,
                    lease_expiries: b.expiries,
                    p50_ms: b.percentile(0.50),
                    p95_ms: b.percentile(0.95),
                    p99_ms: b.percentile(0.99),
                }
            })
            .collect()
    }
}

/// Counts every event the store publishes until shutdown.
pub async fn run(app: Arc<crate::app::App>) {
    let mut events = app.store.subscribe();
    loop {
        let batch = tokio::select! {
            b = events.recv() => b,
            _ = app.shutdown.cancelled() => return,
        };
        match batch {
            Ok(batch) => app
                .stats
                .count(&batch, |q| app.config.queues.contains_key(q)),
            // Counts missed while this task lagged are lost: a chart's dip.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_the_latency_they_count() {
        for ms in [1u64, 2, 7, 100, 999, 45_000, 3_600_000] {
            let b = bucket_of(ms);
            assert!(
                upper_ms(b) >= ms,
                "{ms} ms in bucket {b} up to {}",
                upper_ms(b)
            );
            assert!(
                upper_ms(b) as f64 <= ms as f64 * 1.2 + 1.0,
                "{ms}: {}",
                upper_ms(b)
            );
        }
        let mut b = Bucket::new(0);
        for ms in 1..=100u64 {
            b.latency[bucket_of(ms * 10)] += 1;
        }
        let p50 = b.percentile(0.5).unwrap();
        assert!((500..=600).contains(&p50), "{p50}");
        let p99 = b.percentile(0.99).unwrap();
        assert!((990..=1200).contains(&p99), "{p99}");
        assert_eq!(Bucket::new(0).percentile(0.5), None);
    }
}
