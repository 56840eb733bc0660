//! `executor = "exec"` end to end (issue 7): a real server runs real shell
//! commands. Input on stdin, stdout the result, stderr `progress` lines as
//! progress events, a non-zero exit a failure with the tail of stderr, the
//! timeout killing the whole process group, the concurrency limit, and a
//! cancel stopping the command.

mod common;

use std::time::Duration;

use common::TestServer;
use common::streams::Sse;
use serde_json::json;

const BACKEND: common::Backend = common::Backend::Sqlite;
const WAIT: Duration = Duration::from_secs(15);

fn queue(name: &str, script: &str, extra: &str) -> String {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[queues.{name}]\nexecutor = \"exec\"\ncommand = [\"sh\", \"-c\", \"{script}\"]\n{extra}\n"
    )
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

async fn wait_dead(pid: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !is_dead(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} survived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_command_gets_the_input_and_its_output_is_the_result_with_progress_on_the_way() {
    let script = r#"read input; echo "progress 25 reading" >&2; echo "a note" >&2; sleep 0.3; echo "progress 75 writing" >&2; printf '{"input": %s, "job": "%s", "queue": "%s", "attempt": %s}' "$input" "$REPLYD_JOB_ID" "$REPLYD_QUEUE" "$REPLYD_ATTEMPT""#;
    let config = queue("render", script, "") + &queue("text", "cat; echo done", "");
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let id = c.submit("render", json!({"pages": 3})).await;
    let mut sse = Sse::open(
        &format!("http://{}", s.addr),
        &format!("/v1/jobs/{id}/events"),
        None,
        &[],
    )
    .await;
    let frames = sse.until_terminal(WAIT).await;
    let names: Vec<_> = frames.iter().filter_map(|f| f.event.clone()).collect();
    assert_eq!(
        names,
        [
            "job.accepted",
            "job.started",
            "job.progress",
            "job.progress",
            "job.succeeded"
        ],
        "{frames:?}"
    );
    let p = frames[2].json();
    assert_eq!(p["progress"]["percent"], 25.0);
    assert_eq!(p["progress"]["message"], "reading");
    assert_eq!(frames[3].json()["progress"]["percent"], 75.0);
    let r = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        r.json(),
        json!({"input": {"pages": 3}, "job": id, "queue": "render", "attempt": 1})
    );
    // Text that is not JSON is a text result.
    let id = c.submit("text", json!("hi")).await;
    c.wait_state(&id, "succeeded").await;
    let r = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(&r.body[..], b"\"hi\"\ndone\n");
}

/// Issue 17: a command continues its job's trace: `TRACEPARENT` and
/// `TRACESTATE` (what OpenTelemetry's SDKs read), when the job is in one.
#[tokio::test]
async fn a_command_gets_its_jobs_trace_in_its_environment() {
    let script = r#"printf '{"parent": "%s", "state": "%s", "set": %s}' "$TRACEPARENT" "$TRACESTATE" "$([ -n "${TRACEPARENT+x}" ] && echo true || echo false)""#;
    let Some(s) = TestServer::start(&queue("traced", script, "")).await else {
        return;
    };
    let c = s.client(None);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .send(
            reqwest::Method::POST,
            "/v1/jobs",
            &[
                ("content-type", "application/json"),
                ("traceparent", tp),
                ("tracestate", "rojo=1"),
            ],
            Some(br#"{"queue": "traced", "input": {}}"#.to_vec()),
        )
        .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    c.wait_state(&id, "succeeded").await;
    let result = c.get(&format!("/v1/jobs/{id}/result")).await.json();
    assert_eq!(
        result,
        json!({"parent": tp, "state": "rojo=1", "set": true})
    );
    // In no trace: neither is set.
    let id = c.submit("traced", json!({})).await;
    c.wait_state(&id, "succeeded").await;
    let result = c.get(&format!("/v1/jobs/{id}/result")).await.json();
    assert_eq!(result["set"], false, "{result}");
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_tail_of_stderr_after_its_attempts() {
    let script = r#"echo "starting" >&2; echo "disk full on /out" >&2; exit 3"#;
    let config = queue("flaky", script, "max_attempts = 2");
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let id = c.submit("flaky", json!({})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let job = loop {
        let j = c.get(&format!("/v1/jobs/{id}")).await.json();
        if j["state"] == "failed" {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["attempt"], 2, "retried once");
    assert_eq!(job["error"]["code"], "command-failed");
    assert_eq!(
        job["error"]["message"],
        "command exited with code 3: starting\ndisk full on /out"
    );
}

#[tokio::test]
async fn the_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 60 & echo $! >> {p}; echo $$ >> {p}; wait",
        p = pids.display()
    );
    let config = queue("slow", &script, "timeout = 1\nmax_attempts = 1");
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let id = c.submit("slow", json!({})).await;
    let started = tokio::time::Instant::now();
    let deadline = started + WAIT;
    let job = loop {
        let j = c.get(&format!("/v1/jobs/{id}")).await.json();
        if j["state"] == "failed" {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    let msg = job["error"]["message"].as_str().unwrap();
    assert!(msg.contains("ran past its timeout"), "{msg}");
    // The shell and the sleep it started in the background, both gone.
    let pids = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<&str> = pids.lines().collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        wait_dead(pid).await;
    }
}

#[tokio::test]
async fn no_more_than_concurrency_commands_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (running, seen) = (dir.path().join("running"), dir.path().join("seen"));
    std::fs::create_dir(&running).unwrap();
    let script = format!(
        "touch {r}/$REPLYD_JOB_ID; ls {r} | wc -l >> {s}; sleep 0.4; rm {r}/$REPLYD_JOB_ID",
        r = running.display(),
        s = seen.display()
    );
    let config = queue("pair", &script, "concurrency = 2");
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(c.submit("pair", json!(i)).await);
    }
    for id in &ids {
        c.wait_state(id, "succeeded").await;
    }
    let counts: Vec<u32> = std::fs::read_to_string(&seen)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 6);
    assert_eq!(
        *counts.iter().max().unwrap(),
        2,
        "two at a time: {counts:?}"
    );
}

#[tokio::test]
async fn canceling_a_running_job_stops_its_command() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!(
        "echo $$ >> {p}; sleep 60 & echo $! >> {p}; echo 'progress 10 started' >&2; wait",
        p = pids.display()
    );
    let config = queue("long", &script, "timeout = 120");
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let id = c.submit("long", json!({})).await;
    // Running, and has reported.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let j = c.get(&format!("/v1/jobs/{id}")).await.json();
        if j["progress"]["percent"] == 10.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(r.status, 202);
    let job = c.wait_state(&id, "canceled").await;
    assert_eq!(job["error"]["code"], "canceled");
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        wait_dead(pid).await;
    }
}

#[tokio::test]
async fn an_exec_queue_without_a_command_is_refused() {
    let mut config = replyd_server::Config::from_toml("[queues.x]\nexecutor = \"exec\"\n").unwrap();
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("needs a command"), "{e}");
    let mut config =
        replyd_server::Config::from_toml("[queues.x]\nexecutor = \"pull\"\ncommand = [\"ls\"]\n")
            .unwrap();
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("for executor \"exec\" only"), "{e}");
}
