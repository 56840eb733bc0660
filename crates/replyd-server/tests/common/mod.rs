//! Test harness: a real replyd on 127.0.0.1:0 with a fresh store (a SQLite
//! file, or a PostgreSQL schema: the including test binary's `BACKEND`
//! says which), and a small HTTP client around reqwest.

#![allow(dead_code)]

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod brokers;
pub mod flow;
pub mod hooks;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "sns")]
pub mod sns;
#[cfg(feature = "sqs")]
pub mod sqs;
pub mod streams;

use std::net::SocketAddr;
use std::time::Duration;

use replyd_core::Clock;
use replyd_server::{Config, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A broker case's destinations (fresh names, so cases do not meet).
#[derive(Debug, Clone)]
pub struct Names {
    pub requests: String,
    pub dead: String,
    pub replies: String,
    pub work: String,
}

impl Names {
    pub fn new() -> Names {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let id = &id[..12];
        // Dashes: a name every broker takes as it is (SQS allows no dots).
        Names {
            requests: format!("replyd-test-{id}-requests"),
            dead: format!("replyd-test-{id}-requests-dead"),
            replies: format!("replyd-test-{id}-replies"),
            work: format!("replyd-test-{id}-work"),
        }
    }
}

/// Which store a test binary runs its cases against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The running server's application (its limits, store…).
    pub app: std::sync::Arc<replyd_server::App>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub dir: tempfile::TempDir,
}

pub const PULL_QUEUES: &str = r#"
[queues.work]
executor = "pull"
max_attempts = 2
timeout = 60

[queues.other]
executor = "pull"
"#;

/// Keys of two tenants (`a`, `b`), a's worker, an operator admin, and
/// queues `work` and `other`.
pub const KEYS: &str = r#"
[[api_keys]]
key = "client-a-key"
tenant = "a"
role = "client"
[[api_keys]]
key = "client-b-key"
tenant = "b"
role = "client"
[[api_keys]]
key = "worker-a-key"
tenant = "a"
role = "worker"
[[api_keys]]
key = "admin-all-key"
tenant = "*"
role = "admin"
[[api_keys]]
key = "admin-a-key"
tenant = "a"
role = "admin"
[queues.work]
[queues.other]
"#;

/// With `REPLYD_TEST_LOG` set (an `EnvFilter`: `info,replyd_server=debug`;
/// librdkafka's lines are under `librdkafka`), the servers' logs go to
/// stderr, past the test harness's capture (run one test, or
/// `--test-threads=1`, to tell them apart).
fn log_if_asked() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if let Ok(filter) = std::env::var("REPLYD_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_thread_names(true)
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

impl TestServer {
    /// A server with `config_toml` (plus the harness's store). `None` when
    /// the backend's service is absent (the test then skips, as said).
    pub async fn start(config_toml: &str) -> Option<TestServer> {
        TestServer::start_with(config_toml, Clock::system()).await
    }

    pub async fn start_with(config_toml: &str, clock: Clock) -> Option<TestServer> {
        let url = match crate::BACKEND {
            Backend::Sqlite => None,
            Backend::Postgres => Some(postgres_url().await?),
        };
        Some(TestServer::launch(config_toml, clock, url).await)
    }

    /// A node on the PostgreSQL database at `url` (several nodes may share it).
    pub async fn start_on(config_toml: &str, url: &str) -> TestServer {
        TestServer::launch(config_toml, Clock::system(), Some(url.to_string())).await
    }

    async fn launch(config_toml: &str, clock: Clock, postgres_url: Option<String>) -> TestServer {
        log_if_asked();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_toml(config_toml).unwrap();
        config.storage.sqlite = dir.path().join("replyd.db");
        config.storage.postgres_url = postgres_url;
        config.validate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = Server::start(config, clock).await.unwrap();
        let app = server.app().clone();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            server.run(listener, s.cancelled_owned()).await.unwrap();
        });
        TestServer {
            addr,
            app,
            stop,
            task,
            dir,
        }
    }

    pub fn client(&self, key: Option<&str>) -> Client {
        Client {
            base: format!("http://{}", self.addr),
            key: key.map(str::to_string),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }
}

#[cfg(feature = "postgres")]
async fn postgres_url() -> Option<String> {
    replyd_store::postgres::testing::fresh_schema("server_tests").await
}

#[cfg(not(feature = "postgres"))]
async fn postgres_url() -> Option<String> {
    unreachable!("PostgreSQL cases are compiled only with the postgres feature")
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub key: Option<String>,
    pub http: reqwest::Client,
}

#[derive(Debug)]
pub struct Res {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Res {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// Asserts an RFC 9457 problem with this status.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(
            p["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:replyd:problem:")
        );
        assert!(!p["detail"].as_str().unwrap().is_empty());
        p
    }
}

impl Client {
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Res {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let res = req.send().await.unwrap();
        Res {
            status: res.status(),
            headers: res.headers().clone(),
            body: res.bytes().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Res {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Res {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    /// Submits a job and returns its id (asserting 202).
    pub async fn submit(&self, queue: &str, input: Value) -> String {
        let r = self
            .post("/v1/jobs", json!({"queue": queue, "input": input}))
            .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// Leases one job of `queue`: (job, lease_id).
    pub async fn lease(&self, queue: &str) -> (Value, String) {
        let r = self
            .post(
                &format!("/v1/queues/{queue}/lease"),
                json!({"worker": "test", "lease": 30, "wait": 5}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        (
            v["job"].clone(),
            v["lease_id"].as_str().unwrap().to_string(),
        )
    }

    pub async fn complete(&self, id: &str, lease: &str, result: Value) -> Res {
        self.post(
            &format!("/v1/jobs/{id}/complete"),
            json!({"lease_id": lease, "result": result}),
        )
        .await
    }

    pub async fn state(&self, id: &str) -> String {
        let r = self.get(&format!("/v1/jobs/{id}")).await;
        r.json()["state"].as_str().unwrap().to_string()
    }

    /// Polls until the job reaches `state` (at most 10 s).
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.get(&format!("/v1/jobs/{id}")).await;
            let v = r.json();
            if v["state"] == state {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} never reached {state}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
