//! Running a command for one job: what the `exec` executor and
//! `replyd worker -- COMMAND` share, so that both behave alike.
//!
//! The command runs in a process group of its own with the job's input on
//! stdin. stdout is the result (JSON if it parses, else text or bytes), at
//! most `max_result` bytes. stderr lines `progress <percent> [message]` are
//! progress; the other lines are kept (the last 4 KiB, for the failure
//! message should the command exit non-zero) and, for the CLI, echoed. A
//! stop (the job canceled, its lease lost, shutdown) sends the whole group
//! SIGTERM, then SIGKILL after [`KILL_GRACE`]; a timeout, SIGKILL at once.
//! Processes the command left behind holding its output get
//! [`STRAY_GRACE`], then the group is killed.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

/// How much of a command's stderr is kept for the failure message.
pub const STDERR_TAIL: usize = 4 * 1024;
/// The longest stderr line read at once (a longer one is split).
const MAX_LINE: u64 = 64 * 1024;
/// Between SIGTERM and SIGKILL when a command is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long, after a command exits, processes it left behind may keep its
/// stdout/stderr open before the process group is killed.
pub const STRAY_GRACE: Duration = Duration::from_secs(5);

/// What to run for a job.
#[derive(Debug, Clone)]
pub struct Command {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// What the command reads on stdin (the job's input).
    pub input: Bytes,
    /// Environment variables beside the inherited ones (`REPLYD_JOB_ID`, …).
    pub env: Vec<(String, String)>,
    /// The most of stdout kept as the result; more fails the job.
    pub max_result: usize,
    /// Echo stderr lines that are not progress to this process's stderr
    /// (the CLI worker does; the server logs them instead).
    pub echo_stderr: bool,
    /// Where stdout goes as it is read, besides the result (the job's
    /// output stream). The command waits while it is full.
    pub tee: Option<tokio::sync::mpsc::Sender<Bytes>>,
}

/// Why a command was stopped before it exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The job was canceled.
    Canceled,
    /// The lease is gone (another attempt owns the job): report nothing.
    LeaseLost,
    /// The command ran past its timeout.
    TimedOut,
    /// The worker or server is shutting down.
    Shutdown,
}

/// A `progress <percent> [message]` line from a command's stderr.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressLine {
    /// Clamped to 0..=100.
    pub percent: f64,
    pub message: Option<String>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Ended {
    Exited {
        status: ExitStatus,
        stdout: Captured,
        stderr: String,
    },
    Stopped {
        why: Stop,
        stderr: String,
    },
    /// The command could not be started.
    NotStarted(std::io::Error),
    /// Waiting for it failed.
    Lost(std::io::Error),
}

/// What to tell the server.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The result, with its content type.
    Result {
        content_type: &'static str,
        body: Bytes,
    },
    Fail {
        message: String,
        retry: bool,
    },
    /// Nothing: the lease is lost.
    Drop,
}

impl Ended {
    /// What the run means for the job. `timeout` is only for the message.
    pub fn outcome(self, program: &str, max_result: usize, timeout: Option<Duration>) -> Outcome {
        let fail = |message: String, retry| Outcome::Fail { message, retry };
        match self {
            Ended::Exited { status, stdout, .. } if status.success() => {
                if stdout.overflow {
                    fail(format!("the result exceeds {max_result} bytes"), false)
                } else {
                    result_of(stdout.bytes)
                }
            }
            Ended::Exited { status, stderr, .. } => fail(exit_message(status, &stderr), true),
            Ended::Stopped { why, stderr } => match why {
                Stop::Canceled => fail("canceled".into(), false),
                Stop::LeaseLost => Outcome::Drop,
                Stop::TimedOut => {
                    let after = timeout.map_or(String::new(), |t| format!(" of {t:?}"));
                    let mut m = format!(
                        "the command ran past its timeout{after}; its process group was killed"
                    );
                    if !stderr.is_empty() {
                        m.push_str(": ");
                        m.push_str(&stderr);
                    }
                    fail(m, true)
                }
                Stop::Shutdown => fail(
                    "the worker shut down before the command finished".into(),
                    true,
                ),
            },
            Ended::NotStarted(e) => fail(format!("could not start {program:?}: {e}"), true),
            Ended::Lost(e) => fail(format!("lost track of the command: {e}"), true),
        }
    }
}

/// Runs `cmd`, sending its progress lines to `progress`, until it exits or
/// `stop` resolves (then its process group is stopped).
pub async fn run(
    cmd: &Command,
    progress: watch::Sender<Option<ProgressLine>>,
    stop: impl Future<Output = Stop>,
) -> Ended {
    let mut child = match spawn(cmd) {
        Ok(c) => c,
        Err(e) => return Ended::NotStarted(e),
    };
    // process_group(0) makes the child the leader of a group whose id is
    // its pid.
    let pgid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input must not block us.
        let input = cmd.input.clone();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    // Both are piped by `spawn`; the fallbacks only keep this panic-free.
    let stdout = match child.stdout.take() {
        Some(out) => tokio::spawn(read_capped(
            out,
            cmd.max_result,
            cmd.tee.clone(),
            stop_rx.clone(),
        )),
        None => tokio::spawn(async { Captured::default() }),
    };
    let stderr = match child.stderr.take() {
        Some(err) => tokio::spawn(read_stderr(err, progress, stop_rx, cmd.echo_stderr)),
        None => tokio::spawn(async { StderrTail::new(STDERR_TAIL) }),
    };
    let stopped = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => Ok(status),
            Err(e) => {
                terminate(&mut child, pgid).await;
                let _ = collect(stdout, stderr, pgid, stop_tx).await;
                return Ended::Lost(e);
            }
        },
        why = stop => Err(why),
    };
    match stopped {
        // Past its time: no grace (the attempt's lease is about to end).
        Err(Stop::TimedOut) => {
            signal_group(pgid, Signal::SIGKILL);
            let _ = child.kill().await;
        }
        Err(_) => terminate(&mut child, pgid).await,
        Ok(_) => {}
    }
    let (out, tail) = collect(stdout, stderr, pgid, stop_tx).await;
    let stderr = tail.text().to_string();
    match stopped {
        Ok(status) => Ended::Exited {
            status,
            stdout: out,
            stderr,
        },
        Err(why) => Ended::Stopped { why, stderr },
    }
}

/// Starts the command in its own process group, with piped stdio.
pub fn spawn(cmd: &Command) -> std::io::Result<Child> {
    let (program, args) = cmd
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("no command given"))?;
    tokio::process::Command::new(program)
        .args(args)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
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
        Err(err) => {
            tracing::warn!(pgid = pgid.as_raw(), %signal, error = %err, "cannot signal the command")
        }
    }
}

/// SIGTERM to the command's group, SIGKILL after [`KILL_GRACE`]; waits for
/// the command to exit.
pub async fn terminate(child: &mut Child, pgid: Option<Pid>) {
    signal_group(pgid, Signal::SIGTERM);
    if timeout(KILL_GRACE, child.wait()).await.is_err() {
        signal_group(pgid, Signal::SIGKILL);
        let _ = child.kill().await;
    }
}

/// A command's stdout, up to the cap.
#[derive(Debug, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// More than the cap was written; the rest was discarded.
    pub overflow: bool,
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
        tracing::warn!(
            "processes left behind by the command hold its output; killing its process group"
        );
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

/// Reads stdout, keeping at most `cap` bytes (and draining the rest), each
/// read kept also sent to `tee`.
async fn read_capped(
    mut out: impl AsyncRead + Unpin,
    cap: usize,
    mut tee: Option<tokio::sync::mpsc::Sender<Bytes>>,
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
        let kept = &chunk[..n.min(room)];
        captured.bytes.extend_from_slice(kept);
        if let Some(t) = &tee
            && !kept.is_empty()
            && t.send(Bytes::copy_from_slice(kept)).await.is_err()
        {
            tee = None;
        }
    }
    captured
}

/// Reads stderr line by line: progress lines go to `progress` (the latest
/// wins, so a slow reporter never blocks the command), the others to the
/// tail (and, with `echo`, to our stderr).
async fn read_stderr(
    err: impl AsyncRead + Unpin,
    progress: watch::Sender<Option<ProgressLine>>,
    mut stop: watch::Receiver<bool>,
    echo: bool,
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
                if echo {
                    use std::io::Write;
                    let mut ours = std::io::stderr().lock();
                    let _ = writeln!(ours, "{line}");
                } else {
                    tracing::debug!(line, "command stderr");
                }
                tail.push_line(line);
            }
        }
    }
    tail
}

/// Parses `progress <percent> [message]` (`40`, `12.5` or `40%`); any
/// other line is `None`.
pub fn parse_progress(line: &str) -> Option<ProgressLine> {
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

/// A command's stdout as a result: JSON if it parses, else UTF-8 text, else
/// bytes.
fn result_of(bytes: Vec<u8>) -> Outcome {
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
        "application/json"
    } else if std::str::from_utf8(&bytes).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    Outcome::Result {
        content_type,
        body: Bytes::from(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        Command {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            input: Bytes::from_static(b"{\"n\":2}\n"),
            env: vec![("REPLYD_JOB_ID".into(), "j-1".into())],
            max_result: 1024,
            echo_stderr: false,
            tee: None,
        }
    }

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
        let kind = |b: &[u8]| match result_of(b.to_vec()) {
            Outcome::Result { content_type, .. } => content_type,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(b"{\"a\": 1}\n"), "application/json");
        assert_eq!(kind(b"42"), "application/json");
        assert_eq!(kind(b"hello\n"), "text/plain; charset=utf-8");
        assert_eq!(kind(&[0xff, 0xfe]), "application/octet-stream");
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

    #[tokio::test]
    async fn stdout_is_capped() {
        let (_stop_tx, stop) = watch::channel(false);
        let got = read_capped(&b"0123456789"[..], 4, None, stop.clone()).await;
        assert_eq!(got.bytes, b"0123");
        assert!(got.overflow);
        let got = read_capped(&b"0123"[..], 4, None, stop).await;
        assert_eq!(got.bytes, b"0123");
        assert!(!got.overflow);
    }

    #[tokio::test]
    async fn stderr_splits_progress_from_the_rest() {
        let (_stop_tx, stop) = watch::channel(false);
        let (tx, rx) = watch::channel(None);
        let input = &b"starting\nprogress 10 a\nprogress 50 half\r\noops\n"[..];
        let tail = read_stderr(input, tx, stop, false).await;
        assert_eq!(tail.text(), "starting\noops");
        assert_eq!(
            *rx.borrow(),
            Some(ProgressLine {
                percent: 50.0,
                message: Some("half".into())
            })
        );
    }

    #[tokio::test]
    async fn a_command_reads_its_input_and_writes_its_result() {
        let (tx, _rx) = watch::channel(None);
        let cmd = sh(r#"read line; echo "{\"got\": $line, \"job\": \"$REPLYD_JOB_ID\"}""#);
        let ended = run(&cmd, tx, std::future::pending()).await;
        assert_eq!(
            ended.outcome("sh", 1024, None),
            Outcome::Result {
                content_type: "application/json",
                body: Bytes::from_static(b"{\"got\": {\"n\":2}, \"job\": \"j-1\"}\n"),
            }
        );
        let (tx, _rx) = watch::channel(None);
        let ended = run(&sh("echo nope >&2; exit 3"), tx, std::future::pending()).await;
        assert_eq!(
            ended.outcome("sh", 1024, None),
            Outcome::Fail {
                message: "command exited with code 3: nope".into(),
                retry: true
            }
        );
        let (tx, _rx) = watch::channel(None);
        let ended = run(&sh("head -c 2000 /dev/zero"), tx, std::future::pending()).await;
        assert!(matches!(
            ended.outcome("sh", 1024, None),
            Outcome::Fail { retry: false, .. }
        ));
        let (tx, _rx) = watch::channel(None);
        let missing = Command {
            argv: vec!["/nonexistent/replyd-test".into()],
            ..sh("")
        };
        assert!(matches!(
            run(&missing, tx, std::future::pending()).await,
            Ended::NotStarted(_)
        ));
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
    async fn a_stop_ends_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("sleeper");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let (tx, _rx) = watch::channel(None);
        let started = std::time::Instant::now();
        let ended = run(&sh(&script), tx, async {
            sleep(Duration::from_millis(300)).await;
            Stop::TimedOut
        })
        .await;
        assert!(started.elapsed() < KILL_GRACE, "killed at once");
        assert!(matches!(
            ended,
            Ended::Stopped {
                why: Stop::TimedOut,
                ..
            }
        ));
        let sleeper = std::fs::read_to_string(&pidfile).unwrap();
        let sleeper = sleeper.trim();
        // The background sleep got the signal too.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !is_dead(sleeper) {
            assert!(std::time::Instant::now() < deadline, "{sleeper} survived");
            sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(
            ended.outcome("sh", 1, Some(Duration::from_secs(1))),
            Outcome::Fail { retry: true, .. }
        ));
    }
}
