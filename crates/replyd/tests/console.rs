//! The web console in a real browser: headless Chromium, driven by
//! `tests/browser/console.mjs`, signs in to `replyd serve`, watches a job
//! go live to succeeded, filters and searches, bulk-cancels 500 queued
//! jobs, pauses a queue, replays a dead letter (a webhook receiver here
//! fails the first delivery and takes the replay), and opens a portal link
//! that shows one tenant's jobs only. It writes a screenshot of each page
//! to `target/console-screenshots` (`REPLYD_SCREENSHOTS=docs/console` to
//! refresh the ones README shows).
//!
//! Needs what `tests/browser.rs` needs; without it the test skips, saying
//! why, unless `REPLYD_REQUIRE_SERVICES=1`.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use support::{Server, browser_dir, browser_missing, http};
use tokio::io::{AsyncBufReadExt, BufReader};

const ADMIN: &str = "console-admin-key";
const ACME: &str = "console-acme-key";
const GLOBEX: &str = "console-globex-key";
const WORKER: &str = "console-worker-key";

fn config(hook_port: u16) -> String {
    format!(
        r#"
[[api_keys]]
key = "{ADMIN}"
tenant = "*"
role = "admin"

[[api_keys]]
key = "{ACME}"
tenant = "acme"
role = "client"

[[api_keys]]
key = "{GLOBEX}"
tenant = "globex"
role = "client"

[[api_keys]]
key = "{WORKER}"
tenant = "*"
role = "worker"

[queues.work]
executor = "pull"
max_attempts = 1

[queues.bulk]
executor = "pull"

[webhooks]
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
allow_networks = ["127.0.0.0/8"]
retry_schedule = [0]

[console]
frame_ancestors = ["http://127.0.0.1:{hook_port}"]
"#
    )
}

/// A webhook receiver that fails its first delivery and takes the rest.
async fn receiver() -> (u16, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    (StatusCode::INTERNAL_SERVER_ERROR, "down for now")
                } else {
                    (StatusCode::OK, "thanks")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

fn screenshots() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var("REPLYD_SCREENSHOTS") {
        Ok(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target/console-screenshots"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_steers_jobs_queues_and_dead_letters_in_the_console() {
    if let Some(why) = browser_missing() {
        replyd_testkit::skip(
            &why,
            "run scripts/test (it installs Chromium and the npm packages)",
        );
        return;
    }
    let (hook_port, hooks) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(&config(hook_port))).await;

    // What any page gets: a strict CSP, framing only where configured.
    let page = http()
        .get(format!("{}/ui/", server.url))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let portal = http()
        .get(format!("{}/ui/portal", server.url))
        .send()
        .await
        .unwrap();
    let csp = portal.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        csp.contains(&format!("frame-ancestors http://127.0.0.1:{hook_port}")),
        "{csp}"
    );
    assert!(portal.headers().get("x-frame-options").is_none());

    let shots = screenshots();
    let mut node = tokio::process::Command::new("node")
        .arg(browser_dir().join("console.mjs"))
        .arg(&server.url)
        .arg(&shots)
        .env("ADMIN_KEY", ADMIN)
        .env("ACME_KEY", ACME)
        .env("GLOBEX_KEY", GLOBEX)
        .env("WORKER_KEY", WORKER)
        .env("HOOK_URL", format!("http://127.0.0.1:{hook_port}/hook"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut steps = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("the browser said nothing for 120 s")
            .unwrap();
        let Some(line) = line else { break };
        eprintln!("[console] {line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        steps.push(v["step"].as_str().unwrap_or("").to_string());
        assert_ne!(v["step"], "failed", "{}\n{}", v["error"], server.log_text());
    }
    let exit = node.wait().await.unwrap();
    assert!(exit.success(), "the harness exited with {exit}");
    assert_eq!(
        steps,
        [
            "signed-in",
            "live",
            "filtered",
            "bulk-canceled",
            "job-page",
            "queue-paused-and-resumed",
            "dead-letter-replayed",
            "portal",
            "done"
        ]
    );
    // The receiver saw the failed attempt and the replay.
    assert_eq!(hooks.load(Ordering::SeqCst), 2);
    for page in ["sign-in", "jobs", "job", "queues", "deliveries", "portal"] {
        let shot = shots.join(format!("{page}.png"));
        let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{} is {len} bytes", shot.display());
    }
    assert!(!server.log_text().contains("panicked"));
}
