//! Executors turn queued jobs into results inside the server. They use the
//! same lease protocol as remote workers ([`crate::app::App::lease`] and
//! the same commands), so fencing, retries and cancellation behave alike.
//! [`work`] is the loop they share: lease as many jobs as there are free
//! slots, in one call, and run each.

pub mod demo;
pub mod exec;
pub mod http;
pub mod output;
pub mod process;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use replyd_core::JobId;
use replyd_core::store::{LeaseQuery, Leased};
use tokio::sync::Semaphore;

use crate::app::App;
use crate::live::{Live, Target};

/// Jobs one lease call takes at most.
const MAX_BATCH: usize = 100;

/// How one executor leases.
#[derive(Debug, Clone)]
pub struct Leasing {
    pub queue: String,
    /// Shown as the lease's worker.
    pub worker: String,
    /// How long each lease lasts (the queue's timeout caps it).
    pub length: Duration,
    /// Jobs run at once on this node.
    pub concurrency: usize,
}

/// Leases `leasing.queue`'s jobs until shutdown, at most `concurrency` at
/// once, and runs `run` for each. Free slots are filled by one lease call
/// (a batch), not one call each.
pub async fn work<F, Fut>(app: Arc<App>, leasing: Leasing, run: F)
where
    F: Fn(Arc<App>, Leased) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(leasing.concurrency.max(1)));
    loop {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = app.shutdown.cancelled() => return,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH
            && let Ok(p) = slots.clone().try_acquire_owned()
        {
            permits.push(p);
        }
        let query = LeaseQuery {
            queue: leasing.queue.clone(),
            tenant: None,
            worker: leasing.worker.clone(),
            length: leasing.length,
            max: permits.len() as u32,
            limits: Default::default(),
        };
        match app.lease(query, Duration::from_secs(30)).await {
            Ok(leased) => {
                for (job, permit) in leased.into_iter().zip(permits) {
                    let job = run(app.clone(), job);
                    tokio::spawn(async move {
                        job.await;
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                tracing::warn!(queue = %leasing.queue, worker = %leasing.worker, error = %e.detail, "executor cannot lease");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if app.shutdown.is_cancelled() {
            return;
        }
    }
}

/// Resolves once a cancel of job `id` is requested, looking again whenever
/// an event may have been missed.
pub async fn cancel_requested(app: &App, id: JobId) {
    let mut listener = app.hub.listen();
    listener.watch(0, Target::Job(id));
    loop {
        let live = listener.recv().await;
        let cut_off = live.is_none();
        match live {
            Some(Live::Event { event, .. }) if event.record.job.cancel_requested => return,
            Some(Live::Event { .. }) => {}
            Some(Live::Resync) | None => {
                if let Ok(Some(j)) = app.store.get(id).await
                    && j.cancel_requested
                {
                    return;
                }
            }
        }
        if cut_off {
            // Cut off, or the server is stopping (then shutdown wins the
            // caller's race): listen again.
            if app.shutdown.is_cancelled() {
                std::future::pending::<()>().await;
            }
            listener = app.hub.listen();
            listener.watch(0, Target::Job(id));
        }
    }
}
