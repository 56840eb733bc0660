//! A webhook receiver on 127.0.0.1 (which the test servers allow-list)
//! that keeps every request and answers by path: `/slow` after 1.5 s,
//! `/gone` 410, `/flaky` 500 twice then 200, `/down` 500 while `down` is
//! set; anything else 200.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use serde_json::Value;

#[derive(Default)]
pub struct Receiver {
    /// (path, headers, body) of every request, in arrival order.
    pub got: Mutex<Vec<(String, HeaderMap, Bytes)>>,
    pub flaky_failures: AtomicUsize,
    pub down: AtomicBool,
}

/// Starts a receiver: its base URL and what it keeps.
pub async fn receiver() -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver::default());
    async fn record(
        State(r): State<Arc<Receiver>>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let path = uri.path().to_string();
        r.got.lock().unwrap().push((path.clone(), headers, body));
        if path == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        match path.as_str() {
            "/gone" => StatusCode::GONE,
            "/flaky" if r.flaky_failures.fetch_add(1, Ordering::SeqCst) < 2 => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            "/down" if r.down.load(Ordering::SeqCst) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        }
    }
    let app = Router::new()
        .route("/{*path}", post(record))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, r)
}

/// Waits (at most 15 s) until the receiver has `n` requests on `path`:
/// their headers and JSON bodies.
pub async fn received(r: &Receiver, path: &str, n: usize) -> Vec<(HeaderMap, Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<(HeaderMap, Value)> = r
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, h, b)| (h.clone(), serde_json::from_slice(b).unwrap()))
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: {} of {n} requests arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that a request is signed, Standard Webhooks `v1`, with this
/// `whsec_` secret alone: over its `webhook-id`, `webhook-timestamp` and
/// exact body.
pub fn assert_signed(secret: &str, h: &HeaderMap, body: &[u8], what: &str) {
    let secret: replyd_server::webhooks::signing::Secret = secret.parse().unwrap();
    let ts: i64 = h["webhook-timestamp"].to_str().unwrap().parse().unwrap();
    assert_eq!(
        h["webhook-signature"].to_str().unwrap(),
        secret.sign(h["webhook-id"].to_str().unwrap(), ts, body),
        "{what}"
    );
}
