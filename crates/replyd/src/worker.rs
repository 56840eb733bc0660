//! `replyd worker QUEUE -- COMMAND ARGS...`: a pull worker (API.md §5) that
//! runs a command for each job it leases.
//!
//! Each of `--concurrency` slots leases one job at a time (long poll, 20 s)
//! and runs COMMAND in its own process group with the job's input (JSON) on
//! stdin. stdout is the result (JSON if it parses, else text or bytes);
//! stderr lines `progress <percent> [message]` are reported as progress and
//! the others are forwarded to the worker's stderr, the last 4 KiB kept as
//! the failure message should the command exit non-zero. A heartbeat renews
//! the lease every third of its length; when the server says the job was
//! canceled the command's process group gets SIGTERM, then SIGKILL 5 s later,
//! and the job is failed as "canceled"; when the lease is lost the command is
//! killed and the job dropped.
//!
//! SIGINT or SIGTERM stops leasing and lets running commands finish for up
//! to 30 s (a second signal cuts that short); commands still running then are
//! killed and their jobs failed with `retry` so that another worker takes them.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use replyd_client::Client;
use replyd_client::proto::{Lease, LeaseRequest};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, error, info, warn};

use crate::cli::{Connection, EXIT_ERROR, EXIT_OK};

/// The most of a command's stdout kept as its result.
const MAX_RESULT: usize = 10 * 1024 * 1024;
/// How much of a command's stderr is kept for the failure message.
const STDERR_TAIL: usize = 4 * 1024;
/// The longest stderr line read at once (a longer one is split).
const MAX_LINE: u64 = 64 * 1024;
/// Seconds a lease request waits for a job (long poll).
const LEASE_WAIT_SECS: f64 = 20.0;
/// How long running commands may go on after SIGINT/SIGTERM.
const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Between SIGTERM and SIGKILL when a command is stopped.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long, after a command exits, processes it left behind may keep its
/// stdout/stderr open before the process group is killed.
const STRAY_GRACE: Duration = Duration::from_secs(5);
/// How many times a completion or failure is sent when the server is unreachable.
const REPORT_ATTEMPTS: u32 = 4;
/// How long one completion or failure call may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

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

/// What every slot needs to know, shared.
#[derive(Debug)]
struct Config {
    queue: String,
    command: Vec<String>,
    /// `--lease`, in seconds as sent to the server.
    lease_secs: f64,
    name: String,
}

/// Where the worker is in its life; only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Leasing and running jobs.
    Run,
    /// Stopping: no new leases, running commands may finish.
    Drain,
    /// Kill running commands now.
    Kill,
}

/// Runs the worker until SIGINT/SIGTERM (exit 0), or until the server
/// refuses to lease (unknown queue, bad key: exit 2).
pub async fn run(args: WorkerArgs) -> anyhow::Result<i32> {
    let client = args.conn.client()?;
    let config = Arc::new(Config {
        queue: args.queue,
        command: args.command,
        lease_secs: args.lease,
        name: args.name.unwrap_or_else(default_name),
    });
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    info!(
        queue = %config.queue,
        server = %client.base_url(),
        concurrency = args.concurrency,
        worker = %config.name,
        "worker started"
    );

    let mut slots = JoinSet::new();
    for _ in 0..args.concurrency {
        slots.spawn(slot(client.clone(), config.clone(), phase_rx.clone()));
    }
    let mut exit = EXIT_OK;
    let mut kill_at: Option<Instant> = None;
    loop {
        let signaled = tokio::select! {
            joined = slots.join_next() => {
                match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(err))) => {
                        error!(error = %format!("{err:#}"), "worker cannot go on");
                        exit = EXIT_ERROR;
                        if *phase_tx.borrow() == Phase::Run {
                            phase_tx.send_replace(Phase::Drain);
                            kill_at = Some(Instant::now() + DRAIN_GRACE);
                        }
                    }
                    Some(Err(err)) => {
                        error!(error = %err, "worker slot panicked");
                        exit = EXIT_ERROR;
                    }
                }
                false
            }
            _ = sigint.recv() => true,
            _ = sigterm.recv() => true,
            () = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                warn!("commands still running after {DRAIN_GRACE:?}; killing them");
                phase_tx.send_replace(Phase::Kill);
                kill_at = None;
                false
            }
        };
        if signaled {
            if *phase_tx.borrow() == Phase::Run {
                info!(
                    "stopping: no new jobs; running commands have {DRAIN_GRACE:?} to finish \
                     (signal again to kill them now)"
                );
                phase_tx.send_replace(Phase::Drain);
                kill_at = Some(Instant::now() + DRAIN_GRACE);
            } else {
                warn!("second signal: killing running commands");
                phase_tx.send_replace(Phase::Kill);
                kill_at = None;
            }
        }
    }
    info!("worker stopped");
    Ok(exit)
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

/// One slot: lease a job, run it, repeat, until the worker stops. Answers
/// `Err` when leasing cannot succeed (unknown queue, bad key).
async fn slot(
    client: Client,
    config: Arc<Config>,
    mut phase: watch::Receiver<Phase>,
) -> anyhow::Result<()> {
    let req = LeaseRequest {
        worker: Some(config.name.clone()),
        lease: Some(config.lease_secs),
        wait: Some(LEASE_WAIT_SECS),
        batch: None,
    };
    let mut backoff = Backoff::default();
    loop {
        if *phase.borrow() != Phase::Run {
            return Ok(());
        }
        // A lease in flight is abandoned on shutdown: should the server have
        // just leased us a job, its lease expires and it is requeued.
        let leased = tokio::select! {
            leased = client.lease(&config.queue, &req) => leased,
            () = reached(&mut phase, Phase::Drain) => return Ok(()),
        };
        match leased {
            Ok(Some(lease)) => {
                backoff.reset();
                run_job(&client, &config, lease, phase.clone()).await;
            }
            Ok(None) => backoff.reset(),
            Err(err) if is_permanent(&err) => {
                return Err(err).with_context(|| format!("leasing from queue {:?}", config.queue));
            }
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
fn is_permanent(err: &replyd_client::Error) -> bool {
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

/// What the heartbeat or the progress reporter learned from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// A cancel was requested: stop the command, fail the job "canceled".
    Cancel,
    /// The lease is gone (409, fencing): stop the command, report nothing.
    LeaseLost,
}

/// How a command's run ended.
#[derive(Debug)]
enum Outcome {
    Exited(std::io::Result<ExitStatus>),
    Control(Control),
    Shutdown,
}

/// What to tell the server at the end of a job.
#[derive(Debug)]
enum Report {
    Json(Value),
    Raw(&'static str, Bytes),
    Fail { message: String, retry: bool },
}

/// Aborts a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs COMMAND for one leased job and reports its outcome.
async fn run_job(
    client: &Client,
    config: &Config,
    lease: Lease,
    mut phase: watch::Receiver<Phase>,
) {
    let Lease { job, lease_id, .. } = lease;
    let job_id = job.id;
    info!(job = %job_id, attempt = job.attempt, "running job");
    let mut stdin_bytes =
        serde_json::to_vec(&job.input.unwrap_or(Value::Null)).unwrap_or_else(|_| b"null".to_vec());
    stdin_bytes.push(b'\n');

    let mut child = match spawn(&config.command) {
        Ok(child) => child,
        Err(err) => {
            let program = config.command.first().map_or("", String::as_str);
            error!(job = %job_id, command = %program, error = %err, "cannot start the command");
            let message = format!("worker could not start {program:?}: {err}");
            report(
                client,
                &job_id,
                &lease_id,
                Report::Fail {
                    message,
                    retry: true,
                },
            )
            .await;
            return;
        }
    };
    // process_group(0) makes the child the leader of a group whose id is its pid.
    let pgid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);

    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input must not block us.
        tokio::spawn(async move {
            let _ = stdin.write_all(&stdin_bytes).await;
            let _ = stdin.shutdown().await;
        });
    }
    // Both are piped by `spawn`; the fallbacks only keep this panic-free.
    let stdout = match child.stdout.take() {
        Some(out) => tokio::spawn(read_capped(out, MAX_RESULT, stop_rx.clone())),
        None => tokio::spawn(async { Captured::default() }),
    };
    let (progress_tx, progress_rx) = watch::channel(None);
    let stderr = match child.stderr.take() {
        Some(err) => tokio::spawn(read_stderr(err, progress_tx, stop_rx)),
        None => tokio::spawn(async { StderrTail::new(STDERR_TAIL) }),
    };

    let (control_tx, mut control_rx) = mpsc::channel(4);
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat_loop(
        client.clone(),
        job_id.clone(),
        lease_id.clone(),
        config.lease_secs,
        control_tx.clone(),
    )));
    let _progress = AbortOnDrop(tokio::spawn(progress_loop(
        client.clone(),
        job_id.clone(),
        lease_id.clone(),
        progress_rx,
        control_tx,
    )));

    let outcome = tokio::select! {
        status = child.wait() => Outcome::Exited(status),
        Some(control) = control_rx.recv() => Outcome::Control(control),
        () = reached(&mut phase, Phase::Kill) => Outcome::Shutdown,
    };
    if !matches!(outcome, Outcome::Exited(Ok(_))) {
        terminate(&mut child, pgid).await;
    }
    let (output, tail) = collect(stdout, stderr, pgid, stop_tx).await;

    let report_as = match outcome {
        Outcome::Exited(Ok(status)) if status.success() => match output {
            Captured { overflow: true, .. } => Report::Fail {
                message: format!("the result exceeds {} MiB", MAX_RESULT >> 20),
                retry: false,
            },
            Captured { bytes, .. } => result_report(bytes),
        },
        Outcome::Exited(Ok(status)) => {
            info!(job = %job_id, %status, "command failed");
            Report::Fail {
                message: exit_message(status, tail.text()),
                retry: true,
            }
        }
        Outcome::Exited(Err(err)) => Report::Fail {
            message: format!("worker lost track of the command: {err}"),
            retry: true,
        },
        Outcome::Control(Control::Cancel) => {
            info!(job = %job_id, "job canceled; command stopped");
            Report::Fail {
                message: "canceled".to_owned(),
                retry: false,
            }
        }
        Outcome::Control(Control::LeaseLost) => {
            warn!(job = %job_id, "lease lost; command killed and job dropped");
            return;
        }
        Outcome::Shutdown => Report::Fail {
            message: "the worker shut down before the command finished".to_owned(),
            retry: true,
        },
    };
    report(client, &job_id, &lease_id, report_as).await;
}

/// Starts COMMAND in its own process group, with piped stdio.
fn spawn(command: &[String]) -> std::io::Result<Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| std::io::Error::other("no command given"))?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

/// Sends `signal` to the command's process group; a group that is already
/// gone is fine.
fn signal_group(pgid: Option<Pid>, signal: Signal) {
    let Some(pgid) = pgid else { return };
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => warn!(pgid = pgid.as_raw(), %signal, error = %err, "cannot signal the command"),
    }
}

/// SIGTERM to the command's group, SIGKILL after [`KILL_GRACE`]; waits for
/// the command to exit.
async fn terminate(child: &mut Child, pgid: Option<Pid>) {
    signal_group(pgid, Signal::SIGTERM);
    if timeout(KILL_GRACE, child.wait()).await.is_err() {
        signal_group(pgid, Signal::SIGKILL);
        let _ = child.kill().await;
    }
}

/// A command's stdout, up to the cap.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    /// More than the cap was written; the rest was discarded.
    overflow: bool,
}

/// Waits for the command's output to end. Processes the command left
/// running that still hold its stdout/stderr get [`STRAY_GRACE`], then the
/// process group is killed; what was read so far is kept either way.
async fn collect(
    stdout: JoinHandle<Captured>,
    stderr: JoinHandle<StderrTail>,
    pgid: Option<Pid>,
    stop: watch::Sender<bool>,
) -> (Captured, StderrTail) {
    let watchdog = async {
        sleep(STRAY_GRACE).await;
        warn!("processes left behind by the command hold its output; killing its process group");
        signal_group(pgid, Signal::SIGKILL);
        sleep(Duration::from_secs(1)).await;
        // Whatever still holds the pipes escaped the group: stop reading.
        stop.send_replace(true);
        std::future::pending::<()>().await;
    };
    let (out, err) = tokio::select! {
        both = async { tokio::join!(stdout, stderr) } => both,
        () = watchdog => unreachable!("the watchdog never ends"),
    };
    (
        out.unwrap_or_default(),
        err.unwrap_or_else(|_| StderrTail::new(STDERR_TAIL)),
    )
}

/// Reads stdout, keeping at most `cap` bytes (and draining the rest).
async fn read_capped(
    mut out: impl AsyncRead + Unpin,
    cap: usize,
    mut stop: watch::Receiver<bool>,
) -> Captured {
    let mut captured = Captured::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = out.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let room = cap - captured.bytes.len();
        if n > room {
            captured.overflow = true;
        }
        captured.bytes.extend_from_slice(&chunk[..n.min(room)]);
    }
    captured
}

/// Reads stderr line by line: progress lines go to `progress` (the latest
/// wins, so a slow server never blocks the command), the others to our
/// stderr and the tail.
async fn read_stderr(
    err: impl AsyncRead + Unpin,
    progress: watch::Sender<Option<ProgressLine>>,
    mut stop: watch::Receiver<bool>,
) -> StderrTail {
    let mut reader = BufReader::new(err);
    let mut tail = StderrTail::new(STDERR_TAIL);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE);
        tokio::select! {
            read = limited.read_until(b'\n', &mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = stop.wait_for(|s| *s) => break,
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        match parse_progress(line) {
            Some(p) => {
                progress.send_replace(Some(p));
            }
            None => {
                use std::io::Write;
                let mut ours = std::io::stderr().lock();
                let _ = writeln!(ours, "{line}");
                tail.push_line(line);
            }
        }
    }
    tail
}

/// A `progress <percent> [message]` line from a command's stderr.
#[derive(Debug, Clone, PartialEq)]
struct ProgressLine {
    /// Clamped to 0..=100.
    percent: f64,
    message: Option<String>,
}

/// Parses `progress <percent> [message]` (`40`, `12.5` or `40%`); any
/// other line is `None`.
fn parse_progress(line: &str) -> Option<ProgressLine> {
    let rest = line.strip_prefix("progress")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let rest = rest.trim();
    let (number, message) = match rest.split_once(char::is_whitespace) {
        Some((number, message)) => (number, message.trim()),
        None => (rest, ""),
    };
    let number = number.strip_suffix('%').unwrap_or(number);
    let percent = number.parse::<f64>().ok().filter(|p| p.is_finite())?;
    Some(ProgressLine {
        percent: percent.clamp(0.0, 100.0),
        message: (!message.is_empty()).then(|| message.to_owned()),
    })
}

/// The last bytes of a command's stderr, cut at a line start where possible.
#[derive(Debug)]
struct StderrTail {
    text: String,
    cap: usize,
}

impl StderrTail {
    fn new(cap: usize) -> StderrTail {
        StderrTail {
            text: String::new(),
            cap,
        }
    }

    fn push_line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() <= self.cap {
            return;
        }
        let mut cut = self.text.len() - self.cap;
        while !self.text.is_char_boundary(cut) {
            cut += 1;
        }
        // Drop the partial first line, unless it is all there is.
        if self.text.as_bytes()[cut - 1] != b'\n'
            && let Some(nl) = self.text[cut..].find('\n')
            && cut + nl + 1 < self.text.len()
        {
            cut += nl + 1;
        }
        self.text.drain(..cut);
    }

    fn text(&self) -> &str {
        self.text.trim_end()
    }
}

/// The failure message for a command that exited non-zero.
fn exit_message(status: ExitStatus, tail: &str) -> String {
    let what = match (status.code(), status.signal()) {
        (Some(code), _) => format!("command exited with code {code}"),
        (None, Some(signal)) => format!("command was killed by signal {signal}"),
        (None, None) => "command failed".to_owned(),
    };
    if tail.is_empty() {
        what
    } else {
        format!("{what}: {tail}")
    }
}

/// A command's stdout as a result: JSON if it parses, else UTF-8 text, else bytes.
fn result_report(bytes: Vec<u8>) -> Report {
    if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
        return Report::Json(value);
    }
    let content_type = if std::str::from_utf8(&bytes).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    Report::Raw(content_type, Bytes::from(bytes))
}

/// Renews the lease every third of its length until aborted; tells the job
/// when a cancel is requested or the lease is lost.
async fn heartbeat_loop(
    client: Client,
    job_id: String,
    lease_id: String,
    lease_secs: f64,
    control: mpsc::Sender<Control>,
) {
    let period = Duration::from_secs_f64(lease_secs / 3.0).max(Duration::from_millis(200));
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let beat = timeout(
            period,
            client.heartbeat(&job_id, &lease_id, Some(lease_secs)),
        )
        .await;
        let Ok(beat) = beat else {
            warn!(job = %job_id, "heartbeat timed out");
            continue;
        };
        if let Some(c) = control_from(&job_id, "heartbeat", beat) {
            let _ = control.send(c).await;
            return;
        }
    }
}

/// Sends the latest progress line whenever there is a new one.
async fn progress_loop(
    client: Client,
    job_id: String,
    lease_id: String,
    mut lines: watch::Receiver<Option<ProgressLine>>,
    control: mpsc::Sender<Control>,
) {
    while lines.changed().await.is_ok() {
        let Some(line) = lines.borrow_and_update().clone() else {
            continue;
        };
        debug!(job = %job_id, percent = line.percent, "progress");
        let sent = client
            .progress(
                &job_id,
                &lease_id,
                Some(line.percent),
                line.message.as_deref(),
            )
            .await;
        if let Some(c) = control_from(&job_id, "progress", sent) {
            let _ = control.send(c).await;
            return;
        }
    }
}

/// What a heartbeat or progress answer means for the running command.
fn control_from(
    job_id: &str,
    call: &str,
    answer: replyd_client::Result<replyd_client::proto::LeaseStatus>,
) -> Option<Control> {
    match answer {
        Ok(status) if status.cancel_requested => Some(Control::Cancel),
        Ok(_) => None,
        Err(err) if matches!(err.status(), Some(404 | 409 | 410)) => {
            debug!(job = %job_id, call, error = %chain(&err), "lease lost");
            Some(Control::LeaseLost)
        }
        Err(err) => {
            warn!(job = %job_id, call, error = %chain(&err), "call failed");
            None
        }
    }
}

/// Tells the server how the job ended, retrying while it is unreachable.
async fn report(client: &Client, job_id: &str, lease_id: &str, report: Report) {
    let mut backoff = Backoff::default();
    for attempt in 1..=REPORT_ATTEMPTS {
        let sent = timeout(
            REPORT_TIMEOUT,
            send_report(client, job_id, lease_id, &report),
        )
        .await;
        let (transient, why) = match sent {
            Ok(Ok(())) => {
                match &report {
                    Report::Fail { retry, .. } => info!(job = %job_id, retry, "job failed"),
                    _ => info!(job = %job_id, "job completed"),
                }
                return;
            }
            Ok(Err(err)) if err.is_status(409) => {
                warn!(job = %job_id, error = %chain(&err), "lease lost or job canceled; outcome not recorded");
                return;
            }
            Ok(Err(err)) => (
                matches!(err, replyd_client::Error::Http(_))
                    || matches!(err.status(), Some(429 | 500..=599)),
                chain(&err),
            ),
            Err(_) => (true, format!("no answer within {REPORT_TIMEOUT:?}")),
        };
        if transient && attempt < REPORT_ATTEMPTS {
            let pause = backoff.next_pause();
            warn!(job = %job_id, error = %why, retry_in = ?pause, "reporting the outcome failed");
            sleep(pause).await;
            continue;
        }
        error!(job = %job_id, error = %why, "could not report the outcome");
        if !transient && !matches!(report, Report::Fail { .. }) {
            // The server refused the result itself (too large, bad type):
            // fail the job rather than leave it to its lease's expiry.
            let message = format!("the server refused the result: {why}");
            let _ = timeout(
                REPORT_TIMEOUT,
                client.fail(job_id, lease_id, &message, false),
            )
            .await;
        }
        return;
    }
}

async fn send_report(
    client: &Client,
    job_id: &str,
    lease_id: &str,
    report: &Report,
) -> replyd_client::Result<()> {
    match report {
        Report::Json(value) => client.complete_json(job_id, lease_id, value.clone()).await,
        Report::Raw(content_type, body) => {
            client
                .complete_raw(job_id, lease_id, content_type, body.clone())
                .await
        }
        Report::Fail { message, retry } => client.fail(job_id, lease_id, message, *retry).await,
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
    fn progress_lines_parse() {
        assert_eq!(
            parse_progress("progress 50 half"),
            Some(ProgressLine {
                percent: 50.0,
                message: Some("half".into())
            })
        );
        assert_eq!(
            parse_progress("progress 12.5%   page 4 of 10  "),
            Some(ProgressLine {
                percent: 12.5,
                message: Some("page 4 of 10".into())
            })
        );
        assert_eq!(
            parse_progress("progress\t7"),
            Some(ProgressLine {
                percent: 7.0,
                message: None
            })
        );
        assert_eq!(parse_progress("progress 150").unwrap().percent, 100.0);
        assert_eq!(parse_progress("progress -3").unwrap().percent, 0.0);
    }

    #[test]
    fn other_lines_are_not_progress() {
        for line in [
            "",
            "progress",
            "progress ",
            "progressive 10",
            "progress ten percent",
            "progress NaN",
            "progress inf",
            "Progress 10",
            " progress 10",
            "warning: progress 10",
        ] {
            assert_eq!(parse_progress(line), None, "{line:?}");
        }
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        let mut tail = StderrTail::new(16);
        tail.push_line("first line");
        assert_eq!(tail.text(), "first line");
        tail.push_line("second");
        assert_eq!(tail.text(), "second");
        tail.push_line("third");
        assert_eq!(tail.text(), "second\nthird");
        // One line longer than the cap keeps its end.
        tail.push_line("0123456789abcdefghij");
        assert_eq!(tail.text(), "56789abcdefghij");
        assert!(tail.text.len() <= 16);
    }

    #[test]
    fn stderr_tail_cuts_at_char_boundaries() {
        let mut tail = StderrTail::new(5);
        tail.push_line("ééééé");
        assert!(tail.text.len() <= 6);
        assert!(tail.text().chars().all(|c| c == 'é'));
    }

    #[test]
    fn results_by_content() {
        assert!(
            matches!(result_report(b"{\"a\": 1}\n".to_vec()), Report::Json(v) if v == serde_json::json!({"a": 1}))
        );
        assert!(matches!(result_report(b"42".to_vec()), Report::Json(_)));
        assert!(matches!(
            result_report(b"hello\n".to_vec()),
            Report::Raw("text/plain; charset=utf-8", _)
        ));
        assert!(matches!(
            result_report(vec![0xff, 0xfe]),
            Report::Raw("application/octet-stream", _)
        ));
    }

    #[test]
    fn exit_messages() {
        let code3 = ExitStatus::from_raw(3 << 8);
        assert_eq!(exit_message(code3, ""), "command exited with code 3");
        assert_eq!(
            exit_message(code3, "boom"),
            "command exited with code 3: boom"
        );
        let killed = ExitStatus::from_raw(9);
        assert_eq!(exit_message(killed, ""), "command was killed by signal 9");
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..8).map(|_| b.next_pause().as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.next_pause().as_secs(), 1);
    }

    #[tokio::test]
    async fn stdout_is_capped() {
        let (_stop_tx, stop) = watch::channel(false);
        let got = read_capped(&b"0123456789"[..], 4, stop.clone()).await;
        assert_eq!(got.bytes, b"0123");
        assert!(got.overflow);
        let got = read_capped(&b"0123"[..], 4, stop).await;
        assert_eq!(got.bytes, b"0123");
        assert!(!got.overflow);
    }

    #[tokio::test]
    async fn stderr_splits_progress_from_the_rest() {
        let (_stop_tx, stop) = watch::channel(false);
        let (tx, rx) = watch::channel(None);
        let input = &b"starting\nprogress 10 a\nprogress 50 half\r\noops\n"[..];
        let tail = read_stderr(input, tx, stop).await;
        assert_eq!(tail.text(), "starting\noops");
        assert_eq!(
            *rx.borrow(),
            Some(ProgressLine {
                percent: 50.0,
                message: Some("half".into())
            })
        );
    }

    /// Whether a process is gone (or a zombie nobody reaped yet).
    fn is_dead(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    #[tokio::test]
    async fn terminate_stops_the_whole_process_group() {
        let script = "sleep 30 & echo $!; wait";
        let mut child = spawn(&["sh".into(), "-c".into(), script.into()]).unwrap();
        let pgid = child.id().map(|p| Pid::from_raw(p as i32));
        assert_ne!(pgid, Some(nix::unistd::getpgrp()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut sleeper = String::new();
        out.read_line(&mut sleeper).await.unwrap();
        let sleeper = sleeper.trim().to_owned();
        assert!(!is_dead(&sleeper));

        let started = std::time::Instant::now();
        terminate(&mut child, pgid).await;
        assert!(started.elapsed() < KILL_GRACE, "SIGTERM was enough");
        // The background sleep got the signal too.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !is_dead(&sleeper) {
            assert!(std::time::Instant::now() < deadline, "{sleeper} survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
