//! Each configured queue's traffic over the last hour, a minute at a time,
//! for the console's charts: jobs in, out and failed, leases that ran out,
//! and submit-to-finish latency percentiles.
//!
//! Counted from the event log, which every node receives whole (a
//! PostgreSQL cluster's too), so any node shows the cluster's traffic
//! since it started; a restart starts the hour over (the log itself stays
//! the record). Bounded: configured queues only, 60 minutes each, and the
//! latencies in a fixed histogram of [`BUCKETS`] counters.
//!
//! And the jobs by queue and state (the console's queues, `/metrics`):
//! a count of the table reads every row, so it is taken now and then
//! ([`Stats::counts`]: at most every minute, less often as the count
//! takes longer), and kept up to date in between by the same events (each
//! says what the job became, and so where it was), and by this node's
//! deletes; a garbage collection makes the next view count again. (Another
//! node's deletes and collections show at this node's next count.) The
//! count says which events it saw ([`Seen`]); of the events that arrive
//! while it runs and after, only the others move jobs in the tally.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use replyd_core::JobState;
use replyd_core::Store;
use replyd_core::event::{EventKind, EventRecord};
use replyd_core::store::{Counts, Seen, StateCount, StoreResult};
use replyd_proto as proto;

/// Minutes kept per queue.
pub const MINUTES: usize = 60;
/// Latency histogram buckets: four per doubling from 1 ms, up to about
/// 2^30 ms (12 days); a longer one counts in the last.
const BUCKETS: usize = 120;

#[derive(Debug, Default)]
pub struct Stats {
    queues: Mutex<HashMap<String, VecDeque<Bucket>>>,
    /// Jobs by queue and state: the last count, kept by the events since.
    tally: Mutex<Option<Tally>>,
    /// One count of the table at a time.
    counting: tokio::sync::Mutex<()>,
    /// While a count runs: the moves of the events that arrived meanwhile,
    /// for the count to add those it did not see.
    meanwhile: Mutex<Option<Vec<Move>>>,
}

/// A job moving between states in a queue, as an event says.
#[derive(Debug)]
struct Move {
    event: replyd_core::EventId,
    queue: String,
    from: Option<JobState>,
    to: JobState,
}

/// Moves kept while a count runs (about 20 MB at most); more make the
/// next view count again.
const MEANWHILE: usize = 1 << 18;

#[derive(Debug)]
struct Tally {
    /// By queue, then by state (`JobState::ALL`'s order).
    jobs: HashMap<String, [i64; JobState::ALL.len()]>,
    /// When the table was counted, and when to count it again.
    at: std::time::Instant,
    every: std::time::Duration,
    /// The events the count saw.
    seen: Seen,
}

/// The least time between two counts of the table; a count that takes
/// longer than 1/50 of it waits 50 times what it took, so that counting
/// never takes more than 2% of the store's time.
const RECOUNT: std::time::Duration = std::time::Duration::from_secs(60);

impl Tally {
    /// Moves a job between states, unless the count saw it move.
    fn apply(&mut self, m: &Move) {
        if self.seen.includes(m.event) {
            return;
        }
        let by_state = match self.jobs.get_mut(&m.queue) {
            Some(b) => b,
            None => self.jobs.entry(m.queue.clone()).or_default(),
        };
        if let Some(from) = m.from {
            by_state[slot(from)] -= 1;
        }
        by_state[slot(m.to)] += 1;
    }
}

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

/// A state's place in a tally's row.
fn slot(state: JobState) -> usize {
    JobState::ALL.iter().position(|s| *s == state).unwrap_or(0)
}

fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

impl Stats {
    /// Jobs by queue and state: the table counted now and then (one
    /// count at a time however many ask), and the events since.
    pub async fn counts(&self, store: &dyn Store) -> StoreResult<Vec<StateCount>> {
        if let Some(c) = self.tallied(false) {
            return Ok(c);
        }
        let _one = self.counting.lock().await;
        if let Some(c) = self.tallied(false) {
            return Ok(c);
        }
        let started = std::time::Instant::now();
        *self.meanwhile.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
        let counted = store.counts().await;
        self.counted(counted?, started.elapsed());
        Ok(self.tallied(true).unwrap_or_default())
    }

    /// Makes a count of the table, which took `took`, the tally: with the
    /// moves of the events that came while it ran that it did not see.
    fn counted(&self, counted: Counts, took: std::time::Duration) {
        let meanwhile = self
            .meanwhile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut t = Tally {
            jobs: HashMap::new(),
            at: std::time::Instant::now(),
            every: RECOUNT.max(took * 50),
            seen: counted.seen,
        };
        for c in counted.jobs {
            t.jobs.entry(c.queue).or_default()[slot(c.state)] += c.count as i64;
        }
        match meanwhile {
            Some(moves) => moves.iter().for_each(|m| t.apply(m)),
            // Too many to keep: count again when next asked.
            None => t.every = std::time::Duration::ZERO,
        }
        *self.tally.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
    }

    /// The tally, if there is one (and, unless `stale` will do, it is not
    /// yet due for a count).
    fn tallied(&self, stale: bool) -> Option<Vec<StateCount>> {
        let tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        let t = tally.as_ref()?;
        if !stale && t.at.elapsed() >= t.every {
            return None;
        }
        Some(
            t.jobs
                .iter()
                .flat_map(|(queue, by_state)| {
                    JobState::ALL.into_iter().map(|state| StateCount {
                        queue: queue.clone(),
                        state,
                        count: by_state[slot(state)].max(0) as u64,
                    })
                })
                .collect(),
        )
    }

    /// A job was deleted (no event says so).
    pub fn removed(&self, queue: &str, state: JobState) {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tally.as_mut() {
            t.jobs.entry(queue.to_string()).or_default()[slot(state)] -= 1;
        }
    }

    /// Jobs left the table unseen (garbage collection): count it again
    /// when next asked.
    pub fn recount(&self) {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tally.as_mut() {
            t.every = std::time::Duration::ZERO;
        }
    }

    /// How an event moves its job between states, if it does.
    fn move_of(e: &EventRecord) -> Option<Move> {
        let from = match e.kind {
            EventKind::Accepted => None,
            EventKind::Queued => Some(JobState::Scheduled),
            EventKind::Started => Some(JobState::Queued),
            // A job canceled while running had its cancel requested first;
            // one canceled before it was due was scheduled (one canceled
            // after, before the promoter came, counts as queued until the
            // next count).
            EventKind::Canceled if !e.job.cancel_requested && e.at < e.job.run_at => {
                Some(JobState::Scheduled)
            }
            EventKind::Canceled if !e.job.cancel_requested => Some(JobState::Queued),
            EventKind::Retrying
            | EventKind::Succeeded
            | EventKind::Failed
            | EventKind::Canceled => Some(JobState::Running),
            _ => return None,
        };
        Some(Move {
            event: e.id,
            queue: e.queue.clone(),
            from,
            to: e.job.state,
        })
    }

    /// Counts a batch of events of the queues in `known`.
    pub fn count(&self, events: &[EventRecord], known: impl Fn(&str) -> bool) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        let mut meanwhile = self.meanwhile.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if !known(&e.queue) {
                continue;
            }
            if let Some(m) = Stats::move_of(e) {
                if let Some(t) = tally.as_mut() {
                    t.apply(&m);
                }
                let full = meanwhile.as_mut().is_some_and(|kept| {
                    kept.push(m);
                    kept.len() > MEANWHILE
                });
                if full {
                    *meanwhile = None;
                }
            }
            let ring = match queues.get_mut(&e.queue) {
                Some(r) => r,
                None => queues.entry(e.queue.clone()).or_default(),
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use replyd_core::job::{JobRecord, NewJob};
    use replyd_core::{EventId, JobId, Tenant};

    fn job() -> JobRecord {
        NewJob {
            id: JobId::new(),
            tenant: Tenant("t".into()),
            queue: "q".into(),
            input: Default::default(),
            max_attempts: 3,
            timeout: std::time::Duration::from_secs(60),
            ttl: std::time::Duration::from_secs(60),
            webhook: None,
            reply: None,
            idempotency_key: None,
            request_hash: None,
            output_type: None,
            trace: None,
            priority: 0,
            head_start: std::time::Duration::ZERO,
            group: None,
            run_at: None,
        }
        .into_record(Utc::now())
        .0
    }

    fn event(kind: EventKind, job: &JobRecord) -> EventRecord {
        EventRecord {
            id: EventId(1),
            job_id: job.id,
            tenant: job.tenant.clone(),
            queue: job.queue.clone(),
            kind,
            at: Utc::now(),
            job: job.clone(),
        }
    }

    #[test]
    fn the_tally_follows_each_job_from_state_to_state() {
        let stats = Stats::default();
        *stats.tally.lock().unwrap() = Some(Tally {
            jobs: HashMap::from([("q".to_string(), [0, 0, 0, 5, 0, 0])]),
            at: std::time::Instant::now(),
            every: RECOUNT,
            seen: Seen::default(),
        });
        let count = |state| {
            stats
                .tallied(false)
                .unwrap()
                .iter()
                .find(|c| c.queue == "q" && c.state == state)
                .map_or(0, |c| c.count)
        };
        let mut a = job();
        let mut b = job();
        let mut events = vec![
            event(EventKind::Accepted, &a),
            event(EventKind::Accepted, &b),
        ];
        a.state = JobState::Running;
        events.push(event(EventKind::Started, &a));
        a.state = JobState::Queued;
        events.push(event(EventKind::Retrying, &a));
        a.state = JobState::Running;
        events.push(event(EventKind::Started, &a));
        a.cancel_requested = true;
        events.push(event(EventKind::CancelRequested, &a));
        a.state = JobState::Canceled;
        events.push(event(EventKind::Canceled, &a));
        b.state = JobState::Canceled;
        events.push(event(EventKind::Canceled, &b));
        stats.count(&events, |_| true);
        assert_eq!(
            [
                JobState::Queued,
                JobState::Running,
                JobState::Canceled,
                JobState::Succeeded
            ]
            .map(count),
            [0, 0, 2, 5]
        );
        let mut c = job();
        stats.count(&[event(EventKind::Accepted, &c)], |_| true);
        c.state = JobState::Running;
        stats.count(&[event(EventKind::Started, &c)], |_| true);
        c.state = JobState::Succeeded;
        stats.count(&[event(EventKind::Succeeded, &c)], |_| true);
        assert_eq!(count(JobState::Succeeded), 6);
        assert_eq!(count(JobState::Running), 0);
        // Another queue's events are not counted.
        stats.count(&[event(EventKind::Accepted, &job())], |q| q != "q");
        assert_eq!(count(JobState::Queued), 0);
    }

    #[test]
    fn a_count_adds_the_moves_it_did_not_see_and_only_those() {
        let stats = Stats::default();
        let q = |n| StateCount {
            queue: "q".into(),
            state: JobState::Queued,
            count: n,
        };
        let queued = |stats: &Stats| {
            stats
                .tallied(true)
                .unwrap()
                .iter()
                .find(|c| c.queue == "q" && c.state == JobState::Queued)
                .map_or(0, |c| c.count)
        };
        let at = |id, kind, job: &JobRecord| EventRecord {
            id: EventId(id),
            ..event(kind, job)
        };
        // Events 1..=3 came while the count ran; it saw 1 and 3 (2 was
        // written by a transaction still open when it read).
        *stats.meanwhile.lock().unwrap() = Some(Vec::new());
        let events: Vec<_> = (1..=3)
            .map(|i| at(i, EventKind::Accepted, &job()))
            .collect();
        stats.count(&events, |_| true);
        stats.counted(
            Counts {
                jobs: vec![q(10)],
                seen: Seen {
                    below: 4,
                    unseen: vec![(2, 3)],
                },
            },
            std::time::Duration::ZERO,
        );
        assert_eq!(queued(&stats), 11);
        // After it, the tally takes only what the count did not see.
        stats.count(
            &[
                at(3, EventKind::Accepted, &job()),
                at(4, EventKind::Accepted, &job()),
            ],
            |_| true,
        );
        assert_eq!(queued(&stats), 12);
        assert!(stats.meanwhile.lock().unwrap().is_none());
    }

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
