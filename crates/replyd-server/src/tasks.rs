//! Background maintenance: the lease reaper (requeues or fails jobs whose
//! worker went silent), the garbage collector (purges expired jobs), and
//! the queues' figures fed by the event log. All are safe to run on every
//! node at once.

use std::future::Future;
use std::sync::Arc;

use replyd_core::store::StoreResult;

use crate::app::App;
use crate::config::secs;
use crate::scheduler;

/// Rows one sweep handles before it goes again.
const SWEEP: u32 = 1000;

pub async fn reaper(app: Arc<App>) {
    let every = app.config.reaper_interval;
    periodically(
        app,
        every,
        "requeued jobs whose lease expired",
        |app| async move { app.store.expire_leases(app.now(), SWEEP).await },
    )
    .await;
}

pub async fn garbage_collector(app: Arc<App>) {
    let every = app.config.gc_interval;
    periodically(app, every, "purged expired jobs", |app| async move {
        let purged = app.store.collect_garbage(app.now(), SWEEP).await?;
        if purged > 0 {
            app.stats.recount();
        }
        Ok(purged)
    })
    .await;
}

/// Removes expired Durable Streams (they answer 404 from the moment they
/// expire; this gives back their space).
pub async fn stream_collector(app: Arc<App>) {
    let every = app.config.gc_interval;
    periodically(app, every, "removed expired streams", |app| async move {
        match app.store.streams() {
            Some(s) => s.stream_expire(app.now(), SWEEP as usize).await,
            None => Ok(0),
        }
    })
    .await;
}

/// Counts every event the store publishes into the queues' figures
/// (`crate::stats`) until shutdown.
pub async fn stats(app: Arc<App>) {
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
            // Counts missed while this task lagged are lost (a chart's
            // dip); the tally is counted again.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => app.stats.recount(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Reads what each tenant's streams hold from the store every 5 s, for
/// `durable_streams.max_tenant_bytes` (when it bounds anything).
pub async fn stream_usage(app: Arc<App>) {
    if !app.stream_bytes.bounded() {
        return;
    }
    let Some(streams) = app.store.streams() else {
        return;
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        match streams.tenant_bytes().await {
            Ok(sums) => app.stream_bytes.refresh(sums),
            Err(e) => tracing::warn!(error = %e, "cannot read what the tenants' streams hold"),
        }
    }
}

/// Runs `sweep` every `every` seconds until shutdown; a sweep that handled a
/// full `SWEEP` of rows runs again at once.
async fn periodically<F, Fut>(app: Arc<App>, every: f64, what: &'static str, sweep: F)
where
    F: Fn(Arc<App>) -> Fut,
    Fut: Future<Output = StoreResult<usize>>,
{
    let mut tick = tokio::time::interval(secs(every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let mut total = 0;
        loop {
            match sweep(app.clone()).await {
                Ok(n) => {
                    total += n;
                    if (n as u32) < SWEEP {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: sweep failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(jobs = total, "{what}");
        }
    }
}

/// Queues scheduled jobs as they come due, and fires the recurring
/// schedules' due ticks, until shutdown (see `crate::scheduler`).
pub async fn promoter(app: Arc<App>) {
    let p = &app.promoter;
    loop {
        let mut promoted = 0;
        loop {
            match app.store.promote_due(app.now(), scheduler::BATCH).await {
                Ok(n) => {
                    promoted += n;
                    if (n as u32) < scheduler::BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot queue the scheduled jobs that are due");
                    break;
                }
            }
        }
        if promoted > 0 {
            tracing::debug!(jobs = promoted, "queued scheduled jobs that came due");
        }
        if let Err(e) = crate::schedules::fire_due(&app).await {
            tracing::warn!(error = %e, "cannot fire the schedules that are due");
        }
        let now = app.now();
        let wait = match app.store.next_due().await {
            Ok(Some(at)) => (at - now).to_std().unwrap_or_default(),
            Ok(None) => scheduler::LOOK_EVERY,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read when the next scheduled job is due");
                scheduler::LOOK_EVERY
            }
        }
        .clamp(scheduler::LOOK_AGAIN, scheduler::LOOK_EVERY);
        let until = now + chrono::Duration::from_std(wait).unwrap_or_default();
        tokio::select! {
            _ = p.sleep(until, wait) => {}
            _ = app.shutdown.cancelled() => return,
        }
    }
}
