//! The dispatcher of one outbox channel: claims its due deliveries,
//! attempts them through its [`Sender`] with bounded concurrency (overall,
//! and per endpoint so that a slow or dead receiver cannot hold up the
//! others), and records each attempt with what becomes of the delivery.
//! Every node runs one per channel; the store's claims keep them from
//! sending the same delivery twice (except after a crash, when a claim runs
//! out and the delivery is sent again with the same message id).
//!
//! The pipeline, so that neither a claim's commit nor a record's holds up
//! the requests:
//! - the loop claims ahead in batches (one durable write per batch) into a
//!   queue per endpoint, and starts what the slots allow, endpoints in
//!   turn;
//! - an endpoint's queue holds at most `per_endpoint` deliveries (what it
//!   will take within about one attempt's time, well inside the claim);
//!   what it cannot take yet is given back to the store, due again when
//!   the endpoint should have room, spread at the pace its latency allows,
//!   so a large backlog for one endpoint is handed back once, not churned;
//! - each attempt frees its request slot as soon as the answer is in; the
//!   recorder writes finished outcomes in batches (one transaction each).
//!   Claimed deliveries whose outcome is not yet durable are bounded.
//!
//! It wakes when a commit appends an event that owes a delivery (the
//! store's bus, on every node), when outcomes become durable (a job's next
//! delivery may be due), and every [`IDLE_POLL`] for retries that have come
//! due.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use replyd_core::outbox::{AfterAttempt, AttemptRecord, Channel};
use replyd_core::store::{Claimed, EventBatch, Outcome, StoreResult};
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::{Sender, Verdict};

/// How often an idle dispatcher looks for due deliveries (retries, and
/// deliveries whose wake-up it missed).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// An endpoint's latency until its first answer: how a backlog for it is
/// paced at first.
const FIRST_LATENCY: Duration = Duration::from_millis(50);

/// The least horizon deliveries given back to a busy endpoint are spread
/// over.
const MIN_HORIZON: chrono::Duration = chrono::Duration::seconds(2);

/// Deliveries one claim takes at most.
const MAX_CLAIM: usize = 100;

/// Outcomes one transaction records at most.
const MAX_RECORD: usize = 256;

/// Claimed deliveries whose outcome is not yet durable (queued, in flight,
/// or waiting for the recorder), per request slot.
const UNRECORDED_PER_SLOT: usize = 4;

/// A claimed delivery and its place among the unrecorded.
type Item = (Claimed, OwnedSemaphorePermit);

/// What the dispatcher keeps of one endpoint (scheme, host and port).
struct Endpoint {
    /// Its requests in flight (`per_endpoint`).
    slots: Arc<Semaphore>,
    /// Claimed, waiting for one of its slots.
    queue: VecDeque<Item>,
    /// Mean attempt latency in µs (a moving average the attempts update).
    latency_us: Arc<AtomicU64>,
    /// Deliveries given back are due again from here on, one per
    /// latency / `per_endpoint`.
    paced_until: DateTime<Utc>,
}

impl Endpoint {
    fn new(per_endpoint: usize, now: DateTime<Utc>) -> Endpoint {
        Endpoint {
            slots: Arc::new(Semaphore::new(per_endpoint)),
            queue: VecDeque::new(),
            latency_us: Arc::new(AtomicU64::new(FIRST_LATENCY.as_micros() as u64)),
            paced_until: now,
        }
    }

    /// When a delivery it cannot take now is due again: after those given
    /// back before it, one per latency / `per_endpoint`, but never beyond
    /// a horizon of four latencies (at least [`MIN_HORIZON`]), so that an
    /// estimate from a slow spell delays nothing for long.
    fn pace(&mut self, per_endpoint: usize, now: DateTime<Utc>) -> DateTime<Utc> {
        let latency = self.latency_us.load(Ordering::Relaxed);
        let us = |v: u64| chrono::Duration::microseconds(i64::try_from(v).unwrap_or(i64::MAX));
        let step = us(latency / per_endpoint.max(1) as u64);
        let horizon = us(latency.saturating_mul(4)).max(MIN_HORIZON);
        // Idle with deliveries paced ahead: the pace was too slow.
        let from = if self.slots.available_permits() == per_endpoint && self.queue.is_empty() {
            now
        } else {
            self.paced_until.max(now)
        };
        self.paced_until = (from + step).min(now + horizon);
        self.paced_until
    }

    fn idle(&self, per_endpoint: usize, now: DateTime<Utc>) -> bool {
        self.queue.is_empty()
            && self.slots.available_permits() == per_endpoint
            && self.paced_until <= now
    }
}

/// Works `sender`'s channel until shutdown.
pub async fn run(cx: super::Context, sender: Arc<dyn Sender>) {
    let rt = sender.limits();
    let channel = sender.channel();
    let per_endpoint = rt.per_endpoint.max(1);
    // Requests in flight, over all endpoints.
    let overall = Arc::new(Semaphore::new(rt.concurrency));
    let unrecorded = Arc::new(Semaphore::new(rt.concurrency * UNRECORDED_PER_SLOT));
    let mut endpoints: HashMap<String, Endpoint> = HashMap::new();
    // Endpoints with queued deliveries, in turn.
    let mut turns: VecDeque<String> = VecDeque::new();
    let mut queued = 0usize;
    // A request ended: a slot is free.
    let slot_freed = Arc::new(Notify::new());
    // Outcomes are durable: their jobs' next deliveries may be due.
    let recorded = Arc::new(Notify::new());
    let mut bus = cx.store.subscribe();
    let (finished, outcomes) = mpsc::unbounded_channel();
    tokio::spawn(recorder(cx.clone(), outcomes, recorded.clone()));
    // A claim outlives the longest attempt, so a live dispatcher keeps it;
    // a crashed one's claims run out soon after. A queued delivery starts
    // within about one attempt's time.
    let lease = rt.attempt_timeout + Duration::from_secs(10);
    let prefetch = rt.concurrency.min(MAX_CLAIM);
    let cap_us = u64::try_from(rt.attempt_timeout.as_micros()).unwrap_or(u64::MAX);
    // Behind a backlog, claim once this many can be taken: one claim (a
    // durable write) per batch, not one per finished attempt.
    let batch = (rt.concurrency / 4).clamp(1, MAX_CLAIM);
    // The claim under way, and how many it asked for.
    let mut claiming: Option<(JoinHandle<StoreResult<Vec<Claimed>>>, usize)> = None;
    // Whether something may be due that is not claimed yet, and whether
    // the last claim took all it asked for (so more is due).
    let (mut want, mut backlog) = (true, false);
    loop {
        // Start what the slots allow, one endpoint at a time in turn.
        let mut progress = true;
        while progress && overall.available_permits() > 0 {
            progress = false;
            for _ in 0..turns.len() {
                let Some(key) = turns.pop_front() else { break };
                let Some(ep) = endpoints.get_mut(&key) else {
                    continue;
                };
                if let Ok(ep_slot) = ep.slots.clone().try_acquire_owned()
                    && let Ok(slot) = overall.clone().try_acquire_owned()
                    && let Some((c, place)) = ep.queue.pop_front()
                {
                    queued -= 1;
                    progress = true;
                    let latency = ep.latency_us.clone();
                    let (cx, sender, finished, slot_freed) = (
                        cx.clone(),
                        sender.clone(),
                        finished.clone(),
                        slot_freed.clone(),
                    );
                    tokio::spawn(async move {
                        let (outcome, took) = attempt(&cx, &*sender, c).await;
                        let avg = latency.load(Ordering::Relaxed);
                        let took = u64::try_from(took.as_micros())
                            .unwrap_or(u64::MAX)
                            .min(cap_us);
                        latency.store(avg - avg / 5 + took / 5, Ordering::Relaxed);
                        drop((slot, ep_slot));
                        slot_freed.notify_one();
                        let _ = finished.send((outcome, place));
                    });
                }
                if !ep.queue.is_empty() {
                    turns.push_back(key);
                }
            }
        }
        // Claim more while there is room: behind a backlog, a batch at a
        // time.
        let room = unrecorded
            .available_permits()
            .min(prefetch.saturating_sub(queued));
        if claiming.is_none() && (want || backlog) && room >= if backlog { batch } else { 1 } {
            want = false;
            let cx = cx.clone();
            let task = tokio::spawn(async move {
                cx.store
                    .claim_deliveries(channel, cx.now(), lease, room as u32)
                    .await
            });
            claiming = Some((task, room));
        }
        if queued == 0 && claiming.is_none() && !want && !backlog {
            let now = cx.now();
            endpoints.retain(|_, ep| !ep.idle(per_endpoint, now));
        }
        tokio::select! {
            _ = cx.shutdown.cancelled() => break,
            claimed = async {
                match claiming.as_mut() {
                    Some((task, _)) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                let asked = claiming.take().map_or(0, |(_, n)| n);
                backlog = false;
                let claimed = match claimed {
                    Ok(Ok(claimed)) => claimed,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot claim webhook deliveries");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a webhook claim panicked");
                        continue;
                    }
                };
                backlog = claimed.len() == asked;
                let now = cx.now();
                let mut give_back = Vec::new();
                for c in claimed {
                    let key = sender.endpoint(&c.delivery);
                    let ep = endpoints
                        .entry(key.clone())
                        .or_insert_with(|| Endpoint::new(per_endpoint, now));
                    // Room was counted before the claim, and only this
                    // loop takes places among the unrecorded.
                    let room_here = ep.queue.len() < per_endpoint;
                    match unrecorded.clone().try_acquire_owned() {
                        Ok(place) if room_here => {
                            if ep.queue.is_empty() {
                                turns.push_back(key);
                            }
                            ep.queue.push_back((c, place));
                            queued += 1;
                        }
                        _ => give_back.push((c.delivery.id, ep.pace(per_endpoint, now))),
                    }
                }
                if !give_back.is_empty() {
                    let cx = cx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = cx.store.defer_deliveries(give_back).await {
                            tracing::warn!(error = %e, "cannot give back webhook deliveries");
                        }
                    });
                }
                // Wake-ups published while it ran may name deliveries it
                // did not see: claim once more.
                want |= drain_owed(&mut bus, channel);
            }
            _ = slot_freed.notified() => {}
            _ = recorded.notified() => want = true,
            _ = owed(&mut bus, channel) => want = true,
            _ = tokio::time::sleep(IDLE_POLL) => want = true,
        }
    }
}

/// Resolves once a commit appended an event that owes a delivery on
/// `channel` (or the bus lagged, which may have hidden one).
async fn owed(bus: &mut broadcast::Receiver<EventBatch>, channel: Channel) {
    loop {
        match bus.recv().await {
            Ok(batch) if owes(&batch, channel) => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Whether a commit's events owe a delivery on `channel`.
fn owes(batch: &EventBatch, channel: Channel) -> bool {
    batch
        .iter()
        .any(|e| e.job.owed(e.kind).any(|(c, _)| c == channel))
}

/// Takes what the bus holds already: whether any of it owes a delivery on
/// `channel`.
fn drain_owed(bus: &mut broadcast::Receiver<EventBatch>, channel: Channel) -> bool {
    let mut owed = false;
    loop {
        match bus.try_recv() {
            Ok(batch) => owed |= owes(&batch, channel),
            Err(TryRecvError::Lagged(_)) => owed = true,
            Err(_) => return owed,
        }
    }
}

/// One attempt on a claimed delivery: what became of it, and how long the
/// endpoint took.
async fn attempt(cx: &super::Context, sender: &dyn Sender, mut c: Claimed) -> (Outcome, Duration) {
    if let Some(output) = super::output_as_result(cx, &c).await {
        c.result = Some(output);
    }
    let now = cx.now();
    let a = sender.attempt(&c, now).await;
    let d = &c.delivery;
    let ended = now + chrono::Duration::from_std(a.latency).unwrap_or_default();
    let failed = (a.verdict != Verdict::Delivered).then(|| a.error.as_deref().unwrap_or("failed"));
    cx.telemetry
        .delivered(d, d.attempts + 1, now, ended, a.status, failed);
    let after = match a.verdict {
        Verdict::Delivered => AfterAttempt::Delivered,
        Verdict::Gone | Verdict::Refused => AfterAttempt::Dead,
        Verdict::Retry => match sender
            .limits()
            .schedule
            .delay(d.attempts as usize + 2, a.retry_after)
        {
            Some(delay) => {
                AfterAttempt::RetryAt(now + chrono::Duration::from_std(delay).unwrap_or_default())
            }
            None => AfterAttempt::Dead,
        },
    };
    let label = match after {
        AfterAttempt::Delivered => "delivered",
        AfterAttempt::RetryAt(_) => "retry",
        AfterAttempt::Dead => "dead",
    };
    metrics::counter!(
        "replyd_delivery_attempts_total",
        "channel" => sender.channel().as_str(),
        "outcome" => label
    )
    .increment(1);
    let outcome = Outcome {
        delivery: d.id,
        attempt: AttemptRecord {
            at: now,
            status: a.status,
            latency_ms: u64::try_from(a.latency.as_millis()).unwrap_or(u64::MAX),
            error: a.error,
        },
        after,
    };
    (outcome, a.latency)
}

/// Writes the outcomes of finished attempts, whatever has finished
/// meanwhile in one transaction, then lets the dispatcher claim as many
/// again.
async fn recorder(
    cx: super::Context,
    mut finished: mpsc::UnboundedReceiver<(Outcome, OwnedSemaphorePermit)>,
    recorded: Arc<Notify>,
) {
    while let Some(first) = finished.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_RECORD
            && let Ok(next) = finished.try_recv()
        {
            batch.push(next);
        }
        let (outcomes, permits): (Vec<Outcome>, Vec<_>) = batch.into_iter().unzip();
        let n = outcomes.len();
        if let Err(e) = cx.store.record_attempts(outcomes, cx.watch).await {
            // Their claims run out and they are attempted again: at least
            // once, with the same webhook-id.
            tracing::warn!(error = %e, attempts = n, "cannot record delivery attempts");
        }
        drop(permits);
        recorded.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_endpoint_is_paced_by_its_latency_within_a_horizon() {
        let t0 = DateTime::<Utc>::from_timestamp(1_000_000, 0).unwrap();
        let mut ep = Endpoint::new(4, t0);
        ep.latency_us.store(40_000, Ordering::Relaxed);
        // Busy: one slot taken.
        let _taken = ep.slots.clone().try_acquire_owned().unwrap();
        let ms = |d: DateTime<Utc>| (d - t0).num_milliseconds();
        // 40 ms latency, 4 at once: one every 10 ms.
        assert_eq!(ms(ep.pace(4, t0)), 10);
        assert_eq!(ms(ep.pace(4, t0)), 20);
        assert_eq!(ms(ep.pace(4, t0)), 30);
        // Never beyond the horizon (here the 2 s floor: 4 latencies are
        // 160 ms).
        for _ in 0..1000 {
            ep.pace(4, t0);
        }
        assert_eq!(ms(ep.pace(4, t0)), 2000);
        // A slow estimate (10 s): 2.5 s apart, within four latencies.
        ep.latency_us.store(10_000_000, Ordering::Relaxed);
        assert_eq!(ms(ep.pace(4, t0)), 4500);
        for _ in 0..100 {
            ep.pace(4, t0);
        }
        assert_eq!(ms(ep.pace(4, t0)), 40_000);
        // Idle (no slot taken, nothing queued): paced from now again.
        drop(_taken);
        ep.latency_us.store(40_000, Ordering::Relaxed);
        assert_eq!(ms(ep.pace(4, t0)), 10);
        assert!(ep.idle(4, t0 + chrono::Duration::milliseconds(10)));
        assert!(!ep.idle(4, t0));
    }
}
