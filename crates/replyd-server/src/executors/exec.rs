//! `executor = "exec"`: the server runs a configured command for each job
//! (`command = ["./render.sh", "--fast"]`), at most `concurrency` at once
//! on each node, as `replyd worker -- COMMAND` does over HTTP (both use
//! [`process`](super::process)).
//!
//! The job's input (JSON and a newline) is the command's stdin; stdout is
//! the result (JSON if it parses, else text or bytes); stderr lines
//! `progress <percent> [message]` become `job.progress` events (lines that
//! come faster than they are recorded are coalesced: the latest wins). The
//! environment carries `REPLYD_JOB_ID`, `REPLYD_QUEUE` and
//! `REPLYD_ATTEMPT`. A non-zero exit fails the attempt with the tail of
//! stderr (retried with backoff until `max_attempts`). The queue's
//! `timeout` is the attempt's: at its end the command's whole process group
//! is killed. A cancel of the running job stops the group too (SIGTERM,
//! then SIGKILL). With `stream_output = "<content type>"`, stdout also
//! goes to the job's output stream as it comes (chunks that arrive while
//! one is appended are appended together), all of it before the outcome
//! ([`output`](super::output)); an attempt that streamed output is not
//! tried again.

use replyd_core::trace::SpanOf;
use std::sync::Arc;
use std::time::Duration;

use replyd_core::job::{Command, JobError, Progress};
use replyd_core::store::{JobOutput, Leased, Move, StoreError};
use tokio::sync::watch;

use super::process::{self, Outcome, Stop};
use crate::app::App;
use crate::config::secs;

/// Runs queue `queue` until shutdown.
pub async fn run(app: Arc<App>, queue: String) {
    let Some(q) = app.config.queues.get(&queue).cloned() else {
        return;
    };
    let argv = Arc::new(q.command.clone().unwrap_or_default());
    let stream_output: Option<Arc<str>> = q.stream_output.as_deref().map(Arc::from);
    let timeout = secs(q.timeout);
    let leasing = super::Leasing {
        queue,
        worker: format!("exec:{}", argv.first().map_or("", String::as_str)),
        // The attempt's deadline: the command is killed at its end.
        length: timeout,
        concurrency: q.concurrency as usize,
    };
    super::work(app, leasing, move |app, job| {
        let (argv, stream_output) = (argv.clone(), stream_output.clone());
        async move { run_one(&app, &argv, stream_output, timeout, job).await }
    })
    .await
}

/// `TRACEPARENT` and `TRACESTATE` for a command, when its job is in a
/// trace (the names OpenTelemetry's SDKs read a parent from).
fn trace_env(app: &App, job: &replyd_core::JobRecord) -> Vec<(String, String)> {
    let Some(t) = app.telemetry.outgoing(job, SpanOf::Attempt(job.attempt)) else {
        return Vec::new();
    };
    let mut env = vec![("TRACEPARENT".to_string(), t.traceparent)];
    env.extend(t.tracestate.map(|s| ("TRACESTATE".to_string(), s)));
    env
}

async fn run_one(
    app: &App,
    argv: &[String],
    stream_output: Option<Arc<str>>,
    timeout: Duration,
    leased: Leased,
) {
    let Leased {
        job,
        input,
        lease_id,
    } = leased;
    let id = job.id;
    let mut stdin = input.to_vec();
    stdin.push(b'\n');
    let max_result = app.config.limits.max_result;
    // The type the submission named, else the queue's.
    let tee = stream_output.map(|ct| {
        let ct = job.output_type.as_deref().map_or(ct, Arc::from);
        super::output::Tee::start(app, (id, job.tenant.clone(), lease_id.clone()), ct)
    });
    let cmd = process::Command {
        argv: argv.to_vec(),
        input: stdin.into(),
        env: vec![
            ("REPLYD_JOB_ID".into(), id.to_string()),
            ("REPLYD_QUEUE".into(), job.queue.clone()),
            ("REPLYD_ATTEMPT".into(), job.attempt.to_string()),
        ]
        .into_iter()
        .chain(trace_env(app, &job))
        .collect(),
        max_result,
        echo_stderr: false,
        tee: tee.as_ref().map(super::output::Tee::sender),
    };
    tracing::info!(job = %id, attempt = job.attempt, "running the command");
    let (progress_tx, mut progress_rx) = watch::channel::<Option<process::ProgressLine>>(None);
    // Progress is reported as it comes (the latest wins); a report that
    // finds the lease gone stops the command.
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let mut reporter = {
        let (store, lease_id) = (app.store.clone(), lease_id.clone());
        let clock = app.clock.clone();
        tokio::spawn(async move {
            while progress_rx.changed().await.is_ok() {
                let Some(line) = progress_rx.borrow_and_update().clone() else {
                    continue;
                };
                let cmd = Command::Progress {
                    lease_id: lease_id.clone(),
                    progress: Progress {
                        percent: Some(line.percent),
                        message: line.message,
                    },
                };
                if let Err(StoreError::Transition(_)) =
                    store.apply(id, None, cmd, None, clock.now()).await
                {
                    lost_tx.send_replace(true);
                    return;
                }
            }
        })
    };
    // Killed a moment before its lease runs out, so that its outcome is
    // recorded before the reaper would requeue it.
    let margin = (timeout / 20).min(Duration::from_millis(250));
    let stop = async {
        tokio::select! {
            _ = tokio::time::sleep(timeout - margin) => Stop::TimedOut,
            _ = app.shutdown.cancelled() => Stop::Shutdown,
            // (Its sender goes when the reporter ends: not a loss.)
            Ok(_) = lost_rx.wait_for(|l| *l) => Stop::LeaseLost,
            () = super::cancel_requested(app, id) => Stop::Canceled,
        }
    };
    let ended = process::run(&cmd, progress_tx, stop).await;
    drop(cmd);
    // All of the output before the outcome (its readers see the end after
    // the last chunk).
    let streamed = match tee {
        Some(t) => t.finish().await,
        None => 0,
    };
    // The last progress line is recorded before the outcome.
    if tokio::time::timeout(Duration::from_secs(2), &mut reporter)
        .await
        .is_err()
    {
        reporter.abort();
    }
    let program = argv.first().map_or("", String::as_str);
    let (cmd, output) = match ended.outcome(program, max_result, Some(timeout)) {
        Outcome::Result { content_type, body } => (
            Command::Complete {
                lease_id: lease_id.clone(),
            },
            Some(JobOutput {
                content_type: content_type.to_string(),
                body,
                upstream: None,
            }),
        ),
        Outcome::Fail { message, retry } => (
            Command::Fail {
                lease_id: lease_id.clone(),
                error: JobError::new("command-failed", message),
                // Its output cannot be taken back (`output`).
                retry: retry && streamed == 0,
            },
            None,
        ),
        Outcome::Drop => {
            tracing::warn!(job = %id, "lease lost; the command was stopped");
            return;
        }
    };
    match app.finisher.apply(Move { id, cmd, output }).await {
        Ok(job) => tracing::info!(job = %id, state = job.state.as_str(), "command done"),
        Err(e) => tracing::warn!(job = %id, error = %e, "cannot record the command's outcome"),
    }
}
