//! librdkafka's mock cluster, for tests and benchmarks: Kafka's protocol on
//! loopback ports (consumer groups and commits included), with no Kafka
//! server. rdkafka's `MockCluster` is not `Send`, so it lives on a thread
//! of its own and is driven from anywhere through a [`MockKafka`].

use std::sync::mpsc;

use rdkafka::mocking::MockCluster;
pub use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

type Reply = mpsc::Sender<Result<(), String>>;

enum Op {
    CreateTopic(String, i32, Reply),
    BrokerDown(i32, Reply),
    BrokerUp(i32, Reply),
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>, Reply),
}

/// A mock Kafka cluster, running until this is dropped.
#[derive(Debug)]
pub struct MockKafka {
    bootstrap: String,
    ops: mpsc::Sender<Op>,
}

impl MockKafka {
    /// A cluster of `brokers` brokers on 127.0.0.1.
    pub fn start(brokers: i32) -> Result<MockKafka, String> {
        let (ops, rx) = mpsc::channel::<Op>();
        let (ready, started) = mpsc::channel();
        std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready.send(Ok(cluster.bootstrap_servers()));
                // Until every handle is dropped.
                while let Ok(op) = rx.recv() {
                    let (result, reply) = match op {
                        Op::CreateTopic(name, partitions, reply) => {
                            (cluster.create_topic(&name, partitions, 1), reply)
                        }
                        Op::BrokerDown(id, reply) => (cluster.broker_down(id), reply),
                        Op::BrokerUp(id, reply) => (cluster.broker_up(id), reply),
                        Op::RequestErrors(api, errors, reply) => {
                            cluster.request_errors(api, &errors);
                            (Ok(()), reply)
                        }
                    };
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            })
            .map_err(|e| e.to_string())?;
        let bootstrap = started.recv().map_err(|e| e.to_string())??;
        Ok(MockKafka { bootstrap, ops })
    }

    /// The cluster's `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn ask(&self, op: impl FnOnce(Reply) -> Op) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.ops
            .send(op(tx))
            .map_err(|_| "the mock cluster is gone".to_string())?;
        rx.recv()
            .map_err(|_| "the mock cluster is gone".to_string())?
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        self.ask(|r| Op::CreateTopic(topic.to_string(), partitions, r))
    }

    /// Takes broker `id` down (-1: all): its connections close and it takes
    /// no new ones until [`MockKafka::broker_up`].
    pub fn broker_down(&self, id: i32) -> Result<(), String> {
        self.ask(|r| Op::BrokerDown(id, r))
    }

    pub fn broker_up(&self, id: i32) -> Result<(), String> {
        self.ask(|r| Op::BrokerUp(id, r))
    }

    /// The next requests of kind `api` fail with `errors`, one each.
    pub fn request_errors(
        &self,
        api: RDKafkaApiKey,
        errors: &[RDKafkaRespErr],
    ) -> Result<(), String> {
        self.ask(|r| Op::RequestErrors(api, errors.to_vec(), r))
    }
}
