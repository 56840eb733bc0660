// The broker contract (API.md §6): the cases every message broker passes.
//
// Included by one test binary per broker, which defines beside `BACKEND`:
// - `async fn client() -> Option<Arc<dyn Broker>>`: a handle of the test's
//   own on the broker (`None`: the broker is absent, and the test skips,
//   saying so);
// - `fn section(names: &Names) -> String`: the broker's configuration
//   section for these destinations (its request source, reply source, a
//   quick reply retry schedule);
// - `const EXECUTOR: &str`: the broker's executor name;
// - `async fn cleanup(names: &Names)`: removes the test's destinations.
// Each case runs a real replyd (the harness's store) and plays the
// requester, the worker, or both, through the client handle.

use std::sync::Arc;
use std::time::Duration;

use replyd_server::brokers::{Broker, Message, Props, Published, Received, headers};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use common::{Names, PULL_QUEUES, TestServer};

/// How long a case waits for what the broker carries. Generous: on a
/// loaded 2-core machine a Kafka consumer group (librdkafka's mock
/// cluster) has taken more than 15 s to assign replyd's reply consumer its
/// partitions (CI runs of 2026-12-06/07; never seen alone). Up to
/// 2026-12-07 that consumer shared the request consumer's group, which
/// the mock cluster stalled for 44 s now and then (see
/// `brokers/kafka/client.rs`, Groups).
const WAIT: Duration = Duration::from_secs(45);

/// A W3C `traceparent` (the specification's example) and a `tracestate`.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7";

/// A server with the broker configured, the test's own broker handle, and
/// an inbox for replies.
struct Rig {
    server: TestServer,
    broker: Arc<dyn Broker>,
    names: Names,
    inbox: String,
    replies: mpsc::Receiver<Received>,
}

impl Rig {
    async fn start(extra: &str) -> Option<Rig> {
        let broker = client().await?;
        let names = Names::new();
        let config = format!("{PULL_QUEUES}\n{extra}\n{}", section(&names));
        let server = TestServer::start(&config).await?;
        // As a requester would: make sure the request queue exists before
        // publishing to it (replyd declares it too, when it starts
        // consuming). Where a destination exists only while someone
        // subscribes (MQTT, NATS), what comes before replyd does is lost:
        // wait for it.
        broker.declare(&names.requests).await.unwrap();
        common::brokers::until_consuming(&server, &names.requests).await;
        let (inbox, replies) = broker.inbox().await.expect("an inbox");
        Some(Rig {
            server,
            broker,
            names,
            inbox,
            replies,
        })
    }

    /// Publishes a request: `body`, replying to the inbox with
    /// `correlation`, and these headers.
    async fn request(&self, body: &str, id: Option<&str>, correlation: &str, hs: &[(&str, &str)]) {
        self.request_to(&self.inbox, body, id, correlation, hs).await
    }

    /// Publishes a request as `request` does, replying to `reply_to`.
    async fn request_to(
        &self,
        reply_to: &str,
        body: &str,
        id: Option<&str>,
        correlation: &str,
        hs: &[(&str, &str)],
    ) {
        let mut props = Props {
            message_id: id.map(str::to_string),
            correlation_id: Some(correlation.to_string()),
            reply_to: Some(reply_to.to_string()),
            content_type: Some("application/json".into()),
            ..Props::default()
        };
        for (k, v) in hs {
            props = props.with_header(k, *v);
        }
        let message = Message {
            body: body.to_string().into(),
            props,
        };
        // On a broker whose topics exist only while someone subscribes
        // (MQTT), a request is unroutable (and dropped) until replyd has
        // subscribed: the requester publishes it again.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let published = self
                .broker
                .publish(&self.names.requests, message.clone())
                .await
                .expect("the request is published");
            if published == Published::Accepted {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing consumes {}",
                self.names.requests
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn reply(&mut self) -> Message {
        next(&mut self.replies).await
    }

    async fn finish(self) {
        self.server.stop.cancel();
        let _ = self.server.task.await;
        cleanup(&self.names).await;
    }
}

async fn next(rx: &mut mpsc::Receiver<Received>) -> Message {
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("the subscription is open");
    let m = r.message.clone();
    r.settle.ack().await.unwrap();
    m
}

/// Nothing arrives within `d`.
async fn quiet(rx: &mut mpsc::Receiver<Received>, d: Duration) {
    if let Ok(Some(r)) = tokio::time::timeout(d, rx.recv()).await {
        panic!("unexpected message: {:?}", r.message);
    }
}

fn json_of(m: &Message) -> Value {
    serde_json::from_slice(&m.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&m.body)))
}

/// The worker: leases one job of `queue` over HTTP.
async fn lease(s: &TestServer, queue: &str) -> (String, String) {
    let (job, lease) = s.client(None).lease(queue).await;
    (job["id"].as_str().unwrap().to_string(), lease)
}

#[tokio::test]
async fn a_request_becomes_a_job_and_the_reply_carries_its_correlation_id() {
    let Some(mut rig) = Rig::start("").await else { return };
    let hs = [
        (headers::QUEUE, "work"),
        (headers::TRACEPARENT, TRACEPARENT),
        (headers::TRACESTATE, TRACESTATE),
    ];
    rig.request(r#"{"n":1}"#, Some("m-1"), "corr-1", &hs).await;
    let (id, lease_id) = lease(&rig.server, "work").await;
    let c = rig.server.client(None);
    let job = c.get(&format!("/v1/jobs/{id}")).await.json();
    assert_eq!(job["queue"], "work");
    let r = c.complete(&id, &lease_id, json!({"ok": 1})).await;
    assert_eq!(r.status, 200);
    let reply = rig.reply().await;
    assert_eq!(reply.props.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(reply.props.header(headers::JOB_ID), Some(id.as_str()));
    assert_eq!(reply.props.header(headers::STATE), Some("succeeded"));
    assert_eq!(reply.props.header(headers::EVENT), Some("job.succeeded"));
    assert_eq!(reply.props.content_type.as_deref(), Some("application/json"));
    assert_eq!(json_of(&reply), json!({"ok": 1}));
    // The request's trace goes on with its reply (replyd exports no spans
    // here, so it passes the requester's position on unchanged).
    assert_eq!(reply.props.header(headers::TRACEPARENT), Some(TRACEPARENT));
    assert_eq!(reply.props.header(headers::TRACESTATE), Some(TRACESTATE));
    // The reply has a stable message id (its delivery's), and is in the
    // job's delivery log, delivered once its confirm is recorded.
    let deadline = tokio::time::Instant::now() + WAIT;
    let d = loop {
        let log = c.get(&format!("/v1/jobs/{id}/deliveries")).await.json();
        let d = log["deliveries"][0].clone();
        if d["state"] == "delivered" || tokio::time::Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(d["channel"], EXECUTOR);
    assert_eq!(d["correlation_id"], "corr-1");
    assert_eq!(d["reply_to"], rig.inbox.as_str());
    assert_eq!(d["state"], "delivered", "{d}");
    assert!(reply.props.message_id.as_deref().unwrap().starts_with("msg_"));
    // A request without x-replyd-queue goes to the default queue.
    rig.request("{}", Some("m-2"), "corr-2", &[]).await;
    let (id2, lease2) = lease(&rig.server, "work").await;
    c.complete(&id2, &lease2, json!(2)).await;
    let reply = rig.reply().await;
    assert_eq!(reply.props.correlation_id.as_deref(), Some("corr-2"));
    assert_eq!(reply.props.header(headers::TRACEPARENT), None, "in no trace");
    rig.finish().await;
}

#[tokio::test]
async fn a_duplicate_makes_no_second_job_and_gets_its_reply_again() {
    let Some(mut rig) = Rig::start("").await else { return };
    // Twice before the job finishes: one job.
    rig.request(r#"{"n":1}"#, Some("dup-1"), "c-a", &[]).await;
    rig.request(r#"{"n":1}"#, Some("dup-1"), "c-a", &[]).await;
    let (id, lease_id) = lease(&rig.server, "work").await;
    let c = rig.server.client(None);
    // The same requester's duplicate of a running job is owed the reply
    // already: one reply, not two. A requester that came back with a new
    // callback queue (it restarted) and sent its request again is owed the
    // outcome there too, with its own correlation id.
    let (restarted, mut restarted_replies) = rig.broker.inbox().await.expect("an inbox");
    rig.request_to(&restarted, r#"{"n":1}"#, Some("dup-1"), "c-r", &[])
        .await;
    // Give both duplicates a moment to be handled while the job runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.complete(&id, &lease_id, json!("once")).await;
    let first = rig.reply().await;
    assert_eq!(first.props.header(headers::JOB_ID), Some(id.as_str()));
    assert_eq!(first.props.correlation_id.as_deref(), Some("c-a"));
    let theirs = next(&mut restarted_replies).await;
    assert_eq!(theirs.props.correlation_id.as_deref(), Some("c-r"));
    assert_eq!(theirs.props.header(headers::JOB_ID), Some(id.as_str()));
    assert_eq!(json_of(&theirs), json!("once"));
    quiet(&mut rig.replies, Duration::from_millis(500)).await;
    quiet(&mut restarted_replies, Duration::from_millis(100)).await;
    // Again once it has finished: its reply again, to the duplicate's
    // correlation id, with the same job.
    rig.request(r#"{"n":1}"#, Some("dup-1"), "c-b", &[]).await;
    let again = rig.reply().await;
    assert_eq!(again.props.correlation_id.as_deref(), Some("c-b"));
    assert_eq!(again.props.header(headers::JOB_ID), Some(id.as_str()));
    assert_eq!(json_of(&again), json!("once"));
    let jobs = c.get("/v1/jobs?queue=work").await.json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    // The same message id with another body is a different request reusing
    // the id: dead-lettered, not a job.
    rig.request(r#"{"n":2}"#, Some("dup-1"), "c-c", &[]).await;
    let rejected = rig.reply().await;
    assert_eq!(rejected.props.header(headers::STATE), Some("rejected"));
    assert_eq!(rejected.props.correlation_id.as_deref(), Some("c-c"));
    let jobs = c.get("/v1/jobs?queue=work").await.json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);
    rig.finish().await;
}

#[tokio::test]
async fn what_cannot_be_a_request_is_dead_lettered_with_the_reason() {
    let Some(mut rig) = Rig::start("").await else { return };
    let mut dead = rig.broker.subscribe(&rig.names.dead, 8).await.unwrap();
    for (body, hs, reason) in [
        ("not json", vec![], "JSON"),
        ("{}", vec![(headers::QUEUE, "nope")], "no queue named \"nope\""),
        ("{}", vec![(headers::MAX_ATTEMPTS, "many")], headers::MAX_ATTEMPTS),
    ] {
        rig.request(body, None, "bad", &hs).await;
        let d = next(&mut dead).await;
        assert_eq!(String::from_utf8_lossy(&d.body), body, "as it came");
        assert_eq!(d.props.correlation_id.as_deref(), Some("bad"));
        let why = d.props.header(headers::ERROR).unwrap();
        assert!(why.contains(reason), "{why}");
        // The requester learns at once.
        let r = rig.reply().await;
        assert_eq!(r.props.header(headers::STATE), Some("rejected"));
        assert_eq!(r.props.content_type.as_deref(), Some("application/problem+json"));
        assert_eq!(json_of(&r)["status"], 400);
    }
    let jobs = rig.server.client(None).get("/v1/jobs").await.json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0);
    rig.finish().await;
}

#[tokio::test]
async fn progress_replies_come_when_asked_and_a_failure_replies_its_error() {
    let Some(mut rig) = Rig::start("").await else { return };
    rig.request("{}", Some("p-1"), "p", &[(headers::PROGRESS, "true")])
        .await;
    let (id, lease_id) = lease(&rig.server, "work").await;
    let c = rig.server.client(None);
    let r = c
        .post(
            &format!("/v1/jobs/{id}/progress"),
            json!({"lease_id": lease_id, "percent": 50, "message": "half"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let progress = rig.reply().await;
    assert_eq!(progress.props.header(headers::EVENT), Some("job.progress"));
    assert_eq!(progress.props.header(headers::STATE), Some("running"));
    assert_eq!(json_of(&progress)["progress"]["percent"], 50.0);
    let r = c
        .post(
            &format!("/v1/jobs/{id}/fail"),
            json!({"lease_id": lease_id, "error": {"code": "bad-input", "message": "no pages"}, "retry": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let failed = rig.reply().await;
    assert_eq!(failed.props.header(headers::STATE), Some("failed"));
    assert_eq!(failed.props.correlation_id.as_deref(), Some("p"));
    assert_eq!(json_of(&failed)["error"]["code"], "bad-input");
    // Without the header: only the terminal reply.
    rig.request("{}", Some("p-2"), "q", &[]).await;
    let (id, lease_id) = lease(&rig.server, "work").await;
    c.post(
        &format!("/v1/jobs/{id}/progress"),
        json!({"lease_id": lease_id, "percent": 10}),
    )
    .await;
    c.complete(&id, &lease_id, json!(null)).await;
    let only = rig.reply().await;
    assert_eq!(only.props.header(headers::EVENT), Some("job.succeeded"));
    rig.finish().await;
}

/// A replyd whose queue `remote` hands its jobs to workers over the
/// broker (`queue`: more of the queue's keys; `top`: more top-level
/// keys), the test's broker handle, its destinations, and a subscription
/// to the work queue, once replyd takes the workers' replies.
struct Workers {
    server: TestServer,
    broker: Arc<dyn Broker>,
    names: Names,
    work: mpsc::Receiver<Received>,
}

impl Workers {
    async fn start(queue: &str, top: &str) -> Option<Workers> {
        let names = Names::new();
        let extra = format!(
            "[queues.remote]\nexecutor = \"{EXECUTOR}\"\nwork_queue = \"{}\"\n{queue}\n",
            names.work
        );
        let broker = client().await?;
        let config = format!("{top}\n{PULL_QUEUES}\n{extra}\n{}", section(&names));
        let server = TestServer::start(&config).await?;
        let work = broker.subscribe(&names.work, 8).await.unwrap();
        broker.declare(&names.replies).await.unwrap();
        common::brokers::until_consuming(&server, &names.replies).await;
        Some(Workers {
            server,
            broker,
            names,
            work,
        })
    }
}

/// A broker executor is held to its queue's `max_running` as pull workers
/// are: the second job is published only once the first one's reply is in.
#[tokio::test]
async fn the_broker_executor_keeps_to_max_running() {
    let Some(w) = Workers::start("max_attempts = 1\nmax_running = 1", "").await else { return };
    let Workers { server, broker, names, mut work } = w;
    let c = server.client(None);
    let a = c.submit("remote", json!({"n": 1})).await;
    let b = c.submit("remote", json!({"n": 2})).await;
    let first = next(&mut work).await;
    assert_eq!(first.props.correlation_id.as_deref(), Some(a.as_str()));
    quiet(&mut work, Duration::from_secs(1)).await;
    let done = Message {
        body: "{}".into(),
        props: Props {
            correlation_id: Some(a.clone()),
            content_type: Some("application/json".into()),
            ..Props::default()
        },
    };
    broker.publish(&names.replies, done).await.unwrap();
    let second = next(&mut work).await;
    assert_eq!(second.props.correlation_id.as_deref(), Some(b.as_str()));
    c.wait_state(&a, "succeeded").await;
}

#[tokio::test]
async fn the_broker_executor_hands_jobs_to_workers_and_their_replies_complete_them() {
    let Some(w) = Workers::start("max_attempts = 1", "").await else { return };
    let Workers { server, broker, names, mut work } = w;
    let c = server.client(None);
    // Success: the result is the reply's body, with its content type.
    let submitted = c
        .send(
            reqwest::Method::POST,
            "/v1/jobs",
            &[("content-type", "application/json"), ("traceparent", TRACEPARENT)],
            Some(br#"{"queue": "remote", "input": {"pages": 3}}"#.to_vec()),
        )
        .await;
    assert_eq!(submitted.status, 202);
    let id = submitted.json()["id"].as_str().unwrap().to_string();
    let job = next(&mut work).await;
    // The worker gets the submitter's trace.
    assert_eq!(job.props.header(headers::TRACEPARENT), Some(TRACEPARENT));
    assert_eq!(job.props.correlation_id.as_deref(), Some(id.as_str()));
    assert_eq!(job.props.header(headers::JOB_ID), Some(id.as_str()));
    assert_eq!(job.props.header(headers::ATTEMPT), Some("1"));
    assert_eq!(json_of(&job), json!({"pages": 3}));
    // replyd's reply destination, by name (or, on SNS, by its topic's ARN,
    // which is how a worker outside replyd publishes to it).
    let reply_to = job.props.reply_to.clone().unwrap();
    assert!(
        reply_to == names.replies || reply_to.ends_with(&format!(":{}", names.replies)),
        "{reply_to}"
    );
    // A progress report first.
    let progress = Message {
        body: Default::default(),
        props: Props {
            correlation_id: Some(id.clone()),
            ..Props::default()
        }
        .with_header(headers::STATE, "running")
        .with_header(headers::PERCENT, "40")
        .with_header(headers::MESSAGE, "page 1"),
    };
    broker.publish(&reply_to, progress).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let j = c.get(&format!("/v1/jobs/{id}")).await.json();
        if j["progress"]["percent"] == 40.0 {
            assert_eq!(j["progress"]["message"], "page 1");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = Message {
        body: "%PDF-1.7".into(),
        props: Props {
            correlation_id: Some(id.clone()),
            content_type: Some("application/pdf".into()),
            ..Props::default()
        },
    };
    broker.publish(&reply_to, done).await.unwrap();
    c.wait_state(&id, "succeeded").await;
    let r = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(r.header("content-type").as_deref(), Some("application/pdf"));
    assert_eq!(&r.body[..], b"%PDF-1.7");
    // Failure: the body is the reason.
    let id = c.submit("remote", json!({})).await;
    let job = next(&mut work).await;
    let failed = Message {
        body: "out of paper".into(),
        props: Props {
            correlation_id: job.props.correlation_id.clone(),
            ..Props::default()
        }
        .with_header(headers::STATE, "failed"),
    };
    broker.publish(&reply_to, failed).await.unwrap();
    let j = c.wait_state(&id, "failed").await;
    assert_eq!(j["error"]["message"], "out of paper");
    // A reply naming no job, or a job that is not running, is dropped.
    let stray = Message {
        body: "{}".into(),
        props: Props {
            correlation_id: Some("not-a-job".into()),
            ..Props::default()
        },
    };
    broker.publish(&reply_to, stray).await.unwrap();
    server.stop.cancel();
    let _ = server.task.await;
    cleanup(&names).await;
}

/// A worker streams its output as numbered chunks: each lands once and in
/// order, however they are taken (concurrently, a duplicate among them);
/// a chunk of an earlier attempt is dropped; the job's end closes the
/// output, which is its result when the worker gave none.
#[tokio::test]
async fn a_workers_output_chunks_land_once_and_in_order() {
    let Some(w) = Workers::start("max_attempts = 1", "").await else { return };
    let Workers { server, broker, names, mut work } = w;
    let c = server.client(None);
    let id = c.submit("remote", json!({})).await;
    let job = next(&mut work).await;
    let reply_to = job.props.reply_to.clone().unwrap();
    let chunk = |seq: u64, attempt: &str, text: &str| Message {
        body: text.to_string().into(),
        props: Props {
            correlation_id: Some(id.clone()),
            content_type: Some("text/plain".into()),
            ..Props::default()
        }
        .with_header(headers::STATE, "output")
        .with_header(headers::SEQ, seq.to_string())
        .with_header(headers::ATTEMPT, attempt),
    };
    let words: Vec<String> = (0..12).map(|i| format!("word{i} ")).collect();
    for (i, w) in words.iter().enumerate() {
        broker.publish(&reply_to, chunk(i as u64, "1", w)).await.unwrap();
        if i == 5 {
            // A redelivery (the same chunk again), and a straggler of
            // another attempt.
            broker.publish(&reply_to, chunk(3, "1", &words[3])).await.unwrap();
            broker.publish(&reply_to, chunk(6, "7", "stale ")).await.unwrap();
        }
    }
    let want: String = words.concat();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = c.get(&format!("/v1/jobs/{id}/output?offset=-1")).await;
        let got = String::from_utf8_lossy(&r.body).to_string();
        if got.len() >= want.len() {
            assert_eq!(got, want);
            break;
        }
        assert!(want.starts_with(&got), "{got}");
        assert!(tokio::time::Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = Message {
        body: "null".into(),
        props: Props {
            correlation_id: Some(id.clone()),
            content_type: Some("application/json".into()),
            ..Props::default()
        },
    };
    broker.publish(&reply_to, done).await.unwrap();
    c.wait_state(&id, "succeeded").await;
    let r = c.get(&format!("/v1/jobs/{id}/output?offset=-1")).await;
    assert_eq!(r.header("stream-closed").as_deref(), Some("true"));
    assert_eq!(String::from_utf8_lossy(&r.body), want);
    let r = c.get(&format!("/v1/jobs/{id}/result")).await;
    assert_eq!(String::from_utf8_lossy(&r.body), want);
    server.stop.cancel();
    let _ = server.task.await;
    cleanup(&names).await;
}

#[tokio::test]
async fn a_job_whose_worker_never_replies_is_retried_then_fails() {
    let Some(w) = Workers::start("max_attempts = 2\ntimeout = 1", "reaper_interval = 0.2").await
    else {
        return;
    };
    let Workers { server, broker, names, mut work } = w;
    let c = server.client(None);
    let id = c.submit("remote", json!({})).await;
    for attempt in ["1", "2"] {
        let job = next(&mut work).await;
        assert_eq!(job.props.correlation_id.as_deref(), Some(id.as_str()));
        assert_eq!(job.props.header(headers::ATTEMPT), Some(attempt));
    }
    let j = c.wait_state(&id, "failed").await;
    assert_eq!(j["attempt"], 2);
    quiet(&mut work, Duration::from_millis(500)).await;
    // A late reply changes nothing.
    let late = Message {
        body: "\"late\"".into(),
        props: Props {
            correlation_id: Some(id.clone()),
            ..Props::default()
        },
    };
    broker.publish(&names.replies, late).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.state(&id).await, "failed");
    server.stop.cancel();
    let _ = server.task.await;
    cleanup(&names).await;
}

/// A message given back (replyd does so when it cannot take a request
/// now: the store is unavailable) is received again, once, as it was; one
/// acknowledged is not.
#[tokio::test]
async fn a_message_given_back_comes_again_and_an_acknowledged_one_does_not() {
    let Some(broker) = client().await else { return };
    let names = Names::new();
    broker.declare(&names.work).await.unwrap();
    let mut rx = broker.subscribe(&names.work, 8).await.unwrap();
    let m = Message {
        body: r#"{"n": 7}"#.into(),
        props: Props {
            message_id: Some("given-back".into()),
            correlation_id: Some("c-7".into()),
            ..Props::default()
        }
        .with_header(headers::QUEUE, "work"),
    };
    assert_eq!(
        broker.publish(&names.work, m.clone()).await.unwrap(),
        Published::Accepted
    );
    let first = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(first.message.body, m.body);
    first.settle.requeue().await.unwrap();
    let again = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(again.message.body, m.body);
    assert_eq!(again.message.props.message_id.as_deref(), Some("given-back"));
    assert_eq!(again.message.props.correlation_id.as_deref(), Some("c-7"));
    assert_eq!(again.message.props.header(headers::QUEUE), Some("work"));
    again.settle.ack().await.unwrap();
    quiet(&mut rx, Duration::from_millis(500)).await;
    cleanup(&names).await;
}
