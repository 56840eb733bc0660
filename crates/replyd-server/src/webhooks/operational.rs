//! The operational webhook (`[operations] webhook_url`): every operational
//! event (`replyd_core::ops`) POSTed in order, signed like every webhook
//! (`webhook-id` is `ops_<event id>`), retried on the webhook schedule.
//!
//! One node of a cluster sends at a time: it holds a lease kept in the
//! store's settings ([`LEASE`]) and advances a cursor kept there too
//! ([`CURSOR`]) after each event is delivered or given up on, so each
//! event is sent at least once whichever node dies. The first node started
//! with the webhook configured sets the cursor at the newest event:
//! history from before is not sent (the SSE stream shows it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::ops::OpsEvent;
use replyd_core::{Clock, Store, StoreError};
use tokio_util::sync::CancellationToken;

use super::Runtime;
use super::deliver::Message;
use crate::cluster::{Cursor, Position, Singleton};
use crate::outbox::Verdict;

/// The setting that says which node sends, until when.
pub const LEASE: &str = "ops_webhook_lease";
/// The setting that holds the id of the last event sent or given up on.
pub const CURSOR: Cursor = Cursor("ops_webhook_cursor");
/// How long a lease lasts; it is renewed when half has passed.
const LEASE_FOR: Duration = Duration::from_secs(15);
/// How often the sender looks for events.
const POLL: Duration = Duration::from_millis(500);

/// The event being sent: its id, the attempts made, when to try again.
struct Trying {
    id: i64,
    attempts: usize,
    next: DateTime<Utc>,
}

pub async fn run(
    store: Arc<dyn Store>,
    webhooks: Arc<Runtime>,
    url: String,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let lease = Singleton::new(LEASE, LEASE_FOR);
    let mut trying: Option<Trying> = None;
    // Set the cursor now, before anything this node serves can raise an
    // event: events from then on are all sent.
    if let Err(e) = cursor(&*store).await {
        tracing::warn!(error = %e, "operational webhook: cannot read the store");
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let step = async {
            if !lease.hold(&*store, clock.now()).await? {
                trying = None;
                return Ok::<_, StoreError>(());
            }
            // Send what is due, one event after another.
            while !shutdown.is_cancelled() {
                let cursor = cursor(&*store).await?;
                let Some(event) = store.ops_events(cursor.0, None, 1).await?.pop() else {
                    return Ok(());
                };
                let now = clock.now();
                let t = match trying.take() {
                    Some(t) if t.id == event.id => t,
                    _ => Trying {
                        id: event.id,
                        attempts: 0,
                        next: now,
                    },
                };
                if t.next > now {
                    trying = Some(t);
                    return Ok(());
                }
                let a = webhooks
                    .deliverer
                    .attempt(
                        &url,
                        &message(&event),
                        &webhooks.secrets,
                        &webhooks.keys,
                        now,
                    )
                    .await;
                let attempts = t.attempts + 1;
                let next = match a.verdict {
                    Verdict::Delivered => None,
                    Verdict::Retry => webhooks.limits.schedule.delay(attempts + 1, a.retry_after),
                    Verdict::Gone | Verdict::Refused => None,
                };
                if let Some(delay) = next {
                    tracing::debug!(event = event.id, attempts, error = ?a.error, "operational webhook: will try again");
                    trying = Some(Trying {
                        id: event.id,
                        attempts,
                        next: now + chrono::Duration::from_std(delay).unwrap_or_default(),
                    });
                    return Ok(());
                }
                let outcome = if a.verdict == Verdict::Delivered {
                    "delivered"
                } else {
                    tracing::warn!(event = event.id, kind = event.kind.name(), attempts, error = ?a.error,
                        "operational webhook: given up on an event");
                    "given_up"
                };
                metrics::counter!("replyd_ops_webhook_events_total", "outcome" => outcome)
                    .increment(1);
                if !CURSOR.advance(&*store, &cursor, event.id).await? {
                    // Another node moved it (this one's lease had lapsed).
                    return Ok(());
                }
            }
            Ok(())
        };
        if let Err(e) = step.await {
            tracing::warn!(error = %e, "operational webhook: cannot read the store");
        }
    }
}

/// The cursor; started at the newest event.
async fn cursor(store: &dyn Store) -> Result<Position, StoreError> {
    if let Some(c) = CURSOR.get(store).await? {
        return Ok(c);
    }
    CURSOR
        .get_or_init(store, store.last_ops_event().await?)
        .await
}

/// The message of one event: `{"type", "timestamp", "data"}`, the tenant in
/// the data.
fn message(e: &OpsEvent) -> Message {
    let mut data = e.data.clone();
    if let Some(map) = data.as_object_mut() {
        map.insert("tenant".into(), e.tenant.0.clone().into());
    }
    let body = serde_json::json!({
        "type": e.kind.name(),
        "timestamp": e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    });
    Message {
        id: format!("ops_{}", e.id),
        body: Bytes::from(body.to_string()),
        jwt: None,
        trace: None,
    }
}
