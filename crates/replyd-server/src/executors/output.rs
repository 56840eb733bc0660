//! A job's output appended as it is produced, for the in-process
//! executors (`exec`'s stdout, an `http` upstream's streamed answer):
//! chunks go through a bounded channel to one task per attempt, which
//! appends them to the job's output stream under the attempt's lease,
//! coalescing what arrives while an append is written (many small chunks,
//! few appends). The producer waits while the channel is full.
//!
//! An attempt that appended output is not tried again: an output stream
//! only grows, so a second attempt would repeat what the first wrote.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use replyd_core::stream::{Append, Appended, Found, StreamKey, output_path};
use replyd_core::{JobId, LeaseId, Tenant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::limits::StreamBytes;
use crate::outputs::Announcer;

/// Chunks waiting to be appended, at most.
const QUEUED: usize = 64;

/// One attempt's output on its way to the job's output stream.
#[derive(Debug)]
pub struct Tee {
    tx: mpsc::Sender<Bytes>,
    task: JoinHandle<u64>,
}

impl Tee {
    /// Starts appending to job `id`'s output under `lease`; the stream's
    /// content type is `content_type` (its first append fixes it).
    pub fn start(
        app: &App,
        (id, tenant, lease): (JobId, Tenant, LeaseId),
        content_type: Arc<str>,
    ) -> Tee {
        let (tx, rx) = mpsc::channel(QUEUED);
        let outputs = app.outputs.clone();
        let quota = app.stream_bytes.clone();
        let clock = app.clock.clone();
        let task = tokio::spawn(async move {
            let key = StreamKey {
                tenant,
                path: output_path(id),
            };
            let to = Target {
                outputs: &outputs,
                quota: &quota,
                key: &key,
            };
            append_all(to, &clock, id, lease, content_type, rx).await
        });
        Tee { tx, task }
    }

    /// Where the producer sends its chunks.
    pub fn sender(&self) -> mpsc::Sender<Bytes> {
        self.tx.clone()
    }

    /// Sends one chunk (waits while the queue is full); false once the
    /// output takes no more.
    pub async fn send(&self, chunk: Bytes) -> bool {
        self.tx.send(chunk).await.is_ok()
    }

    /// Waits until everything sent is appended (every sender must be gone
    /// for that: this one goes here); the bytes appended.
    pub async fn finish(self) -> u64 {
        drop(self.tx);
        self.task.await.unwrap_or(0)
    }
}

/// Where an attempt's output goes.
struct Target<'a> {
    outputs: &'a Announcer,
    /// What the tenant's streams may hold in all.
    quota: &'a StreamBytes,
    key: &'a StreamKey,
}

async fn append_all(
    Target {
        outputs,
        quota,
        key,
    }: Target<'_>,
    clock: &replyd_core::Clock,
    id: JobId,
    lease: LeaseId,
    content_type: Arc<str>,
    mut rx: mpsc::Receiver<Bytes>,
) -> u64 {
    let Some(streams) = outputs.store().streams() else {
        drain(rx).await;
        return 0;
    };
    let mut appended = 0u64;
    while let Some(first) = rx.recv().await {
        let mut body = BytesMut::from(&first[..]);
        while let Ok(more) = rx.try_recv() {
            body.extend_from_slice(&more);
        }
        let len = body.len() as u64;
        if let Err(held) = quota.take(&key.tenant, len) {
            tracing::warn!(job = %id, reason = %quota.refusal(held), "the job's output takes no more");
            break;
        }
        let req = Append {
            content_type: Some(content_type.to_string()),
            body: body.freeze(),
            ..Append::default()
        };
        match streams
            .output_append(key, id, lease.clone(), req, clock.now())
            .await
        {
            Ok(Found::Live(Ok(done))) => {
                appended += len;
                if let Appended::Written { tail, .. } = done {
                    outputs.appended(id, lease.clone(), tail);
                }
            }
            Ok(refused) => {
                tracing::warn!(job = %id, answer = ?refused, "the job's output took no more");
                break;
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot append to the job's output");
                break;
            }
        }
    }
    // The producer is never held by a full channel.
    drain(rx).await;
    appended
}

async fn drain(mut rx: mpsc::Receiver<Bytes>) {
    while rx.recv().await.is_some() {}
}
