//! The dispatcher: claims due deliveries from the outbox, attempts them
//! with bounded concurrency (overall, and per endpoint so that a slow or
//! dead receiver cannot hold up the others), and records each attempt with
//! what becomes of the delivery. Every node runs one; the store's claims
//! keep them from sending the same delivery twice (except after a crash,
//! when a claim runs out and the delivery is sent again with the same
//! `webhook-id`).
//!
//! It wakes when a commit appends an event that owes a delivery (the
//! store's bus, on every node), when an attempt ends, and every
//! [`IDLE_POLL`] for retries that have come due.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use replyd_core::store::{Claimed, EventBatch, JobOutput, Outcome};
use replyd_core::webhook::{AfterAttempt, AttemptRecord, Delivery, INLINE_RESULT};
use replyd_core::{EventKind, JobState};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::deliver::{Message, Verdict};
use crate::app::App;

/// How often an idle dispatcher looks for due deliveries (retries, and
/// deliveries whose wake-up it missed).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How long a delivery whose endpoint is busy waits before it is due again.
const BUSY_DEFER_MS: i64 = 200;

/// Deliveries one claim takes at most.
const MAX_CLAIM: usize = 100;

/// Outcomes one transaction records at most.
const MAX_RECORD: usize = 256;

/// What an attempt holds until its outcome is durable: a slot overall and
/// one at its endpoint.
type Slots = (OwnedSemaphorePermit, OwnedSemaphorePermit);

pub async fn run(app: Arc<App>) {
    let rt = &app.webhooks;
    let overall = Arc::new(Semaphore::new(rt.concurrency));
    let mut endpoints: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let done = Arc::new(Notify::new());
    let mut bus = app.store.subscribe();
    let (finished, outcomes) = mpsc::unbounded_channel();
    tokio::spawn(recorder(app.clone(), outcomes, done.clone()));
    // A claim outlives the longest attempt, so a live dispatcher keeps it;
    // a crashed one's claims run out soon after.
    let lease = rt.attempt_timeout + Duration::from_secs(10);
    // Behind a backlog, claim once this many attempts can start: one claim
    // (a durable write) per batch, not one per finished attempt.
    let batch = (rt.concurrency / 4).clamp(1, MAX_CLAIM);
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        let free = overall.available_permits().min(MAX_CLAIM);
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match app
                .store
                .claim_deliveries(app.now(), lease, free as u32)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim webhook deliveries");
                    Vec::new()
                }
            }
        };
        // As many as asked for: more may be due.
        let backlog = free > 0 && claimed.len() == free;
        let mut busy = Vec::new();
        for c in claimed {
            let ep = endpoints
                .entry(endpoint_of(&c.delivery.url))
                .or_insert_with(|| Arc::new(Semaphore::new(rt.per_endpoint)))
                .clone();
            // A saturated endpoint: give the delivery back, due a moment
            // later, and go on with the others.
            let (Ok(ep_permit), Ok(permit)) =
                (ep.try_acquire_owned(), overall.clone().try_acquire_owned())
            else {
                busy.push(c.delivery.id);
                continue;
            };
            let (app, finished) = (app.clone(), finished.clone());
            tokio::spawn(async move {
                let outcome = attempt(&app, c).await;
                let _ = finished.send((outcome, (permit, ep_permit)));
            });
        }
        if !busy.is_empty() {
            let later = app.now() + chrono::Duration::milliseconds(BUSY_DEFER_MS);
            if let Err(e) = app.store.defer_deliveries(busy, later).await {
                tracing::warn!(error = %e, "cannot defer webhook deliveries");
            }
        }
        if backlog {
            // Wait for room for a batch (or the end of every attempt).
            while overall.available_permits() < batch.min(rt.concurrency) {
                tokio::select! {
                    _ = app.shutdown.cancelled() => return,
                    _ = done.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => break,
                }
            }
            continue;
        }
        // Drained. Wake-ups that came meanwhile are stale but for those
        // published after the claim: claim once more rather than wait.
        if drain_owed(&mut bus) {
            continue;
        }
        endpoints.retain(|_, s| s.available_permits() < rt.per_endpoint);
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tokio::time::sleep(IDLE_POLL) => {}
            // An attempt ended: the job's next delivery may be due now.
            _ = done.notified() => {}
            _ = owed(&mut bus) => {}
        }
    }
}

/// Resolves once a commit appended an event that owes a delivery (or the
/// bus lagged, which may have hidden one).
async fn owed(bus: &mut broadcast::Receiver<EventBatch>) {
    loop {
        match bus.recv().await {
            Ok(batch) if owes(&batch) => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Whether a commit's events owe a delivery.
fn owes(batch: &EventBatch) -> bool {
    batch.iter().any(|e| e.job.webhook_for(e.kind).is_some())
}

/// Takes what the bus holds already: whether any of it owes a delivery.
fn drain_owed(bus: &mut broadcast::Receiver<EventBatch>) -> bool {
    let mut owed = false;
    loop {
        match bus.try_recv() {
            Ok(batch) => owed |= owes(&batch),
            Err(TryRecvError::Lagged(_)) => owed = true,
            Err(_) => return owed,
        }
    }
}

/// scheme://host:port: what per-endpoint limits count by.
fn endpoint_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_string(),
    }
}

/// One attempt on a claimed delivery: what became of it.
async fn attempt(app: &App, c: Claimed) -> Outcome {
    let rt = &app.webhooks;
    let d = &c.delivery;
    let msg = Message {
        id: d.message_id(),
        body: payload(app, d, c.result.as_ref()),
    };
    let now = app.now();
    let a = rt
        .deliverer
        .attempt(&d.url, &msg, rt.secrets_of(&d.job.tenant), &rt.keys, now)
        .await;
    let after = match a.verdict {
        Verdict::Delivered => AfterAttempt::Delivered,
        Verdict::Gone | Verdict::Refused => AfterAttempt::Dead,
        Verdict::Retry => match rt.schedule.delay(d.attempts as usize + 2, a.retry_after) {
            Some(delay) => {
                AfterAttempt::RetryAt(now + chrono::Duration::from_std(delay).unwrap_or_default())
            }
            None => AfterAttempt::Dead,
        },
    };
    let outcome = match after {
        AfterAttempt::Delivered => "delivered",
        AfterAttempt::RetryAt(_) => "retry",
        AfterAttempt::Dead => "dead",
    };
    metrics::counter!("replyd_webhook_attempts_total", "outcome" => outcome).increment(1);
    Outcome {
        delivery: d.id,
        attempt: AttemptRecord {
            at: now,
            status: a.status,
            latency_ms: u64::try_from(a.latency.as_millis()).unwrap_or(u64::MAX),
            error: a.error,
        },
        after,
    }
}

/// Writes the outcomes of finished attempts, whatever has finished
/// meanwhile in one transaction, then frees their slots (so that attempts
/// in flight and outcomes not yet durable are bounded together).
async fn recorder(
    app: Arc<App>,
    mut finished: mpsc::UnboundedReceiver<(Outcome, Slots)>,
    done: Arc<Notify>,
) {
    while let Some(first) = finished.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_RECORD
            && let Ok(next) = finished.try_recv()
        {
            batch.push(next);
        }
        let (outcomes, slots): (Vec<Outcome>, Vec<Slots>) = batch.into_iter().unzip();
        let n = outcomes.len();
        if let Err(e) = app.store.record_attempts(outcomes).await {
            // Their claims run out and they are attempted again: at least
            // once, with the same webhook-id.
            tracing::warn!(error = %e, attempts = n, "cannot record webhook attempts");
        }
        drop(slots);
        done.notify_one();
    }
}

/// The envelope: `{"type", "timestamp", "data"}`.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: PayloadData<'a>,
}

/// The job as it was after the event, and its result when inline.
#[derive(Serialize)]
struct PayloadData<'a> {
    #[serde(flatten)]
    job: replyd_proto::Job,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
}

/// The body of a delivery: the job as it was after the event, with a small
/// JSON result inline. The same bytes on every attempt.
fn payload(app: &App, d: &Delivery, result: Option<&JobOutput>) -> Bytes {
    let result = result
        .filter(|out| {
            d.kind == EventKind::Succeeded
                && d.job.state == JobState::Succeeded
                && out.content_type.starts_with("application/json")
                && out.body.len() <= INLINE_RESULT
        })
        .and_then(|out| serde_json::from_slice::<&RawValue>(&out.body).ok());
    let body = Payload {
        kind: d.kind.name(),
        timestamp: d
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        data: PayloadData {
            job: app.render(&d.job),
            result,
        },
    };
    serde_json::to_vec(&body).unwrap_or_default().into()
}
