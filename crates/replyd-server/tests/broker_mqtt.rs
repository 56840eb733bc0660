//! API.md §6 over MQTT 5: the broker contract (`common/broker_cases.rs`)
//! against the local Mosquitto, on the SQLite store.
//!
//! Without an MQTT broker on 127.0.0.1:1883 the tests skip, saying so,
//! unless `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "mqtt")]

mod common;

use common::mqtt::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");

fn paho_here() -> bool {
    replyd_testkit::python_has("paho.mqtt.client", "paho-mqtt")
}

/// Waits until replyd consumes `topic`: a probe request is published until
/// the broker routes it, and its reply arrives.
async fn until_consumed(topic: &str) {
    let broker = client().await.unwrap();
    let (inbox, mut replies) = broker.inbox().await.unwrap();
    let probe = Message {
        body: r#"{"seconds": 0}"#.into(),
        props: Props {
            correlation_id: Some("probe".into()),
            reply_to: Some(inbox),
            ..Props::default()
        }
        .with_header(headers::QUEUE, "demo"),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.publish(topic, probe.clone()).await.unwrap() != Published::Accepted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing consumes {topic}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = next(&mut replies).await;
    assert_eq!(reply.props.correlation_id.as_deref(), Some("probe"));
}

/// An MQTT 5 request/response client on Eclipse Paho (Python), written as
/// the pattern has it (not for replyd): a response topic of its own, fresh
/// correlation data per request. It gets one correct reply per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paho_request_response_client_gets_its_replies() {
    if client().await.is_none() || !paho_here() {
        return;
    }
    let names = Names::new();
    let config = format!(
        "{PULL_QUEUES}\n[queues.demo]\nexecutor = \"demo\"\nconcurrency = 64\n{}",
        section(&names)
    );
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    until_consumed(&names.requests).await;
    let n = 40;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/rpc_client.py");
    let out = tokio::process::Command::new(replyd_testkit::python())
        .arg(script)
        .args(["127.0.0.1", "1883", &names.requests, &n.to_string()])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "rpc_client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (sent, replies) = (v["sent"].as_object().unwrap(), &v["replies"]);
    assert_eq!(sent.len(), n);
    let mut jobs = std::collections::HashSet::new();
    for (corr, i) in sent {
        let got = replies[corr]
            .as_array()
            .unwrap_or_else(|| panic!("no reply to {corr}: {replies}"));
        assert_eq!(got.len(), 1, "one reply per request: {got:?}");
        let r = &got[0];
        assert_eq!(r["user_properties"]["x-replyd-state"], "succeeded", "{r}");
        assert_eq!(r["content_type"], "application/json");
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["input"]["i"], *i, "the reply of its own request");
        let job = r["user_properties"]["x-replyd-job-id"].as_str().unwrap();
        assert!(jobs.insert(job.to_string()), "a job per request");
    }
    // Each reply is recorded as delivered (its PUBACK said so).
    let c = server.client(None);
    for id in &jobs {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = c.get(&format!("/v1/jobs/{id}/deliveries")).await.json();
            let d = &log["deliveries"][0];
            if d["state"] == "delivered" {
                assert_eq!(d["channel"], "mqtt");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{d}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    server.stop.cancel();
    let _ = server.task.await;
}

/// A reply to a requester that has gone (nothing subscribes to its
/// response topic) is told apart: the broker says no one receives it
/// (PUBACK 0x10), and the delivery is recorded as such, not retried on.
#[tokio::test]
async fn a_reply_nobody_receives_is_recorded_as_gone() {
    let Some(rig) = Rig::start("").await else {
        return;
    };
    let gone = format!("{}/nobody", rig.names.replies);
    rig.request_to(&gone, "{}", Some("g-1"), "c-g", &[]).await;
    let (id, lease_id) = lease(&rig.server, "work").await;
    let c = rig.server.client(None);
    c.complete(&id, &lease_id, json!(1)).await;
    let d = common::brokers::dead_delivery(&rig.server, &id, WAIT).await;
    assert_eq!(d["state"], "dead", "{d}");
    assert_eq!(d["attempts"], 1, "not retried: {d}");
    let err = d["attempt_log"][0]["error"].as_str().unwrap_or("");
    assert!(err.contains("requester is gone"), "{d}");
    rig.finish().await;
}

/// Publishes from one handle are pipelined; each still gets its own
/// broker's answer: 200 at once, alternating between a topic someone
/// subscribes to and one nobody does, are each told apart, and every
/// accepted one arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_each_get_their_own_answer() {
    let Some(broker) = client().await else { return };
    let names = Names::new();
    let mut rx = broker.subscribe(&names.work, 256).await.unwrap();
    let nobody = format!("{}/nobody", names.work);
    let mut sends = Vec::new();
    for i in 0..200 {
        let (broker, to) = (
            broker.clone(),
            if i % 2 == 0 {
                names.work.clone()
            } else {
                nobody.clone()
            },
        );
        sends.push(tokio::spawn(async move {
            let m = Message {
                body: i.to_string().into(),
                props: Props::default(),
            };
            (i, broker.publish(&to, m).await.unwrap())
        }));
    }
    for s in sends {
        let (i, published) = s.await.unwrap();
        let expected = if i % 2 == 0 {
            Published::Accepted
        } else {
            Published::Unroutable
        };
        assert_eq!(published, expected, "publish {i}");
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 100 {
        let m = next(&mut rx).await;
        let i: usize = String::from_utf8_lossy(&m.body).parse().unwrap();
        assert_eq!(i % 2, 0);
        assert!(seen.insert(i), "{i} twice");
    }
    quiet(&mut rx, Duration::from_millis(300)).await;
}

/// A request that cannot be a job, when nobody subscribes to the
/// dead-letter topic (MQTT keeps nothing there): the requester is still
/// told why at once, no job is made, and the request is not redelivered
/// over and over.
#[tokio::test]
async fn a_rejected_request_with_no_dead_letter_subscriber_is_still_answered() {
    let Some(mut rig) = Rig::start("").await else {
        return;
    };
    rig.request("not json", Some("bad-1"), "c-bad", &[]).await;
    let r = rig.reply().await;
    assert_eq!(r.props.header(headers::STATE), Some("rejected"));
    assert_eq!(r.props.correlation_id.as_deref(), Some("c-bad"));
    quiet(&mut rig.replies, Duration::from_millis(500)).await;
    let jobs = rig.server.client(None).get("/v1/jobs").await.json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0);
    rig.finish().await;
}
