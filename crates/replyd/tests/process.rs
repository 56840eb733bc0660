//! The `replyd serve` process as an operator sees it (API.md §1, §5 and
//! "Command line"): a SIGKILL loses no accepted job, SIGTERM drains and exits
//! 0, leases survive a restart, and bad configuration exits non-zero with a
//! one-line reason.
//!
//! Every server here listens on 127.0.0.1 port 0 with its own SQLite file in
//! a temporary directory; no traffic goes anywhere else.

use std::collections::{BTreeMap, HashSet};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

mod support;
use support::{Server, WORK_QUEUE, db_path, http, replyd};

/// POST /v1/jobs; the id of the 202.
async fn submit(client: &reqwest::Client, server: &Server, body: Value) -> String {
    let resp = client
        .post(format!("{}/v1/jobs", server.url))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /v1/jobs {body}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "POST /v1/jobs {body} answered {status}: {text}"
    );
    let job: Value = serde_json::from_str(&text).unwrap();
    job["id"]
        .as_str()
        .expect("the 202 body has an id")
        .to_owned()
}

/// GET /v1/jobs/{id}: status and body.
async fn get_job(client: &reqwest::Client, server: &Server, id: &str) -> (StatusCode, Value) {
    let resp = client
        .get(format!("{}/v1/jobs/{id}", server.url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /v1/jobs/{id}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// POST `path` with a JSON body: status and body.
async fn post(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let resp = client
        .post(format!("{}{path}", server.url))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} {body}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Every job of `queue` by GET /v1/jobs with cursor pagination: id -> state.
async fn list_all(
    client: &reqwest::Client,
    server: &Server,
    queue: &str,
) -> BTreeMap<String, String> {
    let mut jobs = BTreeMap::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 1000, "GET /v1/jobs pagination does not end");
        let mut req = client
            .get(format!("{}/v1/jobs", server.url))
            .query(&[("queue", queue), ("limit", "1000")]);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "GET /v1/jobs: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        let page_jobs = body["jobs"].as_array().expect("`jobs` is an array");
        for job in page_jobs {
            let id = job["id"].as_str().unwrap().to_owned();
            let state = job["state"].as_str().unwrap().to_owned();
            let before = jobs.insert(id.clone(), state);
            assert!(
                before.is_none(),
                "GET /v1/jobs listed {id} twice (page {page}, cursor {cursor:?})"
            );
        }
        match body["next_cursor"].as_str() {
            Some(c) if !c.is_empty() && !page_jobs.is_empty() => cursor = Some(c.to_owned()),
            _ => break,
        }
    }
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_accepted_job() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), Some(WORK_QUEUE)).await;
    let client = http();

    // 16 clients submit as fast as they can until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let other = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut tasks = Vec::new();
    for task in 0..16 {
        let client = client.clone();
        let url = format!("{}/v1/jobs", server.url);
        let stop = stop.clone();
        let other = other.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let body = json!({"queue": "work", "input": {"task": task, "n": n}});
                let outcome = async {
                    let resp = client.post(&url).json(&body).send().await?;
                    let status = resp.status();
                    let body: Value = match resp.json().await {
                        Ok(b) => b,
                        Err(_) => Value::Null,
                    };
                    Ok::<_, reqwest::Error>((status, body))
                }
                .await;
                match outcome {
                    Ok((StatusCode::ACCEPTED, body)) => {
                        if let Some(id) = body["id"].as_str() {
                            accepted.push(id.to_owned());
                        }
                    }
                    Ok((status, body)) => {
                        *other
                            .lock()
                            .unwrap()
                            .entry(format!("{status} {body}"))
                            .or_default() += 1;
                    }
                    // In flight when the server died, or refused after.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            accepted
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal(Signal::SIGKILL);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the server did not die within 10 s of SIGKILL");
    assert!(!status.success(), "SIGKILL yet exit status {status}");
    stop.store(true, Ordering::SeqCst);
    let mut recorded = Vec::new();
    for t in tasks {
        recorded.extend(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a submitting task did not stop within 30 s")
                .unwrap(),
        );
    }
    let other = other.lock().unwrap().clone();
    eprintln!(
        "accepted {} jobs in 1.5 s before SIGKILL; other answers: {other:?}",
        recorded.len()
    );
    assert!(
        other.keys().all(|k| !k.starts_with('5')),
        "the server answered submissions with 5xx before it was killed: {other:?}"
    );
    assert!(
        recorded.len() >= 200,
        "only {} jobs were accepted in 1.5 s by 16 concurrent clients (other answers: {other:?})",
        recorded.len()
    );
    let unique: HashSet<&String> = recorded.iter().collect();
    assert_eq!(
        unique.len(),
        recorded.len(),
        "two 202s carried the same job id"
    );
    drop(server);

    // Restart on the same database: every 202 is still there.
    let server = Server::start(dir.path(), Some(WORK_QUEUE)).await;
    let client = http();
    let answers: Vec<(String, StatusCode, Value)> = futures::stream::iter(recorded.clone())
        .map(|id| {
            let client = &client;
            let server = &server;
            async move {
                let (status, body) = get_job(client, server, &id).await;
                (id, status, body)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let lost: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| *status != StatusCode::ACCEPTED)
        .map(|(id, status, body)| format!("{id}: {status} {body}"))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} jobs that got a 202 before SIGKILL do not answer 202 after the restart; first: {:?}",
        lost.len(),
        recorded.len(),
        &lost[..lost.len().min(5)]
    );
    for (id, _, body) in &answers {
        assert_eq!(
            body["state"], "queued",
            "job {id} after the restart, nobody leased it: {body}"
        );
    }

    // What the database holds that is not done yet.
    let listed = list_all(&client, &server, "work").await;
    let pending: HashSet<String> = listed
        .iter()
        .filter(|(_, state)| matches!(state.as_str(), "queued" | "running"))
        .map(|(id, _)| id.clone())
        .collect();
    let missing: Vec<_> = recorded
        .iter()
        .filter(|id| !pending.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} recorded jobs are not listed as pending by GET /v1/jobs?queue=work (listed {}, pending {}); first: {:?}",
        missing.len(),
        listed.len(),
        pending.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "after restart: {} recorded, {} pending in the database ({} accepted whose 202 was lost)",
        recorded.len(),
        pending.len(),
        pending.len() - recorded.len()
    );

    // Lease everything in batches and complete it.
    let mut leased: HashSet<String> = HashSet::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(
            rounds <= 10_000,
            "leasing does not end ({} leased)",
            leased.len()
        );
        let (status, body) = post(
            &client,
            &server,
            "/v1/queues/work/lease",
            &json!({"worker": "t", "lease": 30, "wait": 1, "batch": 50}),
        )
        .await;
        if status == StatusCode::NO_CONTENT {
            break;
        }
        assert_eq!(status, StatusCode::OK, "lease: {body}");
        let leases = body["leases"]
            .as_array()
            .unwrap_or_else(|| panic!("a batch lease answers {{\"leases\": [...]}}, got {body}"));
        assert!(!leases.is_empty(), "200 with no leases: {body}");
        let completions: Vec<(String, StatusCode, Value)> = futures::stream::iter(leases.clone())
            .map(|lease| {
                let client = &client;
                let server = &server;
                async move {
                    let id = lease["job"]["id"].as_str().unwrap().to_owned();
                    let lease_id = lease["lease_id"].as_str().unwrap().to_owned();
                    let (status, body) = post(
                        client,
                        server,
                        &format!("/v1/jobs/{id}/complete"),
                        &json!({"lease_id": lease_id, "result": {"ok": true}}),
                    )
                    .await;
                    (id, status, body)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (id, status, body) in completions {
            assert_eq!(status, StatusCode::OK, "complete {id}: {body}");
            assert!(leased.insert(id.clone()), "job {id} was leased twice");
        }
    }
    assert_eq!(
        leased.len(),
        pending.len(),
        "leased {} jobs but the database listed {} pending",
        leased.len(),
        pending.len()
    );
    assert_eq!(leased, pending, "the leased jobs are not the pending ones");

    // Every recorded job has succeeded.
    let not_done: Vec<String> = futures::stream::iter(recorded.clone())
        .map(|id| {
            let client = &client;
            let server = &server;
            async move { (id.clone(), get_job(client, server, &id).await) }
        })
        .buffer_unordered(16)
        .filter_map(|(id, (status, body))| async move {
            (status != StatusCode::SEE_OTHER).then(|| format!("{id}: {status} {body}"))
        })
        .collect()
        .await;
    assert!(
        not_done.is_empty(),
        "{} recorded jobs do not answer 303 after completion; first: {:?}",
        not_done.len(),
        &not_done[..not_done.len().min(5)]
    );
    eprintln!("sigkill_loses_no_accepted_job took {:?}", started.elapsed());
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), None).await;
    let client = http();
    let id = submit(
        &client,
        &server,
        json!({"queue": "demo", "input": {"seconds": 30}}),
    )
    .await;

    let poll = {
        let url = format!("{}/v1/jobs/{id}", server.url);
        let client = client.clone();
        tokio::spawn(async move {
            let resp = client
                .get(url)
                .header("Prefer", "wait=50")
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            let status = resp.status();
            let body = resp.text().await?;
            Ok::<_, reqwest::Error>((Instant::now(), status, body))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !poll.is_finished(),
        "the long poll (Prefer: wait=50) on a 30 s job answered within 500 ms"
    );
    let term = Instant::now();
    server.signal(Signal::SIGTERM);

    let (answered, status, body) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the long poll was not answered within 5 s of SIGTERM; log:\n{}",
                server.log_text()
            )
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("the long poll failed instead of answering: {e}"));
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "long poll on a running job ended by SIGTERM: {body}"
    );
    eprintln!("long poll answered {:?} after SIGTERM", answered - term);

    let exit = server
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the server did not exit within 15 s of SIGTERM; log:\n{}",
                server.log_text()
            )
        });
    eprintln!("the server exited {:?} after SIGTERM", term.elapsed());
    assert!(
        exit.success(),
        "SIGTERM should exit 0, got {exit}; log:\n{}",
        server.log_text()
    );
    match tokio::net::TcpStream::connect(server.addr).await {
        Ok(_) => panic!("{} still accepts connections after exit", server.addr),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "connecting to {} after exit: {e}",
            server.addr
        ),
    }
    eprintln!("sigterm_drains_and_exits_zero took {:?}", started.elapsed());
}

#[tokio::test]
async fn leases_survive_a_restart() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), Some(WORK_QUEUE)).await;
    let client = http();
    let id = submit(
        &client,
        &server,
        json!({"queue": "work", "input": {"x": 1}}),
    )
    .await;
    let (status, lease) = post(
        &client,
        &server,
        "/v1/queues/work/lease",
        &json!({"worker": "t", "lease": 120, "wait": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "lease: {lease}");
    assert_eq!(
        lease["job"]["id"],
        id.as_str(),
        "leased another job: {lease}"
    );
    assert_eq!(
        lease["job"]["input"],
        json!({"x": 1}),
        "the lease carries the input"
    );
    let lease_id = lease["lease_id"]
        .as_str()
        .expect("the lease has a lease_id")
        .to_owned();

    server.signal(Signal::SIGTERM);
    let exit = server
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the server did not exit within 15 s of SIGTERM");
    assert!(exit.success(), "SIGTERM should exit 0, got {exit}");
    drop(server);

    let server = Server::start(dir.path(), Some(WORK_QUEUE)).await;
    let client = http();
    let (status, job) = get_job(&client, &server, &id).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::ACCEPTED, Some("running")),
        "the leased job after a restart: {job}"
    );
    let (status, body) = post(
        &client,
        &server,
        &format!("/v1/jobs/{id}/heartbeat"),
        &json!({"lease_id": lease_id}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "heartbeat with the lease from before the restart: {body}"
    );
    assert_eq!(
        body["cancel_requested"],
        json!(false),
        "heartbeat answer: {body}"
    );
    let (status, body) = post(
        &client,
        &server,
        &format!("/v1/jobs/{id}/complete"),
        &json!({"lease_id": lease_id, "result": {"done": true}}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "complete with the lease from before the restart: {body}"
    );
    let (status, job) = get_job(&client, &server, &id).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the job after completion: {job}"
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    eprintln!("leases_survive_a_restart took {:?}", started.elapsed());
}

/// Runs `replyd ARGS` to its end (at most 10 s): exit status and stderr.
async fn run_to_end(args: Vec<std::ffi::OsString>) -> (ExitStatus, String) {
    let mut cmd = tokio::process::Command::from(replyd());
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`replyd {args:?}` did not exit within 10 s"))
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_config_exits_nonzero_with_one_line_reason() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("replyd.toml");
    std::fs::write(&config, "lisen = \"x\"\n").unwrap();

    let (status, stderr) = run_to_end(vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--config".into(),
        config.into(),
        "--db".into(),
        db_path(dir.path()).into(),
    ])
    .await;
    assert!(
        !status.success(),
        "an unknown config key should fail, got {status}; stderr:\n{stderr}"
    );
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("nothing on stderr (exit {status})"));
    assert!(
        last.contains("lisen"),
        "the last stderr line should name the unknown key `lisen`: {last:?}; stderr:\n{stderr}"
    );

    let (status, stderr) = run_to_end(vec![
        "serve".into(),
        "--listen".into(),
        "0.0.0.0:0".into(),
        "--db".into(),
        db_path(dir.path()).into(),
    ])
    .await;
    assert!(
        !status.success(),
        "a non-loopback listen with no API keys and no --insecure should fail, got {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("--insecure"),
        "stderr should point at --insecure:\n{stderr}"
    );
    eprintln!(
        "bad_config_exits_nonzero_with_one_line_reason took {:?}",
        started.elapsed()
    );
}

/// SIGTERM drains even when nothing reads the log any more (stderr a pipe
/// whose reader exited, as under `replyd serve 2>&1 | head`, or a parent
/// that died): a log line that cannot be written is dropped, not turned
/// into a panic of the task that waits for the signal.
#[tokio::test]
async fn sigterm_drains_when_stderr_is_a_broken_pipe() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = replyd()
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db_path(dir.path()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let listening = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        // Read up to the listening line, then close the pipe.
        lines.any(|l| l.is_ok_and(|l| support::listen_url(&l).is_some()))
    })
    .await
    .unwrap();
    assert!(listening, "replyd did not say where it listens");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("replyd did not exit within 10 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}

/// A job scheduled for later survives a SIGKILL: after the restart it is
/// still scheduled, then queued and leased when due, not before.
#[tokio::test]
async fn a_scheduled_job_survives_a_sigkill_and_runs_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), Some(WORK_QUEUE)).await;
    let client = http();
    let id = submit(
        &client,
        &server,
        json!({"queue": "work", "input": {}, "delay": 3}),
    )
    .await;
    let (_, job) = get_job(&client, &server, &id).await;
    let due: chrono::DateTime<chrono::Utc> = job["run_at"].as_str().unwrap().parse().unwrap();
    server.signal(Signal::SIGKILL);
    server
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the server did not die within 10 s of SIGKILL");
    drop(server);

    let server = Server::start(dir.path(), Some(WORK_QUEUE)).await;
    let (status, job) = get_job(&client, &server, &id).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (StatusCode::ACCEPTED, Some("scheduled")),
        "{job}"
    );
    let (status, lease) = post(
        &client,
        &server,
        "/v1/queues/work/lease",
        &json!({"worker": "t", "lease": 60, "wait": 10}),
    )
    .await;
    let leased_at = chrono::Utc::now();
    assert_eq!(status, StatusCode::OK, "lease: {lease}");
    assert_eq!(lease["job"]["id"], id.as_str());
    let late = (leased_at - due).num_milliseconds();
    assert!(
        (0..1000).contains(&late),
        "leased {late} ms after it was due"
    );
}
