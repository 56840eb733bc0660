//! The [`Broker`] of RabbitMQ (AMQP 0-9-1), on lapin.
//!
//! One connection per broker handle, made when first needed and made again
//! after it drops: the next operation reconnects, and a consumer's receiver
//! ends so that its owner subscribes again. Publishes share one channel in
//! confirm mode (confirms are pipelined), each `mandatory` so that a reply
//! whose requester is gone comes back as unroutable rather than vanishing
//! (except to a direct reply-to address, which RabbitMQ returns even when
//! it delivers).
//! Each subscription has a channel of its own with its prefetch. Every
//! destination is a queue, reached through the default exchange by its
//! name; a queue replyd needs is declared durable unless it exists already
//! (then it is used as it is, whatever its arguments).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties};
use replyd_core::outbox::Channel as OutboxChannel;
use tokio::sync::mpsc;

use crate::brokers::{Broker, BrokerError, Message, Props, Published, Received, Settle};

/// The prefix of RabbitMQ's direct reply-to addresses.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long any other exchange with the broker may take (opening a
/// channel, a declare, a publish's confirm, a close). lapin can leave such
/// a future pending when its connection dies under it; past this the
/// connection counts as gone.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A RabbitMQ broker.
pub struct AmqpBroker {
    url: String,
    /// The connection's name in RabbitMQ's management (`replyd`, …).
    name: String,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL carries the password.
        f.debug_struct("AmqpBroker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A live connection and its publishing channel.
struct Link {
    conn: Connection,
    publisher: Channel,
}

impl Link {
    fn alive(&self) -> bool {
        self.conn.status().connected() && self.publisher.status().connected()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// `op` within [`OPERATION_TIMEOUT`]; its failure, or no answer, as
/// [`BrokerError::Unavailable`].
async fn bounded<T>(
    what: &str,
    op: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, op).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(unavailable(format!(
            "{what}: no answer within {OPERATION_TIMEOUT:?}"
        ))),
    }
}

/// Closes `ch`, waiting at most [`OPERATION_TIMEOUT`]: a channel that does
/// not close goes with its connection.
async fn close(ch: &Channel) {
    let _ = tokio::time::timeout(OPERATION_TIMEOUT, ch.close(200, "done".into())).await;
}

/// An AMQP short string (at most 255 bytes).
fn short(s: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(s).map_err(|_| {
        BrokerError::Refused(format!(
            "{:?}… is longer than AMQP's 255 bytes",
            s.chars().take(40).collect::<String>()
        ))
    })
}

impl AmqpBroker {
    /// A broker at `url`; nothing connects until it is first used.
    pub fn new(url: &str, name: &str) -> AmqpBroker {
        AmqpBroker {
            url: url.to_string(),
            name: name.to_string(),
            link: tokio::sync::Mutex::new(None),
        }
    }

    /// The live connection, connecting if there is none.
    async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        let mut current = self.link.lock().await;
        if let Some(link) = current.as_ref().filter(|l| l.alive()) {
            return Ok(link.clone());
        }
        *current = None;
        let props = ConnectionProperties::default().with_connection_name(self.name.clone().into());
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.url, props))
            .await
            .map_err(|_| unavailable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(unavailable)?;
        let publisher = bounded("opening a channel", conn.create_channel()).await?;
        bounded(
            "confirm mode",
            publisher.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        tracing::info!(broker = "amqp", name = %self.name, "connected");
        let link = Arc::new(Link { conn, publisher });
        *current = Some(link.clone());
        Ok(link)
    }

    /// Drops `link` if it is still the current one (it failed): the next
    /// operation connects again.
    async fn forget(&self, link: &Arc<Link>) {
        let mut current = self.link.lock().await;
        if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *current = None;
        }
    }

    /// Makes sure `queue` exists: declared durable, or, if it exists with
    /// other arguments (RabbitMQ refuses a declare that differs), used as
    /// it is.
    async fn ensure(&self, link: &Link, queue: &str) -> Result<(), BrokerError> {
        let name = short(queue)?;
        // A refused declare closes its channel: each try has its own.
        let ch = bounded("opening a channel", link.conn.create_channel()).await?;
        let declared = tokio::time::timeout(
            OPERATION_TIMEOUT,
            ch.queue_declare(
                name.clone(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|_| unavailable(format!("declaring {queue:?}: no answer")))?;
        if declared.is_ok() {
            close(&ch).await;
            return Ok(());
        }
        let probe = bounded("opening a channel", link.conn.create_channel()).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let exists = tokio::time::timeout(
            OPERATION_TIMEOUT,
            probe.queue_declare(name, passive, FieldTable::default()),
        )
        .await
        .map_err(|_| unavailable(format!("looking up {queue:?}: no answer")))?;
        close(&probe).await;
        match (exists, declared) {
            (Ok(_), _) => Ok(()),
            (Err(_), Err(e)) => Err(BrokerError::Refused(format!(
                "declaring queue {queue:?}: {e}"
            ))),
            (Err(e), Ok(_)) => Err(unavailable(e)),
        }
    }

    /// Consumes `queue` on a channel of its own.
    async fn consume(
        &self,
        link: &Link,
        queue: ShortString,
        prefetch: u16,
        no_ack: bool,
    ) -> Result<mpsc::Receiver<Received>, BrokerError> {
        let ch = bounded("opening a channel", link.conn.create_channel()).await?;
        bounded(
            "setting the prefetch",
            ch.basic_qos(prefetch.max(1), BasicQosOptions::default()),
        )
        .await?;
        let consumer = tokio::time::timeout(
            OPERATION_TIMEOUT,
            ch.basic_consume(
                queue.clone(),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|_| unavailable(format!("consuming {}: no answer", queue.as_str())))?
        .map_err(|e| BrokerError::Refused(format!("consuming {}: {e}", queue.as_str())))?;
        let (tx, rx) = mpsc::channel(usize::from(prefetch.max(1)));
        tokio::spawn(async move {
            let mut consumer = consumer;
            while let Some(next) = consumer.next().await {
                let delivery = match next {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(broker = "amqp", queue = %queue.as_str(), error = %e, "the consumer stopped");
                        break;
                    }
                };
                let received = Received {
                    message: Message {
                        body: Bytes::from(delivery.data),
                        props: props_of(&delivery.properties),
                    },
                    redelivered: delivery.redelivered,
                    settle: Box::new(AmqpSettle {
                        acker: (!no_ack).then_some(delivery.acker),
                    }),
                };
                if tx.send(received).await.is_err() {
                    break;
                }
            }
            // Unacknowledged messages go back to the queue with the channel.
            close(&ch).await;
        });
        Ok(rx)
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn channel(&self) -> OutboxChannel {
        OutboxChannel::Amqp
    }

    async fn declare(&self, destination: &str) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let r = self.ensure(&link, destination).await;
        if matches!(r, Err(BrokerError::Unavailable(_))) {
            self.forget(&link).await;
        }
        r
    }

    async fn subscribe(
        &self,
        source: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Received>, BrokerError> {
        let link = self.link().await?;
        let r = async {
            self.ensure(&link, source).await?;
            self.consume(&link, short(source)?, prefetch, false).await
        }
        .await;
        if matches!(r, Err(BrokerError::Unavailable(_))) {
            self.forget(&link).await;
        }
        r
    }

    async fn inbox(&self) -> Result<(String, mpsc::Receiver<Received>), BrokerError> {
        let link = self.link().await?;
        let ch = bounded("opening a channel", link.conn.create_channel()).await?;
        let q = bounded(
            "declaring an inbox",
            ch.queue_declare(
                ShortString::from(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let name = q.name().clone();
        // The queue lives as long as the connection (it is exclusive).
        close(&ch).await;
        let rx = self.consume(&link, name.clone(), 256, true).await?;
        Ok((name.to_string(), rx))
    }

    async fn publish(&self, to: &str, message: Message) -> Result<Published, BrokerError> {
        // RabbitMQ returns a message to a direct reply-to address as
        // unroutable even when it delivered it (3.10): there `mandatory`
        // would call every such reply lost.
        let mandatory = !to.starts_with(DIRECT_REPLY_TO);
        let to = short(to)?;
        let props = properties(&message.props)?;
        let link = self.link().await?;
        let sent = bounded(
            "publishing",
            link.publisher.basic_publish(
                ShortString::from(""),
                to,
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                props,
            ),
        )
        .await;
        let confirm = match sent {
            Ok(pending) => bounded("the publish's confirm", pending).await,
            Err(e) => Err(e),
        };
        match confirm {
            Err(e) => {
                self.forget(&link).await;
                Err(e)
            }
            Ok(c) if c.is_nack() => Err(BrokerError::Refused(
                "the broker did not take the message (nack)".into(),
            )),
            Ok(c) => Ok(match c.take_message() {
                Some(_) => Published::Unroutable,
                None => Published::Accepted,
            }),
        }
    }
}

/// Settles through the delivery's channel; a message received without
/// acknowledgement (an inbox's) needs nothing.
struct AmqpSettle {
    acker: Option<Acker>,
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        if let Some(a) = &self.acker {
            bounded("acknowledging", a.ack(BasicAckOptions::default())).await?;
        }
        Ok(())
    }

    async fn requeue(self: Box<Self>) -> Result<(), BrokerError> {
        if let Some(a) = &self.acker {
            bounded(
                "giving back",
                a.nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                }),
            )
            .await?;
        }
        Ok(())
    }
}

/// API.md §6's metadata from AMQP properties; headers as text.
fn props_of(p: &BasicProperties) -> Props {
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.to_string());
    let mut headers = BTreeMap::new();
    if let Some(table) = p.headers() {
        for (k, v) in table.inner() {
            if let Some(v) = value_text(v) {
                headers.insert(k.to_string(), v);
            }
        }
    }
    Props {
        message_id: text(p.message_id()),
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        content_type: text(p.content_type()),
        headers,
        ..Props::default()
    }
}

fn value_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        _ => return None,
    })
}

/// AMQP properties from API.md §6's metadata; persistent delivery.
fn properties(p: &Props) -> Result<BasicProperties, BrokerError> {
    let mut props = BasicProperties::default().with_delivery_mode(2);
    if let Some(v) = &p.message_id {
        props = props.with_message_id(short(v)?);
    }
    if let Some(v) = &p.correlation_id {
        props = props.with_correlation_id(short(v)?);
    }
    if let Some(v) = &p.reply_to {
        props = props.with_reply_to(short(v)?);
    }
    if let Some(v) = &p.content_type {
        props = props.with_content_type(short(v)?);
    }
    if !p.headers.is_empty() {
        let mut table = FieldTable::default();
        for (k, v) in &p.headers {
            table.insert(
                short(k)?,
                AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
            );
        }
        props = props.with_headers(table);
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_amqp_properties() {
        let p = Props {
            message_id: Some("m-1".into()),
            correlation_id: Some("c-1".into()),
            reply_to: Some("amq.rabbitmq.reply-to.g1h2".into()),
            content_type: Some("application/json".into()),
            ..Props::default()
        }
        .with_header("x-replyd-queue", "report")
        .with_header("x-replyd-progress", "true");
        assert_eq!(props_of(&properties(&p).unwrap()), p);
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongLongInt(7));
        table.insert("b".into(), AMQPValue::Boolean(true));
        let read = props_of(&BasicProperties::default().with_headers(table));
        assert_eq!(read.header("n"), Some("7"));
        assert_eq!(read.header("b"), Some("true"));
        let long = Props {
            correlation_id: Some("x".repeat(300)),
            ..Props::default()
        };
        assert!(matches!(properties(&long), Err(BrokerError::Refused(_))));
    }
}
