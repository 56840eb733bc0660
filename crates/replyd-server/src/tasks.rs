//! Background maintenance: the lease reaper (requeues or fails jobs whose
//! worker went silent) and the garbage collector (purges expired jobs).
//! Both are safe to run on every node at once.

use std::sync::Arc;

use crate::app::App;
use crate::config::secs;

/// Rows one sweep handles before yielding.
const SWEEP: u32 = 1000;

pub async fn reaper(app: Arc<App>) {
    let mut tick = tokio::time::interval(secs(app.config.reaper_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        loop {
            match app.store.expire_leases(app.now(), SWEEP).await {
                Ok(n) if n as u32 == SWEEP => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(jobs = n, "requeued jobs whose lease expired");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease sweep failed");
                    break;
                }
            }
        }
    }
}

pub async fn garbage_collector(app: Arc<App>) {
    let mut tick = tokio::time::interval(secs(app.config.gc_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        loop {
            match app.store.collect_garbage(app.now(), SWEEP).await {
                Ok(n) if n as u32 == SWEEP => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(jobs = n, "purged expired jobs");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection failed");
                    break;
                }
            }
        }
    }
}
