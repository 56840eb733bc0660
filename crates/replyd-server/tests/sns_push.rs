//! SNS's HTTP push to replyd (`POST /v1/sns/{name}`), as SNS sends it:
//! messages signed (SignatureVersion 1 and 2) with a key and certificate
//! this test makes with `openssl`, the certificate served from a local
//! origin the test's configuration trusts (`sns.trusted_origins`: SNS
//! itself is never reached, and moto neither signs nor pushes), then the
//! forgeries SNS's documentation warns of. Replies go to an SQS queue on
//! moto_server (127.0.0.1:5000).

#![cfg(feature = "sns")]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use base64::Engine;
use common::TestServer;
use replyd_server::brokers::{Message, headers};
use reqwest::Method;
use serde_json::{Value, json};

const BACKEND: common::Backend = common::Backend::Sqlite;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:orders";
const OTHER_TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:elsewhere";

/// A key and a self-signed certificate of its own, and another pair (a
/// forger's), made with `openssl`.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn make() -> Option<Keys> {
        let dir = tempfile::tempdir().unwrap();
        for name in ["sns", "forger"] {
            let made = std::process::Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=sns.test"])
                .arg("-keyout")
                .arg(dir.path().join(format!("{name}.key")))
                .arg("-out")
                .arg(dir.path().join(format!("{name}.pem")))
                .output();
            if !matches!(made, Ok(ref o) if o.status.success()) {
                replyd_testkit::skip(
                    "openssl (to make the test's signing key and certificate)",
                    "apt-get install openssl",
                );
                return None;
            }
        }
        Some(Keys { dir })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.pem"))).unwrap()
    }

    /// `text` signed by `name`'s key: RSA with SHA-1 (version 1) or
    /// SHA-256 (version 2), base64.
    fn sign(&self, name: &str, text: &str, version: &str) -> String {
        use std::io::Write;
        let digest = if version == "1" { "-sha1" } else { "-sha256" };
        let mut child = std::process::Command::new("openssl")
            .args(["dgst", digest, "-sign"])
            .arg(self.path(&format!("{name}.key")))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        base64::engine::general_purpose::STANDARD.encode(out.stdout)
    }
}

/// The local origin the configuration trusts: it serves the certificates
/// and takes subscription confirmations, and records every request.
#[derive(Clone, Default)]
struct Origin {
    seen: Arc<Mutex<Vec<String>>>,
    pems: Arc<Vec<(String, String)>>,
}

impl Origin {
    async fn start(pems: Vec<(String, String)>) -> (Origin, String) {
        let origin = Origin {
            seen: Arc::default(),
            pems: Arc::new(pems),
        };
        async fn pem(
            State(o): State<Origin>,
            uri: axum::http::Uri,
        ) -> (axum::http::StatusCode, String) {
            o.seen.lock().unwrap().push(uri.to_string());
            match o.pems.iter().find(|(path, _)| *path == uri.path()) {
                Some((_, pem)) => (axum::http::StatusCode::OK, pem.clone()),
                None => (axum::http::StatusCode::NOT_FOUND, String::new()),
            }
        }
        async fn confirm(
            State(o): State<Origin>,
            Query(q): Query<std::collections::HashMap<String, String>>,
        ) -> &'static str {
            o.seen.lock().unwrap().push(format!(
                "confirm {}",
                q.get("Token").cloned().unwrap_or_default()
            ));
            "<ConfirmSubscriptionResponse/>"
        }
        let app = axum::Router::new()
            .route("/confirm", axum::routing::get(confirm))
            .fallback(pem)
            .with_state(origin.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (origin, url)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A server with one push subscription for `TOPIC`, the origin it trusts,
/// the keys.
struct Rig {
    server: TestServer,
    keys: Keys,
    origin: Origin,
    base: String,
}

impl Rig {
    async fn start() -> Option<Rig> {
        let keys = Keys::make()?;
        let pems = vec![
            (
                "/SimpleNotificationService-test.pem".to_string(),
                keys.pem("sns"),
            ),
            ("/forger.pem".to_string(), keys.pem("forger")),
        ];
        let (origin, base) = Origin::start(pems).await;
        let config = format!(
            r#"{}
{}
[sns]
trusted_origins = ["{base}"]
reply_retry_schedule = [0, 0.2, 0.5, 1, 2]

[sns.push.orders]
topics = ["{TOPIC}"]
queue = "work"
"#,
            common::PULL_QUEUES,
            common::sqs::AWS
        );
        let server = TestServer::start(&config).await?;
        Some(Rig {
            server,
            keys,
            origin,
            base,
        })
    }

    fn cert_url(&self) -> String {
        format!("{}/SimpleNotificationService-test.pem", self.base)
    }

    /// A notification of `TOPIC`, signed (version `version`) by the
    /// certificate's key.
    fn notification(&self, id: &str, message: &str, attributes: Value, version: &str) -> Value {
        let mut n = json!({
            "Type": "Notification",
            "MessageId": id,
            "TopicArn": TOPIC,
            "Subject": "an order",
            "Message": message,
            "Timestamp": "2026-12-07T10:00:00.000Z",
            "SignatureVersion": version,
            "SigningCertURL": self.cert_url(),
            "UnsubscribeURL": format!("{}/unsubscribe", self.base),
            "MessageAttributes": attributes,
        });
        self.sign(&mut n, "sns");
        n
    }

    /// Signs `m` (its fields as they are) with `key`'s key.
    fn sign(&self, m: &mut Value, key: &str) {
        let text = signed_text(m);
        let version = m["SignatureVersion"].as_str().unwrap_or("1").to_string();
        m["Signature"] = self.keys.sign(key, &text, &version).into();
    }

    async fn post(&self, name: &str, m: &Value) -> common::Res {
        let kind = m["Type"].as_str().unwrap_or("Notification").to_string();
        self.server
            .client(None)
            .send(
                Method::POST,
                &format!("/v1/sns/{name}"),
                &[
                    ("content-type", "text/plain; charset=UTF-8"),
                    ("x-amz-sns-message-type", &kind),
                ],
                Some(m.to_string().into_bytes()),
            )
            .await
    }

    async fn jobs(&self) -> Vec<Value> {
        let list = self
            .server
            .client(None)
            .get("/v1/jobs?queue=work")
            .await
            .json();
        list["jobs"].as_array().unwrap().clone()
    }
}

/// What SNS signs, as AWS documents it (written here from the
/// documentation, apart from replyd's own).
fn signed_text(m: &Value) -> String {
    let fields: &[&str] = if m["Type"] == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    fields
        .iter()
        .filter_map(|f| m[*f].as_str().map(|v| format!("{f}\n{v}\n")))
        .collect()
}

fn text(v: &str) -> Value {
    json!({"Type": "String", "Value": v})
}

/// Signed notifications of both signature versions each become a job
/// (their attributes its options), durable before the 204; SNS's
/// redelivery of one (the same MessageId) makes no second job; the
/// certificate is fetched once; a job's reply reaches the requester's
/// ReplyTo with its correlation id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_notifications_become_one_job_each_and_their_replies_go_back() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let Some(sqs) = common::sqs::client().await else {
        return;
    };
    let (inbox, mut replies) = sqs.inbox().await.unwrap();
    for (i, version) in ["1", "2"].into_iter().enumerate() {
        let n = rig.notification(
            &format!("0b6d0dc4-0000-4000-8000-00000000000{i}"),
            &json!({"order": i}).to_string(),
            json!({
                "CorrelationId": text(&format!("c-{i}")),
                "ReplyTo": text(&inbox),
                "x-replyd-priority": text("3"),
            }),
            version,
        );
        let r = rig.post("orders", &n).await;
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        // SNS delivers at least once.
        assert_eq!(rig.post("orders", &n).await.status, 204);
    }
    let jobs = rig.jobs().await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs.iter().all(|j| j["priority"] == 3), "{jobs:?}");
    let pem_fetches = rig
        .origin
        .seen()
        .iter()
        .filter(|s| s.ends_with("-test.pem"))
        .count();
    assert_eq!(
        pem_fetches,
        1,
        "the certificate is cached: {:?}",
        rig.origin.seen()
    );

    let c = rig.server.client(None);
    let (job, lease) = c.lease("work").await;
    let id = job["id"].as_str().unwrap().to_string();
    c.complete(&id, &lease, json!({"shipped": true})).await;
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.recv())
        .await
        .expect("a reply in time")
        .unwrap();
    let m: Message = reply.message.clone();
    reply.settle.ack().await.unwrap();
    assert_eq!(m.props.header(headers::JOB_ID), Some(id.as_str()));
    assert_eq!(m.props.header(headers::STATE), Some("succeeded"));
    let expected = format!("c-{}", job["input"]["order"]);
    assert_eq!(m.props.correlation_id.as_deref(), Some(expected.as_str()));
    rig.server.stop.cancel();
}

/// A notification that cannot be a job (its message is not JSON) answers
/// 400 with the reason, makes nothing, and its requester hears why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_that_cannot_be_a_job_answers_400_and_its_requester_hears_why() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let Some(sqs) = common::sqs::client().await else {
        return;
    };
    let (inbox, mut replies) = sqs.inbox().await.unwrap();
    let n = rig.notification(
        "m-bad",
        "not json",
        json!({"CorrelationId": text("c-bad"), "ReplyTo": text(&inbox)}),
        "2",
    );
    let p = rig.post("orders", &n).await.problem(400);
    assert!(p["detail"].as_str().unwrap().contains("JSON"), "{p}");
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.recv())
        .await
        .expect("a rejection in time")
        .unwrap();
    assert_eq!(reply.message.props.header(headers::STATE), Some("rejected"));
    assert_eq!(reply.message.props.correlation_id.as_deref(), Some("c-bad"));
    assert!(rig.jobs().await.is_empty());
    rig.server.stop.cancel();
}

/// Every forgery answers 403 and creates nothing; a certificate URL that is
/// not allowed is never fetched.
#[tokio::test]
async fn forgeries_are_refused_and_create_nothing() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let good = rig.notification("m-1", "{\"order\":1}", json!({}), "2");
    let resign = |f: &dyn Fn(&mut Value)| {
        let mut m = good.clone();
        f(&mut m);
        rig.sign(&mut m, "sns");
        m
    };
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut tampered = good.clone();
    tampered["Message"] = "{\"order\":1000}".into();
    cases.push(("a message changed after signing", tampered));
    let mut retyped = good.clone();
    retyped["Subject"] = "another".into();
    cases.push(("a signed field changed", retyped));
    let mut unsigned = good.clone();
    unsigned.as_object_mut().unwrap().remove("Signature");
    cases.push(("no signature", unsigned));
    let mut garbage = good.clone();
    garbage["Signature"] = "not base64!".into();
    cases.push(("a signature that is not base64", garbage));
    cases.push((
        "an unknown signature version",
        resign(&|m| m["SignatureVersion"] = "3".into()),
    ));
    let mut v1_claimed = good.clone();
    v1_claimed["SignatureVersion"] = "1".into();
    cases.push(("signed with SHA-256, claimed SHA-1", v1_claimed));
    let mut forged = good.clone();
    rig.sign(&mut forged, "forger");
    cases.push(("signed by another key", forged));
    let mut forged_cert = good.clone();
    forged_cert["SigningCertURL"] = format!("{}/forger.pem", rig.base).into();
    cases.push((
        "signed by the right key, pointing at the forger's certificate",
        forged_cert,
    ));
    // A forger's own key and certificate, anywhere but SNS's host or a
    // trusted origin: never fetched.
    for url in [
        "https://evil.test/forger.pem",
        "https://sns.us-east-1.amazonaws.com.evil.test/c.pem",
        "http://sns.us-east-1.amazonaws.com/c.pem",
        "https://sns.eu-west-1.amazonaws.com/c.pem",
        "http://127.0.0.2:9/forger.pem",
    ] {
        let mut m = good.clone();
        m["SigningCertURL"] = url.into();
        rig.sign(&mut m, "forger");
        cases.push(("a certificate elsewhere", m));
    }
    cases.push((
        "a certificate URL that is not a .pem",
        resign(&|m| m["SigningCertURL"] = format!("{}/confirm", rig.base).into()),
    ));
    cases.push((
        "a topic the subscription does not list",
        resign(&|m| m["TopicArn"] = OTHER_TOPIC.into()),
    ));
    cases.push(("raw message delivery (no envelope)", json!({"order": 1})));
    let seen_before = rig.origin.seen().len();
    for (what, m) in &cases {
        let r = rig.post("orders", m).await;
        let p = r.problem(403);
        assert!(p["detail"].as_str().is_some(), "{what}");
        assert_eq!(r.status, 403, "{what}");
    }
    let fetched: Vec<String> = rig.origin.seen()[seen_before..].to_vec();
    assert!(
        fetched.iter().all(|s| s.ends_with(".pem")),
        "only certificates on the trusted origin were fetched: {fetched:?}"
    );
    assert!(rig.jobs().await.is_empty(), "no forgery made a job");
    // Counted, for an operator's alert (other tests of this binary count
    // too: at least these).
    let metrics = rig.server.client(None).get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let forbidden: f64 = text
        .lines()
        .find(|l| l.starts_with("replyd_sns_push_total{outcome=\"forbidden\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no forbidden count: {text}"));
    assert!(forbidden >= cases.len() as f64, "{forbidden}");
    // The good one still works, and no other subscription exists.
    assert_eq!(rig.post("orders", &good).await.status, 204);
    rig.post("nobody", &good).await.problem(404);
    assert_eq!(rig.jobs().await.len(), 1);
    rig.server.stop.cancel();
}

/// A subscription is confirmed (its SubscribeURL fetched) only when its
/// topic is listed, its signature verifies and its SubscribeURL is on an
/// allowed host.
#[tokio::test]
async fn a_subscription_is_confirmed_only_for_a_listed_topic_on_an_allowed_host() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let confirmation = |topic: &str, subscribe_url: String, token: &str| {
        let mut m = json!({
            "Type": "SubscriptionConfirmation",
            "MessageId": "c-1",
            "Token": token,
            "TopicArn": topic,
            "Message": "You have chosen to subscribe to the topic.",
            "SubscribeURL": subscribe_url,
            "Timestamp": "2026-12-07T10:00:00.000Z",
            "SignatureVersion": "1",
            "SigningCertURL": rig.cert_url(),
        });
        rig.sign(&mut m, "sns");
        m
    };
    let url = |token: &str| {
        format!(
            "{}/confirm?Action=ConfirmSubscription&Token={token}",
            rig.base
        )
    };
    let ok = rig
        .post("orders", &confirmation(TOPIC, url("t-1"), "t-1"))
        .await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    rig.post("orders", &confirmation(OTHER_TOPIC, url("t-2"), "t-2"))
        .await
        .problem(403);
    rig.post(
        "orders",
        &confirmation(TOPIC, "http://127.0.0.2:9/confirm?Token=t-3".into(), "t-3"),
    )
    .await
    .problem(403);
    let mut tampered = confirmation(TOPIC, url("t-4"), "t-4");
    tampered["SubscribeURL"] = url("t-5").into();
    rig.post("orders", &tampered).await.problem(403);
    let confirms: Vec<String> = rig
        .origin
        .seen()
        .into_iter()
        .filter(|s| s.starts_with("confirm"))
        .collect();
    assert_eq!(confirms, ["confirm t-1"]);
    // An unsubscription is taken (and nothing resubscribes).
    let mut gone = confirmation(TOPIC, url("t-6"), "t-6");
    gone["Type"] = "UnsubscribeConfirmation".into();
    rig.sign(&mut gone, "sns");
    assert_eq!(rig.post("orders", &gone).await.status, 204);
    assert_eq!(
        rig.origin
            .seen()
            .iter()
            .filter(|s| s.starts_with("confirm"))
            .count(),
        1
    );
    rig.server.stop.cancel();
}

/// Without `[sns.push]` there is no push endpoint; a body past the bound is
/// 413 before anything is read into a job.
#[tokio::test]
async fn the_endpoint_exists_only_when_configured_and_bodies_are_bounded() {
    let Some(server) = TestServer::start(common::PULL_QUEUES).await else {
        return;
    };
    let c = server.client(None);
    c.send(Method::POST, "/v1/sns/orders", &[], Some(b"{}".to_vec()))
        .await
        .problem(404);
    server.stop.cancel();
    let Some(rig) = Rig::start().await else {
        return;
    };
    let big = vec![b' '; 4 * 1024 * 1024];
    let r = rig
        .server
        .client(None)
        .send(Method::POST, "/v1/sns/orders", &[], Some(big))
        .await;
    assert_eq!(r.status, 413);
    rig.server.stop.cancel();
}
