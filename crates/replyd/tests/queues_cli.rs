//! End to end: `replyd queues` lists the queues of the real `replyd serve`
//! with their jobs by state and their limits, and `replyd queues pause|resume NAME` stops and
//! restarts leases; a key that is not an operator's gets exit code 2.

mod support;

use std::process::Output;

use support::{Server, http};

const CONFIG: &str = r#"
[[api_keys]]
key = "operator-key"
tenant = "*"
role = "admin"
[[api_keys]]
key = "client-key"
tenant = "t"
role = "client"
[[api_keys]]
key = "worker-key"
tenant = "*"
role = "worker"
[queues.work]
executor = "pull"
max_running = 8
rate = "50/s"
"#;

async fn run(server: &Server, key: &str, args: &[&str]) -> Output {
    support::run_cli(server, args, &[("REPLYD_API_KEY", key)]).await
}

/// The row of `queue` in the table `replyd queues` printed.
fn row(out: &Output, queue: &str) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(queue))
        .unwrap_or_else(|| {
            panic!(
                "no row for {queue}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

async fn lease_status(server: &Server) -> u16 {
    http()
        .post(format!("{}/v1/queues/work/lease", server.url))
        .bearer_auth("worker-key")
        .json(&serde_json::json!({"worker": "w", "wait": 0.5}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_listed_paused_and_resumed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(CONFIG)).await;
    for _ in 0..2 {
        let r = http()
            .post(format!("{}/v1/jobs", server.url))
            .bearer_auth("client-key")
            .json(&serde_json::json!({"queue": "work", "input": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    // A job for later, from the command line.
    let out = run(
        &server,
        "client-key",
        &[
            "submit",
            "work",
            "--delay",
            "600",
            "--priority",
            "3",
            "--group",
            "acme",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&job["state"], &job["priority"], &job["group"]),
        (
            &serde_json::json!("scheduled"),
            &serde_json::json!(3),
            &serde_json::json!("acme")
        ),
        "{job}"
    );

    let out = run(&server, "operator-key", &["queues"]).await;
    assert!(out.status.success());
    // QUEUE EXECUTOR PAUSED SCHEDULED QUEUED RUNNING SUCCEEDED FAILED CANCELED LIMITS
    let work = row(&out, "work");
    assert_eq!(work[1..5], ["pull", "no", "1", "2"]);
    assert_eq!(work[9..], ["max_running=8", "rate=50/s"]);
    assert_eq!(row(&out, "demo")[9], "-");

    let out = run(&server, "operator-key", &["queues", "pause", "work"]).await;
    assert!(out.status.success());
    assert_eq!(row(&out, "work")[2], "yes");
    assert_eq!(lease_status(&server).await, 204, "paused: nothing leased");

    let out = run(&server, "operator-key", &["queues", "resume", "work"]).await;
    assert!(out.status.success());
    assert_eq!(row(&out, "work")[2], "no");
    assert_eq!(lease_status(&server).await, 200);

    let out = run(&server, "client-key", &["queues", "pause", "work"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&server, "operator-key", &["queues", "pause", "nope"]).await;
    assert_eq!(out.status.code(), Some(2));
}
