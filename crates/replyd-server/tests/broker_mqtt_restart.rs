//! Mosquitto stops and starts again while requests flow (its own test
//! binary: it would cut the connections of tests running beside it).
//! Without an MQTT broker the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`; it runs only with
//! `REPLYD_TEST_RESTARTS=1` (`scripts/test` sets it), since it stops the machine's Mosquitto.

#![cfg(feature = "mqtt")]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::mqtt::client;
use common::{Names, PULL_QUEUES, TestServer};
use replyd_server::brokers::{Message, Props, Published, headers};

const BACKEND: common::Backend = common::Backend::Sqlite;

const CONF: &str = "/etc/mosquitto/mosquitto.conf";
const PID: &str = "/run/mosquitto/mosquitto.pid";

async fn port_open() -> bool {
    tokio::net::TcpStream::connect("127.0.0.1:1883")
        .await
        .is_ok()
}

/// Stops Mosquitto (SIGTERM: it saves its sessions), waits, starts it.
async fn restart_mosquitto() {
    // Its pid file, else the one mosquitto running.
    let pid = std::fs::read_to_string(PID).ok().or_else(|| {
        let out = std::process::Command::new("pidof")
            .arg("mosquitto")
            .output()
            .ok()?;
        Some(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()?
                .to_string(),
        )
    });
    let pid = pid.expect("Mosquitto runs (pid file or pidof)");
    let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("a pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("stop Mosquitto");
    for _ in 0..100 {
        if !port_open().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!port_open().await, "Mosquitto stopped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = std::process::Command::new("mosquitto")
        .args(["-d", "-c", CONF])
        .status()
        .expect("mosquitto runs");
    assert!(status.success(), "mosquitto -d");
    for _ in 0..100 {
        if port_open().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Mosquitto did not come back");
}

/// Mosquitto stops and starts again while requests flow: no request and
/// no reply is lost (replyd's sessions and the requester's outlive the
/// outage), and replyd's consumers resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_survive_a_mosquitto_restart() {
    if !replyd_testkit::may_restart("Mosquitto") {
        return;
    }
    let Some(broker) = client().await else { return };
    let names = Names::new();
    let config = format!(
        r#"{PULL_QUEUES}
[queues.demo]
executor = "demo"
concurrency = 32
{}"#,
        common::mqtt::section(&names)
    )
    .replace("queue = \"work\"", "queue = \"demo\"");
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    // The requester's replies go to a topic its persistent session
    // subscribes to, which outlives the outage (`names.work` is free here).
    let mut rx = broker.subscribe(&names.work, 64).await.unwrap();
    let n = 120;
    let publisher = {
        let (broker, names) = (broker.clone(), names.clone());
        tokio::spawn(async move {
            let mut retried = 0;
            for i in 0..n {
                let m = Message {
                    body: format!(r#"{{"seconds": 0, "i": {i}}}"#).into(),
                    props: Props {
                        message_id: Some(format!("r-{i}")),
                        correlation_id: Some(format!("r-{i}")),
                        reply_to: Some(names.work.clone()),
                        ..Props::default()
                    },
                };
                // Until the broker takes it for a subscriber: one it did
                // not acknowledge may or may not have arrived; its message
                // id makes a second one harmless.
                while !matches!(
                    broker.publish(&names.requests, m.clone()).await,
                    Ok(Published::Accepted)
                ) {
                    retried += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            retried
        })
    };
    let mut replies: HashMap<String, HashSet<String>> = HashMap::new();
    let take = |replies: &mut HashMap<String, HashSet<String>>,
                r: &replyd_server::brokers::Received| {
        let p = &r.message.props;
        assert_eq!(p.header(headers::STATE), Some("succeeded"));
        replies
            .entry(p.correlation_id.clone().unwrap())
            .or_default()
            .insert(p.header(headers::JOB_ID).unwrap().to_string());
    };
    // Some replies before the outage.
    let before = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Ok(Some(r)) = tokio::time::timeout_at(before, rx.recv()).await {
        take(&mut replies, &r);
        r.settle.ack().await.unwrap();
    }
    restart_mosquitto().await;
    let retried = publisher.await.unwrap();
    assert!(retried > 0, "the outage came while requests flowed");
    // Every request's reply (subscribing again when the connection drops:
    // the session resumes with what it missed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    'outer: while tokio::time::Instant::now() < deadline {
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => {
                    take(&mut replies, &r);
                    let _ = r.settle.ack().await;
                    if replies.len() == n {
                        break 'outer;
                    }
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
        match broker.subscribe(&names.work, 64).await {
            Ok(again) => rx = again,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    if replies.len() != n {
        let c = server.client(None);
        let listed = c.get("/v1/jobs?queue=demo&limit=200").await.json();
        let jobs = listed["jobs"].as_array().unwrap();
        let mut states = std::collections::BTreeMap::<String, usize>::new();
        for j in jobs {
            let id = j["id"].as_str().unwrap();
            let log = c.get(&format!("/v1/jobs/{id}/deliveries")).await.json();
            let d = &log["deliveries"][0];
            *states
                .entry(format!("{} {} {}", j["state"], d["state"], d["last_error"]))
                .or_default() += 1;
        }
        panic!(
            "{} replies of {n}; {} jobs; {states:#?}",
            replies.len(),
            jobs.len()
        );
    }
    for (corr, jobs) in &replies {
        assert_eq!(
            jobs.len(),
            1,
            "{corr}: one job (a duplicate reply names the same)"
        );
    }
    let listed = server
        .client(None)
        .get("/v1/jobs?queue=demo&limit=200")
        .await
        .json();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        n,
        "a job per request"
    );
    server.stop.cancel();
    let _ = server.task.await;
}
