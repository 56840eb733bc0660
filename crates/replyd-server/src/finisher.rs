//! The in-process executors' outcomes, applied in batches: see
//! [`Finisher`]. Its own module, beside `app` (which holds one) and
//! `executors` (which use it), so that neither imports the other for it.

use std::sync::{Arc, OnceLock};

use replyd_core::Clock;
use replyd_core::job::JobRecord;
use replyd_core::store::{Move, StoreError, StoreResult};

use crate::outputs::Announcer;
use tokio::sync::{mpsc, oneshot};

/// The most outcomes one [`Finisher`] batch carries.
const MAX_FINISHED: usize = 1000;

type Finished = (Move, oneshot::Sender<StoreResult<JobRecord>>);

/// The in-process executors' outcomes, gathered as a worker's batch is:
/// the outcomes that arrive while one batch is being written go together
/// in the next [`replyd_core::Store::apply_many`] (one transaction), each
/// answered on its own. Its task starts with the first outcome and ends
/// when the `Finisher` is dropped.
pub struct Finisher {
    /// The store, behind the output announcements an attempt's end needs.
    store: Arc<Announcer>,
    clock: Clock,
    queue: OnceLock<mpsc::Sender<Finished>>,
}

impl Finisher {
    pub fn new(store: Arc<Announcer>, clock: Clock) -> Finisher {
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

async fn finish(store: Arc<Announcer>, clock: Clock, mut rx: mpsc::Receiver<Finished>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use replyd_core::job::{Command, NewJob};
    use replyd_core::store::LeaseQuery;
    use replyd_core::{JobId, LeaseId, Store, Tenant};
    use replyd_store::{SqliteOptions, SqliteStore};
    use std::time::Duration;

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
                output_type: None,
                trace: None,
                priority: 0,
                head_start: std::time::Duration::ZERO,
                group: None,
                run_at: None,
            };
            store.submit(job, clock.now()).await.unwrap();
        }
        let query = LeaseQuery {
            queue: "q".into(),
            tenant: None,
            worker: "w".into(),
            length: Duration::from_secs(60),
            max: 40,
            limits: Default::default(),
        };
        let leased = store.lease(query, clock.now()).await.unwrap();
        assert_eq!(leased.len(), 40);
        let announcer = Announcer::new(store.clone(), Duration::from_millis(250));
        let finisher = Arc::new(Finisher::new(Arc::new(announcer), clock));
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
