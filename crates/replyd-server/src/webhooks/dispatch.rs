//! The dispatcher: claims due deliveries from the outbox, attempts them
//! with bounded concurrency (overall, and per endpoint so that a slow or
//! dead receiver cannot hold up the others), and records each attempt with
//! what becomes of the delivery. Every node runs one; the store's claims
//! keep them from sending the same delivery twice (except after a crash,
//! when a claim runs out and the delivery is sent again with the same
//! `webhook-id`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use replyd_core::webhook::{AfterAttempt, AttemptRecord, Delivery};
use replyd_core::{EventKind, JobState};
use tokio::sync::{Notify, Semaphore};

use super::deliver::{Message, Verdict};
use crate::app::App;

/// How often an idle dispatcher looks for due deliveries.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How long a delivery whose endpoint is busy waits before it is due again.
const BUSY_DEFER_MS: i64 = 200;

/// Results up to this size ride inline in the payload (`data.result`).
const INLINE_RESULT: usize = 64 * 1024;

pub async fn run(app: Arc<App>) {
    let rt = &app.webhooks;
    let overall = Arc::new(Semaphore::new(rt.concurrency));
    let endpoints: Arc<Mutex<HashMap<String, Arc<Semaphore>>>> = Default::default();
    let done = Arc::new(Notify::new());
    // A claim outlives the longest attempt, so a live dispatcher keeps it;
    // a crashed one's claims run out soon after.
    let lease = rt.attempt_timeout + Duration::from_secs(10);
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        let free = overall.available_permits().min(100);
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
        let started = claimed.len();
        let mut busy = Vec::new();
        for d in claimed {
            let key = endpoint_of(&d.url);
            let ep = endpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(rt.per_endpoint)))
                .clone();
            // A saturated endpoint: give the delivery back, due a moment
            // later, and go on with the others.
            let (Ok(ep_permit), Ok(permit)) =
                (ep.try_acquire_owned(), overall.clone().try_acquire_owned())
            else {
                busy.push(d.id);
                continue;
            };
            let (app, done) = (app.clone(), done.clone());
            tokio::spawn(async move {
                attempt(&app, d).await;
                drop((permit, ep_permit));
                done.notify_one();
            });
        }
        if !busy.is_empty() {
            let later = app.now() + chrono::Duration::milliseconds(BUSY_DEFER_MS);
            if let Err(e) = app.store.defer_deliveries(busy, later).await {
                tracing::warn!(error = %e, "cannot defer webhook deliveries");
            }
        }
        if started == 0 {
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = done.notified() => {}
            }
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

async fn attempt(app: &App, d: Delivery) {
    let rt = &app.webhooks;
    let msg = Message {
        id: d.message_id(),
        body: payload(app, &d).await,
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
    let record = AttemptRecord {
        at: now,
        status: a.status,
        latency_ms: u64::try_from(a.latency.as_millis()).unwrap_or(u64::MAX),
        error: a.error,
    };
    if let Err(e) = app.store.record_attempt(d.id, record, after).await {
        // The claim runs out and the delivery is attempted again: at least
        // once, with the same webhook-id.
        tracing::warn!(error = %e, delivery = d.id, "cannot record a webhook attempt");
    }
}

/// `{"type", "timestamp", "data"}`: the job as it was after the event, with
/// a small JSON result inline. The same bytes on every attempt.
async fn payload(app: &App, d: &Delivery) -> Bytes {
    let mut data = serde_json::to_value(app.render(&d.job)).unwrap_or_default();
    if d.kind == EventKind::Succeeded
        && d.job.state == JobState::Succeeded
        && let Ok(Some(out)) = app.store.output(d.job.id).await
        && out.content_type.starts_with("application/json")
        && out.body.len() <= INLINE_RESULT
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.body)
    {
        data["result"] = v;
    }
    let body = serde_json::json!({
        "type": d.kind.name(),
        "timestamp": d.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default().into()
}
