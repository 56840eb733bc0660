//! Issue 12: what a stranger on the internet can make replyd hold, and for
//! how long. Each case is an attack tried on 127.0.0.1 against a real
//! server: it must be bounded, refused clearly, or both.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::TestServer;
use common::streams::{ws_connect, ws_recv, ws_send};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BACKEND: common::Backend = common::Backend::Sqlite;

/// Sends `head` (and no more), then reads whatever comes back until the
/// server closes or `within` passes.
async fn send_and_read(addr: SocketAddr, head: &[u8], within: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    out
}

/// Item 4: metrics labels never carry what a client sent. A method is one
/// of HTTP's or `other`, however long or odd.
#[tokio::test]
async fn request_metrics_keep_client_strings_out_of_their_labels() {
    let Some(s) = TestServer::start("").await else {
        return;
    };
    let c = s.client(None);
    let before = c.get("/metrics").await.body.len();
    let method = "X".repeat(20_000);
    for i in 0..20 {
        let head = format!("{method}{i} /v1/jobs HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        send_and_read(s.addr, head.as_bytes(), Duration::from_secs(5)).await;
    }
    let m = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    assert!(!m.contains("XXXX"), "a client's method became a label");
    assert!(m.contains("method=\"other\""), "{m}");
    assert!(
        m.len() < before + 20_000,
        "/metrics grew from {before} to {} bytes",
        m.len()
    );
}

/// Item 4: a WebSocket `ref` is kept as long as its subscription lasts, so
/// it must be small: a large one is refused with an error frame and no
/// subscription is made.
#[tokio::test]
async fn a_websocket_ref_is_small_or_refused() {
    let Some(s) = TestServer::start("[queues.work]\n").await else {
        return;
    };
    let mut ws = ws_connect(s.addr, None).await;
    let big = "r".repeat(200_000);
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "ref": big, "all": true}),
    )
    .await;
    let e = ws_recv(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["error"]["status"], 400);
    assert!(e["ref"].is_null());
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "ref": {"a": [1, 2]}, "all": true}),
    )
    .await;
    assert_eq!(ws_recv(&mut ws).await["type"], "error");
    ws_send(
        &mut ws,
        json!({"type": "unsubscribe", "ref": 1, "all": true}),
    )
    .await;
    let e = ws_recv(&mut ws).await;
    assert_eq!(e["error"]["status"], 404, "no subscription was made: {e}");
    let fits = "r".repeat(128);
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "ref": fits, "all": true}),
    )
    .await;
    let ack = ws_recv(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["ref"].as_str()),
        (Some("ack"), Some(fits.as_str()))
    );
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "ref": 7, "all": true, "queue": "q".repeat(65)}),
    )
    .await;
    assert_eq!(ws_recv(&mut ws).await["error"]["status"], 400);
}

/// Item 4: a body that trickles in is cut off with 408 at
/// `limits.body_timeout` after the headers, not held open.
#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408() {
    let Some(s) = TestServer::start("[limits]\nbody_timeout = 0.5\n[queues.work]\n").await else {
        return;
    };
    let start = Instant::now();
    let out = send_and_read(
        s.addr,
        b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"queue\":",
        Duration::from_secs(10),
    )
    .await;
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(took < Duration::from_secs(5), "held for {took:?}");
    // A body that comes in time is taken.
    let c = s.client(None);
    assert_eq!(
        c.post("/v1/jobs", json!({"queue": "work"})).await.status,
        202
    );
}
