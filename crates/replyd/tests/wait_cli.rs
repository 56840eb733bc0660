//! End to end: `replyd wait` and `replyd submit --wait` against the real
//! `replyd serve` on port 0, with the job worked through the SDK. Their
//! stderr is a pipe, so progress comes as plain lines, one per event of the
//! job's stream (API.md "Command line"; exit codes at the top of cli.rs).

mod support;

use std::process::Output;
use std::time::Duration;

use replyd_client::Client;
use replyd_client::proto::{LeaseRequest, SubmitRequest};
use serde_json::{Value, json};
use support::{Server, WORK_QUEUE};

fn work(input: Value) -> SubmitRequest {
    SubmitRequest {
        queue: "work".into(),
        input,
        webhook: None,
        max_attempts: Some(1),
        timeout: None,
        ttl: None,
        output: None,
        priority: None,
        delay: None,
        run_at: None,
        group: None,
    }
}

/// Runs `replyd ARGS... --server URL` to its end.
async fn run(server: &Server, args: &[&str]) -> Output {
    support::run_cli(server, args, &[]).await
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Leases the next `work` job and answers its id and lease id.
async fn lease(worker: &Client) -> (String, String) {
    let req = LeaseRequest {
        worker: Some("test".into()),
        lease: Some(60.0),
        wait: Some(20.0),
        batch: None,
        outcomes: Vec::new(),
    };
    let lease = worker.lease("work", &req).await.unwrap().expect("a job");
    (lease.job.id, lease.lease_id)
}

/// `replyd wait` on a job that has already finished still shows each of
/// its progress updates: they come from the event stream's replay (long
/// polling would show only the end), then the result goes to stdout.
#[tokio::test]
async fn wait_shows_every_progress_event_then_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(WORK_QUEUE)).await;
    let client = Client::new(&server.url, None).unwrap();
    let job = client.submit(&work(json!({"n": 4})), None).await.unwrap();
    let (id, lease_id) = lease(&client).await;
    assert_eq!(id, job.id);
    for step in 1..=4u32 {
        let percent = f64::from(step * 25);
        client
            .progress(&id, &lease_id, Some(percent), Some(&format!("step {step}")))
            .await
            .unwrap();
    }
    client
        .complete_json(&id, &lease_id, json!({"pages": 4}))
        .await
        .unwrap();

    let out = run(&server, &["wait", &id]).await;
    assert_eq!(out.status.code(), Some(0));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result, json!({"pages": 4}));
    assert_eq!(
        lines(&out.stderr),
        [
            "queued",
            "running",
            "running 25% step 1",
            "running 50% step 2",
            "running 75% step 3",
            "running 100% step 4",
            "succeeded 100% step 4",
        ]
    );
}

/// `replyd submit --wait` shows the job's progress as it happens, then
/// prints the result.
#[tokio::test]
async fn submit_wait_shows_live_progress_then_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(WORK_QUEUE)).await;
    let worker = Client::new(&server.url, None).unwrap();
    let working = tokio::spawn(async move {
        let (id, lease_id) = lease(&worker).await;
        // Past the submit's own short hold (Prefer: wait=1), so that the
        // command is following the job when it moves.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for (percent, message) in [(10.0, "reading"), (60.0, "writing"), (100.0, "done")] {
            worker
                .progress(&id, &lease_id, Some(percent), Some(message))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker
            .complete_json(&id, &lease_id, json!("report.pdf"))
            .await
            .unwrap();
        id
    });
    let out = run(&server, &["submit", "work", "--input", "{}", "--wait"]).await;
    let id = working.await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"\"report.pdf\"");
    let stderr = lines(&out.stderr);
    assert_eq!(stderr[0], format!("submitted job {id}"));
    for line in [
        "running 10% reading",
        "running 60% writing",
        "running 100% done",
        "succeeded 100% done",
    ] {
        assert!(stderr.contains(&line.to_owned()), "{line:?} in {stderr:?}");
    }
}

/// The exit codes stay: 1 for a failed job (with the job on stdout and the
/// reason on stderr), 124 when `--timeout` runs out.
#[tokio::test]
async fn wait_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(WORK_QUEUE)).await;
    let client = Client::new(&server.url, None).unwrap();

    let job = client.submit(&work(Value::Null), None).await.unwrap();
    let out = run(&server, &["wait", &job.id, "--timeout", "0.5"]).await;
    assert_eq!(out.status.code(), Some(124));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["state"], "queued");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{out:?}"
    );

    let (id, lease_id) = lease(&client).await;
    client
        .progress(&id, &lease_id, Some(30.0), Some("parsing"))
        .await
        .unwrap();
    client
        .fail(&id, &lease_id, "bad input", false)
        .await
        .unwrap();
    let out = run(&server, &["wait", &id]).await;
    assert_eq!(out.status.code(), Some(1));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["state"], "failed");
    let stderr = lines(&out.stderr);
    assert!(
        stderr.contains(&"running 30% parsing".to_owned()),
        "{stderr:?}"
    );
    assert!(
        stderr.last().unwrap().contains(&format!("job {id} failed")),
        "{stderr:?}"
    );
}
