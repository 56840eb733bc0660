//! A worker loop over the lease API (API.md §5): lease jobs, run a handler
//! for each, keep the lease alive, report the outcome.
//!
//! Each of `concurrency` slots leases one job at a time (a long poll) and
//! hands it to the [`Handler`] as a [`Task`]. While the handler runs, a
//! heartbeat renews the lease every third of its length; the handler may
//! report progress ([`Task::progress`]: the latest wins, so a slow server
//! never holds it up). When the server says the job was canceled, or the
//! lease is gone, or the worker is shutting down, [`Task::stopped`]
//! resolves with why: the handler should stop and return. Its [`Outcome`]
//! is then reported (retried while the server is unreachable; a refused
//! result fails the job rather than leave it to its lease's expiry).
//!
//! Shutting down ([`Control::drain`]): no new leases; running handlers have
//! `drain_grace` to finish, then they are told [`Stop::Shutdown`]
//! ([`Control::stop`] does that at once).
//!
//! ```no_run
//! # async fn demo() -> replyd_client::Result<()> {
//! use replyd_client::Client;
//! use replyd_client::worker::{Outcome, Task, Worker, WorkerOptions};
//!
//! let client = Client::new("http://127.0.0.1:8202", None)?;
//! let worker = Worker::new(client, WorkerOptions::new("report"));
//! let control = worker.control();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     control.drain();
//! });
//! worker
//!     .run(|task: Task| async move {
//!         for page in 1..=10 {
//!             tokio::select! {
//!                 _ = tokio::time::sleep(std::time::Duration::from_millis(300)) => {}
//!                 why = task.stopped() => return Outcome::Fail {
//!                     message: format!("stopped: {why:?}"),
//!                     retry: true,
//!                 },
//!             }
//!             task.progress(Some(f64::from(page * 10)), Some(&format!("page {page} of 10")));
//!         }
//!         Outcome::Json(serde_json::json!({"pages": 10, "input": task.input}))
//!     })
//!     .await
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, error, info, warn};

use crate::proto::{Job, Lease, LeaseRequest, LeaseStatus};
use crate::{Client, Error, Result};

/// How many times an outcome is sent when the server is unreachable.
const REPORT_ATTEMPTS: u32 = 4;
/// How long one completion or failure call may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// How a [`Worker`] works.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The queue to lease jobs from.
    pub queue: String,
    /// Shown in the server's logs (default: `HOST-PID`).
    pub name: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long a lease lasts; a heartbeat renews it every third of that.
    pub lease: Duration,
    /// How long one lease request waits for a job (long poll).
    pub lease_wait: Duration,
    /// How long running handlers may go on once the worker drains.
    pub drain_grace: Duration,
}

impl WorkerOptions {
    /// One job at a time from `queue`, 30 s leases, 30 s drain grace.
    pub fn new(queue: &str) -> WorkerOptions {
        WorkerOptions {
            queue: queue.to_string(),
            name: default_name(),
            concurrency: 1,
            lease: Duration::from_secs(30),
            lease_wait: Duration::from_secs(20),
            drain_grace: Duration::from_secs(30),
        }
    }
}

/// Why a handler should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A client canceled the job. Whatever is reported, the job ends
    /// `canceled`.
    Canceled,
    /// The lease is gone (it expired, or another attempt owns the job):
    /// nothing will be recorded; return [`Outcome::Drop`].
    LeaseLost,
    /// The worker is shutting down: fail with `retry` so that another
    /// worker takes the job.
    Shutdown,
}

/// What a handler made of its job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Succeeded with a JSON result.
    Json(Value),
    /// Succeeded with a result of its own content type.
    Raw { content_type: String, body: Bytes },
    /// Failed; `retry` asks for another attempt (until `max_attempts`).
    Fail { message: String, retry: bool },
    /// Report nothing (the lease is lost).
    Drop,
}

/// One leased job, as a handler sees it.
#[derive(Debug)]
pub struct Task {
    /// The job as it was leased.
    pub job: Job,
    /// Its input.
    pub input: Value,
    /// W3C Trace Context to continue (the lease's `traceparent` and
    /// `tracestate`), when the job is in a trace.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    progress: watch::Sender<Option<(Option<f64>, Option<String>)>>,
    stop: watch::Receiver<Option<Stop>>,
    client: Client,
    lease_id: String,
    /// The next output append's producer sequence number.
    output_seq: std::sync::atomic::AtomicU64,
}

impl Task {
    /// Appends `chunk` to the job's output, a Durable Stream its clients
    /// read while the job runs (the first append fixes `content_type`).
    /// Call it in order (one append at a time): each is tried up to three
    /// times, as producer `<lease id>` with a sequence number, so a retry
    /// lands once.
    pub async fn output(&self, content_type: &str, chunk: bytes::Bytes) -> crate::Result<()> {
        let seq = self
            .output_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut tries = 0;
        loop {
            let sent = self
                .client
                .append_output(
                    &self.job.id,
                    &self.lease_id,
                    content_type,
                    chunk.clone(),
                    Some((&self.lease_id, 0, seq)),
                )
                .await;
            match sent {
                Err(e) if tries < 2 && e.is_transient() => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 << tries)).await;
                }
                other => return other,
            }
        }
    }

    /// Reports progress (the latest wins; it also renews the lease).
    pub fn progress(&self, percent: Option<f64>, message: Option<&str>) {
        self.progress
            .send_replace(Some((percent, message.map(str::to_string))));
    }

    /// Resolves once the handler should stop, saying why.
    pub async fn stopped(&self) -> Stop {
        let mut stop = self.stop.clone();
        match stop.wait_for(Option::is_some).await {
            Ok(why) => why.unwrap_or(Stop::Shutdown),
            // The worker itself is gone.
            Err(_) => Stop::Shutdown,
        }
    }

    /// Whether (and why) the handler should stop, now.
    pub fn stop_requested(&self) -> Option<Stop> {
        *self.stop.borrow()
    }
}

/// Runs jobs: `handler(task)` for each leased job.
pub trait Handler: Send + Sync + 'static {
    fn run(&self, task: Task) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn run(&self, task: Task) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        Box::pin(self(task))
    }
}

/// Where the worker is in its life; only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Run,
    /// No new leases; running handlers may finish.
    Drain,
    /// Tell running handlers to stop now.
    Stop,
}

/// Stops a [`Worker`] from elsewhere (a signal handler).
#[derive(Debug, Clone)]
pub struct Control(Arc<watch::Sender<Phase>>);

impl Control {
    /// Stop leasing; let running handlers finish within `drain_grace`.
    pub fn drain(&self) {
        self.0.send_if_modified(|p| {
            let moved = *p < Phase::Drain;
            *p = (*p).max(Phase::Drain);
            moved
        });
    }

    /// Tell running handlers to stop now.
    pub fn stop(&self) {
        self.0.send_replace(Phase::Stop);
    }

    /// Whether it was asked to drain (or stop) already.
    pub fn draining(&self) -> bool {
        *self.0.borrow() >= Phase::Drain
    }
}

/// A pull worker for one queue.
#[derive(Debug)]
pub struct Worker {
    client: Client,
    options: Arc<WorkerOptions>,
    phase: Arc<watch::Sender<Phase>>,
}

impl Worker {
    pub fn new(client: Client, options: WorkerOptions) -> Worker {
        Worker {
            client,
            options: Arc::new(options),
            phase: Arc::new(watch::channel(Phase::Run).0),
        }
    }

    /// A handle that drains or stops this worker.
    pub fn control(&self) -> Control {
        Control(self.phase.clone())
    }

    /// Works until drained (then `Ok`), or until the server refuses to lease
    /// (an unknown queue, a bad key: the error).
    pub async fn run(&self, handler: impl Handler) -> Result<()> {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let o = &self.options;
        info!(queue = %o.queue, server = %self.client.base_url(), concurrency = o.concurrency,
              worker = %o.name, "worker started");
        let mut slots = JoinSet::new();
        for _ in 0..o.concurrency.max(1) {
            slots.spawn(slot(
                self.client.clone(),
                o.clone(),
                handler.clone(),
                self.phase.subscribe(),
            ));
        }
        let mut outcome = Ok(());
        let mut phase = self.phase.subscribe();
        let mut stop_at: Option<Instant> = None;
        loop {
            tokio::select! {
                joined = slots.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(err))) => {
                        error!(error = %chain(&err), "worker cannot go on");
                        if outcome.is_ok() {
                            outcome = Err(err);
                        }
                        self.control().drain();
                    }
                    Some(Err(err)) => error!(error = %err, "worker slot panicked"),
                },
                changed = phase.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = *phase.borrow_and_update();
                    if now == Phase::Drain && stop_at.is_none() {
                        info!("stopping: no new jobs; running ones have {:?} to finish", o.drain_grace);
                        stop_at = Some(Instant::now() + o.drain_grace);
                    }
                }
                () = sleep_until(stop_at.unwrap_or_else(Instant::now)), if stop_at.is_some() => {
                    warn!("jobs still running after {:?}; stopping them", o.drain_grace);
                    self.control().stop();
                    stop_at = None;
                }
            }
        }
        info!("worker stopped");
        outcome
    }
}

/// `HOST-PID`, where HOST is the kernel's host name if it can be read.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Resolves once the worker has reached `phase` (or its controller is gone).
async fn reached(phase: &mut watch::Receiver<Phase>, at: Phase) {
    let _ = phase.wait_for(|p| *p >= at).await;
}

/// One slot: lease a job, run it, repeat, until the worker drains. `Err`
/// when leasing cannot succeed (unknown queue, bad key).
async fn slot(
    client: Client,
    options: Arc<WorkerOptions>,
    handler: Arc<dyn Handler>,
    mut phase: watch::Receiver<Phase>,
) -> Result<()> {
    let req = LeaseRequest {
        worker: Some(options.name.clone()),
        lease: Some(options.lease.as_secs_f64()),
        wait: Some(options.lease_wait.as_secs_f64()),
        batch: None,
        outcomes: Vec::new(),
    };
    let mut backoff = Backoff::default();
    loop {
        if *phase.borrow() != Phase::Run {
            return Ok(());
        }
        // A lease in flight is abandoned on shutdown: should the server have
        // just leased us a job, its lease expires and it is requeued.
        let leased = tokio::select! {
            leased = client.lease(&options.queue, &req) => leased,
            () = reached(&mut phase, Phase::Drain) => return Ok(()),
        };
        match leased {
            Ok(Some(lease)) => {
                backoff.reset();
                run_task(&client, &options, &*handler, lease, phase.clone()).await;
            }
            Ok(None) => backoff.reset(),
            Err(err) if is_permanent(&err) => return Err(err),
            Err(err) => {
                let pause = backoff.next_pause();
                warn!(error = %chain(&err), retry_in = ?pause, "lease failed");
                tokio::select! {
                    () = sleep(pause) => {}
                    () = reached(&mut phase, Phase::Drain) => return Ok(()),
                }
            }
        }
    }
}

/// Errors that retrying will not fix: the request or the key is wrong.
fn is_permanent(err: &Error) -> bool {
    matches!(err.status(), Some(400 | 401 | 403 | 404 | 405 | 422))
}

/// Why the lease loop or a report pauses: 1 s doubling to 30 s.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_pause(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Duration::from_secs(1u64 << (self.failures - 1).min(5)).min(Duration::from_secs(30))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the handler for one leased job and reports its outcome.
async fn run_task(
    client: &Client,
    options: &WorkerOptions,
    handler: &dyn Handler,
    lease: Lease,
    mut phase: watch::Receiver<Phase>,
) {
    let Lease {
        mut job,
        lease_id,
        traceparent,
        tracestate,
        ..
    } = lease;
    let id = job.id.clone();
    info!(job = %id, attempt = job.attempt, "running job");
    let input = job.input.take().unwrap_or(Value::Null);
    let (stop_tx, stop_rx) = watch::channel(None);
    let (progress_tx, progress_rx) = watch::channel(None);
    let (control_tx, mut control_rx) = mpsc::channel(4);
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat_loop(
        client.clone(),
        id.clone(),
        lease_id.clone(),
        options.lease,
        control_tx.clone(),
    )));
    let _progress = AbortOnDrop(tokio::spawn(progress_loop(
        client.clone(),
        id.clone(),
        lease_id.clone(),
        progress_rx,
        control_tx,
    )));
    let task = Task {
        job,
        input,
        traceparent,
        tracestate,
        progress: progress_tx,
        stop: stop_rx,
        client: client.clone(),
        lease_id: lease_id.clone(),
        output_seq: std::sync::atomic::AtomicU64::new(0),
    };
    let work = handler.run(task);
    tokio::pin!(work);
    let mut shutdown_told = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            Some(why) = control_rx.recv() => {
                stop_tx.send_if_modified(|s| s.is_none() && s.replace(why).is_none());
            }
            () = reached(&mut phase, Phase::Stop), if !shutdown_told => {
                shutdown_told = true;
                stop_tx.send_if_modified(|s| s.is_none() && s.replace(Stop::Shutdown).is_none());
            }
        }
    };
    let told = *stop_tx.borrow();
    match (&outcome, told) {
        (_, Some(Stop::LeaseLost)) | (Outcome::Drop, _) => {
            warn!(job = %id, "lease lost; nothing reported");
        }
        _ => report(client, &id, &lease_id, outcome).await,
    }
}

/// Renews the lease every third of its length until aborted; tells the job
/// when a cancel is requested or the lease is lost.
async fn heartbeat_loop(
    client: Client,
    id: String,
    lease_id: String,
    lease: Duration,
    control: mpsc::Sender<Stop>,
) {
    let period = (lease / 3).max(Duration::from_millis(200));
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let beat = timeout(
            period,
            client.heartbeat(&id, &lease_id, Some(lease.as_secs_f64())),
        )
        .await;
        let Ok(beat) = beat else {
            warn!(job = %id, "heartbeat timed out");
            continue;
        };
        if let Some(c) = control_from(&id, "heartbeat", beat) {
            let _ = control.send(c).await;
            return;
        }
    }
}

/// Sends the latest progress whenever there is a new one.
async fn progress_loop(
    client: Client,
    id: String,
    lease_id: String,
    mut updates: watch::Receiver<Option<(Option<f64>, Option<String>)>>,
    control: mpsc::Sender<Stop>,
) {
    while updates.changed().await.is_ok() {
        let Some((percent, message)) = updates.borrow_and_update().clone() else {
            continue;
        };
        debug!(job = %id, ?percent, "progress");
        let sent = client
            .progress(&id, &lease_id, percent, message.as_deref())
            .await;
        if let Some(c) = control_from(&id, "progress", sent) {
            let _ = control.send(c).await;
            return;
        }
    }
}

/// What a heartbeat or progress answer means for the running job.
fn control_from(id: &str, call: &str, answer: Result<LeaseStatus>) -> Option<Stop> {
    match answer {
        Ok(status) if status.cancel_requested => Some(Stop::Canceled),
        Ok(_) => None,
        Err(err) if matches!(err.status(), Some(404 | 409 | 410)) => {
            debug!(job = %id, call, error = %chain(&err), "lease lost");
            Some(Stop::LeaseLost)
        }
        Err(err) => {
            warn!(job = %id, call, error = %chain(&err), "call failed");
            None
        }
    }
}

/// Tells the server how the job ended, retrying while it is unreachable.
async fn report(client: &Client, id: &str, lease_id: &str, outcome: Outcome) {
    let mut backoff = Backoff::default();
    for attempt in 1..=REPORT_ATTEMPTS {
        let sent = timeout(REPORT_TIMEOUT, send(client, id, lease_id, &outcome)).await;
        let (transient, why) = match sent {
            Ok(Ok(())) => {
                match &outcome {
                    Outcome::Fail { retry, .. } => info!(job = %id, retry, "job failed"),
                    _ => info!(job = %id, "job completed"),
                }
                return;
            }
            Ok(Err(err)) if err.is_status(409) => {
                warn!(job = %id, error = %chain(&err), "lease lost or job canceled; outcome not recorded");
                return;
            }
            Ok(Err(err)) => (
                matches!(err, Error::Http(_)) || matches!(err.status(), Some(429 | 500..=599)),
                chain(&err),
            ),
            Err(_) => (true, format!("no answer within {REPORT_TIMEOUT:?}")),
        };
        if transient && attempt < REPORT_ATTEMPTS {
            let pause = backoff.next_pause();
            warn!(job = %id, error = %why, retry_in = ?pause, "reporting the outcome failed");
            sleep(pause).await;
            continue;
        }
        error!(job = %id, error = %why, "could not report the outcome");
        if !transient && !matches!(outcome, Outcome::Fail { .. }) {
            // The server refused the result itself (too large, bad type):
            // fail the job rather than leave it to its lease's expiry.
            let message = format!("the server refused the result: {why}");
            let _ = timeout(REPORT_TIMEOUT, client.fail(id, lease_id, &message, false)).await;
        }
        return;
    }
}

async fn send(client: &Client, id: &str, lease_id: &str, outcome: &Outcome) -> Result<()> {
    match outcome {
        Outcome::Json(value) => client.complete_json(id, lease_id, value.clone()).await,
        Outcome::Raw { content_type, body } => {
            client
                .complete_raw(id, lease_id, content_type, body.clone())
                .await
        }
        Outcome::Fail { message, retry } => client.fail(id, lease_id, message, *retry).await,
        Outcome::Drop => Ok(()),
    }
}

/// An error and its sources, `: `-separated, for logs.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..8).map(|_| b.next_pause().as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.next_pause().as_secs(), 1);
    }

    #[test]
    fn drain_then_stop_only_move_forward() {
        let (tx, rx) = watch::channel(Phase::Run);
        let c = Control(Arc::new(tx));
        assert!(!c.draining());
        c.drain();
        assert_eq!(*rx.borrow(), Phase::Drain);
        c.stop();
        c.drain();
        assert_eq!(
            *rx.borrow(),
            Phase::Stop,
            "drain after stop changes nothing"
        );
    }
}
