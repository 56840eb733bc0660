//! Live delivery of the event log on this node: the [`Hub`] that routes each
//! committed event to the connections that watch it, and the [`Feed`] that
//! turns "history, then live" into one ordered sequence per subscription.
//!
//! SSE streams (`http::events`) and WebSocket subscriptions (`http::ws`)
//! both sit on these two pieces, so they deliver the same events with the
//! same ids in the same order.
//!
//! The store's bus is a wake-up, the log is the truth: one task per node
//! ([`Hub::run`]) reads the bus and hands each event only to the listeners
//! that watch its job (or its tenant and queue), through a bounded buffer
//! per connection. A connection that lets its buffer fill is cut off as a
//! slow consumer and resumes from its last id; if the hub itself falls
//! behind the bus, every listener is told to re-read the log
//! ([`Live::Resync`]). Nothing is ever skipped: a [`Feed`] delivers only ids
//! after the last one it delivered, and catches up from the store whenever
//! it may have missed something.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use replyd_core::event::{EventId, EventRecord};
use replyd_core::store::{EventBatch, StoreResult};
use replyd_core::{JobId, Store, Tenant};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::render::Renderer;

/// How many events one read of the log for an all-jobs feed returns.
const LOG_PAGE: u32 = 500;

/// Which jobs an all-jobs subscription sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `None`: every tenant (operator keys).
    pub tenant: Option<Tenant>,
    pub queue: Option<String>,
}

impl Scope {
    pub fn matches(&self, e: &EventRecord) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == e.tenant)
            && self.queue.as_ref().is_none_or(|q| *q == e.queue)
    }
}

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Job(JobId),
    All(Scope),
}

impl Target {
    fn matches(&self, e: &EventRecord) -> bool {
        match self {
            Target::Job(id) => e.job_id == *id,
            Target::All(scope) => scope.matches(e),
        }
    }
}

/// An event on its way to live subscribers, with its wire representation
/// rendered once for all of them.
#[derive(Debug)]
pub struct LiveEvent {
    pub record: EventRecord,
    data: OnceLock<Bytes>,
}

impl LiveEvent {
    pub fn new(record: EventRecord) -> LiveEvent {
        LiveEvent {
            record,
            data: OnceLock::new(),
        }
    }

    /// The job representation after the event, as JSON (the `data:` of
    /// SSE, the `job` of a WebSocket event).
    pub fn data(&self, r: &Renderer) -> &Bytes {
        self.data.get_or_init(|| r.event(&self.record))
    }
}

/// What a listener receives.
#[derive(Debug)]
pub enum Live {
    /// An event one of its subscriptions (`tag`) watches.
    Event { tag: u32, event: Arc<LiveEvent> },
    /// The hub fell behind the bus: events may be missing; re-read the log.
    Resync,
}

struct Entry {
    tx: mpsc::Sender<Live>,
    overflowed: Arc<AtomicBool>,
    subs: Vec<(u32, Target)>,
}

#[derive(Default)]
struct Registry {
    listeners: HashMap<u64, Entry>,
    by_job: HashMap<JobId, Vec<(u64, u32)>>,
    /// All-jobs subscriptions of every queue: (listener, tag, tenant).
    wide: Vec<(u64, u32, Option<Tenant>)>,
    /// All-jobs subscriptions of one queue, by queue.
    by_queue: HashMap<String, Vec<(u64, u32, Option<Tenant>)>>,
}

impl Registry {
    fn unwatch(&mut self, id: u64, tag: u32, target: &Target) {
        match target {
            Target::Job(job) => {
                if let Some(v) = self.by_job.get_mut(job) {
                    v.retain(|&(l, t)| (l, t) != (id, tag));
                    if v.is_empty() {
                        self.by_job.remove(job);
                    }
                }
            }
            Target::All(Scope { queue: None, .. }) => {
                self.wide.retain(|(l, t, _)| (*l, *t) != (id, tag));
            }
            Target::All(Scope {
                queue: Some(queue), ..
            }) => {
                if let Some(v) = self.by_queue.get_mut(queue) {
                    v.retain(|(l, t, _)| (*l, *t) != (id, tag));
                    if v.is_empty() {
                        self.by_queue.remove(queue);
                    }
                }
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.listeners.remove(&id)?;
        for (tag, target) in &entry.subs {
            self.unwatch(id, *tag, target);
        }
        Some(entry)
    }
}

/// Routes committed events to the listeners that watch them.
pub struct Hub {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    capacity: usize,
    /// The newest event id dispatched: where a feed that starts "now" starts.
    head: AtomicI64,
    /// Waiting leases, woken one per job queued.
    pub bells: crate::bells::Doorbells,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("listeners", &self.lock().listeners.len())
            .finish()
    }
}

impl Hub {
    /// A hub whose listeners buffer up to `capacity` events each.
    pub fn new(capacity: usize) -> Arc<Hub> {
        Arc::new(Hub {
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            capacity: capacity.max(1),
            head: AtomicI64::new(0),
            bells: Default::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new listener with no subscriptions yet.
    pub fn listen(self: &Arc<Hub>) -> Listener {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.capacity);
        let overflowed = Arc::new(AtomicBool::new(false));
        self.lock().listeners.insert(
            id,
            Entry {
                tx,
                overflowed: overflowed.clone(),
                subs: Vec::new(),
            },
        );
        Listener {
            hub: self.clone(),
            id,
            rx,
            overflowed,
        }
    }

    /// The newest event id this node has dispatched (`None` before the
    /// first): a feed that starts now starts after it.
    pub fn head(&self) -> Option<EventId> {
        match self.head.load(Ordering::Relaxed) {
            0 => None,
            id => Some(EventId(id)),
        }
    }

    /// How many listeners are registered (for metrics and tests).
    pub fn listeners(&self) -> usize {
        self.lock().listeners.len()
    }

    /// Hands each event of a commit to the listeners that watch it. A
    /// listener whose buffer is full is cut off (it learns so from
    /// [`Listener::recv`]); nothing here ever waits.
    pub fn publish(&self, batch: &EventBatch) {
        self.bells.ring(batch.iter());
        let mut reg = self.lock();
        if let Some(last) = batch.last() {
            self.head.fetch_max(last.id.0, Ordering::Relaxed);
        }
        let mut full = Vec::new();
        for e in batch.iter() {
            let mut shared: Option<Arc<LiveEvent>> = None;
            let direct = reg.by_job.get(&e.job_id).into_iter().flatten().copied();
            let this_queue = reg.by_queue.get(e.queue.as_str()).into_iter().flatten();
            let wide = reg
                .wide
                .iter()
                .chain(this_queue)
                .filter(|(_, _, tenant)| tenant.as_ref().is_none_or(|t| *t == e.tenant))
                .map(|&(l, t, _)| (l, t));
            for (id, tag) in direct.chain(wide) {
                let Some(entry) = reg.listeners.get(&id) else {
                    continue;
                };
                let event = shared
                    .get_or_insert_with(|| Arc::new(LiveEvent::new(e.clone())))
                    .clone();
                if entry.tx.try_send(Live::Event { tag, event }).is_err() {
                    full.push(id);
                }
            }
        }
        for id in full {
            cut_off(&mut reg, id);
        }
    }

    /// Tells every listener to re-read the log: the hub missed events.
    pub fn resync_all(&self) {
        self.bells.ring_all();
        let mut reg = self.lock();
        let full: Vec<u64> = reg
            .listeners
            .iter()
            .filter(|(_, e)| e.tx.try_send(Live::Resync).is_err())
            .map(|(id, _)| *id)
            .collect();
        for id in full {
            cut_off(&mut reg, id);
        }
    }

    /// The node's dispatcher: reads the store's bus until shutdown.
    /// `bus` is subscribed when the app is built, before any listener, so
    /// a listener never misses an event committed after it registered.
    pub async fn run(
        self: Arc<Hub>,
        mut bus: broadcast::Receiver<EventBatch>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = bus.recv() => match batch {
                    Ok(batch) => self.publish(&batch),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "live hub lagged behind the bus; listeners re-read the log");
                        self.resync_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        // Dropping the senders ends every listener.
        *self.lock() = Registry::default();
    }
}

/// Removes a listener whose buffer is full; its receiver drains what is
/// buffered, then ends, and reports the overflow.
fn cut_off(reg: &mut Registry, id: u64) {
    if let Some(entry) = reg.remove(id) {
        entry.overflowed.store(true, Ordering::Relaxed);
        metrics::counter!("replyd_stream_slow_consumers_total").increment(1);
    }
}

/// One connection's registration with the hub. Dropping it unregisters.
pub struct Listener {
    hub: Arc<Hub>,
    id: u64,
    rx: mpsc::Receiver<Live>,
    overflowed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("id", &self.id).finish()
    }
}

impl Listener {
    /// Starts delivering `target`'s events under `tag`. Returns false if the
    /// listener was already cut off.
    pub fn watch(&self, tag: u32, target: Target) -> bool {
        let mut reg = self.hub.lock();
        let Some(entry) = reg.listeners.get_mut(&self.id) else {
            return false;
        };
        entry.subs.push((tag, target.clone()));
        match target {
            Target::Job(job) => reg.by_job.entry(job).or_default().push((self.id, tag)),
            Target::All(Scope {
                tenant,
                queue: None,
            }) => reg.wide.push((self.id, tag, tenant)),
            Target::All(Scope {
                tenant,
                queue: Some(queue),
            }) => reg
                .by_queue
                .entry(queue)
                .or_default()
                .push((self.id, tag, tenant)),
        }
        true
    }

    /// Stops delivering `tag`'s events.
    pub fn unwatch(&self, tag: u32) {
        let mut reg = self.hub.lock();
        let Some(entry) = reg.listeners.get_mut(&self.id) else {
            return;
        };
        let gone: Vec<_> = entry
            .subs
            .iter()
            .filter(|(t, _)| *t == tag)
            .cloned()
            .collect();
        entry.subs.retain(|(t, _)| *t != tag);
        for (tag, target) in gone {
            reg.unwatch(self.id, tag, &target);
        }
    }

    /// The next delivery; `None` once the listener is cut off (see
    /// [`Listener::overflowed`]) or the server stops.
    pub async fn recv(&mut self) -> Option<Live> {
        self.rx.recv().await
    }

    /// Whether the hub cut this listener off because its buffer was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.hub.lock().remove(self.id);
    }
}

/// One subscription's ordered view of the log: the history after a
/// position, then live events, each exactly once.
///
/// It remembers the last id it delivered. Live events are offered to it;
/// it takes only those after that id. When it may have missed some (it is
/// new, or the hub resynced), it is `behind`, and [`Feed::next_backlog`]
/// reads the store from that id until it has caught up. Ids are
/// commit-ordered in every store, so "after the last delivered id" never
/// skips an event and never repeats one.
#[derive(Debug)]
pub struct Feed {
    pub target: Target,
    /// The last id delivered.
    last: Option<EventId>,
    /// Where the next read of the log starts (an all-jobs feed reads past
    /// events outside its scope).
    cursor: Option<EventId>,
    backlog: VecDeque<EventRecord>,
    behind: bool,
    /// A per-job feed delivered its terminal event: nothing more will come.
    finished: bool,
}

impl Feed {
    /// A feed that starts after `after` (from the beginning with `None`).
    pub fn new(target: Target, after: Option<EventId>) -> Feed {
        Feed {
            target,
            last: after,
            cursor: after,
            backlog: VecDeque::new(),
            behind: true,
            finished: false,
        }
    }

    /// Where a new subscription starts, the one rule of SSE and WebSocket
    /// alike: a job's history after `after` (all of it without one); all
    /// jobs' events after `after`, or from now on without one. Also says
    /// whether events after `after` were removed from the log (then the
    /// client is told: `stream.reset`). Call it after the listener watches
    /// `target`, so that nothing committed meanwhile is missed.
    pub async fn open(
        target: Target,
        after: Option<EventId>,
        hub: &Hub,
        store: &dyn Store,
    ) -> StoreResult<(Feed, bool)> {
        Ok(match (&target, after) {
            (Target::All(_), None) => (Feed::live(target, hub.head()), false),
            (Target::All(_), Some(a)) => {
                let reset = store.log_floor().await? > Some(a);
                (Feed::new(target, after), reset)
            }
            (Target::Job(_), _) => (Feed::new(target, after), false),
        })
    }

    /// A feed that starts with the events committed from now on: after
    /// `head`, the newest event already dispatched ([`Hub::head`]). If it
    /// must catch up later, it reads the log from there, not from the
    /// beginning.
    fn live(target: Target, head: Option<EventId>) -> Feed {
        Feed {
            behind: false,
            ..Feed::new(target, head)
        }
    }

    pub fn last(&self) -> Option<EventId> {
        self.last
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The feed may have missed events: catch up from the store before
    /// taking live ones again.
    pub fn resync(&mut self) {
        self.behind = true;
        self.cursor = self.cursor.max(self.last);
    }

    /// The next event of the history, reading the store as needed; `None`
    /// once caught up (then live events are taken).
    pub async fn next_backlog(&mut self, store: &dyn Store) -> StoreResult<Option<EventRecord>> {
        loop {
            if self.finished {
                self.backlog.clear();
                return Ok(None);
            }
            if let Some(e) = self.backlog.pop_front() {
                if self.take(&e) {
                    return Ok(Some(e));
                }
                continue;
            }
            if !self.behind {
                // Caught up: give the replay's buffer back (an idle
                // connection should hold as little as it can).
                if self.backlog.capacity() > 0 {
                    self.backlog = VecDeque::new();
                }
                return Ok(None);
            }
            let page = match &self.target {
                Target::Job(id) => {
                    let page = store.events(*id, self.cursor).await?;
                    self.behind = false;
                    page
                }
                Target::All(_) => {
                    let page = store.log(self.cursor, LOG_PAGE).await?;
                    self.behind = page.len() == LOG_PAGE as usize;
                    page
                }
            };
            if let Some(e) = page.last() {
                self.cursor = self.cursor.max(Some(e.id));
            }
            self.backlog.extend(page);
        }
    }

    /// Offers a live event: true if the feed delivers it now. While the
    /// feed is catching up it refuses (the read of the store will include
    /// the event: it was committed before it was published).
    pub fn offer(&mut self, e: &EventRecord) -> bool {
        !self.behind && self.backlog.is_empty() && self.take(e)
    }

    fn take(&mut self, e: &EventRecord) -> bool {
        if self.finished || !self.target.matches(e) || Some(e.id) <= self.last {
            return false;
        }
        self.last = Some(e.id);
        self.cursor = self.cursor.max(self.last);
        if matches!(self.target, Target::Job(_)) && e.kind.is_terminal() {
            self.finished = true;
        }
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;
    use replyd_core::EventKind;
    use replyd_core::job::NewJob;

    pub(crate) fn record(
        id: i64,
        job: JobId,
        tenant: &str,
        queue: &str,
        kind: EventKind,
    ) -> EventRecord {
        let new = NewJob {
            id: job,
            tenant: Tenant(tenant.into()),
            queue: queue.into(),
            input: Bytes::new(),
            max_attempts: 1,
            timeout: std::time::Duration::from_secs(1),
            ttl: std::time::Duration::from_secs(1),
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
        };
        let now = Utc::now();
        EventRecord {
            id: EventId(id),
            job_id: job,
            tenant: Tenant(tenant.into()),
            queue: queue.into(),
            kind,
            at: now,
            job: new.into_record(now).0,
        }
    }

    fn received(l: &mut Listener) -> Vec<(u32, i64)> {
        let mut out = Vec::new();
        while let Ok(live) = l.rx.try_recv() {
            if let Live::Event { tag, event } = live {
                out.push((tag, event.record.id.0));
            }
        }
        out
    }

    #[test]
    fn routes_by_job_and_scope() {
        let hub = Hub::new(16);
        let (a, b) = (JobId::new(), JobId::new());
        let mut l1 = hub.listen();
        let mut l2 = hub.listen();
        assert!(l1.watch(1, Target::Job(a)));
        assert!(l2.watch(
            7,
            Target::All(Scope {
                tenant: Some(Tenant("t".into())),
                queue: Some("q".into()),
            })
        ));
        hub.publish(&Arc::new(vec![
            record(1, a, "t", "q", EventKind::Accepted),
            record(2, b, "t", "q", EventKind::Accepted),
            record(3, b, "u", "q", EventKind::Accepted),
            record(4, b, "t", "other", EventKind::Accepted),
        ]));
        assert_eq!(received(&mut l1), vec![(1, 1)]);
        assert_eq!(received(&mut l2), vec![(7, 1), (7, 2)]);
        l1.unwatch(1);
        hub.publish(&Arc::new(vec![record(5, a, "t", "q", EventKind::Started)]));
        assert_eq!(received(&mut l1), vec![]);
        drop(l2);
        assert_eq!(hub.listeners(), 1);
        assert!(hub.lock().by_queue.is_empty());
    }

    #[test]
    fn a_full_listener_is_cut_off_and_others_go_on() {
        let hub = Hub::new(2);
        let a = JobId::new();
        let mut slow = hub.listen();
        let mut fast = hub.listen();
        slow.watch(0, Target::Job(a));
        fast.watch(0, Target::Job(a));
        for i in 1..=3 {
            hub.publish(&Arc::new(vec![record(i, a, "t", "q", EventKind::Progress)]));
            received(&mut fast);
        }
        assert!(slow.overflowed());
        assert!(!fast.overflowed());
        // What was buffered is still delivered, then the listener ends.
        assert_eq!(received(&mut slow), vec![(0, 1), (0, 2)]);
        assert!(matches!(
            slow.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert_eq!(hub.listeners(), 1);
    }

    #[test]
    fn a_feed_takes_each_id_once_and_in_order() {
        let a = JobId::new();
        let mut feed = Feed::new(Target::Job(a), Some(EventId(2)));
        feed.behind = false;
        let e = |id, kind| record(id, a, "t", "q", kind);
        assert!(!feed.offer(&e(2, EventKind::Started)), "at the resume id");
        assert!(feed.offer(&e(3, EventKind::Progress)));
        assert!(!feed.offer(&e(3, EventKind::Progress)), "a duplicate");
        assert!(!feed.offer(&record(4, JobId::new(), "t", "q", EventKind::Progress)));
        feed.resync();
        assert!(!feed.offer(&e(5, EventKind::Progress)), "while catching up");
        feed.behind = false;
        assert!(feed.offer(&e(5, EventKind::Succeeded)));
        assert!(feed.finished());
        assert!(!feed.offer(&e(6, EventKind::Progress)), "after the end");
        assert_eq!(feed.last(), Some(EventId(5)));
    }
}
