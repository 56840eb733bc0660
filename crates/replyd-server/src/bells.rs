//! Doorbells: waiting leases woken one per queued job, not all per event.
//!
//! A worker's long poll (`App::lease` with a wait) that found its queue
//! empty waits on the bell of its (queue, tenant). Each committed event
//! that leaves a job queued rings that bell once, and once the queue's
//! unscoped bell (workers that lease for every tenant): one waiter wakes
//! per job, so a hundred idle workers do not all run an empty lease for
//! each new job. A bell exists only while someone waits on it, so the
//! queues and tenants a client names cannot grow this map past its
//! waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use replyd_core::Tenant;
use replyd_core::event::EventRecord;
use tokio::sync::Notify;

type Key = (String, Option<Tenant>);

/// The bells of every (queue, tenant) that has waiters.
#[derive(Debug, Default)]
pub struct Doorbells {
    bells: Arc<Mutex<HashMap<Key, Arc<Notify>>>>,
    /// The queues with limits (`max_running`): a job of one that ends
    /// frees a slot, and rings too.
    limited: std::sync::OnceLock<std::collections::HashSet<String>>,
}

impl Doorbells {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Notify>>> {
        self.bells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bell a lease of `queue` (for `tenant`, or every tenant) waits on.
    pub fn bell(&self, queue: &str, tenant: Option<&Tenant>) -> Bell {
        let key = (queue.to_string(), tenant.cloned());
        let notify = self.lock().entry(key.clone()).or_default().clone();
        Bell {
            bells: self.bells.clone(),
            key,
            notify,
        }
    }

    /// Says which queues have limits (once, at start).
    pub fn limit(&self, queues: impl IntoIterator<Item = String>) {
        let _ = self.limited.set(queues.into_iter().collect());
    }

    /// Rings, once each, the bells of the jobs `events` leave queued, and
    /// of the jobs of limited queues that end.
    pub fn ring<'a>(&self, events: impl IntoIterator<Item = &'a EventRecord>) {
        let mut bells = None;
        for e in events {
            let frees =
                e.kind.is_terminal() && self.limited.get().is_some_and(|l| l.contains(&e.queue));
            if e.job.state != replyd_core::JobState::Queued && !frees {
                continue;
            }
            let bells = bells.get_or_insert_with(|| self.lock());
            if bells.is_empty() {
                return;
            }
            for tenant in [Some(&e.tenant), None] {
                // A lookup without building a key per event would need a
                // borrowed key type; the map holds waiters' bells only.
                let key = (e.queue.clone(), tenant.cloned());
                if let Some(n) = bells.get(&key) {
                    n.notify_one();
                }
            }
        }
    }

    /// Wakes every waiter: the events that would have rung were missed.
    pub fn ring_all(&self) {
        for n in self.lock().values() {
            n.notify_waiters();
        }
    }
}

/// One waiter's hold on a bell; the last one out removes it.
#[derive(Debug)]
pub struct Bell {
    bells: Arc<Mutex<HashMap<Key, Arc<Notify>>>>,
    key: Key,
    notify: Arc<Notify>,
}

impl Bell {
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        let mut bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        // The map's and ours: nobody else waits.
        if Arc::strong_count(&self.notify) == 2 {
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
        let a = bells.bell("q", Some(&Tenant("a".into())));
        let a2 = bells.bell("q", Some(&Tenant("a".into())));
        let b = bells.bell("q", Some(&Tenant("b".into())));
        let any = bells.bell("q", None);
        let mut wa = pin!(a.notify().notified());
        let mut wa2 = pin!(a2.notify().notified());
        let mut wb = pin!(b.notify().notified());
        let mut wany = pin!(any.notify().notified());
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

    #[test]
    fn a_bell_lives_while_someone_waits_on_it() {
        let bells = Doorbells::default();
        let first = bells.bell("q", None);
        let second = bells.bell("q", None);
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
