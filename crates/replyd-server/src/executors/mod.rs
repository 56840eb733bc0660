//! Executors turn queued jobs into results inside the server. They use the
//! same lease protocol as remote workers ([`crate::app::App::lease`] and
//! the same commands), so fencing, retries and cancellation behave alike.
//! [`work`] is the loop they share: lease as many jobs as there are free
//! slots, in one call, and run each.

pub mod demo;
pub mod exec;
pub mod http;
pub mod process;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use replyd_core::job::JobRecord;
use replyd_core::store::{LeaseQuery, Leased, Move, StoreError, StoreResult};
use replyd_core::{Clock, JobId, Store};
use std::sync::OnceLock;
use tokio::sync::{Semaphore, mpsc, oneshot};

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

/// The most outcomes one [`Finisher`] batch carries.
const MAX_FINISHED: usize = 1000;

type Finished = (Move, oneshot::Sender<StoreResult<JobRecord>>);

/// The in-process executors' outcomes, gathered as a worker's batch is:
/// the outcomes that arrive while one batch is being written go together
/// in the next [`replyd_core::Store::apply_many`] (one transaction), each
/// answered on its own. Its task starts with the first outcome and ends
/// when the `Finisher` is dropped.
pub struct Finisher {
    store: Arc<dyn Store>,
    clock: Clock,
    queue: OnceLock<mpsc::Sender<Finished>>,
}

impl Finisher {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Finisher {
        Finisher {
            store,
            clock,
            queue: OnceLock::new(),
        }
    }

    /// Applies one executor's outcome (or any move of an executor) with
    /// whatever others are waiting.
    pub async fn apply(&self, m: Move) -> StoreResult<JobRecord> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(MAX_FINISHED);
            tokio::spawn(finish(self.store.clone(), self.clock.clone(), rx));
            tx
        });
        let (tx, rx) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the server is stopping".into());
        queue.send((m, tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn finish(store: Arc<dyn Store>, clock: Clock, mut rx: mpsc::Receiver<Finished>) {
    let mut batch = Vec::with_capacity(MAX_FINISHED);
    while rx.recv_many(&mut batch, MAX_FINISHED).await > 0 {
        let (moves, answer): (Vec<Move>, Vec<_>) = batch.drain(..).unzip();
        match store.apply_many(None, moves, clock.now()).await {
            Ok(results) => {
                for (to, r) in answer.into_iter().zip(results) {
                    let _ = to.send(r);
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for to in answer {
                    let _ = to.send(Err(StoreError::Unavailable(reason.clone().into())));
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use replyd_core::job::{Command, NewJob};
    use replyd_core::{LeaseId, Tenant};
    use replyd_store::{SqliteOptions, SqliteStore};

    /// Outcomes sent at once are answered each with its own result: the
    /// batching routes every answer back to its sender.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finisher_answers_each_outcome_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(dir.path().join("f.db"), SqliteOptions::default())
                .await
                .unwrap(),
        );
        let clock = Clock::system();
        for _ in 0..40 {
            let job = NewJob {
                id: JobId::new(),
                tenant: Tenant("t".into()),
                queue: "q".into(),
                input: Bytes::from_static(b"{}"),
                max_attempts: 1,
                timeout: Duration::from_secs(60),
                ttl: Duration::from_secs(600),
                webhook: None,
                reply: None,
                idempotency_key: None,
                request_hash: None,
            };
            store.submit(job, clock.now()).await.unwrap();
        }
        let query = LeaseQuery {
            queue: "q".into(),
            tenant: None,
            worker: "w".into(),
            length: Duration::from_secs(60),
            max: 40,
        };
        let leased = store.lease(query, clock.now()).await.unwrap();
        assert_eq!(leased.len(), 40);
        let finisher = Arc::new(Finisher::new(store.clone(), clock));
        // Every third outcome carries a stale lease.
        let answers = futures::future::join_all(leased.iter().enumerate().map(|(i, l)| {
            let finisher = finisher.clone();
            let lease_id = if i % 3 == 0 {
                LeaseId::new()
            } else {
                l.lease_id.clone()
            };
            let id = l.job.id;
            async move {
                let m = Move {
                    id,
                    cmd: Command::Complete { lease_id },
                    output: None,
                };
                (id, i, finisher.apply(m).await)
            }
        }))
        .await;
        for (id, i, answer) in answers {
            match answer {
                Ok(job) => {
                    assert_ne!(i % 3, 0, "a stale lease was accepted");
                    assert_eq!(job.id, id, "an answer reached the wrong sender");
                    assert_eq!(job.state, replyd_core::JobState::Succeeded);
                }
                Err(e) => {
                    assert_eq!(i % 3, 0, "a good outcome was refused: {e}");
                    assert!(matches!(e, StoreError::Transition(_)), "{e}");
                }
            }
        }
    }
}
