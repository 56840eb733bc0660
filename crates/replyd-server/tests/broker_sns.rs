//! API.md §6 over AWS SNS (topics, read through SQS queues subscribed to
//! them): the broker contract (`common/broker_cases.rs`) against a local
//! SNS and SQS (moto_server on 127.0.0.1:5000), on the SQLite store.
//!
//! Without it the tests skip, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "sns")]

mod common;

use common::sns::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");

/// A worker of an `executor = "sns"` queue on boto3, subscribed to the
/// work topic through a queue of its own: it gets each job once and
/// publishes the result to the reply topic's ARN the message names, which
/// completes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boto3_worker_subscribed_to_the_work_topic_completes_its_jobs() {
    use tokio::io::AsyncBufReadExt;
    if client().await.is_none() || !replyd_testkit::python_has("boto3", "boto3") {
        return;
    }
    let names = Names::new();
    let config = format!(
        "{PULL_QUEUES}\n[queues.remote]\nexecutor = \"sns\"\nwork_queue = \"{}\"\nmax_attempts = 1\n{}",
        names.work,
        section(&names)
    );
    let Some(server) = TestServer::start(&config).await else {
        return;
    };
    common::brokers::until_consuming(&server, &names.replies).await;
    let n = 12;
    let script = format!("{}/tests/boto3/sns_worker.py", env!("CARGO_MANIFEST_DIR"));
    let mut worker = tokio::process::Command::new(replyd_testkit::python())
        .arg(&script)
        .args([common::sns::ENDPOINT, &names.work, &n.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = tokio::io::BufReader::new(worker.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line()).await;
    assert!(
        matches!(&ready, Ok(Ok(Some(l))) if l == "ready"),
        "the worker did not start: {ready:?}"
    );
    let c = server.client(None);
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push((c.submit("remote", json!({"n": i})).await, i));
    }
    for (id, i) in &ids {
        c.wait_state(id, "succeeded").await;
        let result = c.get(&format!("/v1/jobs/{id}/result")).await.json();
        assert_eq!(result, json!({"doubled": i * 2}), "{id}");
    }
    let summary = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        v["handled"].as_array().unwrap().len(),
        n,
        "each job once: {v}"
    );
    let reply_to = v["reply_to"][0].as_str().unwrap();
    assert!(
        reply_to.starts_with("arn:aws:sns:") && reply_to.ends_with(&format!(":{}", names.replies)),
        "{v}"
    );
    server.stop.cancel();
    let _ = server.task.await;
}

/// A requester names where its reply goes, but replyd answers only topics
/// `[sqs]` allows (here moto's account's) and its own: a topic of another
/// account, or a bare name replyd never declared, is a reply nobody may
/// receive, recorded as such and not retried; an allowed topic that does
/// not exist is a requester gone.
#[tokio::test]
async fn replies_go_only_to_allowed_topics() {
    let Some(mut rig) = Rig::start("").await else {
        return;
    };
    let c = rig.server.client(None);
    for (i, to) in [
        "arn:aws:sns:us-east-1:999999999999:elsewhere",
        "some-topic-name",
        "arn:aws:sns:us-east-1:123456789012:replyd-test-no-such-topic",
    ]
    .into_iter()
    .enumerate()
    {
        rig.request_to(to, "{}", Some(&format!("r-{i}")), &format!("c-{i}"), &[])
            .await;
        let (id, lease_id) = lease(&rig.server, "work").await;
        c.complete(&id, &lease_id, json!(1)).await;
        let d = common::brokers::dead_delivery(&rig.server, &id, WAIT).await;
        assert_eq!(d["state"], "dead", "{to}: {d}");
        assert_eq!(d["attempts"], 1, "{to}: not retried: {d}");
    }
    quiet(&mut rig.replies, Duration::from_millis(200)).await;
    rig.finish().await;
}

/// A topic named by an ARN of another account is taken as it is: replyd
/// never creates a topic of that name in its own account (a declare of a
/// foreign topic that does not exist fails), while one of its own account
/// (`[sqs] account_id`), named by ARN, is made when declared.
#[tokio::test]
async fn a_topic_of_another_account_is_never_created_here() {
    use replyd_server::brokers::sns::client::SnsBroker;
    use replyd_server::config::brokers::sqs::SqsConfig;
    if client().await.is_none() {
        return;
    }
    let broker = SnsBroker::new(&SqsConfig {
        account_id: Some("123456789012".into()),
        ..common::sqs::config()
    });
    let name = Names::new().requests;
    let foreign = format!("arn:aws:sns:us-east-1:999999999999:{name}");
    let mine = format!("arn:aws:sns:us-east-1:123456789012:{name}");
    assert!(
        broker.declare(&foreign).await.is_err(),
        "no such topic there"
    );
    let probe = Message {
        body: "{}".into(),
        props: Props::default(),
    };
    assert_eq!(
        broker.publish(&mine, probe.clone()).await.unwrap(),
        Published::Unroutable,
        "nothing was made in replyd's account"
    );
    broker.declare(&mine).await.unwrap();
    assert_eq!(
        broker.publish(&mine, probe).await.unwrap(),
        Published::Accepted
    );
}
