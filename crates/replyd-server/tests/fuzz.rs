//! Property test: random bodies and headers sent to the submit and worker
//! endpoints, and random resume ids and queries sent to the event streams,
//! never get a 5xx, never panic the server, and every error is a
//! problem+json.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use replyd_core::Clock;
use replyd_server::{Config, Server};
use tower::ServiceExt;

struct Harness {
    rt: tokio::runtime::Runtime,
    router: replyd_server::http::front::Api,
    job: String,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_toml(
            "[limits]\nmax_body = 4096\nmax_result = 8192\n[queues.work]\nexecutor = \"pull\"\n",
        )
        .unwrap();
        config.storage.sqlite = dir.path().join("fuzz.db");
        config.validate().unwrap();
        let (router, job) = rt.block_on(async {
            let server = Server::start(config, Clock::system()).await.unwrap();
            let router = server.router();
            // A running job for the worker endpoints to aim at.
            let r = send(
                &router,
                "POST",
                "/v1/jobs",
                vec![],
                br#"{"queue":"work"}"#.to_vec(),
            )
            .await
            .unwrap();
            assert_eq!(r.0, StatusCode::ACCEPTED);
            let job: serde_json::Value = serde_json::from_slice(&r.2).unwrap();
            let r = send(
                &router,
                "POST",
                "/v1/queues/work/lease",
                vec![],
                b"{}".to_vec(),
            )
            .await
            .unwrap();
            assert_eq!(r.0, StatusCode::OK);
            std::mem::forget(server);
            (router, job["id"].as_str().unwrap().to_string())
        });
        Harness {
            rt,
            router,
            job,
            _dir: dir,
        }
    })
}

async fn send(
    router: &replyd_server::http::front::Api,
    method: &str,
    path: &str,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
) -> Option<(StatusCode, Option<String>, bytes::Bytes)> {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    // The http crate refuses some header bytes before they could reach us.
    let req = req.body(Body::from(body)).ok()?;
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Some((status, ct, body))
}

/// JSON-ish bodies: valid submissions with random fields, random JSON, and
/// random bytes.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    let json = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("queue".to_string()),
                    Just("input".to_string()),
                    Just("lease_id".to_string()),
                    Just("max_attempts".to_string()),
                    Just("timeout".to_string()),
                    Just("ttl".to_string()),
                    Just("percent".to_string()),
                    Just("result".to_string()),
                    Just("error".to_string()),
                    Just("retry".to_string()),
                    Just("batch".to_string()),
                    Just("lease".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        json.prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..300),
        (0usize..6000).prop_map(
            |n| format!(r#"{{"queue":"work","input":"{}"}}"#, "a".repeat(n)).into_bytes()
        ),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        Just("content-type".to_string()),
        Just("idempotency-key".to_string()),
        Just("authorization".to_string()),
        Just("if-none-match".to_string()),
        Just("replyd-lease-id".to_string()),
        Just("prefer".to_string()),
    ];
    let value = prop_oneof![
        Just(b"application/json".to_vec()),
        Just(b"text/plain".to_vec()),
        Just(b"application/problem+json; charset=utf-8".to_vec()),
        Just(b"Bearer jt_xyz".to_vec()),
        Just(b"wait=0".to_vec()),
        Just(b"wait=-1".to_vec()),
        Just(b"\"3\"".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec((name, value), 0..4).prop_map(|hs| {
        // Keep held requests short: a random `wait=N` must not stall the run.
        hs.into_iter()
            .filter(|(k, v)| {
                k != "prefer"
                    || !String::from_utf8_lossy(v).contains("wait=")
                    || v == b"wait=0"
                    || v == b"wait=-1"
            })
            .collect()
    })
}

fn paths(job: &str) -> impl Strategy<Value = String> {
    let job = job.to_string();
    prop_oneof![
        Just("/v1/jobs".to_string()),
        Just("/v1/queues/work/lease".to_string()),
        Just("/v1/queues/nope/lease".to_string()),
        Just(format!("/v1/jobs/{job}/heartbeat")),
        Just(format!("/v1/jobs/{job}/progress")),
        Just(format!("/v1/jobs/{job}/complete")),
        Just(format!("/v1/jobs/{job}/fail")),
        Just(format!("/v1/jobs/{job}/cancel")),
        "[a-z0-9-]{0,40}".prop_map(|id| format!("/v1/jobs/{id}/complete")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn random_requests_never_get_a_5xx(path in paths(&harness().job), hs in headers(), body in bodies()) {
        let h = harness();
        let sent = h.rt.block_on(send(&h.router, "POST", &path, hs, body));
        prop_assume!(sent.is_some());
        let (status, ct, resp) = sent.unwrap();
        prop_assert!(!status.is_server_error(), "{path}: {status} {}", String::from_utf8_lossy(&resp));
        if status.is_client_error() {
            prop_assert_eq!(ct.as_deref(), Some("application/problem+json"), "{} {}", path, status);
        }
    }

    #[test]
    fn random_stream_requests_never_get_a_5xx(
        path in stream_paths(&harness().job),
        last in prop::option::of(prop_oneof![
            "[0-9]{0,22}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..30),
        ]),
    ) {
        let h = harness();
        let headers = last.map(|v| vec![("last-event-id".to_string(), v)]).unwrap_or_default();
        let sent = h.rt.block_on(head_of(&h.router, &path, headers));
        prop_assume!(sent.is_some());
        let (status, ct) = sent.unwrap();
        prop_assert!(!status.is_server_error(), "{path}: {status}");
        if status.is_client_error() {
            prop_assert_eq!(ct.as_deref(), Some("application/problem+json"), "{} {}", path, status);
        } else {
            prop_assert!(status == StatusCode::OK || status == StatusCode::NO_CONTENT, "{path}: {status}");
        }
    }
}

fn stream_paths(job: &str) -> impl Strategy<Value = String> {
    let job = job.to_string();
    let query = "[a-z_=&%0-9.-]{0,30}";
    prop_oneof![
        query.prop_map(move |q| format!("/v1/jobs/{job}/events?{q}")),
        query.prop_map(|q| format!("/v1/events?{q}")),
        "[0-9]{0,25}".prop_map(|n| format!("/v1/events?last_event_id={n}")),
        "[a-z0-9-]{0,40}".prop_map(|id| format!("/v1/jobs/{id}/events")),
    ]
}

/// The status and content type of a GET, without reading the body (a live
/// stream has no end).
async fn head_of(
    router: &replyd_server::http::front::Api,
    path: &str,
    headers: Vec<(String, Vec<u8>)>,
) -> Option<(StatusCode, Option<String>)> {
    let mut req = Request::builder().method("GET").uri(path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req.body(Body::empty()).ok()?;
    let res = router.clone().oneshot(req).await.unwrap();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string());
    Some((res.status(), ct))
}
