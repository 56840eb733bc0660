//! Issue 12, item 5: replyd's own outbound calls never follow proxy
//! settings from the environment. A proxy resolves and connects by itself,
//! so a `HTTP_PROXY` would carry a webhook past the SSRF guard (to a name
//! that resolves to a refused address) and an upstream call anywhere.
//!
//! The real binary runs with every proxy variable pointing at a local
//! listener that counts connections; a webhook and an `executor = "http"`
//! job must reach their (loopback, allow-listed) receivers directly, and
//! the "proxy" must see nothing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::{Server, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A listener that counts connections and answers each with 200.
async fn counter() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    )
                    .await;
            });
        }
    });
    (format!("http://{addr}"), n)
}

#[tokio::test]
async fn proxy_variables_in_the_environment_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, proxied) = counter().await;
    let (receiver, received) = counter().await;
    let (upstream, answered) = counter().await;
    let config = format!(
        r#"
[webhooks]
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
allow_networks = ["127.0.0.0/8"]
retry_schedule = [0]
[queues.up]
executor = "http"
url = "{upstream}/render"
max_attempts = 1
"#
    );
    let env = [
        ("HTTP_PROXY", proxy.as_str()),
        ("http_proxy", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
        ("https_proxy", proxy.as_str()),
        ("ALL_PROXY", proxy.as_str()),
        ("all_proxy", proxy.as_str()),
        ("NO_PROXY", ""),
        ("no_proxy", ""),
    ];
    let server = Server::start_env(dir.path(), Some(&config), &env).await;
    let c = http();
    let job: serde_json::Value = c
        .post(format!("{}/v1/jobs", server.url))
        .json(&serde_json::json!({
            "queue": "up",
            "input": {"n": 1},
            "webhook": {"url": format!("{receiver}/hook")}
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "queued", "{job}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::SeqCst) == 0 || answered.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "receiver saw {}, upstream {}, the proxy {}; log:\n{}",
            received.load(Ordering::SeqCst),
            answered.load(Ordering::SeqCst),
            proxied.load(Ordering::SeqCst),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(proxied.load(Ordering::SeqCst), 0, "the proxy was used");
}
