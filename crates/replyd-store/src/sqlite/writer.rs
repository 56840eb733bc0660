//! The writer thread (group commit), the reader connections and the checkpointer.

use super::schema::open_connection;
use super::{SqliteStore, WriterStats, backend};
use replyd_core::event::EventRecord;
use replyd_core::store::{EventBatch, StoreError, StoreResult};
use rusqlite::Connection;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// The most writes one transaction carries.
pub(super) const MAX_BATCH: usize = 2048;

/// Reader connections kept open.
pub(super) const MAX_IDLE_READERS: usize = 8;

/// Reads that run at once, each on its own connection. Past this, reads
/// wait for a turn instead of opening ever more connections (a burst of
/// 2,000 stream connects once opened about 500, each with its own page
/// cache and file descriptors).
pub(super) const MAX_CONCURRENT_READS: usize = 16;

pub(super) type Events = Vec<EventRecord>;

/// Runs after the batch's commit (or its failure) to answer the caller.
pub(super) type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

/// One write: runs inside the batch's transaction. `Err` poisons the batch.
pub(super) type WriteOp =
    Box<dyn FnOnce(&Connection, &mut Events) -> Result<Reply, (Reply, String)> + Send>;

/// WAL pages after which the writer itself checkpoints: a backstop, should
/// the checkpointer thread fall behind.
pub(super) const WRITER_CHECKPOINT_PAGES: i64 = 50_000;

/// The writer's page cache (`PRAGMA cache_size`, negative: KiB). SQLite's
/// default, 2 MiB, holds fewer pages than a busy minute of jobs touches:
/// each transition then read its pages back from the OS.
pub(super) const WRITER_CACHE_KIB: i64 = -65_536;

/// How often the checkpointer copies the WAL back into the database.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed WAL frames into the database file on its own thread and
/// connection, so the writer never pays for checkpoints (and their fsync)
/// in the middle of a group commit. Stops when the store is dropped.
pub(super) fn checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(CHECKPOINT_EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "sqlite checkpoint failed");
        }
    }
}

/// The writer thread: batches, commits, answers, then announces the events.
pub(super) fn writer(
    conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    bus: broadcast::Sender<EventBatch>,
    stats: &WriterStats,
) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut events = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        let mut failure = conn
            .execute_batch("BEGIN IMMEDIATE")
            .err()
            .map(|e| e.to_string());
        for op in batch.drain(..) {
            if failure.is_some() {
                // Dropping an op answers its caller "the writer has stopped":
                // nothing of it ran, so it may retry.
                continue;
            }
            match run_op(&conn, &mut events, op) {
                Ok(reply) => replies.push(reply),
                Err((reply, reason)) => {
                    replies.push(reply);
                    failure = Some(reason);
                }
            }
        }
        if failure.is_none()
            && let Err(e) = conn.execute_batch("COMMIT")
        {
            failure = Some(e.to_string());
        }
        match failure {
            None => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.ops.fetch_add(replies.len() as u64, Ordering::Relaxed);
                for reply in replies {
                    reply(None);
                }
                if !events.is_empty() && bus.receiver_count() > 0 {
                    let _ = bus.send(Arc::new(events));
                }
            }
            Some(reason) => {
                tracing::error!(error = %reason, "sqlite group commit rolled back");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                for reply in replies {
                    reply(Some(&reason));
                }
            }
        }
    }
}

/// Runs one op. A panic (a bug) poisons the batch like a failed write.
pub(super) fn run_op(
    conn: &Connection,
    events: &mut Events,
    op: WriteOp,
) -> Result<Reply, (Reply, String)> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(conn, events))) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("a store write panicked; its batch is rolled back");
            let reply: Reply = Box::new(|_| {});
            Err((reply, "a store write panicked".to_string()))
        }
    }
}

impl SqliteStore {
    /// Runs `f` in the next group commit and returns its result once the
    /// commit is durable.
    pub(super) async fn write<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &mut Events) -> StoreResult<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: WriteOp = Box::new(move |conn, events| {
            let changes = conn.total_changes();
            let result = f(conn, events);
            let poison = match &result {
                Err(e @ (StoreError::Backend(_) | StoreError::Unavailable(_))) => {
                    Some(e.to_string())
                }
                Err(e) if conn.total_changes() != changes => {
                    tracing::error!(error = %e, "a store operation failed after writing; rolling back its batch");
                    Some(e.to_string())
                }
                _ => None,
            };
            let reply: Reply = Box::new(move |batch_error: Option<&str>| {
                let answer = match batch_error {
                    None => result,
                    Some(e) => Err(StoreError::Unavailable(
                        format!("the write was rolled back ({e}); try again").into(),
                    )),
                };
                let _ = tx.send(answer);
            });
            match poison {
                None => Ok(reply),
                Some(reason) => Err((reply, reason)),
            }
        });
        self.inner
            .writes
            .send(op)
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }

    /// Runs `f` on a reader connection.
    pub(super) async fn read<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let _turn = self
            .inner
            .read_turns
            .acquire()
            .await
            .map_err(StoreError::backend)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.path).map_err(backend)?,
            };
            let r = f(&conn);
            let mut pool = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < MAX_IDLE_READERS {
                pool.push(conn);
            }
            r
        })
        .await
        .map_err(StoreError::backend)?
    }
}
