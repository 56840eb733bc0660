//! SIGKILL of replyd while Kafka requests flow: every request gets its job
//! and its reply (`support::requests_in_flight_at_a_crash`). The cluster is
//! librdkafka's mock, in this test process (there is no Kafka server here);
//! the replyd binary reaches it over loopback like any cluster. What replyd
//! had read and not committed is read again by the next replyd of its
//! group, and each request's key makes it one job.

#![cfg(feature = "kafka")]

mod support;

use std::sync::Arc;

use replyd_server::brokers::Broker;
use replyd_server::brokers::kafka::client::KafkaBroker;
use replyd_server::brokers::kafka::testing::MockKafka;
use replyd_server::config::brokers::kafka::KafkaConfig;
use support::fresh_id;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_a_crash_get_their_jobs_and_replies() {
    let mock = MockKafka::start(3).expect("librdkafka's mock cluster");
    let id = fresh_id();
    let (requests, mine) = (format!("crash-{id}-requests"), format!("crash-{id}-mine"));
    for topic in [&requests, &mine] {
        mock.create_topic(topic, 3).unwrap();
    }
    // The killed replyd's group membership lapses after its session
    // timeout; a short one gets its partitions to the next replyd sooner.
    let config = format!(
        "[queues.demo]\nexecutor = \"demo\"\nconcurrency = 16\n\
         [kafka]\nbrokers = \"{}\"\ngroup = \"replyd-crash-{id}\"\n\
         request_topics = [\"{requests}\"]\nqueue = \"demo\"\n\
         reply_retry_schedule = [0, 0.5, 1, 2, 5, 10]\n\
         [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n",
        mock.bootstrap_servers()
    );
    // The requester: its own group on its reply topic, subscribed before
    // it asks.
    let broker: Arc<dyn Broker> = Arc::new(KafkaBroker::new(
        &KafkaConfig {
            brokers: mock.bootstrap_servers().to_string(),
            group: format!("requester-{id}"),
            ..KafkaConfig::default()
        },
        "requester",
    ));
    let rx = broker.subscribe(&mine, 64).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::requests_in_flight_at_a_crash(&broker, &requests, &mine, rx, &config, dir.path())
        .await;
}
