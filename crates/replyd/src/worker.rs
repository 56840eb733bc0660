//! `replyd worker QUEUE -- COMMAND ARGS...`: a pull worker (API.md §5) that
//! runs a command for each job it leases, exactly as the server's `exec`
//! executor does (the same runner, `replyd_server::executors::process`),
//! on the SDK's worker loop (`replyd_client::worker`).
//!
//! Each of `--concurrency` slots leases one job at a time (long poll, 20 s)
//! and runs COMMAND in its own process group with the job's input (JSON) on
//! stdin and `REPLYD_JOB_ID`, `REPLYD_QUEUE`, `REPLYD_ATTEMPT` (and `TRACEPARENT`, `TRACESTATE` when the job is in a trace) in its
//! environment. stdout is the result (JSON if it parses, else text or
//! bytes); stderr lines `progress <percent> [message]` are reported as
//! progress and the others are forwarded to the worker's stderr, the last
//! 4 KiB kept as the failure message should the command exit non-zero. A
//! heartbeat renews the lease every third of its length; when the server
//! says the job was canceled the command's process group gets SIGTERM, then
//! SIGKILL 5 s later, and the job is failed as "canceled"; when the lease is
//! lost the command is killed and the job dropped.
//!
//! SIGINT or SIGTERM stops leasing and lets running commands finish for up
//! to 30 s (a second signal cuts that short); commands still running then are
//! killed and their jobs failed with `retry` so that another worker takes them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use replyd_client::worker::{Outcome, Stop, Task, Worker, WorkerOptions};
use replyd_server::executors::process;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cli::{Connection, EXIT_ERROR, EXIT_OK};

/// The most of a command's stdout kept as its result.
const MAX_RESULT: usize = 10 * 1024 * 1024;
/// How long running commands may go on after SIGINT/SIGTERM.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// `replyd worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The queue to lease jobs from.
    pub queue: String,
    #[command(flatten)]
    pub conn: Connection,
    /// How many jobs to run at once.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Seconds a lease lasts; a heartbeat renews it every third of that.
    #[arg(long = "lease", value_name = "SECS", default_value_t = 30.0,
          value_parser = positive_secs)]
    pub lease: f64,
    /// The worker's name, shown in the server's logs (default: HOST-PID).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Also stream the command's stdout, as it comes, to the job's output
    /// (a Durable Stream its clients read live) with this content type.
    #[arg(long, value_name = "CONTENT-TYPE")]
    pub stream_output: Option<String>,
    /// The command to run for each job, and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// Runs the worker until SIGINT/SIGTERM (exit 0), or until the server
/// refuses to lease (unknown queue, bad key: exit 2).
pub async fn run(args: WorkerArgs) -> anyhow::Result<i32> {
    let client = args.conn.client()?;
    let mut options = WorkerOptions::new(&args.queue);
    options.concurrency = args.concurrency as usize;
    options.lease = Duration::from_secs_f64(args.lease);
    options.drain_grace = DRAIN_GRACE;
    if let Some(name) = args.name {
        options.name = name;
    }
    let queue = options.queue.clone();
    let worker = Worker::new(client, options);
    let control = worker.control();
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigint.recv() => {}
                _ = sigterm.recv() => {}
            }
            if control.draining() {
                warn!("second signal: killing running commands");
                control.stop();
            } else {
                info!(
                    "stopping: no new jobs; running commands have {DRAIN_GRACE:?} to finish \
                     (signal again to kill them now)"
                );
                control.drain();
            }
        }
    });
    let command = Arc::new(args.command);
    let stream_output: Option<Arc<str>> = args.stream_output.as_deref().map(Arc::from);
    match worker
        .run(move |task| run_command(command.clone(), stream_output.clone(), task))
        .await
    {
        Ok(()) => Ok(EXIT_OK),
        Err(err) => {
            error!(error = %format!("{:#}", anyhow::Error::from(err).context(format!("leasing from queue {queue:?}"))), "worker cannot go on");
            Ok(EXIT_ERROR)
        }
    }
}

/// Runs COMMAND for one job, as the server's `exec` executor does.
async fn run_command(
    argv: Arc<Vec<String>>,
    stream_output: Option<Arc<str>>,
    task: Task,
) -> Outcome {
    let mut input = serde_json::to_vec(&task.input).unwrap_or_else(|_| b"null".to_vec());
    input.push(b'\n');
    let cmd = process::Command {
        argv: argv.to_vec(),
        input: input.into(),
        env: [
            ("REPLYD_JOB_ID", Some(task.job.id.clone())),
            ("REPLYD_QUEUE", Some(task.job.queue.clone())),
            ("REPLYD_ATTEMPT", Some(task.job.attempt.to_string())),
            // The job's trace, as OpenTelemetry's SDKs read it.
            ("TRACEPARENT", task.traceparent.clone()),
            ("TRACESTATE", task.tracestate.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect(),
        max_result: MAX_RESULT,
        echo_stderr: true,
        tee: None,
    };
    let (tee, mut chunks) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let cmd = process::Command {
        tee: stream_output.is_some().then_some(tee),
        ..cmd
    };
    // stdout to the job's output, coalescing what comes while one append
    // is on its way; all of it before the outcome is reported.
    let tee_out = async {
        let Some(ct) = &stream_output else { return };
        let mut failed = false;
        while let Some(first) = chunks.recv().await {
            let mut body = bytes::BytesMut::from(&first[..]);
            while let Ok(more) = chunks.try_recv() {
                body.extend_from_slice(&more);
            }
            if !failed && let Err(e) = task.output(ct, body.freeze()).await {
                warn!(job = %task.job.id, error = %e, "cannot append to the job's output");
                failed = true;
            }
        }
    };
    let (progress_tx, mut progress_rx) = watch::channel::<Option<process::ProgressLine>>(None);
    let forward = async {
        while progress_rx.changed().await.is_ok() {
            if let Some(p) = progress_rx.borrow_and_update().clone() {
                task.progress(Some(p.percent), p.message.as_deref());
            }
        }
    };
    let stop = async {
        match task.stopped().await {
            Stop::Canceled => process::Stop::Canceled,
            Stop::LeaseLost => process::Stop::LeaseLost,
            Stop::Shutdown => process::Stop::Shutdown,
        }
    };
    let run = async {
        let ended = process::run(&cmd, progress_tx, stop).await;
        drop(cmd);
        ended
    };
    let (ended, (), ()) = tokio::join!(run, forward, tee_out);
    let program = argv.first().map_or("", String::as_str);
    match ended.outcome(program, MAX_RESULT, None) {
        process::Outcome::Result { content_type, body } => {
            match (content_type, serde_json::from_slice(&body)) {
                ("application/json", Ok(value)) => Outcome::Json(value),
                _ => Outcome::Raw {
                    content_type: content_type.to_string(),
                    body,
                },
            }
        }
        process::Outcome::Fail { message, retry } => {
            info!(job = %task.job.id, message = %message, "command failed");
            Outcome::Fail { message, retry }
        }
        process::Outcome::Drop => Outcome::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn the_command_follows_a_double_dash() {
        let cli = Cli::try_parse_from([
            "worker",
            "work",
            "--concurrency",
            "2",
            "--",
            "sh",
            "-c",
            "cat",
        ])
        .unwrap();
        assert_eq!(cli.worker.queue, "work");
        assert_eq!(cli.worker.concurrency, 2);
        assert_eq!(cli.worker.command, ["sh", "-c", "cat"]);
        assert!(Cli::try_parse_from(["worker", "work"]).is_err());
    }
}
