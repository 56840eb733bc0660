//! API.md §6 over NATS: the broker contract (`common/broker_cases.rs`)
//! against the local NATS server, on the SQLite store.
//!
//! Without a NATS server on 127.0.0.1:4222 the tests skip, saying so,
//! unless `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "nats")]

mod common;

use common::nats::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");

fn nats_py_here() -> bool {
    replyd_testkit::python_has("nats", "nats-py")
}

/// A NATS requester on nats-py (the official Python client, not written
/// for replyd): concurrent `request()` calls, each with its own
/// `Nats-Msg-Id`, get one correct reply each, each from a job of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_py_requester_gets_its_replies() {
    if client().await.is_none() || !nats_py_here() {
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
    common::brokers::until_consuming(&server, &names.requests).await;
    let n = 40;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/nats_py/request_client.py"
    );
    let out = tokio::process::Command::new(replyd_testkit::python())
        .arg(script)
        .args([common::nats::URL, &names.requests, &n.to_string()])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "request_client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (sent, replies) = (v["sent"].as_object().unwrap(), &v["replies"]);
    assert_eq!(sent.len(), n);
    assert_eq!(v["again"], 0, "no request timed out");
    let mut jobs = std::collections::HashSet::new();
    for (msg_id, i) in sent {
        let got = replies[msg_id]
            .as_array()
            .unwrap_or_else(|| panic!("no reply to {msg_id}: {replies}"));
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(r["headers"]["x-replyd-state"], "succeeded", "{r}");
        assert_eq!(r["headers"]["Content-Type"], "application/json");
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["input"]["i"], *i, "the reply of its own request");
        let job = r["headers"]["x-replyd-job-id"].as_str().unwrap();
        assert!(jobs.insert(job.to_string()), "a job per request");
    }
    let listed = server
        .client(None)
        .get("/v1/jobs?queue=demo&limit=100")
        .await
        .json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), n);
    server.stop.cancel();
    let _ = server.task.await;
}

/// A requester whose request timed out sends it again, with the same
/// `Nats-Msg-Id`, from a new inbox (as `request()` does): no second job,
/// and the reply goes to the new inbox too, once the job finishes.
#[tokio::test]
async fn a_request_sent_again_from_a_new_inbox_gets_its_reply_there() {
    let Some(mut rig) = Rig::start("").await else {
        return;
    };
    rig.request("{}", Some("again-1"), "c-1", &[]).await;
    let (id, lease_id) = lease(&rig.server, "work").await;
    let (second, mut second_replies) = rig.broker.inbox().await.unwrap();
    rig.request_to(&second, "{}", Some("again-1"), "c-1", &[])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = rig.server.client(None);
    c.complete(&id, &lease_id, json!("done")).await;
    for m in [rig.reply().await, next(&mut second_replies).await] {
        assert_eq!(m.props.header(headers::JOB_ID), Some(id.as_str()));
        assert_eq!(json_of(&m), json!("done"));
    }
    let jobs = c.get("/v1/jobs?queue=work").await.json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);
    rig.finish().await;
}
