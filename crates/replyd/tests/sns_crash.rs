//! SIGKILL of replyd while requests flow through AWS SNS (moto_server on
//! 127.0.0.1:5000): requests published to a topic, read through the SQS
//! queue subscribed to it; replies published to the requester's topic,
//! read through its own SQS subscription. Every request gets its job and
//! its reply (`support::requests_in_flight_at_a_crash`): what replyd had
//! received and not deleted comes back once its visibility timeout ends,
//! and is found a duplicate if it had become a job.

#![cfg(feature = "sns")]

mod support;

use std::sync::Arc;

use replyd_server::brokers::Broker;
use replyd_server::brokers::sns::client::SnsBroker;
use replyd_server::config::brokers::sqs::SqsConfig;
use support::fresh_id;

const ENDPOINT: &str = "http://127.0.0.1:5000";
/// moto's account.
const ACCOUNT: &str = "123456789012";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_a_crash_get_their_jobs_and_replies() {
    if !replyd_testkit::service(
        "SNS and SQS (moto_server)",
        5000,
        "run scripts/test, or: moto_server -H 127.0.0.1 -p 5000 (pip install moto[server])",
    ) {
        return;
    }
    let id = fresh_id();
    let (requests, replies, mine) = (
        format!("replyd-crash-{id}-requests"),
        format!("replyd-crash-{id}-replies"),
        format!("arn:aws:sns:us-east-1:{ACCOUNT}:replyd-crash-{id}-mine"),
    );
    let aws = format!(
        "region = \"us-east-1\"\nendpoint_url = \"{ENDPOINT}\"\n\
         access_key_id = \"testing\"\nsecret_access_key = \"testing\"\n"
    );
    let config = format!(
        "[queues.demo]\nexecutor = \"demo\"\nconcurrency = 16\n\
         [sqs]\n{aws}account_id = \"{ACCOUNT}\"\nvisibility_timeout = 5\n\
         [sns]\nrequest_topics = [\"{requests}\"]\nqueue = \"demo\"\n\
         reply_topic = \"{replies}\"\nreply_retry_schedule = [0, 0.5, 1, 2, 5, 10]\n"
    );
    // The requester: its topic subscribed by a queue of its own before it
    // asks.
    let broker: Arc<dyn Broker> = Arc::new(SnsBroker::new(&SqsConfig {
        region: "us-east-1".into(),
        endpoint_url: Some(ENDPOINT.into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        // Its topic, named by ARN, is made in its account.
        account_id: Some(ACCOUNT.into()),
        ..SqsConfig::default()
    }));
    broker.declare(&requests).await.unwrap();
    let rx = broker.subscribe(&mine, 64).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::requests_in_flight_at_a_crash(&broker, &requests, &mine, rx, &config, dir.path())
        .await;
}
