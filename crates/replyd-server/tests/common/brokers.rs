//! What the broker tests share beyond the contract suite: waiting until
//! replyd consumes a source, and what every broker's cluster test checks
//! once its nodes consume one request source.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use replyd_server::brokers::{Broker, Message, Props, Published, headers};

use super::{Names, TestServer};

/// Waits until `server` reports (`replyd_broker_consuming` in /metrics)
/// that it consumes `source`: a broker whose destinations exist only while
/// someone subscribes keeps nothing published before.
pub async fn until_consuming(server: &TestServer, source: &str) {
    let needle = format!("source=\"{source}\"}} 1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = server.client(None).get("/metrics").await;
        let text = String::from_utf8_lossy(&m.body);
        if text
            .lines()
            .any(|l| l.starts_with("replyd_broker_consuming") && l.ends_with(&needle))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replyd does not consume {source}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first delivery of job `id` once it is dead (or as it is after
/// `wait`): a reply nobody may receive is dead at its first attempt.
pub async fn dead_delivery(server: &TestServer, id: &str, wait: Duration) -> serde_json::Value {
    let c = server.client(None);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let log = c.get(&format!("/v1/jobs/{id}/deliveries")).await.json();
        let d = log["deliveries"][0].clone();
        if d["state"] == "dead" || tokio::time::Instant::now() > deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Request `i`: the demo queue's input, replying to `names.work`.
fn request(names: &Names, i: usize) -> Message {
    Message {
        body: format!(r#"{{"seconds": 0, "i": {i}}}"#).into(),
        props: Props {
            message_id: Some(format!("m-{i}")),
            correlation_id: Some(format!("c-{i}")),
            reply_to: Some(names.work.clone()),
            ..Props::default()
        },
    }
}

/// Publishes until the broker routes it (a topic nobody subscribes to yet
/// drops what comes).
async fn publish(broker: &Arc<dyn Broker>, to: &str, m: Message) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.publish(to, m.clone()).await.unwrap() != Published::Accepted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing consumes {to}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` requests to `names.requests`, consumed by `nodes` (on one store):
/// each becomes one job and gets one reply, however the broker spreads
/// them; then duplicates of 30 of them, spread over the nodes, make no new
/// job and get the reply again with the same correlation id and job.
/// `replies` receives at `names.work` (subscribed before the requests).
pub async fn one_job_and_one_reply_per_request(
    broker: &Arc<dyn Broker>,
    names: &Names,
    replies: &mut tokio::sync::mpsc::Receiver<replyd_server::brokers::Received>,
    nodes: &[TestServer],
    n: usize,
    rereads: Rereads,
) {
    for i in 0..n {
        publish(broker, &names.requests, request(names, i)).await;
    }
    let collect = |got: &mut HashMap<String, Vec<String>>, m: &Message| {
        assert_eq!(m.props.header(headers::STATE), Some("succeeded"));
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let corr = m.props.correlation_id.clone().unwrap();
        assert_eq!(
            format!("c-{}", body["input"]["i"]),
            corr,
            "its own request's reply"
        );
        got.entry(corr)
            .or_default()
            .push(m.props.header(headers::JOB_ID).unwrap().to_string());
    };
    let mut first: HashMap<String, Vec<String>> = HashMap::new();
    while first.len() < n {
        // Generous: three nodes joining one consumer group on a loaded
        // machine have taken more than 30 s to settle (Kafka's mock cluster).
        let r = tokio::time::timeout(Duration::from_secs(60), replies.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} replies", first.len()))
            .unwrap();
        collect(&mut first, &r.message);
        r.settle.ack().await.unwrap();
    }
    // No more: one reply per request (or, where a rebalance may have
    // handed a request to another node before its offset was committed,
    // the same job's reply again).
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(1), replies.recv()).await {
        assert_eq!(
            rereads,
            Rereads::AfterRebalance,
            "a second reply: {:?}",
            r.message.props
        );
        collect(&mut first, &r.message);
        r.settle.ack().await.unwrap();
    }
    for (corr, jobs) in &first {
        assert!(
            jobs.iter().all(|j| j == &jobs[0]),
            "{corr}: replies of two jobs: {jobs:?}"
        );
    }
    let jobs: HashSet<&String> = first.values().flatten().collect();
    assert_eq!(jobs.len(), n, "a job per request");

    for i in 0..30 {
        publish(broker, &names.requests, request(names, i)).await;
    }
    let mut again: HashMap<String, Vec<String>> = HashMap::new();
    while again.len() < 30 {
        let r = tokio::time::timeout(Duration::from_secs(30), replies.recv())
            .await
            .expect("the duplicates' replies")
            .unwrap();
        collect(&mut again, &r.message);
        r.settle.ack().await.unwrap();
    }
    for (corr, jobs) in &again {
        assert!(
            jobs.iter().all(|j| j == &first[corr][0]),
            "{corr}: the same job: {jobs:?} after {:?}",
            first[corr]
        );
    }
    let listed = nodes[1]
        .client(None)
        .get(&format!("/v1/jobs?queue=demo&limit={}", n + 50))
        .await
        .json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), n);
}

/// Whether a broker may deliver a request again without a requester
/// sending it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rereads {
    Never,
    /// Kafka: a partition a consumer-group rebalance moves to another
    /// node is read again from its last committed offset, so a request
    /// replyd had accepted but not yet committed comes again. It finds its
    /// job (no second job) and is answered again, as API.md allows for a
    /// duplicate; the test's rebalances come from nodes joining the group
    /// late on a loaded machine.
    AfterRebalance,
}

/// How a broker's requesters ride out an outage of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requesters {
    /// Each request is published again until the broker confirms it
    /// (what RabbitMQ and an MQTT broker confirmed, they keep); replies go
    /// to `names.work`, a destination that outlives the outage.
    UntilConfirmed,
    /// Each request is sent again (the same message id) until its reply
    /// comes, at an inbox: core NATS keeps nothing, so this is what its
    /// requesters do anyway.
    UntilAnswered,
}

/// A broker restart while requests flow: `restart` runs in the middle of
/// `n` requests; every request gets its reply, each from one job, replyd's
/// consumers resume by themselves, and the queue lists a job per request.
/// `server` consumes `names.requests` into its `demo` queue.
pub async fn requests_and_replies_survive_a_restart(
    broker: &Arc<dyn Broker>,
    names: &Names,
    server: &TestServer,
    requesters: Requesters,
    restart: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let request = |i: usize, reply_to: &str| Message {
        body: format!(r#"{{"seconds": 0, "i": {i}}}"#).into(),
        props: Props {
            message_id: Some(format!("r-{i}")),
            correlation_id: Some(format!("r-{i}")),
            reply_to: Some(reply_to.to_string()),
            ..Props::default()
        },
    };
    let take = |replies: &mut HashMap<String, HashSet<String>>, m: &Message| {
        assert_eq!(m.props.header(headers::STATE), Some("succeeded"));
        replies
            .entry(m.props.correlation_id.clone().unwrap())
            .or_default()
            .insert(m.props.header(headers::JOB_ID).unwrap().to_string());
    };
    let mut replies: HashMap<String, HashSet<String>> = HashMap::new();
    let n = match requesters {
        Requesters::UntilConfirmed => {
            let n = 120;
            let mut rx = broker.subscribe(&names.work, 64).await.unwrap();
            let publisher = {
                let (broker, names) = (broker.clone(), names.clone());
                tokio::spawn(async move {
                    let mut retried = 0;
                    for i in 0..n {
                        let m = request(i, &names.work);
                        // One not confirmed may or may not have arrived;
                        // its message id makes a second one harmless.
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
            let outage = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(800)).await;
                restart.await;
            });
            // Every reply, subscribing again whenever the connection drops
            // (a durable queue, a persistent session: what arrived
            // meanwhile waits there).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            'all: while replies.len() < n && tokio::time::Instant::now() < deadline {
                loop {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => {
                            take(&mut replies, &r.message);
                            let _ = r.settle.ack().await;
                            if replies.len() == n {
                                break 'all;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => break 'all,
                    }
                }
                match broker.subscribe(&names.work, 64).await {
                    Ok(again) => rx = again,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            outage.await.unwrap();
            let retried = publisher.await.unwrap();
            assert!(retried > 0, "the outage came while requests flowed");
            n
        }
        Requesters::UntilAnswered => {
            until_consuming(server, &names.requests).await;
            let (inbox, mut rx) = broker.inbox().await.unwrap();
            let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let outage = {
                let restarted = restarted.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    restart.await;
                    restarted.store(true, std::sync::atomic::Ordering::SeqCst);
                })
            };
            // From before the outage until after it: at least 60 requests,
            // and 10 more once the server is back.
            let (mut i, mut after) = (0, 0);
            while i < 60 || after < 10 {
                if restarted.load(std::sync::atomic::Ordering::SeqCst) {
                    after += 1;
                }
                i += 1;
                let m = request(i, &inbox);
                let id = m.props.correlation_id.clone().unwrap();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                'request: loop {
                    assert!(tokio::time::Instant::now() < deadline, "{id}: no reply");
                    if broker.publish(&names.requests, m.clone()).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    let wait = tokio::time::Instant::now() + Duration::from_secs(2);
                    while let Ok(Some(r)) = tokio::time::timeout_at(wait, rx.recv()).await {
                        take(&mut replies, &r.message);
                        if r.message.props.correlation_id.as_deref() == Some(id.as_str()) {
                            break 'request;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outage.await.unwrap();
            i
        }
    };
    assert_eq!(replies.len(), n, "a reply to every request");
    for (corr, jobs) in &replies {
        assert_eq!(
            jobs.len(),
            1,
            "{corr}: one job (a reply again names the same)"
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
}

/// Stops the service listening on `port` (SIGTERM to `pid`), waits for it
/// to go, two seconds more, then runs `start` and waits for it to listen.
pub async fn restart_service(name: &str, port: u16, pid: i32, start: &mut std::process::Command) {
    let open = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap_or_else(|e| panic!("stop {name}: {e}"));
    for _ in 0..100 {
        if !open() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!open(), "{name} stopped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = start
        .status()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    assert!(status.success(), "{name} started");
    for _ in 0..200 {
        if open() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} did not come back");
}

/// The pid of the one process named `program` (`pidof`).
pub fn pid_of(program: &str) -> i32 {
    let out = std::process::Command::new("pidof")
        .arg(program)
        .output()
        .expect("pidof runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("{program} runs"))
        .parse()
        .expect("a pid")
}
