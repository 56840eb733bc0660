//! End to end: the real `replyd serve` on port 0, jobs submitted with the
//! SDK, and `replyd worker` running shell commands for them (API.md §5 and
//! "Command line").

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use replyd_client::Client;
use replyd_client::proto::{JobState, SubmitRequest};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_replyd");

/// A `replyd serve` with one pull queue, `work`, killed when dropped.
struct Server {
    url: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

async fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("replyd.toml");
    std::fs::write(&config, "[queues.work]\nexecutor = \"pull\"\n").unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("r.db"))
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("[server] {line}");
            if let Some(url) = listen_url(&line) {
                return url;
            }
        }
        panic!("the server exited before saying where it listens");
    })
    .await
    .expect("the server did not say where it listens within 30 s");
    // Keep draining its log so that it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[server] {line}");
        }
    });
    Server {
        url,
        _child: child,
        _dir: dir,
    }
}

/// `http://127.0.0.1:PORT` out of `replyd listening on http://127.0.0.1:PORT`
/// (whatever the log line has around it).
fn listen_url(line: &str) -> Option<String> {
    let at = line.find("listening on http://")? + "listening on ".len();
    let url: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || ":/.[]".contains(*c))
        .collect();
    Some(url)
}

/// `replyd worker work --server URL [extra] -- sh -c SCRIPT`.
fn start_worker(server: &Server, extra: &[&str], script: &str) -> Child {
    Command::new(BIN)
        .args(["worker", "work", "--server", &server.url])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .env_remove("REPLYD_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// SIGTERM, then the worker's exit status (it must drain and exit).
async fn stop_worker(mut worker: Child) -> ExitStatus {
    let pid = Pid::from_raw(worker.id().unwrap() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(15), worker.wait())
        .await
        .expect("the worker did not stop within 15 s of SIGTERM")
        .unwrap()
}

fn submit_request(input: Value, max_attempts: Option<u32>) -> SubmitRequest {
    SubmitRequest {
        queue: "work".into(),
        input,
        webhook: None,
        max_attempts,
        timeout: None,
        ttl: None,
        output: None,
        priority: None,
        delay: None,
        run_at: None,
        group: None,
    }
}

#[tokio::test]
async fn worker_runs_a_command_and_completes_the_job() {
    let server = start_server().await;
    let client = Client::new(&server.url, None).unwrap();
    let job = client
        .submit(&submit_request(json!({"n": 3}), None), None)
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Queued);

    let worker = start_worker(
        &server,
        &[],
        r#"read x; echo "progress 50 half" >&2; echo "{\"got\": $x}""#,
    );
    let done = client
        .wait(&job.id, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let result = client.result(&job.id).await.unwrap();
    assert!(result.is_json(), "{}", result.content_type);
    assert_eq!(result.json::<Value>().unwrap(), json!({"got": {"n": 3}}));

    assert!(stop_worker(worker).await.success());
}

/// Issue 17: the command continues its job's trace (`TRACEPARENT`,
/// `TRACESTATE` from the lease), as the `exec` executor's does.
#[tokio::test]
async fn the_command_gets_its_jobs_trace() {
    let server = start_server().await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let submitted: Value = reqwest::Client::new()
        .post(format!("{}/v1/jobs", server.url))
        .header("traceparent", tp)
        .header("tracestate", "rojo=1")
        .json(&json!({"queue": "work", "input": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["id"].as_str().unwrap();
    let worker = start_worker(
        &server,
        &[],
        r#"cat >/dev/null; printf '{"parent": "%s", "state": "%s"}' "$TRACEPARENT" "$TRACESTATE""#,
    );
    let client = Client::new(&server.url, None).unwrap();
    let done = client
        .wait(id, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let result = client.result(id).await.unwrap();
    assert_eq!(
        result.json::<Value>().unwrap(),
        json!({"parent": tp, "state": "rojo=1"})
    );
    assert!(stop_worker(worker).await.success());
}

#[tokio::test]
async fn a_failing_command_fails_the_job() {
    let server = start_server().await;
    let client = Client::new(&server.url, None).unwrap();
    let job = client
        .submit(&submit_request(json!(null), Some(1)), None)
        .await
        .unwrap();

    let worker = start_worker(&server, &[], "echo 'it broke' >&2; exit 3");
    let done = client
        .wait(&job.id, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    let error = done.error.expect("a failed job says why");
    assert!(error.message.contains("it broke"), "{error:?}");
    assert!(client.result(&job.id).await.unwrap_err().is_status(409));

    assert!(stop_worker(worker).await.success());
}

#[tokio::test]
async fn canceling_a_running_job_stops_its_command() {
    let server = start_server().await;
    let client = Client::new(&server.url, None).unwrap();
    let job = client
        .submit(&submit_request(json!({}), Some(1)), None)
        .await
        .unwrap();

    // A short lease makes the heartbeat, which carries the cancel, frequent.
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let worker = start_worker(
        &server,
        &["--lease", "3"],
        &format!(
            "echo $$ >> {p}; sleep 60 & echo $! >> {p}; echo 'progress 10 started' >&2; wait",
            p = pids.display()
        ),
    );
    let started = Instant::now();
    loop {
        let st = client.get(&job.id).await.unwrap();
        if st.job.state == JobState::Running {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never leased: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.cancel(&job.id).await.unwrap();
    let done = client
        .wait(&job.id, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Canceled, "{done:?}");
    assert!(started.elapsed() < Duration::from_secs(40));
    // The shell and the sleep it left in the background: the whole group.
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_dead(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} survived the cancel"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    assert!(stop_worker(worker).await.success());
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
async fn heartbeats_keep_a_long_job_leased_and_the_command_knows_its_job() {
    let server = start_server().await;
    let client = Client::new(&server.url, None).unwrap();
    let job = client
        .submit(&submit_request(json!({}), Some(1)), None)
        .await
        .unwrap();
    // A 1 s lease and a 2.5 s command: only heartbeats keep it.
    let worker = start_worker(
        &server,
        &["--lease", "1"],
        r#"sleep 2.5; printf '{"job": "%s", "attempt": %s}' "$REPLYD_JOB_ID" "$REPLYD_ATTEMPT""#,
    );
    let done = client
        .wait(&job.id, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 1, "never lost its lease");
    let result = client.result(&job.id).await.unwrap();
    assert_eq!(
        result.json::<Value>().unwrap(),
        json!({"job": job.id, "attempt": 1})
    );
    assert!(stop_worker(worker).await.success());
}

/// `--stream-output`: the command's stdout reaches the job's output while
/// it runs; a client following it with the SDK gets the first line before
/// the second is printed, then the rest and the end.
#[tokio::test]
async fn a_commands_stdout_streams_to_the_jobs_output() {
    let server = start_server().await;
    let client = Client::new(&server.url, None).unwrap();
    let job = client
        .submit(&submit_request(json!({}), None), None)
        .await
        .unwrap();
    let worker = start_worker(
        &server,
        &["--stream-output", "text/plain"],
        "cat >/dev/null; echo one; sleep 1; echo two",
    );
    let mut at = replyd_client::output::START.to_string();
    let mut got = String::new();
    let mut first_while_running = None;
    for _ in 0..100 {
        let read = client.output(&job.id, &at, true).await.unwrap();
        if !read.data.is_empty() && first_while_running.is_none() {
            first_while_running = Some((
                String::from_utf8_lossy(&read.data).to_string(),
                client.get(&job.id).await.unwrap().job.state,
            ));
        }
        got.push_str(&String::from_utf8_lossy(&read.data));
        at = read.next_offset;
        if read.closed {
            break;
        }
    }
    let (first, state) = first_while_running.expect("some output");
    assert_eq!(first, "one\n");
    assert_eq!(state, JobState::Running, "read while the command ran");
    assert_eq!(got, "one\ntwo\n");
    assert!(stop_worker(worker).await.success());
}
