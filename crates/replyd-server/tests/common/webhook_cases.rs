// Webhook cases (API.md §2) shared by the `webhooks` test binaries (one per
// store); included with `include!`, so `BACKEND` and `common` come from
// the includer. The receiver runs on 127.0.0.1, which the servers here
// allow-list.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use common::TestServer;
use common::hooks::{Receiver, assert_signed, received, receiver};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config() -> String {
    format!(
        "[webhooks]\nsecret = \"{SECRET}\"\nallow_networks = [\"127.0.0.0/8\"]\n\
         retry_schedule = [0, 0.2, 0.2, 0.2]\ntimeout = 2\n[queues.work]\n"
    )
}

async fn submit_hooked(c: &common::Client, url: &str, events: Option<Value>) -> String {
    let mut hook = json!({"url": url});
    if let Some(e) = events {
        hook["events"] = e;
    }
    let r = c
        .post("/v1/jobs", json!({"queue": "work", "input": {}, "webhook": hook}))
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_completed_job_is_delivered_signed_with_its_result() {
    let Some(s) = TestServer::start(&config()).await else { return };
    let (base, r) = receiver().await;
    let c = s.client(None);
    let id = submit_hooked(&c, &format!("{base}/ok"), Some(json!(["job.started"]))).await;
    let (_, lease) = c.lease("work").await;
    c.complete(&id, &lease, json!({"pages": 3})).await;
    let got = received(&r, "/ok", 2).await;
    // In event order: started, then succeeded.
    assert_eq!(got[0].1["type"], "job.started");
    assert_eq!(got[1].1["type"], "job.succeeded");
    let data = &got[1].1["data"];
    assert_eq!(data["id"], id.as_str());
    assert_eq!(data["state"], "succeeded");
    assert_eq!(data["result"], json!({"pages": 3}), "a small JSON result rides inline");
    assert!(got[1].1["timestamp"].as_str().unwrap().ends_with('Z'));
    let h = &got[1].0;
    assert_eq!(h["content-type"], "application/json");
    let sig = h["webhook-signature"].to_str().unwrap();
    assert!(sig.starts_with("v1,"), "{sig}");
    // The signature is over id.timestamp.body with the configured secret.
    let body = r.got.lock().unwrap()[1].2.clone();
    assert_signed(SECRET, h, &body, "the server's secret");
    assert_ne!(got[0].0["webhook-id"], got[1].0["webhook-id"]);
}

#[tokio::test]
async fn failed_attempts_are_retried_with_the_same_id_and_410_stops() {
    let Some(s) = TestServer::start(&config()).await else { return };
    let (base, r) = receiver().await;
    let c = s.client(None);
    let flaky = submit_hooked(&c, &format!("{base}/flaky"), None).await;
    let gone = submit_hooked(&c, &format!("{base}/gone"), None).await;
    for id in [&flaky, &gone] {
        let r = c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
        assert_eq!(r.status, 200);
    }
    // Two 500s, then a 200: three attempts of one delivery, one id.
    let got = received(&r, "/flaky", 3).await;
    let ids: Vec<_> = got.iter().map(|(h, _)| h["webhook-id"].clone()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(got[0].1["type"], "job.canceled");
    // 410: one attempt, never again.
    received(&r, "/gone", 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let again = r.got.lock().unwrap().iter().filter(|(p, _, _)| p == "/gone").count();
    assert_eq!(again, 1, "410 Gone stops the retries");
    let flaky_total = r.got.lock().unwrap().iter().filter(|(p, _, _)| p == "/flaky").count();
    assert_eq!(flaky_total, 3, "delivered: no more attempts");
}

#[tokio::test]
async fn unsafe_or_unconfigured_webhooks_are_refused_at_submit() {
    let Some(s) = TestServer::start(
        &format!("[webhooks]\nsecret = \"{SECRET}\"\n[queues.work]\n"),
    )
    .await
    else {
        return;
    };
    let c = s.client(None);
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://2130706433/",
        "ftp://example.com/",
        "not a url",
    ] {
        let r = c
            .post("/v1/jobs", json!({"queue": "work", "webhook": {"url": url}}))
            .await;
        let p = r.problem(400);
        assert!(p["detail"].as_str().unwrap().contains("webhook.url"), "{url}: {p}");
    }
    let r = c
        .post(
            "/v1/jobs",
            json!({"queue": "work", "webhook": {"url": "http://10.0.0.1/", "events": ["job.nope"]}}),
        )
        .await;
    r.problem(400);
    // No secret configured: webhooks are refused, saying why.
    let Some(s2) = TestServer::start("[queues.work]\n").await else { return };
    let r = s2
        .client(None)
        .post("/v1/jobs", json!({"queue": "work", "webhook": {"url": "https://hooks.example/"}}))
        .await;
    let p = r.problem(400);
    assert!(p["detail"].as_str().unwrap().contains("webhooks.secret"));
}

/// A delivery that succeeded is sent again only when that is asked for
/// (`?redeliver=true`); a plain retry is 409 and sends nothing.
#[tokio::test]
async fn a_delivered_webhook_is_sent_again_only_when_asked() {
    let Some(s) = TestServer::start(&config()).await else { return };
    let (base, r) = receiver().await;
    let c = s.client(None);
    let id = submit_hooked(&c, &format!("{base}/ok"), None).await;
    c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    received(&r, "/ok", 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let d = loop {
        let v = c.get(&format!("/v1/jobs/{id}/deliveries")).await.json();
        if v["deliveries"][0]["state"] == "delivered" {
            break v["deliveries"][0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "not delivered: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let d_id = d["id"].as_str().unwrap();
    let p = c
        .post(&format!("/v1/deliveries/{d_id}/retry"), json!({}))
        .await
        .problem(409);
    assert!(p["detail"].as_str().unwrap().contains("redeliver=true"), "{p}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received(&r, "/ok", 1).await.len(), 1, "nothing sent again");
    let again = c
        .post(&format!("/v1/deliveries/{d_id}/retry?redeliver=true"), json!({}))
        .await;
    assert_eq!(again.status, 202);
    let got = received(&r, "/ok", 2).await;
    assert_eq!(
        got[0].0["webhook-id"], got[1].0["webhook-id"],
        "the same message, for the receiver to dedupe"
    );
}

#[tokio::test]
async fn dead_letters_are_listed_with_their_attempts_and_replayed() {
    let Some(s) = TestServer::start(&config()).await else { return };
    let (base, r) = receiver().await;
    let c = s.client(None);
    let id = submit_hooked(&c, &format!("{base}/gone"), None).await;
    c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    received(&r, "/gone", 1).await;
    // The dead letter shows up once its attempt is recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let v = c.get("/v1/deliveries?state=dead").await.json();
        if v["deliveries"].as_array().unwrap().len() == 1 {
            break v["deliveries"][0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead["job_id"], id.as_str());
    assert_eq!(dead["event"], "job.canceled");
    assert_eq!(dead["attempts"], 1);
    assert!(dead["last_error"].as_str().unwrap().contains("410"));
    // The job's deliveries carry the attempt log.
    let log = c.get(&format!("/v1/jobs/{id}/deliveries")).await.json();
    let attempts = &log["deliveries"][0]["attempt_log"];
    assert_eq!(attempts.as_array().unwrap().len(), 1);
    assert_eq!(attempts[0]["status"], 410);
    assert!(attempts[0]["latency_ms"].is_u64());
    // Replay: attempted again (and, the receiver still saying 410, dead
    // again).
    let d_id = dead["id"].as_str().unwrap();
    let r2 = c.post(&format!("/v1/deliveries/{d_id}/retry"), json!({})).await;
    assert_eq!(r2.status, 202);
    assert_eq!(r2.json()["state"], "pending");
    received(&r, "/gone", 2).await;
    // Replay every dead letter of the tenant at once (it died again).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.get("/v1/deliveries?state=dead").await.json();
        if v["deliveries"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not dead again: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r3 = c.post("/v1/deliveries/retry", json!({"queue": "nope"})).await;
    assert_eq!(r3.json()["replayed"], 0);
    let r3 = c.post("/v1/deliveries/retry", json!({"queue": "work"})).await;
    assert_eq!(r3.status, 202);
    assert_eq!(r3.json()["replayed"], 1);
    received(&r, "/gone", 3).await;
    c.post("/v1/deliveries/retry", json!({"from": "2030-01-01T00:00:00Z", "to": "2029-01-01T00:00:00Z"}))
        .await
        .problem(400);
    c.post("/v1/deliveries/retry", json!({"since": 1})).await.problem(400);
    // Bad input.
    c.get("/v1/deliveries?state=lost").await.problem(400);
    c.get("/v1/deliveries?cursor=x").await.problem(400);
    c.post("/v1/deliveries/999999/retry", json!({})).await.problem(404);
    c.post("/v1/deliveries/abc/retry", json!({})).await.problem(404);
    assert!(
        c.get("/v1/deliveries?state=pending").await.json()["deliveries"]
            .as_array()
            .is_some()
    );
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_up_the_others() {
    let config = format!(
        "[webhooks]\nsecret = \"{SECRET}\"\nallow_networks = [\"127.0.0.0/8\"]\n\
         timeout = 5\nconcurrency = 4\nper_endpoint = 2\n[queues.work]\n"
    );
    let Some(s) = TestServer::start(&config).await else { return };
    // Two endpoints (limits count by scheme, host and port).
    let (slow_base, slow) = receiver().await;
    let (fast_base, fast) = receiver().await;
    let c = s.client(None);
    // Six deliveries to an endpoint that takes 1.5 s each, then six to a
    // fast one.
    for url in [format!("{slow_base}/slow"), format!("{fast_base}/ok")] {
        for _ in 0..6 {
            let id = submit_hooked(&c, &url, None).await;
            c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
        }
    }
    received(&fast, "/ok", 6).await;
    // The fast endpoint was served while the slow one was at its first
    // rounds: at most two of its deliveries run at once and they take
    // 1.5 s each, so all six starting first would mean the fast ones
    // waited (with room for a slow machine: two rounds).
    let slow_started = slow.got.lock().unwrap().len();
    assert!(
        slow_started <= 4,
        "the six fast deliveries waited for {slow_started} slow ones"
    );
    received(&slow, "/slow", 6).await;
}

/// A server whose tenant `a` has `tenant_a` in its `[webhooks.tenants.a]`
/// (tenant `b` none); one job of each, canceled, hooked to `/a` and `/b`
/// of a receiver, whose deliveries have arrived. None when the store's
/// service is absent (the test skips).
async fn one_delivery_per_tenant(tenant_a: &str) -> Option<Arc<Receiver>> {
    let config = format!(
        "[webhooks]\nsecret = \"{SECRET}\"\nallow_networks = [\"127.0.0.0/8\"]\n\
         [webhooks.tenants.a]\n{tenant_a}\n\
         [[api_keys]]\nkey = \"client-a-key\"\ntenant = \"a\"\nrole = \"client\"\n\
         [[api_keys]]\nkey = \"client-b-key\"\ntenant = \"b\"\nrole = \"client\"\n\
         [queues.work]\n"
    );
    let s = TestServer::start(&config).await?;
    let (base, r) = receiver().await;
    for (key, path) in [("client-a-key", "/a"), ("client-b-key", "/b")] {
        let c = s.client(Some(key));
        let id = submit_hooked(&c, &format!("{base}{path}"), None).await;
        c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    }
    received(&r, "/a", 1).await;
    received(&r, "/b", 1).await;
    Some(r)
}

#[tokio::test]
async fn a_tenant_with_its_own_secret_is_signed_with_it() {
    let tenant_secret = replyd_server::webhooks::signing::Secret::generate().expose();
    let Some(r) = one_delivery_per_tenant(&format!("secret = \"{tenant_secret}\"")).await else {
        return;
    };
    let got = r.got.lock().unwrap().clone();
    for (path, secret) in [("/a", tenant_secret.as_str()), ("/b", SECRET)] {
        let (_, h, body) = got.iter().find(|(p, _, _)| p == path).unwrap();
        assert_signed(secret, h, body, path);
    }
}

/// A receiver's JWT library: PyJWT (`tests/pyjwt/verify_delivery.py`) or
/// Node's jose (`tests/jose/verify.mjs`). Each fetches the server's JWKS
/// and checks the token and the body's digest as a receiver would.
#[derive(Debug, Clone, Copy)]
enum Verifier {
    PyJwt,
    Jose,
}

/// What `verifier` says of a delivery's `webhook-jwt`: Ok(claims) when it
/// verifies, Err(why) when it does not; None (the test skips, saying so)
/// when the library is missing.
async fn jwt_verify(
    verifier: Verifier,
    jwks_url: &str,
    token: &str,
    body: &[u8],
    audience: &str,
    issuer: &str,
) -> Option<Result<Value, String>> {
    let input = json!({
        "jwks_url": jwks_url, "token": token, "body": String::from_utf8_lossy(body),
        "audience": audience, "issuer": issuer,
    });
    // Off the runtime: the server it asks for the JWKS runs on it.
    tokio::task::spawn_blocking(move || run_verifier(verifier, &input))
        .await
        .unwrap()
}

fn run_verifier(verifier: Verifier, input: &Value) -> Option<Result<Value, String>> {
    use std::io::Write;
    let dir = env!("CARGO_MANIFEST_DIR");
    let (mut cmd, missing) = match verifier {
        Verifier::PyJwt => {
            let mut cmd = std::process::Command::new(replyd_testkit::python());
            cmd.arg(format!("{dir}/tests/pyjwt/verify_delivery.py"));
            (cmd, "Python with PyJWT and cryptography")
        }
        Verifier::Jose => {
            let mut cmd = std::process::Command::new("node");
            cmd.arg(format!("{dir}/tests/jose/verify.mjs"));
            (cmd, "Node with jose (npm ci in crates/replyd-server/tests/jose)")
        }
    };
    let child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        replyd_testkit::skip(missing, "run scripts/test");
        return None;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Some(Ok(serde_json::from_str(&said).unwrap())),
        Some(1) => Some(Err(said)),
        Some(3) => {
            replyd_testkit::skip(missing, "run scripts/test");
            None
        }
        other => panic!("the {verifier:?} verifier failed ({other:?}): {said}"),
    }
}

/// The request `path` got (headers and the exact body bytes).
fn delivery_to(r: &Receiver, path: &str) -> (HeaderMap, Bytes) {
    let got = r.got.lock().unwrap();
    let (_, h, b) = got.iter().find(|(p, _, _)| p == path).unwrap();
    (h.clone(), b.clone())
}

#[tokio::test]
async fn a_job_that_asks_gets_a_jwt_that_pyjwt_and_jose_verify_with_the_jwks() {
    let config = format!("public_url = \"https://replyd.test/\"\n{}", config());
    let Some(s) = TestServer::start(&config).await else { return };
    let (base, r) = receiver().await;
    let c = s.client(None);
    let url = format!("{base}/jwt");
    let r1 = c
        .post(
            "/v1/jobs",
            json!({"queue": "work", "input": {}, "webhook": {"url": url, "jwt": true}}),
        )
        .await;
    assert_eq!(r1.status, 202, "{}", String::from_utf8_lossy(&r1.body));
    let id = r1.json()["id"].as_str().unwrap().to_string();
    let plain = submit_hooked(&c, &format!("{base}/plain"), None).await;
    for job in [&id, &plain] {
        c.post(&format!("/v1/jobs/{job}/cancel"), json!({})).await;
    }
    received(&r, "/jwt", 1).await;
    received(&r, "/plain", 1).await;
    let (plain_headers, _) = delivery_to(&r, "/plain");
    assert!(
        plain_headers.get("webhook-jwt").is_none(),
        "only a job that asks (or a server or tenant that says so) gets a token"
    );
    let (h, body) = delivery_to(&r, "/jwt");
    assert!(h.get("webhook-signature").is_some(), "beside, not instead of");
    let token = h["webhook-jwt"].to_str().unwrap().to_string();

    // The JWKS: public, cacheable, no key needed.
    let jwks = c.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    assert!(jwks.header("cache-control").unwrap().contains("max-age"));
    assert_eq!(jwks.json()["keys"][0]["alg"], "ES256");

    let jwks_url = format!("http://{}/.well-known/jwks.json", s.addr);
    let iss = "https://replyd.test";
    for v in [Verifier::PyJwt, Verifier::Jose] {
        let Some(verified) = jwt_verify(v, &jwks_url, &token, &body, &url, iss).await else {
            return;
        };
        let claims = verified.unwrap_or_else(|e| panic!("{v:?} refuses the delivery: {e}"));
        assert_eq!(claims["sub"], id.as_str());
        assert_eq!(claims["tenant"], "default", "the open server's one tenant");
        assert_eq!(claims["jti"], h["webhook-id"].to_str().unwrap());
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            300
        );
        // A tampered body, another audience, another issuer: refused.
        let mut tampered = body.to_vec();
        tampered.extend_from_slice(b" ");
        let other = format!("{base}/other");
        let refused = [
            jwt_verify(v, &jwks_url, &token, &tampered, &url, iss).await,
            jwt_verify(v, &jwks_url, &token, &body, &other, iss).await,
            jwt_verify(v, &jwks_url, &token, &body, &url, "https://evil.test").await,
        ];
        let why: Vec<String> = refused
            .into_iter()
            .map(|r| r.unwrap().expect_err("refused"))
            .collect();
        assert!(why[0].contains("BodyDigestMismatch"), "{v:?}: {why:?}");
        // PyJWT names the error class; jose gives a code and the claim.
        let (aud, iss_err) = match v {
            Verifier::PyJwt => ("InvalidAudienceError", "InvalidIssuerError"),
            Verifier::Jose => ("\"aud\" claim", "\"iss\" claim"),
        };
        assert!(why[1].contains(aud), "{v:?}: {why:?}");
        assert!(why[2].contains(iss_err), "{v:?}: {why:?}");
    }
}

#[tokio::test]
async fn a_server_that_says_so_signs_every_delivery_and_an_old_token_is_expired() {
    // The server's clock runs ten minutes behind: its tokens (5 minutes
    // long) are expired when they arrive.
    let clock = replyd_core::Clock::manual(chrono::Utc::now() - chrono::Duration::minutes(10));
    let config = format!(
        "[webhooks]\nsecret = \"{SECRET}\"\nallow_networks = [\"127.0.0.0/8\"]\n\
         jwt = true\njwt_issuer = \"urn:replyd:test\"\n[queues.work]\n"
    );
    let Some(s) = TestServer::start_with(&config, clock).await else { return };
    let (base, r) = receiver().await;
    let c = s.client(None);
    let url = format!("{base}/all");
    let id = submit_hooked(&c, &url, None).await;
    c.post(&format!("/v1/jobs/{id}/cancel"), json!({})).await;
    received(&r, "/all", 1).await;
    let (h, body) = delivery_to(&r, "/all");
    let token = h["webhook-jwt"].to_str().expect("every delivery has a token");
    let jwks_url = format!("http://{}/.well-known/jwks.json", s.addr);
    for (v, expired) in [
        (Verifier::PyJwt, "ExpiredSignatureError"),
        (Verifier::Jose, "ERR_JWT_EXPIRED"),
    ] {
        let Some(verified) = jwt_verify(v, &jwks_url, token, &body, &url, "urn:replyd:test").await
        else {
            return;
        };
        let why = verified.expect_err("an expired token is refused");
        assert!(why.contains(expired), "{v:?}: {why}");
    }
}

#[tokio::test]
async fn a_tenant_that_says_so_gets_tokens_and_others_do_not() {
    let Some(r) = one_delivery_per_tenant("jwt = true").await else { return };
    assert!(delivery_to(&r, "/a").0.get("webhook-jwt").is_some());
    assert!(delivery_to(&r, "/b").0.get("webhook-jwt").is_none());
    // Tenant a's secret is the server's (it set only `jwt`).
    let (h, body) = delivery_to(&r, "/a");
    assert_signed(SECRET, &h, &body, "tenant a, with the server's secret");
}
