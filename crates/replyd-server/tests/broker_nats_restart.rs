//! The NATS server stops and starts again while requests flow (its own
//! test binary: it would cut the connections of tests running beside it).
//! Without NATS the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`; it runs only with
//! `REPLYD_TEST_RESTARTS=1` (`scripts/test` sets it), since it stops the machine's NATS server.

#![cfg(feature = "nats")]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::nats::client;
use common::{Names, PULL_QUEUES, TestServer};
use replyd_server::brokers::{Message, Props, headers};

const BACKEND: common::Backend = common::Backend::Sqlite;

async fn port_open() -> bool {
    tokio::net::TcpStream::connect("127.0.0.1:4222")
        .await
        .is_ok()
}

/// Stops nats-server, waits, starts it as CI does.
async fn restart_nats() {
    let out = std::process::Command::new("pidof")
        .arg("nats-server")
        .output()
        .expect("pidof runs");
    let pid = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("nats-server runs")
        .parse::<i32>()
        .expect("a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop nats-server");
    for _ in 0..100 {
        if !port_open().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!port_open().await, "nats-server stopped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = std::process::Command::new("start-stop-daemon")
        .args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/nats-server",
            "--",
            "-a",
            "127.0.0.1",
            "-p",
            "4222",
            "-js",
            "-sd",
            "/var/lib/nats-server",
            "-l",
            "/var/log/nats-server.log",
        ])
        .status()
        .expect("start-stop-daemon runs");
    assert!(status.success(), "nats-server started");
    for _ in 0..200 {
        if port_open().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not come back");
}

/// NATS stops and starts again while requests flow. The requesters do as
/// NATS requesters do: a request without a reply in time is sent again,
/// with the same `Nats-Msg-Id`. Every request gets its reply, each from
/// one job, and replyd's subscriptions come back by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_survive_a_nats_restart() {
    if !replyd_testkit::may_restart("NATS") {
        return;
    }
    let Some(broker) = client().await else { return };
    let names = Names::new();
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 32\n{}",
        common::nats::section(&names)
    )
    .replace("queue = \"work\"", "queue = \"demo\"");
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    common::brokers::until_consuming(&server, &names.requests).await;
    let (inbox, mut rx) = broker.inbox().await.unwrap();
    // Replies by message id (a request sent again may be answered twice).
    let mut replies: HashMap<String, HashSet<String>> = HashMap::new();
    let mut sent_again = 0;
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restart = {
        let restarted = restarted.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            restart_nats().await;
            restarted.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    // Requests flow from before the outage until after it: at least 60,
    // and 10 more once the server is back.
    let (mut i, mut after) = (0, 0);
    while i < 60 || after < 10 {
        if restarted.load(std::sync::atomic::Ordering::SeqCst) {
            after += 1;
        }
        i += 1;
        let id = format!("r-{i}");
        let m = Message {
            body: format!(r#"{{"seconds": 0, "i": {i}}}"#).into(),
            props: Props {
                message_id: Some(id.clone()),
                correlation_id: Some(id.clone()),
                reply_to: Some(inbox.clone()),
                ..Props::default()
            },
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        'request: loop {
            assert!(tokio::time::Instant::now() < deadline, "{id}: no reply");
            if broker.publish(&names.requests, m.clone()).await.is_err() {
                sent_again += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let wait = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(Some(r)) = tokio::time::timeout_at(wait, rx.recv()).await {
                let p = &r.message.props;
                assert_eq!(p.header(headers::STATE), Some("succeeded"));
                let corr = p.correlation_id.clone().unwrap();
                replies
                    .entry(corr.clone())
                    .or_default()
                    .insert(p.header(headers::JOB_ID).unwrap().to_string());
                if corr == id {
                    break 'request;
                }
            }
            sent_again += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restart.await.unwrap();
    let n = i;
    eprintln!("{n} requests, {sent_again} sent again");
    assert_eq!(replies.len(), n, "a reply to every request");
    for (id, jobs) in &replies {
        assert_eq!(
            jobs.len(),
            1,
            "{id}: one job (a reply sent again names the same)"
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
