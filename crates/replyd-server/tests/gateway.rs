//! Gateway mode and `executor = "http"` end to end (issue 7): a real
//! replyd in front of a real (local) slow upstream. A client calls replyd
//! as it would the upstream and gets 202 + Location; the request goes on
//! (method, path, query, allow-listed headers, body); the upstream's
//! answer (status, allow-listed headers, body) is replayed at /result; a
//! non-2xx answer is a failed job with the status; retries only for
//! idempotent methods unless configured; per-route timeout and
//! concurrency.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use common::TestServer;
use reqwest::Method as M;
use serde_json::{Value, json};

const BACKEND: common::Backend = common::Backend::Sqlite;
const WAIT: Duration = Duration::from_secs(15);

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: HashMap<String, String>,
    body: Bytes,
}

#[derive(Default)]
struct Upstream {
    seen: Mutex<Vec<Seen>>,
    /// Requests to /flaky so far.
    flaky: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

async fn answer(
    State(u): State<Arc<Upstream>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    u.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.clone(),
    });
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/stream") {
        return streamed(rest == "-break");
    }
    if path.starts_with("/reports") {
        return (
            StatusCode::CREATED,
            [
                ("content-type", "text/csv"),
                ("content-disposition", "attachment; filename=report.csv"),
                ("x-secret", "internal"),
            ],
            format!("month,total\n{},42\n", uri.query().unwrap_or("")),
        )
            .into_response();
    }
    match path {
        "/missing" => (StatusCode::NOT_FOUND, "no such report: 2031-13").into_response(),
        "/flaky" | "/flaky-post" => {
            if u.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                (StatusCode::SERVICE_UNAVAILABLE, "busy, try later").into_response()
            } else {
                (StatusCode::OK, "finally").into_response()
            }
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (StatusCode::OK, "late").into_response()
        }
        "/busy" => {
            let now = u.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            u.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            u.in_flight.fetch_sub(1, Ordering::SeqCst);
            (StatusCode::OK, "done").into_response()
        }
        "/render" => {
            let got: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            axum::Json(json!({"rendered": got})).into_response()
        }
        _ => (StatusCode::IM_A_TEAPOT, "?").into_response(),
    }
}

/// The events `/stream` sends, 20 ms apart.
const EVENTS: usize = 20;

fn event(i: usize) -> String {
    format!(
        "data: {{\"token\": {i}, \"text\": \"{}\"}}\n\n",
        "x".repeat(40)
    )
}

/// `/stream`: Server-Sent Events, one every 20 ms (chunked); `/stream-break`
/// breaks off after half of them.
fn streamed(breaks: bool) -> axum::response::Response {
    let body = futures::stream::unfold(0usize, move |i| async move {
        if i == EVENTS {
            return None;
        }
        if breaks && i == EVENTS / 2 {
            return Some((Err(std::io::Error::other("the model crashed")), EVENTS));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(event(i))), i + 1))
    });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

fn all_events() -> String {
    (0..EVENTS).map(event).collect()
}

async fn upstream() -> (SocketAddr, Arc<Upstream>) {
    let state = Arc::new(Upstream::default());
    let app = Router::new().fallback(answer).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

fn route(method: &str, path: &str, up: SocketAddr, extra: &str) -> String {
    format!(
        "[[routes]]\nmethod = \"{method}\"\npath = \"{path}\"\nupstream = \"http://{up}\"\n{extra}\n"
    )
}

/// Polls the job until it is finished.
async fn finished(c: &common::Client, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let j = c.get(&format!("/v1/jobs/{id}")).await.json();
        if ["succeeded", "failed", "canceled"].contains(&j["state"].as_str().unwrap()) {
            return j;
        }
        assert!(tokio::time::Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn id_of(r: &common::Res) -> String {
    r.header("location")
        .unwrap()
        .strip_prefix("/v1/jobs/")
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_slow_api_behind_the_gateway_answers_202_and_its_answer_is_replayed() {
    let (up, state) = upstream().await;
    let config = route("POST", "/reports", up, "timeout = 300");
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let r = c
        .send(
            M::POST,
            "/reports/monthly?month=2024-05",
            &[
                ("content-type", "application/json"),
                ("accept", "text/csv"),
                ("x-internal", "not for the upstream"),
            ],
            Some(br#"{"region":"eu"}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = id_of(&r);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["queue"], "gateway.reports");
    let job = finished(&c, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    // What the upstream got: the request as the client made it.
    let seen = state.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/reports/monthly");
    assert_eq!(seen.query.as_deref(), Some("month=2024-05"));
    assert_eq!(&seen.body[..], br#"{"region":"eu"}"#);
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["accept"], "text/csv");
    assert!(
        !seen.headers.contains_key("x-internal"),
        "{:?}",
        seen.headers
    );
    // Its answer, replayed: status, the kept headers, body.
    let r = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("content-type").as_deref(), Some("text/csv"));
    assert_eq!(
        r.header("content-disposition").as_deref(),
        Some("attachment; filename=report.csv")
    );
    assert_eq!(r.header("x-secret"), None, "not on the allow-list");
    assert_eq!(&r.body[..], b"month,total\nmonth=2024-05,42\n");
    // Prefer: wait: the answer itself, when it comes in time.
    let r = c
        .send(
            M::POST,
            "/reports/weekly",
            &[("prefer", "wait=10")],
            Some(vec![]),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.header("content-location").unwrap().ends_with("/result"));
    assert_eq!(r.header("preference-applied").as_deref(), Some("wait=10"));
    // Idempotency-Key: the same job again.
    let once = c
        .send(
            M::POST,
            "/reports/x",
            &[("idempotency-key", "k1")],
            Some(b"1".to_vec()),
        )
        .await;
    let twice = c
        .send(
            M::POST,
            "/reports/x",
            &[("idempotency-key", "k1")],
            Some(b"1".to_vec()),
        )
        .await;
    assert_eq!(id_of(&once), id_of(&twice));
    // Other methods and paths are not the route's.
    c.send(M::GET, "/reports/monthly", &[], None)
        .await
        .problem(404);
    c.send(M::POST, "/reportsx", &[], None).await.problem(404);
    c.send(M::POST, "/elsewhere", &[], None).await.problem(404);
}

#[tokio::test]
async fn a_non_2xx_answer_fails_the_job_with_its_status() {
    let (up, _) = upstream().await;
    let config = route("GET", "/missing", up, "");
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let r = c.send(M::GET, "/missing", &[], None).await;
    assert_eq!(r.status, 202);
    let job = finished(&c, &id_of(&r)).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempt"], 1, "a 404 is final, even for a GET");
    assert_eq!(job["error"]["code"], "upstream-status");
    assert_eq!(job["error"]["status"], 404);
    let msg = job["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("404") && msg.contains("no such report: 2031-13"),
        "{msg}"
    );
}

#[tokio::test]
async fn only_idempotent_methods_are_retried_unless_configured() {
    let (up, state) = upstream().await;
    let config = format!(
        "{}{}{}",
        route("GET", "/flaky", up, "max_attempts = 3"),
        route("POST", "/flaky-post", up, "max_attempts = 3"),
        route(
            "PUT",
            "/flaky",
            up,
            "max_attempts = 3\nretry = \"never\"\nqueue = \"flaky-put\""
        ),
    );
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    // GET: 503, 503, then 200 on the third attempt.
    let r = c.send(M::GET, "/flaky", &[], None).await;
    let job = finished(&c, &id_of(&r)).await;
    assert_eq!(
        (job["state"].as_str(), job["attempt"].as_i64()),
        (Some("succeeded"), Some(3)),
        "{job}"
    );
    // POST: its first 503 is final.
    state.flaky.store(0, Ordering::SeqCst);
    let r = c.send(M::POST, "/flaky-post", &[], Some(vec![])).await;
    let job = finished(&c, &id_of(&r)).await;
    assert_eq!(
        (job["state"].as_str(), job["attempt"].as_i64()),
        (Some("failed"), Some(1)),
        "{job}"
    );
    assert_eq!(job["error"]["status"], 503);
    // PUT with retry = "never": not retried either.
    state.flaky.store(0, Ordering::SeqCst);
    let r = c.send(M::PUT, "/flaky", &[], Some(vec![])).await;
    let job = finished(&c, &id_of(&r)).await;
    assert_eq!(job["attempt"], 1);
}

#[tokio::test]
async fn a_post_is_retried_when_the_route_says_always() {
    let (up, _) = upstream().await;
    let config = route(
        "POST",
        "/flaky-post",
        up,
        "max_attempts = 3\nretry = \"always\"",
    );
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let r = c.send(M::POST, "/flaky-post", &[], Some(vec![])).await;
    let job = finished(&c, &id_of(&r)).await;
    assert_eq!(
        (job["state"].as_str(), job["attempt"].as_i64()),
        (Some("succeeded"), Some(3)),
        "{job}"
    );
}

#[tokio::test]
async fn a_route_times_out_and_limits_its_concurrency() {
    let (up, state) = upstream().await;
    let config = format!(
        "{}{}",
        route("GET", "/slow", up, "timeout = 1\nmax_attempts = 1"),
        route("GET", "/busy", up, "concurrency = 2"),
    );
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let started = tokio::time::Instant::now();
    let r = c.send(M::GET, "/slow", &[], None).await;
    let job = finished(&c, &id_of(&r)).await;
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "not the upstream's 3 s"
    );
    assert_eq!(job["state"], "failed");
    assert_eq!(job["error"]["code"], "upstream-unreachable");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in time"),
        "{job}"
    );
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(id_of(&c.send(M::GET, "/busy", &[], None).await));
    }
    for id in &ids {
        assert_eq!(finished(&c, id).await["state"], "succeeded");
    }
    assert_eq!(state.most_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn with_keys_a_gateway_request_needs_one_and_replyds_key_never_goes_on() {
    let (up, state) = upstream().await;
    let config = format!(
        "{}\n{}",
        common::KEYS,
        route(
            "POST",
            "/reports",
            up,
            "forward_headers = [\"content-type\", \"authorization\"]"
        )
    );
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let anonymous = s.client(None);
    anonymous
        .send(M::POST, "/reports/a", &[], Some(vec![]))
        .await
        .problem(401);
    // Replyd's key as Bearer: accepted, and not passed on.
    let a = s.client(Some("client-a-key"));
    let r = a.send(M::POST, "/reports/a", &[], Some(vec![])).await;
    assert_eq!(r.status, 202);
    let id = id_of(&r);
    assert_eq!(finished(&a, &id).await["state"], "succeeded");
    assert!(
        !state.seen.lock().unwrap()[0]
            .headers
            .contains_key("authorization")
    );
    // In X-Replyd-Key: the client's own Authorization goes on.
    let r = anonymous
        .send(
            M::POST,
            "/reports/b",
            &[
                ("x-replyd-key", "client-a-key"),
                ("authorization", "Bearer for-the-upstream"),
            ],
            Some(vec![]),
        )
        .await;
    assert_eq!(r.status, 202);
    let id = id_of(&r);
    assert_eq!(finished(&a, &id).await["state"], "succeeded");
    let seen = state.seen.lock().unwrap()[1].clone();
    assert_eq!(seen.headers["authorization"], "Bearer for-the-upstream");
    assert!(!seen.headers.contains_key("x-replyd-key"));
    // Tenant isolation: b does not see a's gateway job.
    s.client(Some("client-b-key"))
        .get(&format!("/v1/jobs/{id}"))
        .await
        .problem(404);
}

#[tokio::test]
async fn an_http_queue_posts_each_input_and_keeps_the_answer() {
    let (up, state) = upstream().await;
    let config = format!(
        "[queues.render]\nexecutor = \"http\"\nurl = \"http://{up}/render\"\n\
         [queues.broken]\nexecutor = \"http\"\nurl = \"http://{up}/missing\"\nmax_attempts = 3\n"
    );
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let id = c.submit("render", json!({"pages": 2})).await;
    assert_eq!(finished(&c, &id).await["state"], "succeeded");
    let seen = state.seen.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/render")
    );
    assert_eq!(seen.headers["content-type"], "application/json");
    let r = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"rendered": {"pages": 2}}));
    let id = c.submit("broken", json!({})).await;
    let job = finished(&c, &id).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempt"], 1, "a POST is not retried by default");
    assert_eq!(job["error"]["status"], 404);
}

#[test]
fn routes_are_checked() {
    for (route, says) in [
        (
            "method = \"POST\"\npath = \"/v1/x\"\nupstream = \"http://127.0.0.1:1\"",
            "replyd's own",
        ),
        (
            "method = \"POST\"\npath = \"reports\"\nupstream = \"http://127.0.0.1:1\"",
            "path prefix",
        ),
        (
            "method = \"POST\"\npath = \"/r\"\nupstream = \"ftp://127.0.0.1:1\"",
            "upstream must be",
        ),
        (
            "method = \"P O\"\npath = \"/r\"\nupstream = \"http://127.0.0.1:1\"",
            "method",
        ),
        (
            "method = \"POST\"\npath = \"/r\"\nupstream = \"http://127.0.0.1:1\"\nretry = \"sometimes\"",
            "retry",
        ),
    ] {
        let text = format!("[[routes]]\n{route}\n");
        let e = match replyd_server::Config::from_toml(&text) {
            Err(e) => e,
            Ok(mut c) => c.validate().unwrap_err().to_string(),
        };
        assert!(e.contains(says), "{route}: {e}");
    }
    let twice = "[[routes]]\nmethod = \"POST\"\npath = \"/r\"\nupstream = \"http://127.0.0.1:1\"\n"
        .repeat(2);
    let e = replyd_server::Config::from_toml(&twice)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("listed twice"), "{e}");
}

/// Sends one request exactly as written (no client normalises its path)
/// and returns the status code.
async fn raw_status(addr: SocketAddr, method: &str, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let head = String::from_utf8_lossy(&out);
    head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0)
}

/// Issue 12, item 1: a route's requests reach the upstream only under its
/// base path, whatever dot-segments or encoded slashes they carry; those
/// are answered 400 (or 404, when no route takes them) and never sent.
#[tokio::test]
async fn dot_segments_and_encoded_slashes_never_leave_the_route() {
    let (up, state) = upstream().await;
    let config = format!(
        "[[routes]]\nmethod = \"*\"\npath = \"/reports\"\nupstream = \"http://{up}/api\"\nretry = \"never\"\n"
    );
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    for target in [
        "/reports/../admin",
        "/reports/%2e%2e/admin",
        "/reports/.%2E/.%2e/secret",
        "/reports/%2E%2E/%2e%2e/secret",
        "/reports/./../admin",
        "/reports/..%2fadmin",
        "/reports/..%2Fadmin",
        "/reports/..%5cadmin",
        "/reports/%252e%252e/admin",
        "/reports/x/../../admin",
        "/reports%2f..%2fadmin",
        "/reports%2F..%2Fadmin",
    ] {
        let status = raw_status(s.addr, "POST", target).await;
        assert!(
            status == 400 || status == 404,
            "{target}: answered {status}"
        );
    }
    // An ordinary request does go on, under the base path.
    let status = raw_status(s.addr, "POST", "/reports/monthly").await;
    assert_eq!(status, 202);
    let deadline = tokio::time::Instant::now() + WAIT;
    while state.seen.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen: Vec<String> = state
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(seen, ["/api/reports/monthly"], "only the ordinary request");
}

/// A streaming route passes a streamed answer through as it arrives, and
/// keeps it as the job's output and result; an answer that does not
/// stream is replayed whole; `Prefer: respond-async` is the 202.
#[tokio::test]
async fn a_streaming_route_passes_the_answer_through_and_keeps_it_as_output() {
    let (up, state) = upstream().await;
    let config = route("POST", "/llm", up, "stream = true\nstrip_prefix = true");
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let r = c
        .send(M::POST, "/llm/stream", &[], Some(b"{}".to_vec()))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(String::from_utf8_lossy(&r.body), all_events());
    let id = r.header("replyd-job-id").expect("the answer names its job");
    assert_eq!(
        r.header("content-location"),
        Some(format!("/v1/jobs/{id}/output"))
    );
    assert_eq!(
        state.seen.lock().unwrap()[0].path,
        "/stream",
        "the prefix went"
    );
    let job = finished(&c, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let out = c.get(&format!("/v1/jobs/{id}/output?offset=-1")).await;
    assert_eq!(String::from_utf8_lossy(&out.body), all_events());
    assert_eq!(out.header("stream-closed").as_deref(), Some("true"));
    let res = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(String::from_utf8_lossy(&res.body), all_events());
    // An answer that does not stream: replayed whole, its status kept.
    let r = c.send(M::POST, "/llm/reports/x", &[], Some(vec![])).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(&r.body[..], b"month,total\n,42\n");
    assert!(r.header("replyd-job-id").is_some());
    // A failure: the upstream's status.
    let r = c.send(M::POST, "/llm/missing", &[], Some(vec![])).await;
    r.problem(404);
    // The 202 on request.
    let r = c
        .send(
            M::POST,
            "/llm/stream",
            &[("prefer", "respond-async")],
            Some(vec![]),
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(r.header("location").is_some());
}

/// An attempt that streamed output and then broke off is not tried again
/// (its output cannot be taken back), whatever the route allows; the
/// output keeps what came.
#[tokio::test]
async fn a_stream_that_breaks_off_fails_without_another_attempt() {
    let (up, _) = upstream().await;
    let config = route(
        "POST",
        "/llm",
        up,
        "strip_prefix = true\nretry = \"always\"\nmax_attempts = 3",
    );
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let r = c
        .send(M::POST, "/llm/stream-break", &[], Some(vec![]))
        .await;
    assert_eq!(r.status, 202);
    let id = id_of(&r);
    let job = finished(&c, &id).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempt"], 1, "not tried again: {job}");
    // What came before the break (the last events before it may have been
    // lost with the connection).
    let out = c.get(&format!("/v1/jobs/{id}/output?offset=-1")).await;
    let got = String::from_utf8_lossy(&out.body).to_string();
    assert!(got.starts_with(&event(0)), "{got}");
    let half: String = (0..EVENTS / 2).map(event).collect();
    assert!(half.starts_with(&got), "{got}");
}

/// A streamed answer larger than `limits.max_result` succeeds: its output
/// is its result.
#[tokio::test]
async fn a_streamed_answer_over_max_result_has_its_output_as_result() {
    let (up, _) = upstream().await;
    let config = format!(
        "{}\n[limits]\nmax_result = 1024\n",
        route("POST", "/llm", up, "strip_prefix = true")
    );
    let Some(s) = TestServer::start(&config).await else {
        return;
    };
    let c = s.client(None);
    let r = c.send(M::POST, "/llm/stream", &[], Some(vec![])).await;
    let id = id_of(&r);
    let job = finished(&c, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(all_events().len() > 1024);
    let res = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(res.status, 200);
    assert_eq!(String::from_utf8_lossy(&res.body), all_events());
}
