//! Doorbells: waiting leases woken as many as the queued jobs need, not
//! all per event.
//!
//! A worker's long poll (`App::lease` with a wait) that found its queue
//! empty waits on the bell of its (queue, tenant). The jobs a committed
//! batch of events leaves queued ring that bell, and the queue's unscoped
//! bell (workers that lease for every tenant): a ring of n jobs wakes
//! n / take waiters (rounded up), where take is the fewest jobs a waiter
//! of that bell asks for per lease, and never more than listen: a ring
//! nobody listens for leaves nothing behind (a stored wake would send the
//! next worker to come by on a second, empty look after its first). So a
//! hundred idle workers do not all run an empty lease for each new job,
//! and a batch of 60 jobs wakes one worker that leases 100 at a time, not
//! 60 of which 59 find nothing. A bell exists only while someone holds
//! it, so the queues and tenants a client names cannot grow this map past
//! its waiters.
//!
//! A waiter listens before it looks (`Bell::listen`): a ring that came
//! before it listened was for jobs committed before its look, which the
//! look finds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use replyd_core::Tenant;
use replyd_core::event::EventRecord;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

type Key = (String, Option<Tenant>);

/// A bell, and what one of its waiters takes per look.
#[derive(Debug)]
struct Waiting {
    notify: Notify,
    /// The fewest jobs a waiter of this bell leases at once (since the
    /// bell was made: it only falls, so a ring never wakes too few).
    take: AtomicU32,
    /// Waiters listening now (looking, or waiting for a ring).
    listening: AtomicUsize,
}

/// The bells of every (queue, tenant) that has waiters.
#[derive(Debug, Default)]
pub struct Doorbells {
    bells: Arc<Mutex<HashMap<Key, Arc<Waiting>>>>,
    /// The queues with limits (`max_running`): a job of one that ends
    /// frees a slot, and rings too.
    limited: std::sync::OnceLock<std::collections::HashSet<String>>,
}

impl Doorbells {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Waiting>>> {
        self.bells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bell a lease of `queue` (for `tenant`, or every tenant) that
    /// takes up to `take` jobs at a time waits on.
    pub fn bell(&self, queue: &str, tenant: Option<&Tenant>, take: u32) -> Bell {
        let take = take.max(1);
        let key = (queue.to_string(), tenant.cloned());
        let waiting = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Waiting {
                    notify: Notify::new(),
                    take: AtomicU32::new(take),
                    listening: AtomicUsize::new(0),
                })
            })
            .clone();
        waiting.take.fetch_min(take, Ordering::Relaxed);
        Bell {
            bells: self.bells.clone(),
            key,
            shared: waiting,
        }
    }

    /// Says which queues have limits (once, at start).
    pub fn limit(&self, queues: impl IntoIterator<Item = String>) {
        let _ = self.limited.set(queues.into_iter().collect());
    }

    /// Rings the bells of the jobs `events` leave queued, and of the jobs
    /// of limited queues that end: each bell wakes as many of its waiters
    /// as it takes to lease them all.
    pub fn ring<'a>(&self, events: impl IntoIterator<Item = &'a EventRecord>) {
        // Nobody waits (a server without pull workers): nothing to count.
        let bells = self.lock();
        if bells.is_empty() {
            return;
        }
        let mut jobs: HashMap<(&str, Option<&Tenant>), u32> = HashMap::new();
        for e in events {
            let frees =
                e.kind.is_terminal() && self.limited.get().is_some_and(|l| l.contains(&e.queue));
            if e.job.state != replyd_core::JobState::Queued && !frees {
                continue;
            }
            for tenant in [Some(&e.tenant), None] {
                *jobs.entry((e.queue.as_str(), tenant)).or_default() += 1;
            }
        }
        for ((queue, tenant), n) in jobs {
            // A lookup without building a key would need a borrowed key
            // type; this runs once per bell and batch, not per event.
            let Some(w) = bells.get(&(queue.to_string(), tenant.cloned())) else {
                continue;
            };
            let wakes = n.div_ceil(w.take.load(Ordering::Relaxed)) as usize;
            for _ in 0..wakes.min(w.listening.load(Ordering::SeqCst)) {
                w.notify.notify_one();
            }
        }
    }

    /// Wakes every waiter: the events that would have rung were missed.
    pub fn ring_all(&self) {
        for w in self.lock().values() {
            w.notify.notify_waiters();
        }
    }
}

/// One waiter's hold on a bell; the last one out removes it.
#[derive(Debug)]
pub struct Bell {
    bells: Arc<Mutex<HashMap<Key, Arc<Waiting>>>>,
    key: Key,
    shared: Arc<Waiting>,
}

impl Bell {
    /// Listens for rings until the returned guard is dropped: take it
    /// before looking, hold it while waiting.
    pub fn listen(&self) -> Listening<'_> {
        self.shared.listening.fetch_add(1, Ordering::SeqCst);
        Listening(&self.shared)
    }
}

/// A waiter listening on its bell.
#[derive(Debug)]
pub struct Listening<'a>(&'a Waiting);

impl Listening<'_> {
    /// Ready once a ring wakes this waiter (`enable` it before looking).
    pub fn notified(&self) -> Notified<'_> {
        self.0.notify.notified()
    }
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.listening.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        let mut bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        // The map's and ours: nobody else waits.
        if Arc::strong_count(&self.shared) == 2 {
            bells.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::tests::record;
    use replyd_core::{EventKind, JobId};
    use std::pin::pin;
    use std::task::{Context, Poll};

    /// How many of `waiters` are woken (polled once, without blocking).
    fn woken(waiters: &mut [std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>]) -> usize {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        waiters
            .iter_mut()
            .map(|w| w.as_mut().poll(&mut cx))
            .filter(|p| *p == Poll::Ready(()))
            .count()
    }

    #[test]
    fn one_waiter_wakes_per_job_queued_in_its_queue_and_tenant() {
        let bells = Doorbells::default();
        let a = bells.bell("q", Some(&Tenant("a".into())), 1);
        let a2 = bells.bell("q", Some(&Tenant("a".into())), 1);
        let b = bells.bell("q", Some(&Tenant("b".into())), 1);
        let any = bells.bell("q", None, 1);
        let (la, la2, lb, lany) = (a.listen(), a2.listen(), b.listen(), any.listen());
        let mut wa = pin!(la.notified());
        let mut wa2 = pin!(la2.notified());
        let mut wb = pin!(lb.notified());
        let mut wany = pin!(lany.notified());
        for w in [wa.as_mut(), wa2.as_mut(), wb.as_mut(), wany.as_mut()] {
            w.enable();
        }
        // Not queued, or another queue: no ring.
        let mut started = record(1, JobId::new(), "a", "q", EventKind::Started);
        started.job.state = replyd_core::JobState::Running;
        let elsewhere = record(2, JobId::new(), "a", "other", EventKind::Accepted);
        bells.ring([&started, &elsewhere]);
        assert_eq!(
            woken(&mut [wa.as_mut(), wa2.as_mut(), wb.as_mut(), wany.as_mut()]),
            0
        );
        // One job of tenant a: one of a's waiters, and the unscoped one.
        let queued = record(3, JobId::new(), "a", "q", EventKind::Accepted);
        bells.ring([&queued]);
        assert_eq!(woken(&mut [wa.as_mut(), wa2.as_mut()]), 1);
        assert_eq!(woken(&mut [wb.as_mut()]), 0, "b's waiter woke for a's job");
        assert_eq!(woken(&mut [wany.as_mut()]), 1);
    }

    /// `n` jobs of tenant a queued in "q", in one batch of events.
    fn queued(n: usize) -> Vec<replyd_core::event::EventRecord> {
        (0..n)
            .map(|i| record(i as i64 + 1, JobId::new(), "a", "q", EventKind::Accepted))
            .collect()
    }

    #[test]
    fn a_ring_wakes_as_many_waiters_as_it_takes_to_lease_its_jobs() {
        let bells = Doorbells::default();
        let held: Vec<Bell> = (0..4).map(|_| bells.bell("q", None, 100)).collect();
        let small: Bell;
        let small_listening: Listening<'_>;
        let listening: Vec<Listening<'_>> = held.iter().map(|b| b.listen()).collect();
        let mut waiters: Vec<_> = listening.iter().map(|l| Box::pin(l.notified())).collect();
        for w in &mut waiters {
            w.as_mut().enable();
        }
        let mut pins: Vec<_> = waiters.iter_mut().map(|w| w.as_mut()).collect();
        // (A waiter once woken stays woken: the counts add up.)
        // 60 jobs: one waiter leasing 100 at a time takes them all.
        bells.ring(&queued(60));
        assert_eq!(woken(&mut pins), 1);
        // 150 more: two of the three left.
        bells.ring(&queued(150));
        assert_eq!(woken(&mut pins), 3);
        // A waiter that takes fewer makes the bell wake more: 15 jobs, 10
        // per waiter, two wake (the last of the four and this one).
        small = bells.bell("q", None, 10);
        small_listening = small.listen();
        let mut last = pin!(small_listening.notified());
        last.as_mut().enable();
        pins.push(last.as_mut());
        bells.ring(&queued(15));
        assert_eq!(woken(&mut pins), 5);
    }

    #[test]
    fn a_ring_nobody_listens_for_leaves_no_wake_behind() {
        let bells = Doorbells::default();
        let bell = bells.bell("q", None, 1);
        // Held (a lease under way) but not listening: the ring is for jobs
        // its next look will find anyway.
        bells.ring(&queued(3));
        let listening = bell.listen();
        let mut w = pin!(listening.notified());
        w.as_mut().enable();
        assert_eq!(woken(&mut [w.as_mut()]), 0, "a stale wake was kept");
        // Listening now: the next ring wakes it.
        bells.ring(&queued(1));
        assert_eq!(woken(&mut [w.as_mut()]), 1);
    }

    #[test]
    fn a_bell_lives_while_someone_waits_on_it() {
        let bells = Doorbells::default();
        let first = bells.bell("q", None, 1);
        let second = bells.bell("q", None, 100);
        assert_eq!(bells.lock().len(), 1);
        drop(first);
        assert_eq!(bells.lock().len(), 1);
        drop(second);
        assert!(bells.lock().is_empty());
        // Rings for queues nobody waits on leave nothing behind.
        let queued = record(1, JobId::new(), "a", "unwatched", EventKind::Accepted);
        bells.ring([&queued]);
        assert!(bells.lock().is_empty());
    }
}
