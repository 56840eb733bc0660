//! The [`Broker`] of NATS (core request-reply), on async-nats.
//!
//! API.md §6: a request's reply goes to its reply subject (the inbox
//! `nats request` and every client's `request()` make); `Nats-Msg-Id` is
//! its `message_id`, the duplicate key. The other metadata are headers:
//! `Correlation-Id`, `Content-Type`, and the `x-replyd-*` ones.
//!
//! - **Subscriptions** join a queue group, so the nodes split a subject's
//!   messages. Core NATS delivers at most once and keeps nothing: a message
//!   has no acknowledgement (settling it does nothing), and giving one back
//!   publishes it again to its subject. A request lost with a crashed node
//!   (received, its job not yet durable) is the requester's to send again,
//!   as NATS requesters do on a timeout; its `Nats-Msg-Id` finds the job if
//!   it was made.
//! - **Publishes** go over one connection per broker handle; a publish is
//!   confirmed when a flush has carried it to the server. Core NATS cannot
//!   tell whether anyone receives a subject, so nothing is reported
//!   unroutable.
//! - The client reconnects by itself, subscriptions included, and holds
//!   publishes while it is away (the flush waits).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, HeaderMap};
use async_trait::async_trait;
use futures::StreamExt;
use replyd_core::outbox::Channel as OutboxChannel;
use tokio::sync::mpsc;

use crate::brokers::{Broker, BrokerError, Message, Props, Published, Received, Settle};
use crate::config::brokers::nats::NatsConfig;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a publish waits for its flush.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The header that carries `message_id` (JetStream's dedupe header, which
/// NATS clients already set for this).
const MESSAGE_ID: &str = "Nats-Msg-Id";
const CORRELATION_ID: &str = "Correlation-Id";
const CONTENT_TYPE: &str = "Content-Type";

/// A NATS server.
pub struct NatsBroker {
    url: String,
    queue_group: String,
    name: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("NatsBroker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl NatsBroker {
    /// The broker of a `[nats]` section, as `name` (the connection's name
    /// on the server); nothing connects until it is used.
    pub fn new(cfg: &NatsConfig, name: &str) -> NatsBroker {
        NatsBroker {
            url: cfg.url.clone(),
            queue_group: cfg.queue_group.clone(),
            name: name.to_string(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The connection, made when first needed (it then reconnects by
    /// itself).
    async fn client(&self) -> Result<Client, BrokerError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let options = ConnectOptions::new()
            .name(self.name.clone())
            .connection_timeout(CONNECT_TIMEOUT);
        let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(self.url.as_str()))
            .await
            .map_err(|_| unavailable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unavailable(format!("connecting to NATS: {e}")))?;
        tracing::info!(broker = "nats", name = %self.name, "connected");
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forwards a subscription's messages (skipping the server's status
    /// messages, such as "no responders") until it ends.
    fn forward(
        client: Client,
        mut subscriber: async_nats::Subscriber,
        prefetch: u16,
    ) -> mpsc::Receiver<Received> {
        let (tx, rx) = mpsc::channel(usize::from(prefetch.max(1)));
        tokio::spawn(async move {
            while let Some(m) = subscriber.next().await {
                if m.status.is_some() {
                    continue;
                }
                let received = Received {
                    message: message_of(&m),
                    redelivered: false,
                    settle: Box::new(NatsSettle {
                        client: client.clone(),
                        message: m,
                    }),
                };
                if tx.send(received).await.is_err() {
                    break;
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
        rx
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn channel(&self) -> OutboxChannel {
        OutboxChannel::Nats
    }

    /// Subjects need no declaring.
    async fn declare(&self, _destination: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn subscribe(
        &self,
        source: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Received>, BrokerError> {
        let client = self.client().await?;
        let subscriber = client
            .queue_subscribe(source.to_string(), self.queue_group.clone())
            .await
            .map_err(unavailable)?;
        // The subscription is the server's once a flush has gone through.
        tokio::time::timeout(FLUSH_TIMEOUT, client.flush())
            .await
            .map_err(|_| unavailable("the server did not answer the subscription"))?
            .map_err(unavailable)?;
        Ok(NatsBroker::forward(client, subscriber, prefetch))
    }

    async fn inbox(&self) -> Result<(String, mpsc::Receiver<Received>), BrokerError> {
        let client = self.client().await?;
        let inbox = client.new_inbox();
        let subscriber = client.subscribe(inbox.clone()).await.map_err(unavailable)?;
        tokio::time::timeout(FLUSH_TIMEOUT, client.flush())
            .await
            .map_err(|_| unavailable("the server did not answer the subscription"))?
            .map_err(unavailable)?;
        Ok((inbox, NatsBroker::forward(client, subscriber, 256)))
    }

    async fn publish(&self, to: &str, message: Message) -> Result<Published, BrokerError> {
        let client = self.client().await?;
        send(&client, to.to_string(), message).await?;
        Ok(Published::Accepted)
    }
}

/// Publishes `message` to `to` (with its reply subject, if any) and flushes.
async fn send(client: &Client, to: String, message: Message) -> Result<(), BrokerError> {
    let headers = headers(&message.props);
    let published = match message.props.reply_to {
        Some(reply) => {
            client
                .publish_with_reply_and_headers(to, reply, headers, message.body)
                .await
        }
        None => client.publish_with_headers(to, headers, message.body).await,
    };
    published.map_err(unavailable)?;
    tokio::time::timeout(FLUSH_TIMEOUT, client.flush())
        .await
        .map_err(|_| unavailable(format!("no flush to the server within {FLUSH_TIMEOUT:?}")))?
        .map_err(unavailable)
}

/// Core NATS keeps nothing to acknowledge.
struct NatsSettle {
    client: Client,
    message: async_nats::Message,
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Published again to its subject, with its reply subject.
    async fn requeue(self: Box<Self>) -> Result<(), BrokerError> {
        let m = &self.message;
        send(&self.client, m.subject.to_string(), message_of(m)).await
    }
}

/// API.md §6's metadata from a NATS message.
fn message_of(m: &async_nats::Message) -> Message {
    let mut props = Props {
        reply_to: m.reply.as_ref().map(|r| r.to_string()),
        ..Props::default()
    };
    let mut headers = BTreeMap::new();
    if let Some(h) = &m.headers {
        for (name, values) in h.iter() {
            let Some(value) = values.last() else { continue };
            let value = value.as_str().to_string();
            match name.as_ref() {
                MESSAGE_ID => props.message_id = Some(value),
                CORRELATION_ID => props.correlation_id = Some(value),
                CONTENT_TYPE => props.content_type = Some(value),
                other => {
                    headers.insert(other.to_string(), value);
                }
            }
        }
    }
    props.headers = headers;
    Message {
        body: m.payload.clone(),
        props,
    }
}

/// NATS headers from API.md §6's metadata.
fn headers(p: &Props) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        (MESSAGE_ID, &p.message_id),
        (CORRELATION_ID, &p.correlation_id),
        (CONTENT_TYPE, &p.content_type),
    ] {
        if let Some(v) = value {
            h.insert(name, v.as_str());
        }
    }
    for (k, v) in &p.headers {
        h.insert(k.as_str(), v.as_str());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_nats_headers() {
        let p = Props {
            message_id: Some("m-1".into()),
            correlation_id: Some("c-1".into()),
            reply_to: Some("_INBOX.abc".into()),
            content_type: Some("application/json".into()),
            ..Props::default()
        }
        .with_header("x-replyd-queue", "report")
        .with_header("x-replyd-progress", "true");
        let m = async_nats::Message {
            subject: "replyd.requests".into(),
            reply: Some("_INBOX.abc".into()),
            payload: "{}".into(),
            headers: Some(headers(&p)),
            status: None,
            description: None,
            length: 0,
        };
        assert_eq!(message_of(&m).props, p);
    }

    /// A server that is not there: unavailable (to be tried again).
    #[tokio::test]
    async fn an_absent_server_is_unavailable() {
        let b = NatsBroker::new(
            &NatsConfig {
                url: "nats://127.0.0.1:1".into(),
                ..NatsConfig::default()
            },
            "test",
        );
        assert!(matches!(
            b.publish("t", Message::default()).await,
            Err(BrokerError::Unavailable(_))
        ));
    }
}
