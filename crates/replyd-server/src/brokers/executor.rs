//! A queue whose executor is a broker (API.md §6, the last paragraph): its
//! jobs go out to workers over the broker, and the workers' replies
//! complete them. The same for every broker.
//!
//! Each node leases the queue's jobs (at most `concurrency` unanswered at
//! once, per node) for the queue's `timeout` and publishes each to the work
//! destination: the input as the body, `correlation_id` = the job id,
//! `reply_to` = replyd's reply destination (shared by every node, so any
//! node takes any reply), `message_id` = `{job id}.{attempt}`, headers
//! `x-replyd-job-id`, `x-replyd-attempt`, `x-replyd-queue`. A worker
//! replies to `reply_to` with the same correlation id:
//! - the result as the body (with its content type): the job succeeds;
//! - `x-replyd-state: failed`: it fails (the body is the reason), or is
//!   retried with `x-replyd-retry: true`;
//! - `x-replyd-state: running`, with `x-replyd-percent` and
//!   `x-replyd-message`: progress, which also renews the lease;
//! - `x-replyd-state: output`, with `x-replyd-seq` (0, 1, 2, … in the
//!   attempt, which `x-replyd-attempt` may name): a chunk of the job's
//!   output (with its content type), appended once and in order however
//!   the broker delivers it (the attempt is the producer's epoch, the
//!   number its sequence; a chunk that comes before the one ahead of it is
//!   given back to the broker to come again).
//!
//! No reply within the lease: the reaper expires it and the job is retried
//! with backoff, then fails after `max_attempts`. A reply that comes after
//! its attempt ended is dropped. A worker reply is acknowledged only once
//! what it did is durable.

use replyd_core::trace::SpanOf;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replyd_core::job::{Command, JobError, Progress};
use replyd_core::store::{JobOutput, LeaseQuery, Leased, StoreError};
use replyd_core::{JobId, JobState};
use tokio::sync::Notify;

use super::{Backoff, Broker, Message, Props, Published, Received, headers};
use crate::app::App;
use crate::config::secs;
use crate::live::{Live, Scope, Target};

/// One broker-executor queue.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The job queue.
    pub queue: String,
    /// Where its jobs are published.
    pub work: String,
    /// Where workers reply (replyd's reply destination).
    pub replies: String,
    /// Jobs published and not yet answered, at once, on this node.
    pub concurrency: usize,
}

/// What this node has published and not yet seen answered: job → attempt.
#[derive(Default)]
struct InFlight {
    jobs: Mutex<HashMap<JobId, u32>>,
    freed: Notify,
}

impl InFlight {
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, u32>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets `id` if its attempt `attempt` is over (the job left it).
    fn settle(&self, id: JobId, state: JobState, attempt: u32) {
        let mut jobs = self.lock();
        if jobs
            .get(&id)
            .is_some_and(|&a| state != JobState::Running || attempt != a)
        {
            jobs.remove(&id);
            self.freed.notify_one();
        }
    }
}

/// Publishes the queue's jobs to its workers until shutdown.
pub async fn run(app: Arc<App>, broker: Arc<dyn Broker>, settings: Settings) {
    let Some(queue) = app.config.queues.get(&settings.queue) else {
        return;
    };
    let lease = secs(queue.timeout);
    // Jobs published before any worker started must wait for one.
    let mut backoff = Backoff::default();
    while let Err(e) = broker.declare(&settings.work).await {
        tracing::warn!(queue = %settings.queue, work = %settings.work, error = %e, "cannot declare the work queue");
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next()) => {}
        }
    }
    let in_flight = Arc::new(InFlight::default());
    tokio::spawn(follow(
        app.clone(),
        settings.queue.clone(),
        in_flight.clone(),
    ));
    backoff.reset();
    loop {
        let free = settings.concurrency.saturating_sub(in_flight.len());
        if free == 0 {
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                _ = in_flight.freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let query = LeaseQuery {
            queue: settings.queue.clone(),
            tenant: None,
            worker: format!("{}:{}", broker.channel().as_str(), settings.work),
            length: lease,
            max: u32::try_from(free).unwrap_or(u32::MAX),
            limits: Default::default(),
        };
        let leased = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            l = app.lease(query, Duration::from_secs(30)) => l,
        };
        let leased = match leased {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(queue = %settings.queue, error = %e.detail, "cannot lease jobs for the broker");
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        for job in leased {
            let (id, attempt) = (job.job.id, job.job.attempt);
            in_flight.lock().insert(id, attempt);
            let trace = app.telemetry.outgoing(&job.job, SpanOf::Attempt(attempt));
            if let Err(error) = publish(&*broker, &settings, &job, trace).await {
                // The attempt is over: given back with backoff (it counts).
                tracing::warn!(queue = %settings.queue, job = %id, error = %error, "cannot publish a job to its workers");
                let cmd = Command::Fail {
                    lease_id: job.lease_id,
                    error: JobError::new("broker-unavailable", error),
                    retry: true,
                };
                let _ = app.store.apply(id, None, cmd, None, app.now()).await;
                in_flight.lock().remove(&id);
                tokio::time::sleep(backoff.next()).await;
            } else {
                backoff.reset();
            }
        }
    }
}

/// Publishes one leased job to the work destination.
async fn publish(
    broker: &dyn Broker,
    settings: &Settings,
    job: &Leased,
    trace: Option<crate::telemetry::Outgoing>,
) -> Result<(), String> {
    let id = job.job.id;
    let message = Message {
        body: job.input.clone(),
        props: Props {
            message_id: Some(format!("{id}.{}", job.job.attempt)),
            correlation_id: Some(id.to_string()),
            reply_to: Some(settings.replies.clone()),
            content_type: Some("application/json".into()),
            ..Props::default()
        }
        .with_header(headers::JOB_ID, id.to_string())
        .with_header(headers::ATTEMPT, job.job.attempt.to_string())
        .with_header(headers::QUEUE, job.job.queue.clone())
        .with_trace(trace),
    };
    match broker.publish(&settings.work, message).await {
        Ok(Published::Accepted) => Ok(()),
        Ok(Published::Unroutable) => Err(format!(
            "nothing receives at {:?} (declare it, or start a worker)",
            settings.work
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Follows the queue's events: an attempt this node published is over when
/// its job leaves it (answered, expired, canceled). Re-reads the jobs
/// whenever an event may have been missed, and every few seconds.
async fn follow(app: Arc<App>, queue: String, in_flight: Arc<InFlight>) {
    let target = Target::All(Scope {
        tenant: None,
        queue: Some(queue),
    });
    loop {
        let mut listener = app.hub.listen();
        listener.watch(0, target.clone());
        loop {
            let live = tokio::select! {
                _ = app.shutdown.cancelled() => return,
                live = listener.recv() => live,
                _ = tokio::time::sleep(Duration::from_secs(5)) => Some(Live::Resync),
            };
            match live {
                Some(Live::Event { event, .. }) => {
                    let job = &event.record.job;
                    in_flight.settle(job.id, job.state, job.attempt);
                }
                Some(Live::Resync) => resync(&app, &in_flight).await,
                // Cut off (its buffer filled): listen again, and re-read.
                None => break,
            }
        }
        resync(&app, &in_flight).await;
    }
}

async fn resync(app: &App, in_flight: &InFlight) {
    let ids: Vec<JobId> = in_flight.lock().keys().copied().collect();
    for id in ids {
        match app.store.get(id).await {
            Ok(Some(job)) => in_flight.settle(id, job.state, job.attempt),
            Ok(None) => in_flight.settle(id, JobState::Canceled, 0),
            Err(_) => return,
        }
    }
}

/// Takes workers' replies from `source` until shutdown, subscribing again
/// whenever the connection drops.
pub async fn consume_replies(app: Arc<App>, broker: Arc<dyn Broker>, source: String) {
    let a = app.clone();
    super::consume(app, broker, source, 64, "worker replies", move |r| {
        let app = a.clone();
        async move { settle_reply(&app, r).await }
    })
    .await;
}

async fn settle_reply(app: &App, r: Received) {
    let Received {
        message, settle, ..
    } = r;
    match apply_reply(app, &message).await {
        Err(StoreError::Unavailable(e)) => {
            tracing::info!(error = %e, "a worker reply is given back, to come again");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = settle.requeue().await;
        }
        done => {
            if let Err(e) = done {
                tracing::warn!(error = %e, "a worker reply could not be applied; dropped");
            }
            if let Err(e) = settle.ack().await {
                tracing::warn!(error = %e, "cannot acknowledge a worker reply; it will come again");
            }
        }
    }
}

/// What a worker's reply means for its job.
pub fn command_of(
    m: &Message,
    lease_id: replyd_core::LeaseId,
    max_result: usize,
) -> (Command, Option<JobOutput>) {
    let text = || truncated(&String::from_utf8_lossy(&m.body), 1000);
    match m.props.header(headers::STATE).map(str::trim) {
        Some("failed") => (
            Command::Fail {
                lease_id,
                error: JobError::new("worker-failed", text()),
                retry: m.props.header(headers::RETRY).map(str::trim) == Some("true"),
            },
            None,
        ),
        Some("running") => (
            Command::Progress {
                lease_id,
                progress: Progress {
                    percent: m
                        .props
                        .header(headers::PERCENT)
                        .and_then(|p| p.trim().parse::<f64>().ok())
                        .filter(|p| (0.0..=100.0).contains(p)),
                    // As over HTTP: at most 4096 bytes.
                    message: m.props.header(headers::MESSAGE).map(|t| truncated(t, 4096)),
                },
            },
            None,
        ),
        _ if m.body.len() > max_result => (
            Command::Fail {
                lease_id,
                error: JobError::new(
                    "result-too-large",
                    format!(
                        "the worker's result is {} bytes, more than limits.max_result ({max_result})",
                        m.body.len()
                    ),
                ),
                retry: false,
            },
            None,
        ),
        _ => (
            Command::Complete { lease_id },
            Some(JobOutput {
                content_type: m
                    .props
                    .content_type
                    .clone()
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| "application/json".into()),
                body: m.body.clone(),
                upstream: None,
            }),
        ),
    }
}

/// At most `max` bytes of `t`, cut at a character boundary.
fn truncated(t: &str, max: usize) -> String {
    let mut cut = t.len().min(max);
    while !t.is_char_boundary(cut) {
        cut -= 1;
    }
    t[..cut].to_string()
}

async fn apply_reply(app: &App, m: &Message) -> Result<(), StoreError> {
    let Some(id) = m
        .props
        .correlation_id
        .as_deref()
        .and_then(|c| c.parse::<JobId>().ok())
    else {
        tracing::warn!(correlation_id = ?m.props.correlation_id, "a worker reply names no job; dropped");
        return Ok(());
    };
    let Some(job) = app.store.get(id).await? else {
        return Ok(());
    };
    let attempt = job.attempt;
    let Some(lease) = job.lease.filter(|_| job.state == JobState::Running) else {
        tracing::info!(job = %id, state = job.state.as_str(), "a late worker reply; dropped");
        return Ok(());
    };
    if m.props.header(headers::STATE).map(str::trim) == Some("output") {
        let declared = job.output_type.as_deref();
        return append_chunk(app, m, (id, &job.tenant, attempt, declared), lease.id).await;
    }
    let (cmd, output) = command_of(m, lease.id, app.config.limits.max_result);
    match app.outputs.apply(id, None, cmd, output, app.now()).await {
        Ok(_) => Ok(()),
        // The attempt ended meanwhile (expired, canceled): a late reply.
        Err(StoreError::Transition(e)) => {
            tracing::info!(job = %id, reason = %e, "a late worker reply; dropped");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// How far ahead of the next expected output chunk one may come and be
/// given back to come again (past the replies taken at once).
const MAX_AHEAD: u64 = 256;

/// A worker's output chunk: appended to job `id`'s output under the
/// attempt's lease, as producer `broker-worker` with the attempt as its
/// epoch and `x-replyd-seq` as its sequence, so a redelivered chunk lands
/// once. A chunk of an earlier attempt is dropped; one that comes before
/// the chunk ahead of it is given back (`Unavailable`: the broker brings
/// it again).
async fn append_chunk(
    app: &App,
    m: &Message,
    (id, tenant, attempt, declared): (JobId, &replyd_core::Tenant, u32, Option<&str>),
    lease: replyd_core::LeaseId,
) -> Result<(), StoreError> {
    use replyd_core::stream::{Append, AppendRefusal, Appended, Found, Producer, StreamKey};
    let named = m
        .props
        .header(headers::ATTEMPT)
        .and_then(|a| a.trim().parse::<u32>().ok());
    if named.is_some_and(|a| a != attempt) {
        tracing::info!(job = %id, "an output chunk of an earlier attempt; dropped");
        return Ok(());
    }
    let Some(seq) = m
        .props
        .header(headers::SEQ)
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        tracing::warn!(job = %id, "an output chunk without x-replyd-seq; dropped");
        return Ok(());
    };
    let Some(streams) = app.store.streams() else {
        return Ok(());
    };
    if let Err(held) = app.stream_bytes.take(tenant, m.body.len() as u64) {
        let reason = app.stream_bytes.refusal(held);
        tracing::warn!(job = %id, %reason, "an output chunk was refused; dropped");
        return Ok(());
    }
    let key = StreamKey {
        tenant: tenant.clone(),
        path: replyd_core::stream::output_path(id),
    };
    let req = Append {
        // The type the submission named, else the chunk's.
        content_type: Some(declared.map(str::to_string).unwrap_or_else(|| {
            m.props
                .content_type
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "application/octet-stream".into())
        })),
        body: m.body.clone(),
        producer: Some(Producer {
            id: "broker-worker".into(),
            epoch: attempt.into(),
            seq,
        }),
        limits: app.config.durable_streams.limits(),
        ..Append::default()
    };
    match streams
        .output_append(&key, id, lease.clone(), req, app.now())
        .await?
    {
        Found::Live(Ok(Appended::Written { tail, .. })) => {
            app.outputs.appended(id, lease, tail);
            Ok(())
        }
        Found::Live(Ok(Appended::Duplicate { .. })) => Ok(()),
        // Taken out of order (replies are taken concurrently): again later.
        // Far ahead, it is no reordering but a worker's mistake: dropped.
        Found::Live(Err(AppendRefusal::SeqGap { expected, .. }))
            if seq.saturating_sub(expected) <= MAX_AHEAD =>
        {
            Err(StoreError::Unavailable(
                format!("output chunk {seq} came before chunk {expected}").into(),
            ))
        }
        refused => {
            tracing::warn!(job = %id, answer = ?refused, "an output chunk was refused; dropped");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn reply(body: &str, headers: &[(&str, &str)]) -> Message {
        let mut props = Props {
            content_type: Some("text/plain".into()),
            ..Props::default()
        };
        for (k, v) in headers {
            props = props.with_header(k, *v);
        }
        Message {
            body: Bytes::from(body.to_string()),
            props,
        }
    }

    #[test]
    fn a_worker_reply_succeeds_fails_or_reports_progress() {
        let lease = replyd_core::LeaseId::new();
        let (cmd, out) = command_of(&reply("done", &[]), lease.clone(), 100);
        assert!(matches!(cmd, Command::Complete { .. }));
        let out = out.unwrap();
        assert_eq!(
            (out.content_type.as_str(), &out.body[..]),
            ("text/plain", &b"done"[..])
        );
        let (cmd, out) = command_of(
            &reply(
                "disk full",
                &[(headers::STATE, "failed"), (headers::RETRY, "true")],
            ),
            lease.clone(),
            100,
        );
        match cmd {
            Command::Fail { error, retry, .. } => {
                assert_eq!(error.message, "disk full");
                assert!(retry);
            }
            other => panic!("{other:?}"),
        }
        assert!(out.is_none());
        let (cmd, _) = command_of(
            &reply(
                "",
                &[
                    (headers::STATE, "running"),
                    (headers::PERCENT, "40"),
                    (headers::MESSAGE, "page 4"),
                ],
            ),
            lease.clone(),
            100,
        );
        match cmd {
            Command::Progress { progress, .. } => {
                assert_eq!(progress.percent, Some(40.0));
                assert_eq!(progress.message.as_deref(), Some("page 4"));
            }
            other => panic!("{other:?}"),
        }
        let (cmd, _) = command_of(&reply(&"x".repeat(200), &[]), lease, 100);
        assert!(
            matches!(&cmd, Command::Fail { error, retry: false, .. } if error.code == "result-too-large"),
            "{cmd:?}"
        );
    }
}
