//! The [`Broker`] of Apache Kafka, on rdkafka (librdkafka).
//!
//! API.md §6 over Kafka, wire-compatible with Spring's
//! `ReplyingKafkaTemplate`:
//! - A **request** is a record on a request topic. Its reply goes to the
//!   topic in `kafka_replyTopic` (or the plain `reply_topic` / `reply_to`),
//!   on the partition in `kafka_replyPartition` (4 bytes, big-endian) if it
//!   names one, with the request's key, and with its correlation id
//!   (`kafka_correlationId`, or the plain `correlation_id`) echoed byte for
//!   byte: a Spring UUID's 16 raw bytes are carried through the outbox as
//!   text ([`correlation_text`]) and come back as they were. Header names
//!   are `[kafka.headers]`'s. Other headers are the `x-replyd-*` ones, plus
//!   `message_id` (the duplicate key) and `content_type`.
//! - **Consuming**: one consumer per source, with no automatic commit: a
//!   record's offset is committed once it is settled, and only when every
//!   earlier record of its partition is too ([`Offsets`]), so a restart reads
//!   again what was not yet made durable (the duplicate key makes it the same
//!   job). A partition taken away by a rebalance commits what is done first.
//!   Kafka cannot give one record back: giving one back rewinds its partition
//!   to it (the records after it come again too, and find their jobs). A
//!   record with neither a message id nor a correlation id is told apart by
//!   where it is (topic, partition, offset), so that reading it again makes
//!   no second job.
//! - **Groups**: the request topics' consumers are in the section's `group`;
//!   the reply topic's (workers' replies, `executor = "kafka"`) is in a group
//!   of its own, `<group>.replies` ([`KafkaConfig::group_of`]). In one group,
//!   a replyd's two consumers (subscribed to different topics) were two
//!   members, so any rebalance of one was a rebalance of both: an eager
//!   rebalance takes every partition of the group away until every member has
//!   joined again, and a consumer that is not polled (its pump waits for room
//!   for a record: rebalances are served by `recv`) held the other's
//!   partitions back too. On librdkafka's mock cluster it stalled the reply
//!   consumer for 44 s, now and then: the two join together; the mock ends
//!   the sync when the leader's SyncGroup brings every assignment, refuses
//!   (`INVALID_REQUEST`) the other's SyncGroup if it comes after that, and
//!   when that member joins again it waits `session.timeout.ms` − 1 s (45 s
//!   by default) for the group to join before it assigns anything.
//!
//!   Upgrading from a replyd whose reply consumer was in `group`: the new
//!   group has no committed offsets, so its first start reads the reply topic
//!   from the earliest record retained (`auto.offset.reset = earliest`: no
//!   reply is missed). A reply read again to a job that has finished is
//!   dropped, and an output chunk lands once (one of an earlier attempt is
//!   dropped); but a progress or final reply of an earlier attempt of a job
//!   still running is taken as its current attempt's, as after any re-read
//!   (at-least-once). To start where the old group stopped instead, stop
//!   every node, then copy the old group's committed offsets of the reply
//!   topic to the new group (`kafka-consumer-groups.sh --describe --group
//!   <group>` shows them; `--reset-offsets --group <group>.replies
//!   --from-file <csv of topic,partition,offset> --execute` sets them). The
//!   old group's offsets of the reply topic are no longer read
//!   (`--delete-offsets --group <group> --topic <reply topic>` removes them).
//!   The request topics keep `group` and its committed offsets: nothing
//!   changes for them.
//! - **Publishing**: one idempotent producer (`acks=all`) per broker
//!   handle; a publish is confirmed by its delivery report. A record's key
//!   is its request's, else its correlation id: a job's records keep their
//!   order. A topic or
//!   partition that does not exist is unroutable (the requester is gone).
//! - **Topics** are the operator's: replyd does not create them (a topic
//!   it declares or consumes must exist, or be created by brokers that
//!   create topics on first use); an inbox is a topic of its own, which
//!   needs such brokers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList};
use replyd_core::outbox::Channel as OutboxChannel;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::brokers::{
    Broker, BrokerError, Message, Props, Published, Received, Settle, correlation_bytes,
    correlation_text,
};
use crate::config::brokers::kafka::{KafkaConfig, KafkaHeaders, valid_topic};

/// How long a metadata request (does the topic exist?) may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a publish may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long librdkafka tries to deliver a record before it reports the
/// publish failed: under the reply's confirmation timeout, so that a
/// publish given up on is not delivered later as well.
const MESSAGE_TIMEOUT_MS: &str = "8000";
/// How long a consumer's close (its last commit, leaving its group) is
/// waited for.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often settled offsets are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// The plain (non-Spring) header names.
const CORRELATION_ID: &str = "correlation_id";
const REPLY_TOPIC: &str = "reply_topic";
const REPLY_TO: &str = "reply_to";
const MESSAGE_ID: &str = "message_id";
const CONTENT_TYPE: &str = "content_type";
/// Spring's content type header.
const SPRING_CONTENT_TYPE: &str = "contentType";

/// What a reply echoes from its request ([`Props::echo`]): the record's
/// key (base64) and the reply partition.
const ECHO_KEY: &str = "key";
const ECHO_PARTITION: &str = "partition";

/// A Kafka cluster.
pub struct KafkaBroker {
    cfg: KafkaConfig,
    /// The clients' `client.id`.
    name: String,
    producer: Mutex<Option<FutureProducer>>,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The properties may carry credentials.
        f.debug_struct("KafkaBroker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl KafkaBroker {
    /// The broker of a `[kafka]` section, as `name` (its clients'
    /// `client.id`); nothing connects until it is used.
    pub fn new(cfg: &KafkaConfig, name: &str) -> KafkaBroker {
        KafkaBroker {
            cfg: cfg.clone(),
            name: name.to_string(),
            producer: Mutex::new(None),
        }
    }

    /// A client's settings: replyd's defaults, then the section's
    /// properties, then what replyd's guarantees rest on.
    fn client_config(&self, defaults: &[(&str, &str)], own: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("client.id", &self.name);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.cfg.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.cfg.brokers);
        for (k, v) in own {
            c.set(*k, *v);
        }
        c
    }

    /// The producer, made when first needed.
    fn producer(&self) -> Result<FutureProducer, BrokerError> {
        let mut slot = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let producer: FutureProducer = self
            .client_config(
                &[
                    ("message.timeout.ms", MESSAGE_TIMEOUT_MS),
                    ("linger.ms", "1"),
                ],
                &[("enable.idempotence", "true"), ("acks", "all")],
            )
            .create()
            .map_err(|e| BrokerError::Refused(format!("the Kafka producer: {e}")))?;
        *slot = Some(producer.clone());
        Ok(producer)
    }

    /// A consumer in `group` (replyd's offsets: no automatic commit).
    fn consumer(&self, group: &str, create_topics: bool) -> Result<Pump, BrokerError> {
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let consumer: StreamConsumer<Tracked> = self
            .client_config(
                &[(
                    "allow.auto.create.topics",
                    if create_topics { "true" } else { "false" },
                )],
                &[
                    ("group.id", group),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                    ("auto.offset.reset", "earliest"),
                    ("isolation.level", "read_committed"),
                ],
            )
            .create_with_context(Tracked {
                offsets: offsets.clone(),
            })
            .map_err(|e| BrokerError::Refused(format!("the Kafka consumer: {e}")))?;
        Ok(Pump {
            consumer: Arc::new(consumer),
            offsets,
            headers: self.cfg.headers.clone(),
        })
    }
}

/// Whether a metadata answer lists `topic`, with partitions.
fn has_topic(m: &rdkafka::metadata::Metadata, topic: &str) -> bool {
    m.topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// Runs `f` (a call that blocks: a metadata request) off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
}

#[async_trait]
impl Broker for KafkaBroker {
    fn channel(&self) -> OutboxChannel {
        OutboxChannel::Kafka
    }

    /// Makes sure the topic exists: asks for it as a producer (brokers that
    /// create topics on first use then do).
    async fn declare(&self, destination: &str) -> Result<(), BrokerError> {
        if !valid_topic(destination) {
            return Err(BrokerError::Refused(format!(
                "{destination:?} is not a Kafka topic name"
            )));
        }
        // A producer's question: brokers that create topics on first use
        // then create it.
        let producer = self.producer()?;
        let topic = destination.to_string();
        let found = blocking(move || {
            let m = producer
                .client()
                .fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
            Ok(has_topic(&m, &topic))
        })
        .await?;
        if found {
            Ok(())
        } else {
            Err(BrokerError::Refused(format!(
                "there is no topic {destination:?}, and the brokers did not create it"
            )))
        }
    }

    async fn subscribe(
        &self,
        source: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Received>, BrokerError> {
        let pump = self.consumer(&self.cfg.group_of(source), false)?;
        // A subscription to a topic that is not there waits silently: say
        // so instead, and try again later.
        let consumer = pump.consumer.clone();
        let topic = source.to_string();
        let found = blocking(move || {
            let m = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
            Ok(has_topic(&m, &topic))
        })
        .await?;
        if !found {
            return Err(unavailable(format!("there is no topic {source:?} yet")));
        }
        pump.start(source, prefetch)
    }

    /// A topic of its own (`replyd.inbox.<id>`), read by a group of its
    /// own: it needs brokers that create topics on first use.
    async fn inbox(&self) -> Result<(String, mpsc::Receiver<Received>), BrokerError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("replyd.inbox.{id}");
        // Created (where the brokers create topics on first use) before
        // its consumer looks for it.
        self.declare(&topic).await?;
        let pump = self.consumer(&format!("replyd.inbox.{id}"), true)?;
        let rx = pump.start(&topic, 256)?;
        Ok((topic, rx))
    }

    async fn publish(&self, to: &str, message: Message) -> Result<Published, BrokerError> {
        if !valid_topic(to) {
            return Err(BrokerError::Refused(format!(
                "{to:?} is not a Kafka topic name"
            )));
        }
        let producer = self.producer()?;
        let props = &message.props;
        // The request's key; else the correlation id, so that what one
        // job sends (progress, then its outcome; a work record, then its
        // retry) stays in one partition, in order.
        let key = props
            .echo
            .get(ECHO_KEY)
            .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
            .or_else(|| props.correlation_id.as_deref().map(correlation_bytes));
        let partition = props
            .echo
            .get(ECHO_PARTITION)
            .and_then(|p| p.parse::<i32>().ok());
        let mut record = FutureRecord::to(to)
            .payload(&message.body[..])
            .headers(headers(props, &self.cfg.headers));
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let sent = producer.send(record, QUEUE_TIMEOUT).await;
        if sent.is_err()
            && let Some((code, reason)) = producer.client().fatal_error()
        {
            // An idempotent producer that hit a fatal error sends nothing
            // more: the next publish makes a new one.
            tracing::warn!(broker = "kafka", %code, reason, "the producer failed for good; making a new one");
            let mut slot = self.producer.lock().unwrap_or_else(|e| e.into_inner());
            *slot = None;
        }
        match sent {
            Ok(_) => Ok(Published::Accepted),
            Err((KafkaError::MessageProduction(code), _)) => match code {
                RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition => Ok(Published::Unroutable),
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidMessage => Err(BrokerError::Refused(format!(
                    "publishing to {to:?}: {code}"
                ))),
                _ => Err(unavailable(format!("publishing to {to:?}: {code}"))),
            },
            Err((e, _)) => Err(unavailable(format!("publishing to {to:?}: {e}"))),
        }
    }
}

/// A consumer, its offsets, and how its records become messages.
struct Pump {
    consumer: Arc<StreamConsumer<Tracked>>,
    offsets: Arc<Mutex<Offsets>>,
    headers: KafkaHeaders,
}

impl Pump {
    /// Subscribes to `topic` and forwards its records, at most `prefetch`
    /// waiting, until the receiver is dropped or a record is given back;
    /// commits settled offsets meanwhile, and once more at the end.
    fn start(self, topic: &str, prefetch: u16) -> Result<mpsc::Receiver<Received>, BrokerError> {
        self.consumer.subscribe(&[topic]).map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(usize::from(prefetch.max(1)));
        let (rewind, mut rewinds) = mpsc::unbounded_channel::<(String, i32, i64)>();
        let stop = CancellationToken::new();
        let Pump {
            consumer,
            offsets,
            headers,
        } = self;
        tokio::spawn(commit_until(
            consumer.clone(),
            offsets.clone(),
            stop.clone(),
        ));
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    Some((topic, partition, offset)) = rewinds.recv() => {
                        seek(&consumer, &offsets, &topic, partition, offset);
                        continue;
                    }
                    m = consumer.recv() => m,
                };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        // librdkafka recovers from what it reports here
                        // (a broker down, a rebalance) by itself.
                        tracing::debug!(broker = "kafka", error = %e, "consumer");
                        continue;
                    }
                };
                let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
                let message = message_of(&m, &headers);
                offsets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .received(&topic, partition, offset);
                let received = Received {
                    message,
                    redelivered: false,
                    settle: Box::new(KafkaSettle {
                        offsets: offsets.clone(),
                        topic,
                        partition,
                        offset,
                        rewind: rewind.clone(),
                    }),
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    sent = tx.send(received) => if sent.is_err() { break },
                }
            }
            // The commit task holds the last handle and closes it.
            drop(consumer);
            stop.cancel();
        });
        Ok(rx)
    }
}

/// Gives a record back: its partition is read again from it (what came
/// after it was received already comes again too).
fn seek(
    consumer: &StreamConsumer<Tracked>,
    offsets: &Mutex<Offsets>,
    topic: &str,
    partition: i32,
    offset: i64,
) {
    let mut o = offsets.lock().unwrap_or_else(|e| e.into_inner());
    if !o.rewind(topic, partition, offset) {
        return;
    }
    if let Err(e) = consumer.seek(topic, partition, Offset::Offset(offset), Duration::ZERO) {
        tracing::warn!(broker = "kafka", topic, partition, offset, error = %e, "cannot give a record back; it is read again after a restart");
    }
}

/// Commits settled offsets every [`COMMIT_EVERY`] until `stop`, then once
/// more and closes the consumer (see [`close`]).
async fn commit_until(
    consumer: Arc<StreamConsumer<Tracked>>,
    offsets: Arc<Mutex<Offsets>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(COMMIT_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let due = offsets.lock().unwrap_or_else(|e| e.into_inner()).due();
        if let Some(list) = due
            && let Err(e) = consumer.commit(&list, CommitMode::Async)
        {
            tracing::debug!(broker = "kafka", error = %e, "cannot commit offsets now");
            offsets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retry(&list);
        }
    }
    close(consumer, offsets).await;
}

/// Commits what is settled and closes the consumer (it leaves its group),
/// on a thread of its own: both block, and librdkafka's close can wait
/// forever (a group caught mid-rebalance: rust-rdkafka#509). It is waited
/// for [`CLOSE_TIMEOUT`], then left to finish by itself, so that neither a
/// subscription's end nor the runtime's shutdown hangs on it.
async fn close(consumer: Arc<StreamConsumer<Tracked>>, offsets: Arc<Mutex<Offsets>>) {
    let (closed, done) = tokio::sync::oneshot::channel::<()>();
    let closing = move || {
        let due = offsets.lock().unwrap_or_else(|e| e.into_inner()).due();
        if let Some(list) = due
            && let Err(e) = consumer.commit(&list, CommitMode::Sync)
        {
            tracing::info!(broker = "kafka", error = %e, "cannot commit the last offsets: those records will be read again");
        }
        drop(consumer);
        let _ = closed.send(());
    };
    if let Err(e) = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(closing)
    {
        tracing::warn!(broker = "kafka", error = %e, "no thread to close a consumer on; closing it here");
        return;
    }
    if tokio::time::timeout(CLOSE_TIMEOUT, done).await.is_err() {
        tracing::warn!(
            broker = "kafka",
            "a consumer did not close within {CLOSE_TIMEOUT:?}; left to close in the background (its group moves its partitions on once its session times out)"
        );
    }
}

/// A record settles through its partition's offsets; giving it back
/// rewinds its partition to it.
struct KafkaSettle {
    offsets: Arc<Mutex<Offsets>>,
    topic: String,
    partition: i32,
    offset: i64,
    rewind: mpsc::UnboundedSender<(String, i32, i64)>,
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.offsets.lock().unwrap_or_else(|e| e.into_inner()).done(
            &self.topic,
            self.partition,
            self.offset,
        );
        Ok(())
    }

    async fn requeue(self: Box<Self>) -> Result<(), BrokerError> {
        self.rewind
            .send((self.topic, self.partition, self.offset))
            .map_err(|_| unavailable("the subscription has ended"))
    }
}

/// The consumer's context: before partitions are taken away, it commits
/// what is settled of them, and forgets them.
struct Tracked {
    offsets: Arc<Mutex<Offsets>>,
}

impl ClientContext for Tracked {}

impl ConsumerContext for Tracked {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let gone: Vec<(String, i32)> = list
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            let due = self
                .offsets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .revoke(&gone);
            if let Some(list) = due
                && let Err(e) = consumer.commit(&list, CommitMode::Sync)
            {
                tracing::info!(broker = "kafka", error = %e, "cannot commit before a rebalance: those records will be read again");
            }
        }
    }
}

/// Which offsets of each partition are settled, and so which may be
/// committed: a partition's committed offset passes a record only once it
/// and every record before it are settled (records are handled at once,
/// and settle in any order).
#[derive(Debug, Default)]
struct Offsets {
    parts: HashMap<(String, i32), Part>,
}

#[derive(Debug, Default)]
struct Part {
    /// Records received and not yet passed: offset → settled.
    open: BTreeMap<i64, bool>,
    /// The offset to commit (the next record to read after a restart),
    /// when it moved since the last commit.
    due: Option<i64>,
    /// The offset last handed to a commit.
    committed: Option<i64>,
}

impl Offsets {
    fn received(&mut self, topic: &str, partition: i32, offset: i64) {
        let part = self
            .parts
            .entry((topic.to_string(), partition))
            .or_default();
        part.open.insert(offset, false);
    }

    /// `offset` is settled; the partition's position moves past every
    /// settled record at its front.
    fn done(&mut self, topic: &str, partition: i32, offset: i64) {
        // A record of a partition taken away since is the new owner's.
        let Some(part) = self.parts.get_mut(&(topic.to_string(), partition)) else {
            return;
        };
        let Some(settled) = part.open.get_mut(&offset) else {
            return;
        };
        *settled = true;
        while let Some(entry) = part.open.first_entry() {
            if !*entry.get() {
                break;
            }
            let (o, _) = entry.remove_entry();
            part.due = Some(o + 1);
        }
    }

    /// The positions that moved since they were last committed.
    fn due(&mut self) -> Option<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), part) in &mut self.parts {
            if let Some(o) = part.due.take()
                && part.committed != Some(o)
            {
                part.committed = Some(o);
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(o));
            }
        }
        (list.count() > 0).then_some(list)
    }

    /// Records of a partition from `offset` on will be read again: they are
    /// no longer received (their settling now changes nothing). False if
    /// `offset` is not open (settled, or of a partition taken away).
    fn rewind(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        let Some(part) = self.parts.get_mut(&(topic.to_string(), partition)) else {
            return false;
        };
        if part.open.get(&offset) != Some(&false) {
            return false;
        }
        part.open.split_off(&offset);
        true
    }

    /// A commit of `list` failed: its positions are due again (unless
    /// they moved on meanwhile).
    fn retry(&mut self, list: &TopicPartitionList) {
        for e in list.elements() {
            if let (Some(part), Offset::Offset(o)) = (
                self.parts.get_mut(&(e.topic().to_string(), e.partition())),
                e.offset(),
            ) {
                part.committed = None;
                part.due.get_or_insert(o);
            }
        }
    }

    /// Partitions taken away: what is settled of them, to commit now; the
    /// rest is forgotten (the new owner reads it again).
    fn revoke(&mut self, gone: &[(String, i32)]) -> Option<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for key in gone {
            if let Some(part) = self.parts.remove(key)
                && let Some(o) = part.due
                && part.committed != Some(o)
            {
                let _ = list.add_partition_offset(&key.0, key.1, Offset::Offset(o));
            }
        }
        (list.count() > 0).then_some(list)
    }
}

/// A header's value as text (`None` if it is not UTF-8).
fn text(v: &[u8]) -> Option<String> {
    std::str::from_utf8(v).ok().map(str::to_string)
}

/// API.md §6's metadata from a record.
fn message_of(m: &BorrowedMessage<'_>, names: &KafkaHeaders) -> Message {
    let mut props = Props::default();
    let (mut spring_correlation, mut plain_correlation) = (None, None);
    let (mut spring_reply, mut plain_reply) = (None, None);
    if let Some(hs) = m.headers() {
        for Header { key, value } in hs.iter() {
            let Some(v) = value else { continue };
            if key == names.correlation {
                spring_correlation = Some(correlation_text(v));
            } else if key == names.reply_topic {
                spring_reply = text(v);
            } else if key == names.reply_partition {
                let partition = match <[u8; 4]>::try_from(v) {
                    Ok(b) => Some(i32::from_be_bytes(b)),
                    Err(_) => text(v).and_then(|s| s.trim().parse().ok()),
                };
                if let Some(p) = partition.filter(|p| *p >= 0) {
                    props.echo.insert(ECHO_PARTITION.into(), p.to_string());
                }
            } else {
                match key {
                    CORRELATION_ID => plain_correlation = Some(correlation_text(v)),
                    REPLY_TOPIC | REPLY_TO => plain_reply = plain_reply.or(text(v)),
                    MESSAGE_ID => props.message_id = text(v),
                    CONTENT_TYPE | SPRING_CONTENT_TYPE => props.content_type = text(v),
                    _ => {
                        if let Some(v) = text(v) {
                            props.headers.insert(key.to_string(), v);
                        }
                    }
                }
            }
        }
    }
    props.correlation_id = spring_correlation.or(plain_correlation);
    props.reply_to = spring_reply.or(plain_reply);
    if let Some(k) = m.key() {
        props.echo.insert(
            ECHO_KEY.into(),
            base64::engine::general_purpose::STANDARD.encode(k),
        );
    }
    if props.message_id.is_none() && props.correlation_id.is_none() {
        // Nothing tells a duplicate: where the record is does.
        props.message_id = Some(format!(
            "kafka:{}:{}:{}",
            m.topic(),
            m.partition(),
            m.offset()
        ));
    }
    Message {
        body: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        props,
    }
}

/// A record's headers from API.md §6's metadata: the correlation id under
/// both its names (the same bytes), `reply_to` as the reply topic under
/// both, then `message_id`, `content_type` and the others.
fn headers(p: &Props, names: &KafkaHeaders) -> OwnedHeaders {
    let mut hs = OwnedHeaders::new();
    let mut add = |key: &str, value: &[u8]| {
        hs = std::mem::take(&mut hs).insert(Header {
            key,
            value: Some(value),
        });
    };
    if let Some(c) = &p.correlation_id {
        let raw = correlation_bytes(c);
        add(&names.correlation, &raw);
        add(CORRELATION_ID, &raw);
    }
    if let Some(r) = &p.reply_to {
        add(&names.reply_topic, r.as_bytes());
        add(REPLY_TOPIC, r.as_bytes());
    }
    if let Some(id) = &p.message_id {
        add(MESSAGE_ID, id.as_bytes());
    }
    if let Some(ct) = &p.content_type {
        add(CONTENT_TYPE, ct.as_bytes());
    }
    for (k, v) in &p.headers {
        add(k, v.as_bytes());
    }
    hs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(list: Option<TopicPartitionList>) -> Vec<(String, i32, i64)> {
        let mut v: Vec<_> = list
            .map(|l| {
                l.elements()
                    .iter()
                    .map(|e| {
                        let Offset::Offset(o) = e.offset() else {
                            panic!("{:?}", e.offset())
                        };
                        (e.topic().to_string(), e.partition(), o)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Records settled out of order move a partition's position only
    /// past those settled with every one before them; gaps in offsets
    /// (compaction, transaction markers) do not stop it.
    #[test]
    fn a_partition_commits_only_past_what_is_settled() {
        let mut o = Offsets::default();
        for off in [10, 11, 13, 14] {
            o.received("t", 0, off);
        }
        o.received("t", 1, 5);
        assert!(o.due().is_none(), "nothing settled");
        o.done("t", 0, 11);
        o.done("t", 0, 13);
        assert!(o.due().is_none(), "10 is not settled: nothing passes it");
        o.done("t", 0, 10);
        assert_eq!(
            position(o.due()),
            [("t".into(), 0, 14)],
            "past 13 (12 was never read)"
        );
        assert!(o.due().is_none(), "committed once");
        o.done("t", 1, 5);
        o.done("t", 0, 14);
        assert_eq!(position(o.due()), [("t".into(), 0, 15), ("t".into(), 1, 6)]);
        // Settling twice, or what was never received, changes nothing.
        o.done("t", 0, 14);
        o.done("t", 2, 1);
        assert!(o.due().is_none());
    }

    /// Giving a record back forgets it and what came after it (they are
    /// read again); settling one of those late changes nothing, and the
    /// records read again settle as new.
    #[test]
    fn a_record_given_back_is_read_again_with_those_after_it() {
        let mut o = Offsets::default();
        for off in 0..4 {
            o.received("t", 0, off);
        }
        o.done("t", 0, 0);
        assert!(!o.rewind("t", 0, 0), "settled: nothing to give back");
        assert!(o.rewind("t", 0, 2));
        o.done("t", 0, 3);
        o.done("t", 0, 1);
        assert_eq!(position(o.due()), [("t".into(), 0, 2)], "not past 2");
        for off in 2..4 {
            o.received("t", 0, off);
        }
        o.done("t", 0, 3);
        o.done("t", 0, 2);
        assert_eq!(position(o.due()), [("t".into(), 0, 4)]);
    }

    /// A failed commit is due again; a taken-away partition commits what is
    /// settled and forgets the rest (its late settlements change nothing).
    #[test]
    fn failed_commits_come_again_and_revoked_partitions_are_forgotten() {
        let mut o = Offsets::default();
        o.received("t", 0, 0);
        o.received("t", 0, 1);
        o.received("t", 3, 7);
        o.done("t", 0, 0);
        let list = o.due().unwrap();
        o.retry(&list);
        assert_eq!(position(o.due()), [("t".into(), 0, 1)]);
        o.done("t", 3, 7);
        assert_eq!(
            position(o.revoke(&[("t".into(), 3), ("t".into(), 0)])),
            [("t".into(), 3, 8)],
            "0's position was committed already"
        );
        o.done("t", 0, 1);
        assert!(o.due().is_none(), "forgotten");
    }
}
