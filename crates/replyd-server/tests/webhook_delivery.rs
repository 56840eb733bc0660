//! Webhook delivery attempts against a real receiver on 127.0.0.1, and
//! their signatures checked by the official Standard Webhooks library
//! (`pip install standardwebhooks`; without it that part skips, saying so,
//! unless `REPLYD_REQUIRE_SERVICES=1`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use replyd_server::outbox::Verdict;
use replyd_server::webhooks::deliver::{Deliverer, Message};
use replyd_server::webhooks::signing::Secret;
use replyd_server::webhooks::ssrf::{Guard, Resolver, SystemResolver};

#[derive(Default)]
struct Received {
    hits: AtomicUsize,
    last: Mutex<Option<(HashMap<String, String>, Bytes)>>,
}

async fn receiver() -> (SocketAddr, Arc<Received>) {
    let seen = Arc::new(Received::default());
    let s = seen.clone();
    let record = move |headers: HeaderMap, body: Bytes| {
        let s = s.clone();
        async move {
            s.hits.fetch_add(1, Ordering::SeqCst);
            let h = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            *s.last.lock().unwrap() = Some((h, body));
            StatusCode::NO_CONTENT
        }
    };
    let s2 = seen.clone();
    let app = Router::new()
        .route("/ok", post(record))
        .route(
            "/fail",
            post(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "7")],
                    "x".repeat(100_000),
                )
                    .into_response()
            }),
        )
        .route("/gone", post(|| async { StatusCode::GONE }))
        .route(
            "/redirect",
            post(|| async { (StatusCode::FOUND, [("location", "/ok")]).into_response() }),
        )
        .route(
            "/slow",
            post(move || {
                let s = s2.clone();
                async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    StatusCode::OK
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// Names the test decides; never the network's.
struct Table(HashMap<&'static str, IpAddr>);

#[async_trait]
impl Resolver for Table {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(self
            .0
            .get(host)
            .map(|ip| vec![SocketAddr::new(*ip, port)])
            .unwrap_or_default())
    }
}

fn loopback_allowed() -> Guard {
    Guard::new(vec!["127.0.0.0/8".parse().unwrap()])
}

fn deliverer(guard: Guard, resolver: Arc<dyn Resolver>) -> Deliverer {
    Deliverer::new(guard, resolver, Duration::from_millis(700), 512, None).unwrap()
}

fn msg() -> Message {
    Message {
        id: "msg_2kP1cQ0dTkw1".into(),
        body: Bytes::from_static(
            br#"{"type":"job.succeeded","data":{"id":"j1","state":"succeeded"}}"#,
        ),
        jwt: None,
        trace: None,
    }
}

/// Runs the official verifier on a delivery: Ok(true) if it accepts,
/// Ok(false) if it refuses, Err(why) if it cannot run.
fn official_verify(
    secret: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> Result<bool, String> {
    let script = r#"
import json, sys
try:
    from standardwebhooks.webhooks import Webhook
except ImportError:
    sys.exit(3)
d = json.load(sys.stdin)
try:
    Webhook(d["secret"]).verify(d["body"], d["headers"])
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(1)
"#;
    let input = serde_json::json!({
        "secret": secret,
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    });
    verify_in_python(
        script,
        &input,
        "the standardwebhooks package is not installed (pip install standardwebhooks)",
    )
}

/// Runs a Python verifier `script` on `input` (its stdin, as JSON). The
/// script exits 0 when it accepts, 1 when it refuses, and 3 when its
/// package is missing (`missing` says which). Err(why) when it cannot run.
fn verify_in_python(
    script: &str,
    input: &serde_json::Value,
    missing: &str,
) -> Result<bool, String> {
    let mut child = std::process::Command::new(replyd_testkit::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    match child.wait_with_output().unwrap().status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        Some(3) => Err(missing.to_string()),
        other => Err(format!("the verifier failed: {other:?}")),
    }
}

#[tokio::test]
async fn a_delivery_is_signed_so_the_official_library_accepts_it() {
    let (addr, seen) = receiver().await;
    let d = deliverer(loopback_allowed(), Arc::new(SystemResolver));
    let (old, new) = (Secret::generate(), Secret::generate());
    let now = chrono::Utc::now();
    let a = d
        .attempt(
            &format!("http://{addr}/ok"),
            &msg(),
            &[old.clone(), new.clone()],
            &[],
            now,
        )
        .await;
    assert_eq!(a.verdict, Verdict::Delivered, "{a:?}");
    assert_eq!(a.status, Some(204));
    let (headers, body) = seen.last.lock().unwrap().clone().unwrap();
    assert_eq!(headers["webhook-id"], "msg_2kP1cQ0dTkw1");
    assert_eq!(headers["webhook-timestamp"], now.timestamp().to_string());
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers["webhook-signature"].split(' ').count(),
        2,
        "rotation: both sign"
    );
    assert_eq!(body, msg().body);

    let verdicts = (|| -> Result<Vec<bool>, String> {
        Ok(vec![
            // Either secret of a rotation verifies.
            official_verify(&old.expose(), &headers, &body)?,
            official_verify(&new.expose(), &headers, &body)?,
            // Another secret, a tampered body, a stale timestamp: refused.
            official_verify(&Secret::generate().expose(), &headers, &body)?,
            official_verify(&new.expose(), &headers, b"{\"type\":\"job.failed\"}")?,
        ])
    })();
    let verdicts = match verdicts {
        Ok(v) => v,
        Err(why) => {
            replyd_testkit::skip(&format!("the official verifier: {why}"), "run scripts/test");
            return;
        }
    };
    assert_eq!(verdicts, [true, true, false, false]);
    // Signed ten minutes ago: outside the library's tolerance.
    let stale = now - chrono::Duration::minutes(10);
    d.attempt(
        &format!("http://{addr}/ok"),
        &msg(),
        std::slice::from_ref(&new),
        &[],
        stale,
    )
    .await;
    let (headers, body) = seen.last.lock().unwrap().clone().unwrap();
    assert_eq!(official_verify(&new.expose(), &headers, &body), Ok(false));
}

#[tokio::test]
async fn failures_gone_redirects_and_timeouts() {
    let (addr, seen) = receiver().await;
    let d = deliverer(loopback_allowed(), Arc::new(SystemResolver));
    let s = [Secret::generate()];
    let now = chrono::Utc::now();
    let a = d
        .attempt(&format!("http://{addr}/fail"), &msg(), &s, &[], now)
        .await;
    assert_eq!(a.verdict, Verdict::Retry);
    assert_eq!(a.status, Some(503));
    assert_eq!(a.retry_after, Some(Duration::from_secs(7)));
    let err = a.error.unwrap();
    assert!(
        err.len() < 600,
        "the body read is capped: {} bytes",
        err.len()
    );

    let a = d
        .attempt(&format!("http://{addr}/gone"), &msg(), &s, &[], now)
        .await;
    assert_eq!(a.verdict, Verdict::Gone);

    let before = seen.hits.load(Ordering::SeqCst);
    let a = d
        .attempt(&format!("http://{addr}/redirect"), &msg(), &s, &[], now)
        .await;
    assert_eq!(a.verdict, Verdict::Retry, "a 3xx is a failure");
    assert_eq!(a.status, Some(302));
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        before,
        "the redirect was not followed"
    );

    let a = d
        .attempt(&format!("http://{addr}/slow"), &msg(), &s, &[], now)
        .await;
    assert_eq!(a.verdict, Verdict::Retry);
    assert_eq!(a.status, None);
    assert!(a.error.unwrap().contains("timed out"));

    // Nobody listening: retry later.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let a = d
        .attempt(&format!("http://{closed}/ok"), &msg(), &s, &[], now)
        .await;
    assert_eq!(a.verdict, Verdict::Retry);
}

#[tokio::test]
async fn the_guard_stops_a_delivery_before_any_connection() {
    let (addr, seen) = receiver().await;
    let s = [Secret::generate()];
    let now = chrono::Utc::now();
    // Loopback not allowed: an IP literal is refused before sending.
    let d = deliverer(Guard::default(), Arc::new(SystemResolver));
    let a = d
        .attempt(&format!("http://{addr}/ok"), &msg(), &s, &[], now)
        .await;
    assert_eq!(a.verdict, Verdict::Refused, "{a:?}");
    // A name that resolves to loopback is refused inside the resolver:
    // the client never connects.
    let table = Table(HashMap::from([("hooks.test", addr.ip())]));
    let d = deliverer(Guard::default(), Arc::new(table));
    let a = d
        .attempt(
            &format!("http://hooks.test:{}/ok", addr.port()),
            &msg(),
            &s,
            &[],
            now,
        )
        .await;
    assert_eq!(a.verdict, Verdict::Refused, "{a:?}");
    assert_eq!(
        seen.hits.load(Ordering::SeqCst),
        0,
        "no request reached the receiver"
    );
    // With loopback allowed, the same name is delivered to the vetted
    // address the resolver gave.
    let table = Table(HashMap::from([("hooks.test", addr.ip())]));
    let d = deliverer(loopback_allowed(), Arc::new(table));
    let a = d
        .attempt(
            &format!("http://hooks.test:{}/ok", addr.port()),
            &msg(),
            &s,
            &[],
            now,
        )
        .await;
    assert_eq!(a.verdict, Verdict::Delivered, "{a:?}");
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1);
}

/// Verifies an Ed25519 signature with Python's `cryptography` package:
/// Ok(true) accepted, Ok(false) refused, Err(why) cannot run.
fn ed25519_verify(public_b64: &str, sig_b64: &str, content: &[u8]) -> Result<bool, String> {
    let script = r#"
import base64, json, sys
try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:
    sys.exit(3)
d = json.load(sys.stdin)
key = Ed25519PublicKey.from_public_bytes(base64.b64decode(d["public"]))
try:
    key.verify(base64.b64decode(d["sig"]), d["content"].encode())
except Exception:
    sys.exit(1)
"#;
    let input = serde_json::json!({
        "public": public_b64,
        "sig": sig_b64,
        "content": String::from_utf8_lossy(content),
    });
    verify_in_python(script, &input, "the cryptography package is not installed")
}

#[tokio::test]
async fn v1a_ed25519_signatures_verify_with_the_public_key() {
    use base64::Engine;
    use replyd_server::webhooks::signing::SigningKey;
    let (addr, seen) = receiver().await;
    let d = deliverer(loopback_allowed(), Arc::new(SystemResolver));
    let seed: [u8; 32] = rand::random();
    let key: SigningKey = format!(
        "whsk_{}",
        base64::engine::general_purpose::STANDARD.encode(seed)
    )
    .parse()
    .unwrap();
    let public = key.public_key();
    let secret = Secret::generate();
    let now = chrono::Utc::now();
    let a = d
        .attempt(
            &format!("http://{addr}/ok"),
            &msg(),
            std::slice::from_ref(&secret),
            &[Arc::new(key)],
            now,
        )
        .await;
    assert_eq!(a.verdict, Verdict::Delivered);
    let (headers, body) = seen.last.lock().unwrap().clone().unwrap();
    let sigs: Vec<&str> = headers["webhook-signature"].split(' ').collect();
    assert_eq!(sigs.len(), 2);
    assert!(
        sigs[0].starts_with("v1,") && sigs[1].starts_with("v1a,"),
        "{sigs:?}"
    );
    let content = format!(
        "{}.{}.{}",
        headers["webhook-id"],
        headers["webhook-timestamp"],
        String::from_utf8_lossy(&body)
    );
    let pub_b64 = public.strip_prefix("whpk_").unwrap();
    let sig_b64 = sigs[1].strip_prefix("v1a,").unwrap();
    let checks = (|| -> Result<(bool, bool, bool), String> {
        Ok((
            ed25519_verify(pub_b64, sig_b64, content.as_bytes())?,
            ed25519_verify(pub_b64, sig_b64, b"msg_x.1.{}")?,
            // The official library still verifies the v1 signature beside it.
            official_verify(&secret.expose(), &headers, &body)?,
        ))
    })();
    match checks {
        Ok(v) => assert_eq!(v, (true, false, true)),
        Err(why) => {
            replyd_testkit::skip(
                &format!("the external verifiers: {why}"),
                "run scripts/test",
            );
        }
    }
}

/// A proxy the operator configured (`webhooks.proxy`) carries deliveries,
/// and a name is still vetted before it is handed over (the proxy would
/// resolve it): a name that resolves to a refused address never reaches
/// the proxy. The "proxy" is a local listener; nothing leaves 127.0.0.1.
#[tokio::test]
async fn a_configured_proxy_carries_deliveries_and_names_are_vetted_first() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = asked.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = proxy.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                seen.lock().unwrap().push(line);
                let _ = s
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let table = Table(HashMap::from([
        ("hooks.test", "93.184.215.14".parse().unwrap()),
        ("inside.test", "10.0.0.7".parse().unwrap()),
    ]));
    let d = Deliverer::new(
        Guard::default(),
        Arc::new(table),
        Duration::from_secs(2),
        512,
        Some(&format!("http://{proxy_addr}")),
    )
    .unwrap();
    let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
    let now = chrono::Utc::now();
    let a = d
        .attempt(
            "http://inside.test/hook",
            &msg(),
            std::slice::from_ref(&secret),
            &[],
            now,
        )
        .await;
    assert_eq!(a.verdict, Verdict::Refused, "{:?}", a.error);
    assert!(asked.lock().unwrap().is_empty(), "the proxy was asked");
    let a = d
        .attempt("http://hooks.test/hook", &msg(), &[secret], &[], now)
        .await;
    assert_eq!(a.verdict, Verdict::Delivered, "{:?}", a.error);
    assert_eq!(
        *asked.lock().unwrap(),
        ["POST http://hooks.test/hook HTTP/1.1"]
    );
}
