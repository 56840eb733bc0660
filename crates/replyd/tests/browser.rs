//! A real browser's EventSource (headless Chromium, driven by
//! `tests/browser/eventsource.mjs`) follows a job through `replyd serve`:
//! it shows the progress and the result, and it survives a server crash and
//! restart, resuming with `Last-Event-ID` with no gap and no duplicate.
//!
//! Needs Node.js, Chromium and `npm ci --prefix crates/replyd/tests/browser`
//! (`.ci/run` installs them). Without them the test skips, saying why,
//! unless `REPLYD_REQUIRE_SERVICES=1`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, browser_dir as harness_dir, browser_missing as missing, db_path, http};
use tokio::io::{AsyncBufReadExt, BufReader};

const CONFIG: &str =
    "[queues.work]\nexecutor = \"pull\"\ntimeout = 120\n\n[streams]\nretry_ms = 1500\n";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// Leases the job of queue `work` for 120 s: the lease id.
    async fn lease(&self) -> String {
        let (status, lease) = self
            .post(
                "/v1/queues/work/lease",
                json!({"worker": "w", "lease": 120, "wait": 5}),
            )
            .await;
        assert_eq!(status, 200);
        lease["lease_id"].as_str().unwrap().to_string()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_eventsource_shows_progress_and_result_across_a_server_restart() {
    if let Some(why) = missing() {
        replyd_testkit::skip(
            &why,
            "run scripts/test (it installs Chromium and the npm packages)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = db_path(dir.path()).display().to_string();
    let server = Server::start(dir.path(), Some(CONFIG)).await;
    let api = Api {
        base: server.url.clone(),
        http: http(),
    };
    let (status, job) = api
        .post("/v1/jobs", json!({"queue": "work", "input": {"pages": 10}}))
        .await;
    assert_eq!(status, 202);
    let id = job["id"].as_str().unwrap().to_string();
    let events_path = job["links"]["events"].as_str().unwrap().to_string();

    let mut browser = tokio::process::Command::new("node")
        .arg(harness_dir().join("eventsource.mjs"))
        .arg(&server.url)
        .arg(&events_path)
        .arg("60000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut seen: Vec<Value> = Vec::new();
    // Reads the browser's report until `pred` holds for a line.
    macro_rules! until {
        ($pred:expr) => {{
            loop {
                let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                    .await
                    .expect("the browser said nothing for 30 s")
                    .unwrap()
                    .expect("the browser harness ended early");
                let v: Value = serde_json::from_str(&line).unwrap();
                eprintln!("[browser] {v}");
                seen.push(v.clone());
                if $pred(&v) {
                    break v;
                }
            }
        }};
    }
    let is_event = |name: &'static str, percent: Option<i64>| {
        move |v: &Value| {
            v["kind"] == "event"
                && v["event"] == name
                && percent.is_none_or(|p| v["percent"].as_f64() == Some(p as f64))
        }
    };
    until!(is_event("job.accepted", None));

    let lease_id = api.lease().await;
    let progress = |percent: i64, message: &str| json!({"lease_id": lease_id, "percent": percent, "message": message});
    api.post(
        &format!("/v1/jobs/{id}/progress"),
        progress(20, "page 2 of 10"),
    )
    .await;
    until!(is_event("job.progress", Some(20)));

    // Crash the server mid-stream, restart it on the same port, and move
    // the job on before the browser is back (it retries every 1.5 s).
    let addr = server.addr.to_string();
    let mut server = server;
    server.signal(nix::sys::signal::Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10)).await.unwrap();
    until!(|v: &Value| v["kind"] == "error" && v["readyState"] == 0);
    let server = Server::start_at(dir.path(), Some(CONFIG), &["--db", &db], &addr).await;
    for (percent, message) in [(40, "page 4 of 10"), (70, "page 7 of 10")] {
        let (status, _) = api
            .post(
                &format!("/v1/jobs/{id}/progress"),
                progress(percent, message),
            )
            .await;
        assert_eq!(status, 200, "the lease survived the restart");
    }
    until!(is_event("job.progress", Some(70)));
    api.post(&format!("/v1/jobs/{id}/progress"), progress(100, "done"))
        .await;
    let (status, _) = api
        .post(
            &format!("/v1/jobs/{id}/complete"),
            json!({"lease_id": lease_id, "result": {"pages": 10, "url": "/r.pdf"}}),
        )
        .await;
    assert_eq!(status, 200);
    let done = until!(|v: &Value| v["kind"] == "done");
    let exit = tokio::time::timeout(Duration::from_secs(20), browser.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "the harness exited with {exit}");

    // The page showed the progress and the result.
    assert_eq!(done["dom_state"], "succeeded");
    assert!(
        done["dom_progress"].as_str().unwrap().contains("100"),
        "{done}"
    );
    let shown: Value = serde_json::from_str(done["dom_result"].as_str().unwrap()).unwrap();
    assert_eq!(shown, json!({"pages": 10, "url": "/r.pdf"}));
    // It reconnected by itself...
    let opens = seen.iter().filter(|v| v["kind"] == "open").count();
    assert!(
        opens >= 2,
        "one open before the crash and one after: {opens}"
    );
    // ...and what it received is exactly the job's log: no gap, no duplicate.
    let got: Vec<(i64, String)> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().parse().unwrap(),
                e["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let log = log_of(&server.url, &id).await;
    assert_eq!(got, log);
    let names: Vec<&str> = got.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "job.accepted",
            "job.started",
            "job.progress",
            "job.progress",
            "job.progress",
            "job.progress",
            "job.succeeded"
        ]
    );

    // A browser that keeps its EventSource open past the terminal event
    // reconnects with Last-Event-ID at the end, gets 204, and stops.
    let out = tokio::process::Command::new("node")
        .arg(harness_dir().join("eventsource.mjs"))
        .arg(&server.url)
        .arg(&events_path)
        .arg("30000")
        .env("KEEP_OPEN_AFTER_TERMINAL", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let terminal = lines
        .iter()
        .position(|v| v["event"] == "job.succeeded")
        .unwrap();
    assert!(
        lines[terminal..]
            .iter()
            .any(|v| v["kind"] == "error" && v["readyState"] == 2),
        "the browser stopped after the 204: {lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|v| v["kind"] == "event").count(),
        7,
        "no event twice"
    );
}

/// The job's whole event log, read over SSE: (id, event).
async fn log_of(base: &str, id: &str) -> Vec<(i64, String)> {
    let body = http()
        .get(format!("{base}/v1/jobs/{id}/events"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut id = None;
        let mut name = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().unwrap());
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = Some(v.to_string());
            }
        }
        if let (Some(id), Some(name)) = (id, name) {
            out.push((id, name));
        }
    }
    out
}

/// A page following a job's output with the Durable Streams client
/// (`@durable-streams/client` in headless Chromium, driven by
/// `tests/browser/output_reload.mjs`) is reloaded mid-stream and goes on
/// from the offset it saved: what it shows at the end is the output byte
/// for byte, with no gap and no repeat, and the work ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reading_a_jobs_output_is_reloaded_mid_stream_with_no_gap_and_no_repeat() {
    if let Some(why) = missing() {
        replyd_testkit::skip(
            &why,
            "run scripts/test (it installs Chromium and the npm packages)",
        );
        return;
    }
    let client = harness_dir().join("../durable-streams/node_modules/@durable-streams/client");
    if !client.exists() {
        replyd_testkit::skip(
            "the Durable Streams client (npm ci --prefix crates/replyd/tests/durable-streams)",
            "run scripts/test (it installs the npm packages)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some(CONFIG)).await;
    let api = Api {
        base: server.url.clone(),
        http: http(),
    };
    let (status, job) = api
        .post("/v1/jobs", json!({"queue": "work", "input": {}}))
        .await;
    assert_eq!(status, 202);
    let id = job["id"].as_str().unwrap().to_string();
    let output_path = job["links"]["output"].as_str().unwrap().to_string();
    let lease_id = api.lease().await;

    let mut browser = tokio::process::Command::new("node")
        .arg(harness_dir().join("output_reload.mjs"))
        .arg(&server.url)
        .arg(&output_path)
        .arg("60000")
        .env("RELOAD_AFTER", "15")
        .envs(std::env::var_os("SCREENSHOT").map(|p| ("SCREENSHOT", p)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    // The worker: a token every 25 ms, then the end.
    let worker = {
        let (base, id, lease_id) = (server.url.clone(), id.clone(), lease_id.clone());
        tokio::spawn(async move {
            let http = http();
            let mut all = String::new();
            for i in 0..120 {
                let token = format!("token{i} ");
                all.push_str(&token);
                let r = http
                    .post(format!("{base}/v1/jobs/{id}/output"))
                    .header("lease-id", &lease_id)
                    .header("content-type", "text/plain")
                    .body(token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let r = http
                .post(format!("{base}/v1/jobs/{id}/complete"))
                .json(&json!({"lease_id": lease_id}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            all
        })
    };
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut seen: Vec<Value> = Vec::new();
    let done = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the browser said nothing for 30 s")
            .unwrap()
            .expect("the browser harness ended early");
        let v: Value = serde_json::from_str(&line).unwrap();
        seen.push(v.clone());
        if v["kind"] == "done" {
            break v;
        }
    };
    let want = worker.await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), browser.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "the harness exited with {exit}");
    let reload = seen.iter().position(|v| v["kind"] == "reload");
    let reload = reload.expect("the page was reloaded");
    let second = seen
        .iter()
        .find(|v| v["kind"] == "load" && v["loads"] == 2)
        .expect("the page loaded again");
    assert_ne!(second["offset"], "-1", "it went on from its saved offset");
    assert!(second["length"].as_u64().unwrap() > 0, "{second}");
    assert!(
        seen[reload..]
            .iter()
            .any(|v| v["kind"] == "chunk" && v["length"].as_u64() > Some(0)),
        "the reload came mid-stream: {seen:?}"
    );
    assert_eq!(done["loads"], 2);
    assert_eq!(done["text"].as_str().unwrap(), want, "no gap, no repeat");
}
