//! Unit tests: header and body parsing, and the client against a scripted
//! in-process HTTP server that answers canned responses in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

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

fn job_json(state: &str, percent: Option<u32>) -> Vec<u8> {
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
    assert_eq!(seen.len(), 4);
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
