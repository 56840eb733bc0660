//! What the process-level tests share: `replyd serve` as a child process on
//! 127.0.0.1 port 0, its log, and an HTTP client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_replyd");

/// A pull queue `work`, as the brief's tests use it.
pub const WORK_QUEUE: &str = "[queues.work]\nexecutor = \"pull\"\nmax_attempts = 3\ntimeout = 60\n";

static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// `replyd serve` with `REPLYD_*` variables removed so that only the
/// arguments given here count.
pub fn replyd() -> Command {
    let mut cmd = Command::new(BIN);
    for var in [
        "REPLYD_CONFIG",
        "REPLYD_LISTEN",
        "REPLYD_DB",
        "REPLYD_DATABASE_URL",
        "REPLYD_INSECURE",
        "REPLYD_API_KEY",
        "REPLYD_URL",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd
}

/// A running `replyd serve`; SIGKILLed when dropped if it is still running.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub url: String,
    pub name: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `replyd serve --listen 127.0.0.1:0 --db DIR/replyd.db`, with
    /// `DIR/replyd.toml` holding `config` when one is given, and waits (at
    /// most 30 s) for the line that says where it listens.
    pub async fn start(dir: &Path, config: Option<&str>) -> Server {
        let db = db_path(dir).display().to_string();
        Server::start_on(dir, config, &["--db", &db]).await
    }

    /// As `start`, with the store named by `store_args` (`--db PATH` or
    /// `--database-url URL`).
    pub async fn start_on(dir: &Path, config: Option<&str>, store_args: &[&str]) -> Server {
        Server::start_at(dir, config, store_args, "127.0.0.1:0").await
    }

    /// As `start_on`, listening on `listen` (a restart on the same port).
    pub async fn start_at(
        dir: &Path,
        config: Option<&str>,
        store_args: &[&str],
        listen: &str,
    ) -> Server {
        Server::launch(dir, config, store_args, listen, &[]).await
    }

    /// As `start`, with these variables in its environment.
    pub async fn start_env(dir: &Path, config: Option<&str>, env: &[(&str, &str)]) -> Server {
        let db = db_path(dir).display().to_string();
        Server::launch(dir, config, &["--db", &db], "127.0.0.1:0", env).await
    }

    async fn launch(
        dir: &Path,
        config: Option<&str>,
        store_args: &[&str],
        listen: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let name = format!("server#{}", SERVERS.fetch_add(1, Ordering::SeqCst));
        let mut cmd = replyd();
        cmd.args(["serve", "--listen", listen])
            .args(store_args)
            .envs(env.iter().copied());
        if let Some(config) = config {
            let file = dir.join("replyd.toml");
            std::fs::write(&file, config).unwrap();
            cmd.arg("--config").arg(file);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn replyd serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let log = log.clone();
            let name = name.clone();
            // Reads the log for the address, then keeps draining it so that
            // the server never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[{name}] {line}");
                    if let Some(url) = listen_url(&line)
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(url);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap();
        let mut server = Server {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            url: String::new(),
            name,
            log,
        };
        let url = match got {
            Ok(url) => url,
            Err(_) => panic!(
                "{} did not log `replyd listening on http://...` within 30 s (exit: {:?}); its log:\n{}",
                server.name,
                server.child.try_wait(),
                server.log_text()
            ),
        };
        server.addr = url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|e| panic!("cannot parse the address in {url:?}: {e}"));
        server.url = url;
        server
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap_or_else(|e| panic!("kill {signal} {}: {e}", self.name));
    }

    /// The exit status, or None if it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        let log = self.log.lock().unwrap();
        let from = log.len().saturating_sub(40);
        log[from..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("replyd.db")
}

/// `http://127.0.0.1:PORT` out of `... replyd listening on http://127.0.0.1:PORT ...`.
pub fn listen_url(line: &str) -> Option<String> {
    let at = line.find("replyd listening on http://")? + "replyd listening on ".len();
    let url: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || ":/.[]".contains(*c))
        .collect();
    Some(url)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A replyd SIGKILLed while broker requests flow: `n` requests (`c-{i}`,
/// demo jobs of input `{"i": i}`, replying to `mine`) are published to
/// `requests` from before the crash until after it (each until the broker
/// takes it), replyd is killed once it has made jobs of some of them,
/// starts again on the same database, and every request
/// gets its job and its reply on `rx` (subscribed to `mine` before).
#[cfg(any(feature = "amqp", feature = "mqtt", feature = "kafka", feature = "sns"))]
pub async fn requests_in_flight_at_a_crash(
    broker: &std::sync::Arc<dyn replyd_server::brokers::Broker>,
    requests: &str,
    mine: &str,
    mut rx: tokio::sync::mpsc::Receiver<replyd_server::brokers::Received>,
    config: &str,
    dir: &Path,
) {
    use replyd_server::brokers::{Message, Props, Published};
    let db = db_path(dir).display().to_string();
    let mut server = Server::start(dir, Some(config)).await;
    let n = 200;
    let publisher = {
        let (broker, requests, mine) = (broker.clone(), requests.to_string(), mine.to_string());
        tokio::spawn(async move {
            for i in 0..n {
                let m = Message {
                    body: format!(r#"{{"seconds": 0.1, "i": {i}}}"#).into(),
                    props: Props {
                        message_id: Some(format!("m-{i}")),
                        correlation_id: Some(format!("c-{i}")),
                        reply_to: Some(mine.clone()),
                        ..Props::default()
                    },
                };
                // A topic is unroutable only until replyd first subscribes:
                // from then on its session keeps what comes, even while it
                // is down (a queue always keeps it).
                while broker.publish(&requests, m.clone()).await.unwrap() != Published::Accepted {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Killed once it is at work: some requests are jobs, more are coming.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listed: serde_json::Value = http()
            .get(format!("{}/v1/jobs?queue=demo&limit=500", server.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed["jobs"].as_array().is_some_and(|j| j.len() >= 10) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replyd made no jobs of the requests in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.signal(Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10)).await.unwrap();
    publisher.await.unwrap();
    let server = Server::start_on(dir, Some(config), &["--db", &db]).await;
    every_request_has_its_job_and_reply(&mut rx, n, &server).await;
}

/// A name no earlier run used.
pub fn fresh_id() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// After a crash: every one of `n` requests (`c-{i}`, demo jobs of input
/// `{"i": i}`) has its reply on `rx`, each naming one job whatever the
/// duplicates, and `server` lists a job per request.
#[cfg(any(feature = "amqp", feature = "mqtt", feature = "kafka", feature = "sns"))]
async fn every_request_has_its_job_and_reply(
    rx: &mut tokio::sync::mpsc::Receiver<replyd_server::brokers::Received>,
    n: usize,
    server: &Server,
) {
    use replyd_server::brokers::headers;
    use std::collections::{HashMap, HashSet};
    let mut got: HashMap<String, HashSet<String>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while got.len() < n {
        let r = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} requests have replies", got.len()))
            .unwrap();
        let p = &r.message.props;
        assert_eq!(p.header(headers::STATE), Some("succeeded"));
        let body: serde_json::Value = serde_json::from_slice(&r.message.body).unwrap();
        let corr = p.correlation_id.clone().unwrap();
        assert_eq!(format!("c-{}", body["input"]["i"]), corr);
        got.entry(corr)
            .or_default()
            .insert(p.header(headers::JOB_ID).unwrap().to_string());
        r.settle.ack().await.unwrap();
    }
    for (corr, jobs) in &got {
        assert_eq!(jobs.len(), 1, "{corr}: its replies name one job: {jobs:?}");
    }
    let listed: serde_json::Value = http()
        .get(format!("{}/v1/jobs?queue=demo&limit=500", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        n,
        "a job per request"
    );
}

/// `replyd bench --scenarios SCENARIO` with `args`, briefly: it succeeds,
/// and each of `rows` (the ceiling's and replyd's, or two paths') is
/// printed with its round trips/s and p99, some round trips done and none
/// unanswered, then their ratio.
pub fn bench_prints_round_trips(scenario: &str, args: &[&str], rows: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "bench",
            "--scenarios",
            scenario,
            "--duration",
            "1",
            "--rounds",
            "1",
        ])
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .env_remove("REPLYD_BENCH_AMQP_URL")
        .env_remove("REPLYD_BENCH_KAFKA_BROKERS")
        .env_remove("REPLYD_BENCH_AWS_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .expect("run replyd bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    for row in rows {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no {row:?} line in:\n{stdout}"));
        assert!(
            line.contains("round trips/s") && line.contains("p99"),
            "{line}"
        );
        assert!(line.contains(", 0 unanswered)"), "{line}");
        let done: usize = line
            .rsplit('(')
            .next()
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(done > 0, "{line}");
    }
    assert!(
        stdout.lines().any(|l| l.trim_start().starts_with("ratio")),
        "{stdout}"
    );
}

/// An example's Python service (`script` with `args`, after
/// `--port PORT` on a free port), up once it says it is listening: the
/// process (killed when dropped) and its port.
#[allow(dead_code)]
pub async fn example_service(script: &Path, args: &[&str]) -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut service = tokio::process::Command::new(replyd_testkit::python())
        .arg(script)
        .args(["--port", &port.to_string()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the example's service");
    let mut out = tokio::io::BufReader::new(service.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .expect("the service says it is up within 10 s")
    .unwrap();
    assert!(line.contains("listening"), "{line}");
    // Its stdout stays open (a service that logs must not find it closed).
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut out, &mut tokio::io::sink()).await;
    });
    (service, port)
}

/// Where the browser harnesses (Node.js + playwright-core) live.
pub fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why the browser tests cannot run here, if they cannot.
pub fn browser_missing() -> Option<String> {
    let dir = browser_dir();
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is not installed".into());
    }
    if !dir.join("node_modules/playwright-core").exists() {
        return Some(format!("run `npm ci --prefix {}`", dir.display()));
    }
    if !["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    {
        return Some("chromium is not installed (apt-get install chromium)".into());
    }
    None
}

/// Runs `replyd ARGS... --server URL` (with `env` added) to its end, within
/// 60 s, and logs what it said.
pub async fn run_cli(server: &Server, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = replyd();
    cmd.args(args).args(["--server", &server.url]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output().unwrap()),
    )
    .await
    .expect("the command ends within 60 s")
    .unwrap();
    eprintln!(
        "replyd {args:?}: {}\n--- stdout:\n{}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
