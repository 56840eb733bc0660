//! The client subcommands of `replyd` (API.md "Command line"): `submit`,
//! `status`, `result`, `cancel`, `wait` and `worker`, thin shells over the
//! `replyd-client` SDK.
//!
//! `wait` and `submit --wait` follow the job with the SDK's `wait` (its
//! event stream, or long polling where the server does not stream) and draw
//! its progress on stderr: a bar on a terminal, one line per change
//! otherwise.
//!
//! Exit codes: 0 success; 1 the job failed or was canceled (`wait`,
//! `submit --wait`); 2 a usage, connection or API error; 124 `wait --timeout`
//! ran out (as `timeout(1)` does).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use replyd_client::proto::{Job, JobState, SubmitRequest};
use replyd_client::{Client, Submitted};

/// The job succeeded (or the command did what it was asked).
pub const EXIT_OK: i32 = 0;
/// The job failed or was canceled.
pub const EXIT_JOB_FAILED: i32 = 1;
/// Bad usage, an unreachable server, or an error answer.
pub const EXIT_ERROR: i32 = 2;
/// `wait --timeout` passed before the job finished.
pub const EXIT_TIMEOUT: i32 = 124;

/// How long `submit --wait` lets the server hold the submit (`Prefer:
/// wait`) before following the job with progress.
const SUBMIT_HOLD_SECS: u32 = 1;

/// Where the server is. The API key is read from `REPLYD_API_KEY` only, so
/// that it never shows in a process listing.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// Base URL of the replyd server. The API key, if any, is read from
    /// REPLYD_API_KEY.
    #[arg(
        long = "server",
        env = "REPLYD_URL",
        default_value = "http://127.0.0.1:8202",
        value_name = "URL",
        global = true
    )]
    pub server: String,
}

impl Connection {
    /// An SDK client for this server, with the key from `REPLYD_API_KEY`.
    pub fn client(&self) -> anyhow::Result<Client> {
        let key = std::env::var("REPLYD_API_KEY").ok();
        Client::new(&self.server, key).context("bad --server")
    }
}

/// The client subcommands, flattened into `replyd`'s own.
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Submit a job and print it (with --wait: show progress, then print the result).
    Submit(SubmitArgs),
    /// Print a job's current state as JSON.
    Status {
        /// The job id.
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Write a succeeded job's result to stdout, byte for byte.
    Result {
        /// The job id.
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Cancel a job and print it as JSON.
    Cancel {
        /// The job id.
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show the queues (jobs by state, paused or not); pause or resume one.
    /// An operator's: the key must be an admin key of every tenant.
    Queues {
        #[command(subcommand)]
        action: Option<QueuesAction>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Wait for a job to finish, showing progress, then print its result.
    Wait {
        /// The job id.
        id: String,
        /// Give up after this many seconds (exit code 124).
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        #[command(flatten)]
        conn: Connection,
    },
}

/// `replyd queues pause|resume NAME`.
#[derive(clap::Subcommand, Debug)]
pub enum QueuesAction {
    /// Pause a queue: no worker or executor gets a job of it until it is
    /// resumed (submissions are still accepted).
    Pause {
        /// The queue.
        name: String,
    },
    /// Resume a paused queue.
    Resume {
        /// The queue.
        name: String,
    },
}

/// `replyd submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The queue to submit to.
    pub queue: String,
    /// The job's input, as JSON (default: null).
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the job's input (JSON) from this file; `-` is stdin.
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,
    /// Wait for the job: show progress on stderr, then print the result.
    #[arg(long)]
    pub wait: bool,
    /// Submitting again with the same key answers the same job.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// How many times the job may be tried (default: the queue's).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// 0 to 9: a queue's jobs of a higher priority are leased first.
    #[arg(long, value_name = "N")]
    pub priority: Option<u8>,
    /// Run it this many seconds from now (it is scheduled until then).
    #[arg(long, value_name = "SECS")]
    pub delay: Option<f64>,
    /// The group it shares its queue fairly by (a customer id, say).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    #[command(flatten)]
    pub conn: Connection,
}

/// Runs a client subcommand and answers the process exit code. Errors are
/// reported on stderr here and mapped to exit code 2, so `Err` is not
/// returned in practice.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<i32> {
    let outcome = match cmd {
        ClientCommand::Submit(args) => submit(args).await,
        ClientCommand::Status { id, conn } => status(&conn.client()?, &id).await,
        ClientCommand::Result { id, conn } => result(&conn.client()?, &id).await,
        ClientCommand::Cancel { id, conn } => cancel(&conn.client()?, &id).await,
        ClientCommand::Wait { id, timeout, conn } => wait(&conn.client()?, &id, timeout).await,
        ClientCommand::Queues { action, conn } => queues(&conn.client()?, action).await,
    };
    Ok(exit_code(outcome))
}

/// A client command's exit code: its own, or, for an error, `EXIT_ERROR`
/// after saying what went wrong.
pub fn exit_code(outcome: anyhow::Result<i32>) -> i32 {
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("replyd: error: {err:#}");
            EXIT_ERROR
        }
    }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    let client = args.conn.client()?;
    let input = read_input(args.input.as_deref(), args.input_file.as_deref())?;
    let req = SubmitRequest {
        queue: args.queue,
        input,
        webhook: None,
        max_attempts: args.max_attempts,
        timeout: None,
        ttl: None,
        output: None,
        priority: args.priority,
        delay: args.delay,
        run_at: None,
        group: args.group,
    };
    let key = args.idempotency_key.as_deref();
    if !args.wait {
        let job = client.submit(&req, key).await?;
        print_job(&job)?;
        return Ok(EXIT_OK);
    }
    match client.submit_and_wait(&req, key, SUBMIT_HOLD_SECS).await? {
        Submitted::Done { result, .. } => {
            write_stdout(&result.body)?;
            Ok(EXIT_OK)
        }
        Submitted::Accepted(job) => {
            eprintln!("submitted job {}", job.id);
            finish(&client, &job.id, None).await
        }
    }
}

/// Lists the queues as a table, or pauses or resumes one (then prints it).
async fn queues(client: &Client, action: Option<QueuesAction>) -> anyhow::Result<i32> {
    let list = match action {
        Some(QueuesAction::Pause { name }) => vec![client.pause_queue(&name, true).await?],
        Some(QueuesAction::Resume { name }) => vec![client.pause_queue(&name, false).await?],
        None => client.queues().await?.queues,
    };
    let mut out = format!(
        "{:<24} {:<8} {:<7} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9}  {}\n",
        "QUEUE",
        "EXECUTOR",
        "PAUSED",
        "SCHEDULED",
        "QUEUED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELED",
        "LIMITS"
    );
    for q in &list {
        let j = &q.jobs;
        let limits = [
            q.max_running.map(|m| format!("max_running={m}")),
            q.rate.as_ref().map(|r| format!("rate={r}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        out += &format!(
            "{:<24} {:<8} {:<7} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9}  {}\n",
            q.name,
            q.executor,
            if q.paused { "yes" } else { "no" },
            j.scheduled,
            j.queued,
            j.running,
            j.succeeded,
            j.failed,
            j.canceled,
            if limits.is_empty() { "-" } else { &limits }
        );
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(EXIT_OK)
}

async fn status(client: &Client, id: &str) -> anyhow::Result<i32> {
    print_job(&client.get(id).await?.job)?;
    Ok(EXIT_OK)
}

async fn result(client: &Client, id: &str) -> anyhow::Result<i32> {
    let result = client.result(id).await?;
    write_stdout(&result.body)?;
    Ok(EXIT_OK)
}

async fn cancel(client: &Client, id: &str) -> anyhow::Result<i32> {
    print_job(&client.cancel(id).await?)?;
    Ok(EXIT_OK)
}

async fn wait(client: &Client, id: &str, timeout: Option<f64>) -> anyhow::Result<i32> {
    let timeout = match timeout {
        Some(secs) if secs.is_finite() && secs >= 0.0 => Some(Duration::from_secs_f64(secs)),
        Some(secs) => anyhow::bail!("--timeout must be a number of seconds, not {secs}"),
        None => None,
    };
    finish(client, id, timeout).await
}

/// Waits for the job with progress on stderr; prints the result (exit 0),
/// or the job and why it did not succeed (exit 1).
async fn finish(client: &Client, id: &str, timeout: Option<Duration>) -> anyhow::Result<i32> {
    let waited = {
        let mut view = ProgressView::new();
        client.wait_with(id, timeout, |job| view.show(job)).await
        // The bar is cleared here, before the result is printed.
    };
    let job = match waited {
        Ok(job) => job,
        Err(replyd_client::Error::Timeout { job }) => {
            print_job(&job)?;
            eprintln!("replyd: timed out; job {} is still {}", job.id, job.state);
            return Ok(EXIT_TIMEOUT);
        }
        Err(err) => return Err(err.into()),
    };
    if job.state == JobState::Succeeded {
        let result = client.result(&job.id).await?;
        write_stdout(&result.body)?;
        return Ok(EXIT_OK);
    }
    print_job(&job)?;
    eprintln!("replyd: {}", failure_line(&job));
    Ok(EXIT_JOB_FAILED)
}

/// The job's input: `--input`, `--input-file` (`-` for stdin), or null.
fn read_input(
    input: Option<&str>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<serde_json::Value> {
    let (text, source) = match (input, file) {
        (Some(text), _) => (text.to_owned(), "--input".to_owned()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading the input from stdin")?;
            (text, "stdin".to_owned())
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            (text, path.display().to_string())
        }
        (None, None) => return Ok(serde_json::Value::Null),
    };
    serde_json::from_str(&text).with_context(|| format!("{source} is not valid JSON"))
}

/// A job's progress on stderr while it is waited for. On a terminal, a
/// bar with the percent and the message (a spinner while the job is queued
/// or reports no percent), cleared when dropped. Elsewhere (a pipe, a log
/// file, where indicatif would hide the bar) one plain line per change,
/// e.g. `running 40% page 4 of 10`.
struct ProgressView {
    /// `None` when stderr is not a terminal.
    bar: Option<ProgressBar>,
    /// Whether the bar is drawn with a percent (else as a spinner).
    has_percent: bool,
    /// The last plain line printed, so that a change that does not show
    /// (e.g. `job.cancel_requested`) does not repeat it.
    last_line: Option<String>,
}

/// How often the spinner turns.
const SPINNER_TICK: Duration = Duration::from_millis(120);

impl ProgressView {
    fn new() -> ProgressView {
        let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
        let bar = (!bar.is_hidden()).then(|| {
            bar.set_style(spinner_style());
            bar.enable_steady_tick(SPINNER_TICK);
            bar
        });
        ProgressView {
            bar,
            has_percent: false,
            last_line: None,
        }
    }

    fn show(&mut self, job: &Job) {
        let line = progress_line(job);
        let Some(bar) = &self.bar else {
            if self.last_line.as_deref() != Some(line.as_str()) {
                eprintln!("{line}");
                self.last_line = Some(line);
            }
            return;
        };
        let percent = job.progress.as_ref().and_then(|p| p.percent);
        match percent {
            Some(percent) => {
                if !self.has_percent {
                    bar.set_style(bar_style());
                    self.has_percent = true;
                }
                // Whole percents on the bar; the message keeps decimals.
                bar.set_position(percent.clamp(0.0, 100.0).round() as u64);
            }
            None if self.has_percent => {
                bar.set_style(spinner_style());
                self.has_percent = false;
            }
            None => {}
        }
        bar.set_message(line);
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}").expect("a valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} [{bar:30}] {msg}")
        .expect("a valid template")
        .progress_chars("=> ")
}

fn progress_line(job: &Job) -> String {
    let mut line = job.state.to_string();
    if let Some(progress) = &job.progress {
        if let Some(percent) = progress.percent {
            line.push_str(&format!(" {}%", format_percent(percent)));
        }
        if let Some(message) = progress.message.as_deref().filter(|m| !m.is_empty()) {
            line.push(' ');
            line.push_str(message);
        }
    }
    line
}

/// `40` for 40.0, `12.5` for 12.5.
fn format_percent(percent: f64) -> String {
    if percent.fract() == 0.0 {
        format!("{percent:.0}")
    } else {
        format!("{percent:.1}")
    }
}

/// `job ID failed: code: message` / `job ID canceled`.
fn failure_line(job: &Job) -> String {
    match &job.error {
        Some(e) if e.message.is_empty() => format!("job {} {}: {}", job.id, job.state, e.code),
        Some(e) => format!("job {} {}: {}: {}", job.id, job.state, e.code, e.message),
        None => format!("job {} {}", job.id, job.state),
    }
}

fn print_job(job: &Job) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(job)?;
    text.push('\n');
    write_stdout(text.as_bytes())
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use replyd_client::proto::{JobError, Links, Progress};

    /// Stands in for `replyd`'s own command line, which flattens ours.
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    fn job(state: JobState) -> Job {
        let now = "2024-01-01T00:00:00Z".parse().unwrap();
        Job {
            id: "j1".into(),
            queue: "q".into(),
            state,
            progress: None,
            attempt: 1,
            max_attempts: 1,
            priority: 0,
            run_at: None,
            group: None,
            cancel_requested: false,
            created_at: now,
            updated_at: now,
            finished_at: None,
            expires_at: None,
            error: None,
            links: Links {
                self_: "/v1/jobs/j1".into(),
                result: "/v1/jobs/j1/result".into(),
                events: "/v1/jobs/j1/events".into(),
                output: "/v1/jobs/j1/output".into(),
            },
            output: None,
            input: None,
        }
    }

    #[test]
    fn progress_lines() {
        let mut j = job(JobState::Running);
        assert_eq!(progress_line(&j), "running");
        j.progress = Some(Progress {
            percent: Some(40.0),
            message: Some("page 4 of 10".into()),
        });
        assert_eq!(progress_line(&j), "running 40% page 4 of 10");
        j.progress = Some(Progress {
            percent: Some(12.5),
            message: None,
        });
        assert_eq!(progress_line(&j), "running 12.5%");
    }

    #[test]
    fn progress_styles_are_valid() {
        // `with_template` errors are turned into panics: make them here.
        let _ = spinner_style();
        let _ = bar_style();
    }

    #[test]
    fn failure_lines() {
        let mut j = job(JobState::Failed);
        j.error = Some(JobError {
            code: "worker_error".into(),
            message: "exit 3".into(),
            status: None,
        });
        assert_eq!(failure_line(&j), "job j1 failed: worker_error: exit 3");
        let j = job(JobState::Canceled);
        assert_eq!(failure_line(&j), "job j1 canceled");
    }

    #[test]
    fn input_sources() {
        assert_eq!(read_input(None, None).unwrap(), serde_json::Value::Null);
        assert_eq!(
            read_input(Some(r#"{"n":3}"#), None).unwrap(),
            serde_json::json!({"n": 3})
        );
        let err = read_input(Some("{nope"), None).unwrap_err();
        assert!(format!("{err:#}").contains("--input is not valid JSON"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, "[1, 2]").unwrap();
        assert_eq!(
            read_input(None, Some(&path)).unwrap(),
            serde_json::json!([1, 2])
        );
    }

    #[test]
    fn command_line_parses() {
        let cli = Cli::try_parse_from([
            "replyd",
            "submit",
            "report",
            "--input",
            "{}",
            "--wait",
            "--server",
            "http://127.0.0.1:9",
        ])
        .unwrap();
        match cli.cmd {
            ClientCommand::Submit(a) => {
                assert_eq!(a.queue, "report");
                assert!(a.wait);
                assert_eq!(a.conn.server, "http://127.0.0.1:9");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from([
                "replyd",
                "submit",
                "q",
                "--input",
                "{}",
                "--input-file",
                "f"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from(["replyd", "wait", "j1", "--timeout", "2.5"]).unwrap();
        assert!(matches!(cli.cmd, ClientCommand::Wait { timeout: Some(t), .. } if t == 2.5));
    }
}
