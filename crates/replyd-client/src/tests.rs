//! Unit tests: header and body parsing, and the client against a scripted
//! in-process HTTP server that answers canned responses in order; then the
//! event stream and `wait` against a real replyd in process on 127.0.0.1,
//! directly and through a small proxy that refuses or cuts the stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use replyd_proto::{Job, JobState, LEASE_ID_HEADER, LeaseRequest, SubmitRequest};
use reqwest::StatusCode;
use serde_json::Value;

use super::*;
use crate::error::{parse_retry_after, problem_from_body};
use crate::jobs::job_id_from_location;
use crate::wait::{DEFAULT_POLL_PAUSE, MAX_POLL_PAUSE, MIN_POLL_PAUSE, poll_pause};

#[test]
fn retry_after_in_seconds() {
    let now = SystemTime::now();
    assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("1.5", now),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(parse_retry_after("-1", now), None);
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("", now), None);
}

#[test]
fn retry_after_as_http_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_767); // Sun, 06 Nov 1994 08:49:27 GMT
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::from_secs(10))
    );
    // A date in the past means "now".
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
        Some(Duration::ZERO)
    );
}

#[test]
fn poll_pause_is_bounded() {
    assert_eq!(poll_pause(None), DEFAULT_POLL_PAUSE);
    assert_eq!(poll_pause(Some(Duration::from_secs(60))), MAX_POLL_PAUSE);
    assert_eq!(poll_pause(Some(Duration::ZERO)), MIN_POLL_PAUSE);
    assert_eq!(
        poll_pause(Some(Duration::from_secs(2))),
        Duration::from_secs(2)
    );
}

#[test]
fn problem_body_is_parsed() {
    let body = br#"{"type":"urn:replyd:problem:not-found","title":"Not Found","status":404,"detail":"no job x"}"#;
    let p = problem_from_body(StatusCode::NOT_FOUND, body);
    assert_eq!(p.type_, "urn:replyd:problem:not-found");
    assert_eq!(p.detail, "no job x");
    assert_eq!(p.status, 404);
}

#[test]
fn partial_problem_is_completed() {
    let p = problem_from_body(StatusCode::CONFLICT, br#"{"detail":"job is running"}"#);
    assert_eq!(p.type_, "about:blank");
    assert_eq!(p.title, "Conflict");
    assert_eq!(p.status, 409);
    assert_eq!(p.detail, "job is running");
}

#[test]
fn non_problem_body_becomes_the_detail() {
    let p = problem_from_body(StatusCode::BAD_GATEWAY, b"  upstream exploded\n");
    assert_eq!(p.type_, "about:blank");
    assert_eq!(p.title, "Bad Gateway");
    assert_eq!(p.status, 502);
    assert_eq!(p.detail, "upstream exploded");
    // JSON that is not a problem object is text too.
    let p = problem_from_body(StatusCode::BAD_REQUEST, br#"[1,2]"#);
    assert_eq!(p.detail, "[1,2]");
}

#[test]
fn job_id_from_content_location() {
    assert_eq!(
        job_id_from_location("/v1/jobs/abc/result?access_token=t").as_deref(),
        Some("abc")
    );
    assert_eq!(
        job_id_from_location("http://h:1/base/v1/jobs/abc/result").as_deref(),
        Some("abc")
    );
    assert_eq!(job_id_from_location("/v1/jobs/").as_deref(), None);
    assert_eq!(job_id_from_location("/elsewhere").as_deref(), None);
}

#[test]
fn result_json_detection() {
    let r = |ct: &str| JobResult {
        content_type: ct.into(),
        body: Bytes::new(),
    };
    assert!(r("application/json").is_json());
    assert!(r("Application/JSON; charset=utf-8").is_json());
    assert!(r("application/problem+json").is_json());
    assert!(!r("text/plain; charset=utf-8").is_json());
}

#[test]
fn error_status_helpers() {
    let e = Error::Api {
        status: 409,
        problem: problem_from_body(StatusCode::CONFLICT, b""),
    };
    assert!(e.is_status(409));
    assert!(!e.is_status(404));
    assert_eq!(e.problem().map(|p| p.status), Some(409));
}

#[test]
fn client_rejects_bad_urls_and_hides_the_key() {
    assert!(matches!(
        Client::new("ftp://x", None),
        Err(Error::InvalidUrl { .. })
    ));
    assert!(matches!(
        Client::new("not a url", None),
        Err(Error::InvalidUrl { .. })
    ));
    let c = Client::new("http://127.0.0.1:1/prefix/", Some("secret".into())).unwrap();
    assert!(!format!("{c:?}").contains("secret"));
    assert_eq!(
        c.job_url("a/b", Some("result")).as_str(),
        "http://127.0.0.1:1/prefix/v1/jobs/a%2Fb/result"
    );
}

// ---- a scripted server -----------------------------------------------------

/// One request as the scripted server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A canned answer.
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn canned(status: u16, headers: &[(&'static str, &str)], body: impl Into<Vec<u8>>) -> Canned {
    Canned {
        status,
        headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
        body: body.into(),
    }
}

/// Serves `answers` in order, one per connection, and records the requests.
async fn scripted(answers: Vec<Canned>) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let Some(request) = read_request(&mut conn).await else {
                continue;
            };
            log.lock().unwrap().push(request);
            let Some(answer) = answers.lock().unwrap().pop_front() else {
                return;
            };
            let mut head = format!(
                "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                answer.status,
                answer.body.len()
            );
            for (name, value) in &answer.headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(&answer.body).await;
            let _ = conn.shutdown().await;
        }
    });
    let client = Client::new(&format!("http://{addr}"), Some("k-test".into())).unwrap();
    (client, seen)
}

async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

pub(crate) fn job_json(state: &str, percent: Option<u32>) -> Vec<u8> {
    let error = match state {
        "failed" => json!({"code": "worker_error", "message": "boom"}),
        _ => Value::Null,
    };
    serde_json::to_vec(&json!({
        "id": "j1", "queue": "q", "state": state,
        "progress": percent.map(|p| json!({"percent": p, "message": format!("at {p}")})),
        "attempt": 1, "max_attempts": 3,
        "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
        "finished_at": null, "expires_at": null, "error": error,
        "links": {"self": "/v1/jobs/j1?access_token=t", "result": "/v1/jobs/j1/result?access_token=t",
                  "events": "/v1/jobs/j1/events?access_token=t"}
    }))
    .unwrap()
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// What a server without an events endpoint answers.
fn no_events() -> Canned {
    canned(
        404,
        &[("content-type", "application/problem+json")],
        r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no route"}"#,
    )
}

#[tokio::test]
async fn get_reads_each_status_and_does_not_follow_303() {
    let (client, seen) = scripted(vec![
        canned(
            202,
            &[JSON, ("retry-after", "2"), ("etag", "\"v1\"")],
            job_json("running", Some(10)),
        ),
        canned(
            303,
            &[JSON, ("location", "/v1/jobs/j1/result")],
            job_json("succeeded", None),
        ),
        canned(200, &[JSON], job_json("failed", None)),
    ])
    .await;
    let st = client.get("j1").await.unwrap();
    assert_eq!(st.job.state, JobState::Running);
    assert_eq!(st.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(st.etag.as_deref(), Some("\"v1\""));
    let st = client.get("j1").await.unwrap();
    assert_eq!(st.job.state, JobState::Succeeded);
    let st = client.get("j1").await.unwrap();
    assert_eq!(st.job.state, JobState::Failed);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "the 303 must not be followed");
    assert!(seen.iter().all(|r| r.path == "/v1/jobs/j1"));
    assert_eq!(seen[0].header("authorization"), Some("Bearer k-test"));
}

#[tokio::test]
async fn errors_carry_the_problem() {
    let (client, _) = scripted(vec![
        canned(
            409,
            &[("content-type", "application/problem+json")],
            r#"{"type":"urn:replyd:problem:conflict","title":"Conflict","status":409,"detail":"job is running"}"#,
        ),
        canned(500, &[("content-type", "text/plain")], "oops"),
    ])
    .await;
    let err = client.result("j1").await.unwrap_err();
    assert!(err.is_status(409), "{err}");
    assert_eq!(err.problem().unwrap().detail, "job is running");
    let err = client.cancel("j1").await.unwrap_err();
    assert!(err.is_status(500));
    assert_eq!(err.problem().unwrap().detail, "oops");
}

#[tokio::test]
async fn wait_long_polls_and_reports_changes() {
    let (client, seen) = scripted(vec![
        no_events(),
        canned(
            202,
            &[JSON, ("retry-after", "0"), ("etag", "\"1\"")],
            job_json("queued", None),
        ),
        // Not held (answered at once): the client pauses before the next poll.
        canned(304, &[("etag", "\"1\"")], ""),
        canned(
            202,
            &[JSON, ("retry-after", "0"), ("etag", "\"2\"")],
            job_json("running", Some(40)),
        ),
        canned(303, &[JSON, ("etag", "\"3\"")], job_json("succeeded", None)),
    ])
    .await;
    let mut changes = Vec::new();
    let job = client
        .wait_with("j1", Some(Duration::from_secs(20)), |j| {
            changes.push((j.state, j.progress.as_ref().and_then(|p| p.percent)))
        })
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(
        changes,
        vec![
            (JobState::Queued, None),
            (JobState::Running, Some(40.0)),
            (JobState::Succeeded, None)
        ]
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    // The event stream first; its 404 sends the client to long polling.
    assert_eq!(seen[0].path, "/v1/jobs/j1/events");
    assert_eq!(seen[0].header("accept"), Some("text/event-stream"));
    assert_eq!(seen[0].header("authorization"), Some("Bearer k-test"));
    let seen = &seen[1..];
    assert_eq!(seen[0].header("if-none-match"), None);
    assert_eq!(seen[1].header("if-none-match"), Some("\"1\""));
    assert_eq!(seen[2].header("if-none-match"), Some("\"1\""));
    assert_eq!(seen[3].header("if-none-match"), Some("\"2\""));
    let prefer = seen[1].header("prefer").unwrap();
    assert!(prefer.starts_with("wait="), "{prefer}");
}

#[tokio::test]
async fn wait_times_out_with_the_last_state() {
    let (client, _) = scripted(vec![
        no_events(),
        canned(
            202,
            &[JSON, ("retry-after", "1")],
            job_json("running", Some(5)),
        ),
        canned(
            202,
            &[JSON, ("retry-after", "1")],
            job_json("running", Some(5)),
        ),
    ])
    .await;
    let err = client
        .wait("j1", Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    match err {
        Error::Timeout { job } => assert_eq!(job.state, JobState::Running),
        other => panic!("expected a timeout, got {other}"),
    }
}

#[tokio::test]
async fn submit_and_wait_reads_a_direct_result() {
    let (client, seen) = scripted(vec![
        canned(
            200,
            &[
                ("content-type", "text/plain"),
                ("content-location", "/v1/jobs/j9/result?access_token=t"),
            ],
            "hello",
        ),
        canned(202, &[JSON], job_json("queued", None)),
    ])
    .await;
    let req = SubmitRequest {
        queue: "q".into(),
        input: json!({"a": 1}),
        webhook: None,
        max_attempts: None,
        timeout: None,
        ttl: None,
        output: None,
        priority: None,
        delay: None,
        run_at: None,
        group: None,
    };
    match client
        .submit_and_wait(&req, Some("key-1"), 5)
        .await
        .unwrap()
    {
        Submitted::Done { job_id, result } => {
            assert_eq!(job_id, "j9");
            assert_eq!(result.content_type, "text/plain");
            assert_eq!(&result.body[..], b"hello");
        }
        other => panic!("{other:?}"),
    }
    match client.submit_and_wait(&req, None, 5).await.unwrap() {
        Submitted::Accepted(job) => assert_eq!(job.state, JobState::Queued),
        other => panic!("{other:?}"),
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/jobs");
    assert_eq!(seen[0].header("prefer"), Some("wait=5"));
    assert_eq!(seen[0].header("idempotency-key"), Some("key-1"));
    assert_eq!(seen[1].header("idempotency-key"), None);
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body, json!({"queue": "q", "input": {"a": 1}}));
}

#[tokio::test]
async fn worker_calls() {
    let lease = json!({
        "job": serde_json::from_slice::<Value>(&job_json("running", None)).unwrap(),
        "lease_id": "L1",
        "lease_expires_at": "2024-01-01T00:00:30Z",
    });
    let status = r#"{"cancel_requested":true,"lease_expires_at":"2024-01-01T00:01:00Z"}"#;
    let (client, seen) = scripted(vec![
        canned(204, &[], ""),
        canned(200, &[JSON], serde_json::to_vec(&lease).unwrap()),
        canned(200, &[JSON], status),
        canned(204, &[], ""),
        canned(
            409,
            &[("content-type", "application/problem+json")],
            r#"{"type":"urn:replyd:problem:stale-lease","title":"Conflict","status":409,"detail":"stale lease"}"#,
        ),
    ])
    .await;
    let req = LeaseRequest {
        worker: Some("w".into()),
        lease: Some(30.0),
        wait: Some(1.0),
        batch: None,
        outcomes: Vec::new(),
    };
    assert!(client.lease("my queue", &req).await.unwrap().is_none());
    let got = client.lease("my queue", &req).await.unwrap().unwrap();
    assert_eq!(got.lease_id, "L1");
    let st = client.heartbeat("j1", "L1", None).await.unwrap();
    assert!(st.cancel_requested);
    client
        .complete_raw("j1", "L1", "text/plain", Bytes::from_static(b"hi"))
        .await
        .unwrap();
    let err = client.fail("j1", "L1", "boom", true).await.unwrap_err();
    assert!(err.is_status(409));

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].path, "/v1/queues/my%20queue/lease");
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body, json!({"worker": "w", "lease": 30.0, "wait": 1.0}));
    assert_eq!(seen[2].path, "/v1/jobs/j1/heartbeat");
    let body: Value = serde_json::from_slice(&seen[2].body).unwrap();
    assert_eq!(body, json!({"lease_id": "L1"}));
    assert_eq!(seen[3].path, "/v1/jobs/j1/complete");
    assert_eq!(seen[3].header("content-type"), Some("text/plain"));
    assert_eq!(seen[3].header(LEASE_ID_HEADER), Some("L1"));
    assert_eq!(seen[3].body, b"hi");
    let body: Value = serde_json::from_slice(&seen[4].body).unwrap();
    assert_eq!(
        body,
        json!({"lease_id": "L1", "error": "boom", "retry": true})
    );
}

// ---- a real replyd in process ----------------------------------------------

mod live {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::response::Response as AxumResponse;
    use futures::StreamExt;
    use replyd_core::Clock;
    use replyd_server::{Config, Server};
    use tokio_util::sync::CancellationToken;

    use super::*;

    const CLIENT_KEY: &str = "client-key-1";
    const WORKER_KEY: &str = "worker-key-1";
    const CONFIG: &str = r#"
[[api_keys]]
key = "client-key-1"
tenant = "t1"
role = "client"

[[api_keys]]
key = "worker-key-1"
tenant = "t1"
role = "worker"

[queues.work]
executor = "pull"
max_attempts = 1
timeout = 60
"#;

    /// replyd on 127.0.0.1:0 with a fresh SQLite file; stopped when dropped.
    struct Replyd {
        url: String,
        stop: CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl Drop for Replyd {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    impl Replyd {
        async fn start() -> Replyd {
            let dir = tempfile::tempdir().unwrap();
            let mut config = Config::from_toml(CONFIG).unwrap();
            config.storage.sqlite = dir.path().join("replyd.db");
            config.validate().unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let server = Server::start(config, Clock::system()).await.unwrap();
            let stop = CancellationToken::new();
            let s = stop.clone();
            tokio::spawn(async move {
                server.run(listener, s.cancelled_owned()).await.unwrap();
            });
            Replyd {
                url,
                stop,
                _dir: dir,
            }
        }

        fn client(&self) -> Client {
            Client::new(&self.url, Some(CLIENT_KEY.into())).unwrap()
        }

        fn worker(&self) -> Client {
            Client::new(&self.url, Some(WORKER_KEY.into())).unwrap()
        }
    }

    /// A worker streams its output; a client reads it from the start,
    /// then waits at the end for the rest and for the job's end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_workers_output_is_read_and_followed_to_the_end() {
        let replyd = Replyd::start().await;
        let (client, worker) = (replyd.client(), replyd.worker());
        let job = client.submit(&work(json!({})), None).await.unwrap();
        let req = LeaseRequest {
            worker: Some("test".into()),
            lease: Some(30.0),
            wait: Some(10.0),
            batch: None,
            outcomes: Vec::new(),
        };
        let lease = worker.lease("work", &req).await.unwrap().unwrap();
        let (id, lid) = (job.id.clone(), lease.lease_id.clone());
        let say = |chunk: &'static str, seq: u64| {
            let (worker, id, lid) = (worker.clone(), id.clone(), lid.clone());
            async move {
                worker
                    .append_output(
                        &id,
                        &lid,
                        "text/plain",
                        Bytes::from_static(chunk.as_bytes()),
                        Some(("w", 0, seq)),
                    )
                    .await
            }
        };
        say("Hello, ", 0).await.unwrap();
        say("Hello, ", 0).await.unwrap(); // a retry lands once
        let first = client.output(&id, output::START, false).await.unwrap();
        assert_eq!(&first.data[..], b"Hello, ");
        assert!(first.up_to_date && !first.closed);
        let follow = {
            let (client, id, at) = (client.clone(), id.clone(), first.next_offset.clone());
            tokio::spawn(async move { client.output(&id, &at, true).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        say("world", 1).await.unwrap();
        let second = follow.await.unwrap();
        assert_eq!(&second.data[..], b"world");
        worker
            .complete_json(&id, &lid, json!({"ok": true}))
            .await
            .unwrap();
        let end = client.output(&id, &second.next_offset, true).await.unwrap();
        assert!(end.data.is_empty() && end.closed, "{end:?}");
        let stale = worker
            .append_output(&id, &lid, "text/plain", Bytes::from_static(b"late"), None)
            .await;
        assert!(stale.is_err(), "an ended job's output takes no more");
    }

    fn work(input: Value) -> SubmitRequest {
        SubmitRequest {
            queue: "work".into(),
            input,
            webhook: None,
            max_attempts: None,
            timeout: None,
            ttl: None,
            output: None,
            priority: None,
            delay: None,
            run_at: None,
            group: None,
        }
    }

    /// Leases the next `work` job and reports `steps` progress updates
    /// (`step 1` at 100/steps %, ...) back to back, then completes it with
    /// `{"done": true}`. Answers the job's id.
    async fn run_job(worker: &Client, steps: u32) -> String {
        let req = LeaseRequest {
            worker: Some("test".into()),
            lease: Some(30.0),
            wait: Some(10.0),
            batch: None,
            outcomes: Vec::new(),
        };
        let lease = worker
            .lease("work", &req)
            .await
            .unwrap()
            .expect("a job to lease");
        let id = lease.job.id.clone();
        for step in 1..=steps {
            let percent = f64::from(step * 100 / steps);
            worker
                .progress(
                    &id,
                    &lease.lease_id,
                    Some(percent),
                    Some(&format!("step {step}")),
                )
                .await
                .unwrap();
        }
        worker
            .complete_json(&id, &lease.lease_id, json!({"done": true}))
            .await
            .unwrap();
        id
    }

    /// What `on_change` saw, compactly: `queued`, `running`, `running step 3`,
    /// `succeeded step 3` (a finished job keeps its last progress).
    fn describe(job: &Job) -> String {
        match job.progress.as_ref().and_then(|p| p.message.as_deref()) {
            Some(m) => format!("{} {m}", job.state),
            None => job.state.to_string(),
        }
    }

    /// The calls a job run by [`run_job`] with `steps` should produce, each
    /// exactly once: accepted, started, every step, succeeded.
    fn every_event(steps: u32) -> Vec<String> {
        let mut all = vec!["queued".to_owned(), "running".to_owned()];
        all.extend((1..=steps).map(|s| format!("running step {s}")));
        all.push(format!("succeeded step {steps}"));
        all
    }

    /// Waits for job `id` with `client` (events, falling back to polling)
    /// and, once the wait has seen the job for the first time, runs `work`.
    /// Answers the wait and the job as each `on_change` call saw it.
    async fn live_wait<W, F>(client: &Client, id: &str, work: W) -> (Waited, Vec<String>)
    where
        W: FnOnce() -> F,
        F: std::future::Future<Output = ()>,
    {
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let client = client.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                let mut first = Some(first_tx);
                let mut calls = Vec::new();
                let waited = client
                    .wait_with_options(&id, &opts(None), |j| {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(());
                        }
                        calls.push(describe(j));
                    })
                    .await
                    .unwrap();
                (waited, calls)
            })
        };
        tokio::time::timeout(Duration::from_secs(30), first_rx)
            .await
            .expect("the wait sees the job")
            .unwrap();
        work().await;
        tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("the wait ends")
            .unwrap()
    }

    fn opts(transport: Option<Transport>) -> WaitOptions {
        WaitOptions {
            timeout: Some(Duration::from_secs(30)),
            transport,
        }
    }

    /// (a) `wait` follows the event stream live: every one of several
    /// progress updates made back to back (long polling would see them
    /// coalesced) reaches the callback once, in order, and the answer says
    /// it came over events.
    #[tokio::test]
    async fn wait_follows_the_event_stream() {
        let replyd = Replyd::start().await;
        let client = replyd.client();
        let job = client.submit(&work(json!({"n": 1})), None).await.unwrap();

        let (waited, calls) = live_wait(&client, &job.id, || async {
            run_job(&replyd.worker(), 8).await;
        })
        .await;

        assert_eq!(waited.transport, Transport::Events);
        assert!(waited.fallback.is_none(), "{:?}", waited.fallback);
        assert_eq!(waited.reconnects, 0);
        assert_eq!(waited.job.state, JobState::Succeeded);
        assert_eq!(calls, every_event(8));
        assert_eq!(
            client
                .result(&job.id)
                .await
                .unwrap()
                .json::<Value>()
                .unwrap(),
            json!({"done": true})
        );
        // A job that finished long ago: its history, then at once the end.
        let mut calls = Vec::new();
        let done = client
            .wait_with(&job.id, Some(Duration::from_secs(10)), |j| {
                calls.push(describe(j))
            })
            .await
            .unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(calls, every_event(8));
    }

    /// `Client::events`: the history with increasing ids, the end after the
    /// terminal event, a resume from any id, and an empty stream (204) when
    /// resumed at the end.
    #[tokio::test]
    async fn events_replay_resume_and_end() {
        let replyd = Replyd::start().await;
        let client = replyd.client();
        let job = client.submit(&work(Value::Null), None).await.unwrap();
        run_job(&replyd.worker(), 3).await;

        let all: Vec<JobEvent> = client
            .events(&job.id, None)
            .map(|e| e.unwrap())
            .collect()
            .await;
        let names: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            names,
            [
                "job.accepted",
                "job.started",
                "job.progress",
                "job.progress",
                "job.progress",
                "job.succeeded"
            ]
        );
        assert!(all.windows(2).all(|w| w[0].id < w[1].id), "{all:?}");
        assert!(all.last().unwrap().is_terminal());
        assert!(all.iter().all(|e| e.job.id == job.id));

        let rest: Vec<JobEvent> = client
            .events(&job.id, Some(all[2].id))
            .map(|e| e.unwrap())
            .collect()
            .await;
        assert_eq!(rest, all[3..]);

        let after_end: Vec<_> = client
            .events(&job.id, Some(all.last().unwrap().id))
            .collect()
            .await;
        assert!(after_end.is_empty(), "{after_end:?}");

        // An unknown job is the API's 404, as one item.
        let missing: Vec<_> = client
            .events("0190b1c4-0000-7000-8000-000000000000", None)
            .collect()
            .await;
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].as_ref().unwrap_err().is_status(404),
            "{missing:?}"
        );
    }

    // ---- a proxy in front of replyd ------------------------------------

    /// What the proxy does to `GET .../events`; everything else it forwards.
    #[derive(Debug, Clone, Copy)]
    enum EventsMode {
        Forward,
        /// Answer this status (a problem body) instead.
        Refuse(u16),
        /// Answer 200 with an HTML page (a misconfigured gateway).
        Html,
        /// Forward, but break the first `times` streams off after `bytes`
        /// bytes of their body (mid-event).
        Cut {
            bytes: usize,
            times: u32,
        },
        /// Forward, but end the first `times` streams after `bytes` bytes of
        /// their body with a `stream.overflow` event, as the server does to a
        /// reader that fell behind.
        Overflow {
            bytes: usize,
            times: u32,
        },
    }

    struct Proxy {
        upstream: String,
        http: reqwest::Client,
        mode: EventsMode,
        /// Event streams opened so far.
        streams: AtomicU32,
        /// The `Last-Event-ID` of each event-stream request, in order.
        resumed_from: Mutex<Vec<Option<String>>>,
    }

    /// A proxy on 127.0.0.1:0 in front of `upstream`. Answers its URL.
    async fn start_proxy(upstream: &str, mode: EventsMode) -> (String, Arc<Proxy>) {
        let proxy = Arc::new(Proxy {
            upstream: upstream.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            mode,
            streams: AtomicU32::new(0),
            resumed_from: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, proxy)
    }

    async fn forward(State(proxy): State<Arc<Proxy>>, req: Request) -> AxumResponse {
        let is_events = req.uri().path().ends_with("/events");
        let mut cut = None;
        if is_events {
            let n = proxy.streams.fetch_add(1, Ordering::SeqCst);
            let last = req
                .headers()
                .get("last-event-id")
                .map(|v| v.to_str().unwrap().to_owned());
            proxy.resumed_from.lock().unwrap().push(last);
            match proxy.mode {
                EventsMode::Forward => {}
                EventsMode::Refuse(status) => {
                    return AxumResponse::builder()
                        .status(status)
                        .header("content-type", "application/problem+json")
                        .body(Body::from(format!(
                            r#"{{"type":"about:blank","title":"No","status":{status},"detail":"no streams here"}}"#
                        )))
                        .unwrap();
                }
                EventsMode::Html => {
                    return AxumResponse::builder()
                        .header("content-type", "text/html")
                        .body(Body::from("<html>a gateway page</html>"))
                        .unwrap();
                }
                EventsMode::Cut { bytes, times } => {
                    if n < times {
                        cut = Some((bytes, None));
                    }
                }
                EventsMode::Overflow { bytes, times } => {
                    if n < times {
                        let overflow =
                            "event: stream.overflow\ndata: {\"detail\":\"too slow\"}\n\n";
                        cut = Some((bytes, Some(Bytes::from_static(overflow.as_bytes()))));
                    }
                }
            }
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let method = req.method().clone();
        let headers = req.headers().clone();
        let body = axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .unwrap();
        let mut rb = proxy
            .http
            .request(method, format!("{}{path}", proxy.upstream))
            .body(body);
        for (name, value) in &headers {
            if name != "host" {
                rb = rb.header(name, value);
            }
        }
        let upstream = rb.send().await.unwrap();
        let mut res = AxumResponse::builder().status(upstream.status());
        for (name, value) in upstream.headers() {
            if !matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "connection"
            ) {
                res = res.header(name, value);
            }
        }
        let body = Box::pin(upstream.bytes_stream());
        let body = match cut {
            None => Body::from_stream(body),
            Some((limit, last)) => Body::from_stream(cut_after(body, limit, last)),
        };
        res.body(body).unwrap()
    }

    /// The first `limit` bytes of `body`, then `last` and the end, or
    /// without `last`, an error: the connection is broken off without the
    /// end of the chunked body.
    fn cut_after(
        body: Pin<Box<dyn futures::Stream<Item = reqwest::Result<Bytes>> + Send>>,
        limit: usize,
        last: Option<Bytes>,
    ) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
        enum Cut {
            Forward(
                Pin<Box<dyn futures::Stream<Item = reqwest::Result<Bytes>> + Send>>,
                usize,
            ),
            Last,
            Done,
        }
        futures::stream::unfold(Cut::Forward(body, limit), move |state| {
            let last = last.clone();
            async move {
                match state {
                    Cut::Forward(mut body, left) => match body.next().await {
                        Some(Ok(chunk)) if chunk.len() < left => {
                            let left = left - chunk.len();
                            Some((Ok(chunk), Cut::Forward(body, left)))
                        }
                        Some(Ok(chunk)) => Some((Ok(chunk.slice(..left)), Cut::Last)),
                        Some(Err(e)) => Some((Err(std::io::Error::other(e)), Cut::Done)),
                        None => None,
                    },
                    Cut::Last => match last {
                        Some(last) => Some((Ok(last), Cut::Done)),
                        None => Some((
                            Err(std::io::Error::other("the proxy cuts the stream")),
                            Cut::Done,
                        )),
                    },
                    Cut::Done => None,
                }
            }
        })
    }

    use std::pin::Pin;

    /// (b) Where the events endpoint is missing (404, 405, 501) or answers
    /// something else than an event stream, `wait` long polls instead, and
    /// says why; with events required, that is the error.
    #[tokio::test]
    async fn wait_falls_back_to_polling_without_events() {
        let replyd = Replyd::start().await;
        let worker = replyd.worker();
        for mode in [
            EventsMode::Refuse(404),
            EventsMode::Refuse(405),
            EventsMode::Refuse(501),
            EventsMode::Html,
        ] {
            let (url, proxy) = start_proxy(&replyd.url, mode).await;
            let client = Client::new(&url, Some(CLIENT_KEY.into())).unwrap();
            let job = client.submit(&work(Value::Null), None).await.unwrap();
            let (waited, calls) = live_wait(&client, &job.id, || async {
                run_job(&worker, 2).await;
            })
            .await;
            assert_eq!(waited.transport, Transport::Polling, "{mode:?}");
            assert_eq!(waited.job.state, JobState::Succeeded, "{mode:?}");
            let why = waited.fallback.expect("the reason for polling");
            match mode {
                EventsMode::Refuse(status) => assert!(why.is_status(status), "{mode:?}: {why}"),
                _ => assert!(matches!(why, Error::Stream(_)), "{mode:?}: {why}"),
            }
            // Polling saw the start and the end (steps may coalesce), each once.
            assert_eq!(
                calls.first().map(String::as_str),
                Some("queued"),
                "{calls:?}"
            );
            assert_eq!(
                calls.last().map(String::as_str),
                Some("succeeded step 2"),
                "{calls:?}"
            );
            assert!(calls.windows(2).all(|w| w[0] != w[1]), "{calls:?}");
            // One try at the stream: a refusal is not retried.
            assert_eq!(proxy.streams.load(Ordering::SeqCst), 1, "{mode:?}");

            let strict = client
                .wait_with_options(&job.id, &opts(Some(Transport::Events)), |_| {})
                .await
                .unwrap_err();
            match mode {
                EventsMode::Refuse(status) => assert!(strict.is_status(status), "{strict}"),
                _ => assert!(matches!(strict, Error::Stream(_)), "{strict}"),
            }
        }

        // Polling only, by choice: the events endpoint is never asked.
        let (url, proxy) = start_proxy(&replyd.url, EventsMode::Forward).await;
        let client = Client::new(&url, Some(CLIENT_KEY.into())).unwrap();
        let job = client.submit(&work(Value::Null), None).await.unwrap();
        run_job(&worker, 1).await;
        let waited = client
            .wait_with_options(&job.id, &opts(Some(Transport::Polling)), |_| {})
            .await
            .unwrap();
        assert_eq!(waited.transport, Transport::Polling);
        assert!(waited.fallback.is_none());
        assert_eq!(proxy.streams.load(Ordering::SeqCst), 0);
    }

    /// (c) A stream broken off mid-event, or ended by `stream.overflow`, is
    /// resumed with `Last-Event-ID`: no event is lost and none reaches the
    /// callback twice.
    #[tokio::test]
    async fn wait_resumes_a_broken_stream_without_repeats() {
        let replyd = Replyd::start().await;
        let client = replyd.client();
        let job = client.submit(&work(Value::Null), None).await.unwrap();
        run_job(&replyd.worker(), 10).await;
        let stream = {
            let r = reqwest::Client::new()
                .get(format!("{}/v1/jobs/{}/events", replyd.url, job.id))
                .bearer_auth(CLIENT_KEY)
                .send()
                .await
                .unwrap();
            String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap()
        };
        // `retry:`, then `job.accepted`: where a stream's history ends
        // before the job has started.
        let accepted = stream.find("event: job.accepted").unwrap();
        let history_len = accepted + stream[accepted..].find("\n\n").unwrap() + 2;

        // Each of the first two streams is cut a third of the way in: the
        // second resumes from what the first delivered, and so on.
        let cut = stream.len() / 3;
        let (url, proxy) = start_proxy(
            &replyd.url,
            EventsMode::Cut {
                bytes: cut,
                times: 2,
            },
        )
        .await;
        let client = Client::new(&url, Some(CLIENT_KEY.into())).unwrap();
        let mut calls = Vec::new();
        let waited = client
            .wait_with_options(&job.id, &opts(None), |j| calls.push(describe(j)))
            .await
            .unwrap();
        assert_eq!(waited.transport, Transport::Events, "{:?}", waited.fallback);
        assert_eq!(waited.reconnects, 2);
        assert_eq!(waited.job.state, JobState::Succeeded);
        assert_eq!(calls, every_event(10));
        let resumed = proxy.resumed_from.lock().unwrap().clone();
        assert_eq!(resumed.len(), 3, "{resumed:?}");
        assert_eq!(resumed[0], None);
        let ids: Vec<u64> = resumed[1..]
            .iter()
            .map(|id| id.as_deref().expect("Last-Event-ID").parse().unwrap())
            .collect();
        assert!(ids[0] < ids[1], "each resume starts further on: {ids:?}");

        // A `stream.overflow` after the first event: resumed from it.
        let (url, proxy) = start_proxy(
            &replyd.url,
            EventsMode::Overflow {
                bytes: history_len,
                times: 1,
            },
        )
        .await;
        let overflowing = Client::new(&url, Some(CLIENT_KEY.into())).unwrap();
        let mut calls = Vec::new();
        let waited = overflowing
            .wait_with_options(&job.id, &opts(None), |j| calls.push(describe(j)))
            .await
            .unwrap();
        assert_eq!(waited.transport, Transport::Events, "{:?}", waited.fallback);
        assert_eq!(waited.reconnects, 1);
        assert_eq!(calls, every_event(10));
        let accepted_id = stream[..history_len]
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .unwrap()
            .to_owned();
        assert_eq!(
            *proxy.resumed_from.lock().unwrap(),
            [None, Some(accepted_id)]
        );

        // Live: the stream breaks while the job runs (in its second event,
        // after the history the wait saw before the work began), and is
        // resumed.
        let job = client.submit(&work(Value::Null), None).await.unwrap();
        let (url, _proxy) = start_proxy(
            &replyd.url,
            EventsMode::Cut {
                bytes: history_len + 100,
                times: 1,
            },
        )
        .await;
        let cutting = Client::new(&url, Some(CLIENT_KEY.into())).unwrap();
        let (waited, calls) = live_wait(&cutting, &job.id, || async {
            run_job(&replyd.worker(), 6).await;
        })
        .await;
        assert_eq!(waited.transport, Transport::Events, "{:?}", waited.fallback);
        assert_eq!(waited.reconnects, 1);
        assert_eq!(calls, every_event(6));
    }

    /// A stream that cannot be opened at all (nothing listens) is retried a
    /// few times, then given up for polling — which reports the error.
    #[tokio::test]
    async fn wait_gives_up_on_an_unreachable_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(&format!("http://{addr}"), None).unwrap();
        let started = std::time::Instant::now();
        let err = client
            .wait(
                "0190b1c4-0000-7000-8000-000000000000",
                Some(Duration::from_secs(20)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Http(_)), "{err}");
        // Five attempts with 100, 200, 400 and 800 ms between them.
        assert!(started.elapsed() >= Duration::from_millis(1500));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// The worker loop against a real server: a job's handler reports
    /// progress and succeeds; a cancel reaches a running handler as
    /// `Stop::Canceled`; a failure is reported; draining ends `run`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_loop_runs_handlers_and_reports_their_outcomes() {
        use crate::worker::{Outcome, Stop, Task, Worker, WorkerOptions};

        let r = Replyd::start().await;
        let client = r.client();
        let mut options = WorkerOptions::new("work");
        options.concurrency = 2;
        options.lease = Duration::from_secs(1);
        let worker = Worker::new(r.worker(), options);
        let control = worker.control();
        let (stopped_tx, mut stopped_rx) = tokio::sync::mpsc::unbounded_channel();
        let running = tokio::spawn(async move {
            worker
                .run(move |task: Task| {
                    let stopped_tx = stopped_tx.clone();
                    async move {
                        match task.input["do"].as_str() {
                            Some("work") => {
                                task.progress(Some(50.0), Some("half"));
                                // Longer than the lease: heartbeats keep it.
                                tokio::time::sleep(Duration::from_millis(1500)).await;
                                Outcome::Json(json!({"echo": task.input}))
                            }
                            Some("wait") => {
                                let why = task.stopped().await;
                                let _ = stopped_tx.send(why);
                                Outcome::Fail {
                                    message: format!("{why:?}"),
                                    retry: false,
                                }
                            }
                            _ => Outcome::Fail {
                                message: "no such thing".into(),
                                retry: false,
                            },
                        }
                    }
                })
                .await
        });
        let ok = client
            .submit(&work(json!({"do": "work"})), None)
            .await
            .unwrap();
        let done = client
            .wait(&ok.id, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(done.state, JobState::Succeeded, "{done:?}");
        assert_eq!(done.attempt, 1);
        let result = client.result(&ok.id).await.unwrap();
        assert_eq!(
            result.json::<Value>().unwrap(),
            json!({"echo": {"do": "work"}})
        );
        let bad = client
            .submit(&work(json!({"do": "?"})), None)
            .await
            .unwrap();
        let done = client
            .wait(&bad.id, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(done.state, JobState::Failed);
        assert_eq!(done.error.unwrap().message, "no such thing");
        let held = client
            .submit(&work(json!({"do": "wait"})), None)
            .await
            .unwrap();
        loop {
            let st = client.get(&held.id).await.unwrap();
            if st.job.state == JobState::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.cancel(&held.id).await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(10), stopped_rx.recv())
            .await
            .unwrap();
        assert_eq!(why, Some(Stop::Canceled));
        let done = client
            .wait(&held.id, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(done.state, JobState::Canceled);
        control.drain();
        let ended = tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("draining ends run")
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    }
}
