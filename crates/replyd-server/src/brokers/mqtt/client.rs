//! The [`Broker`] of MQTT 5, on rumqttc.
//!
//! API.md §6: a request carries `Response Topic` (its `reply_to`) and
//! `Correlation Data` (its `correlation_id`, as text); the content type is
//! MQTT's own property; `message_id` and the `x-replyd-*` headers are user
//! properties. Everything is published at QoS 1: the broker's PUBACK is the
//! confirmation, and its reason code *no matching subscribers* (0x10) says a
//! reply's requester is gone ([`Published::Unroutable`]).
//!
//! - **Subscriptions** are shared (`$share/<group>/<topic>`), so the nodes
//!   split a topic's messages (unless `share_group` is empty), and
//!   persistent: each node's session on a
//!   topic is named after its client id and the topic, kept by the broker
//!   for `session_expiry` seconds, and resumed on reconnect, when the broker
//!   delivers again what was received and not acknowledged. A message is
//!   acknowledged (PUBACK) only when its owner settles it. MQTT has no
//!   negative acknowledgement: giving a message back publishes it again to
//!   its topic, then acknowledges it.
//! - **Publishes** go over one connection per broker handle, pipelined (up
//!   to 64 in flight; each PUBACK is matched to its publish by the packet
//!   id). A connection that fails is dropped; the next publish connects
//!   again.
//! - **Destinations need no declaring**: a topic exists while someone
//!   subscribes to it. What is published to a topic nobody subscribes to is
//!   dropped by the broker (and said to be unroutable).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use replyd_core::outbox::Channel as OutboxChannel;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;

use crate::brokers::{
    Broker, BrokerError, Message, Props, Published, Received, Settle, correlation_bytes,
    correlation_text,
};
use crate::config::brokers::mqtt::MqttConfig;

/// How long a connection attempt (to its CONNACK) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a publish or a subscribe waits for the broker's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest packet replyd takes: requests up to this size are received
/// (and those over `limits.max_body` dead-lettered with the reason).
const MAX_PACKET: u32 = 64 * 1024 * 1024;
/// The user property that carries `message_id`.
const MESSAGE_ID: &str = "message-id";
/// Where inboxes live.
const INBOX_PREFIX: &str = "replyd/inbox/";

/// An MQTT 5 broker.
pub struct MqttBroker {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    /// With `mqtts://`.
    tls: Option<Arc<rustls::ClientConfig>>,
    credentials: Option<(String, String)>,
    client_id: String,
    share_group: String,
    session_expiry: u32,
    /// The publishing connection; held across a publish, which serializes
    /// them.
    publisher: tokio::sync::Mutex<Option<Publisher>>,
}

impl std::fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No credentials.
        f.debug_struct("MqttBroker")
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// A short digest of `s`, for client ids derived from topics.
fn digest8(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

fn random8() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

impl MqttBroker {
    /// The broker of a `[mqtt]` section; nothing connects until it is used.
    pub fn new(cfg: &MqttConfig) -> Result<MqttBroker, String> {
        let url = url::Url::parse(&cfg.url).map_err(|e| format!("mqtt.url: {e}"))?;
        let tls = url.scheme() == "mqtts";
        let host = url
            .host_str()
            .ok_or("mqtt.url has no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let tls = if tls { Some(tls_config()?) } else { None };
        let credentials = (!url.username().is_empty()).then(|| {
            // Percent-decoded ('+' is itself in userinfo, not a space).
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (decode(url.username()), decode(url.password().unwrap_or("")))
        });
        Ok(MqttBroker {
            inner: Arc::new(Inner {
                host,
                port,
                tls,
                credentials,
                client_id: cfg.client_id.clone(),
                share_group: cfg.share_group.clone(),
                session_expiry: cfg.session_expiry,
                publisher: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

impl Inner {
    /// Options for a connection as `client_id`: a clean session, or one the
    /// broker keeps for `session_expiry`.
    fn options(&self, client_id: String, persistent: bool, receive_max: u16) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(15));
        o.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
        o.set_clean_start(!persistent);
        if persistent {
            o.set_session_expiry_interval(Some(self.session_expiry));
        }
        o.set_receive_maximum(Some(receive_max.max(1)));
        o.set_max_packet_size(Some(MAX_PACKET));
        o.set_manual_acks(true);
        if let Some((user, password)) = &self.credentials {
            o.set_credentials(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        o
    }

    /// Connects: the client, and a task that polls its event loop and
    /// forwards what it says, until the connection fails (then `events`
    /// ends). Returns once the broker has accepted the connection.
    async fn connect(
        &self,
        options: MqttOptions,
    ) -> Result<(AsyncClient, mpsc::UnboundedReceiver<Event>), BrokerError> {
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let why = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(drive(eventloop, tx, why.clone()));
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            while let Some(e) = rx.recv().await {
                if let Event::Incoming(Packet::ConnAck(ack)) = e {
                    return Ok(ack);
                }
            }
            let why = why.lock().unwrap_or_else(|p| p.into_inner()).take();
            Err(unavailable(why.unwrap_or_else(|| {
                "the connection closed before the broker accepted it".into()
            })))
        })
        .await
        .map_err(|_| unavailable(format!("no connection within {CONNECT_TIMEOUT:?}")))??;
        tracing::debug!(
            broker = "mqtt",
            session_present = connected.session_present,
            "connected"
        );
        Ok((client, rx))
    }

    /// Publishes one message at QoS 1 and waits for its PUBACK.
    async fn publish(&self, to: &str, message: Message) -> Result<Published, BrokerError> {
        let properties = properties(&message.props);
        let answer = {
            // Held while the publish is queued, so that publishes reach the
            // event loop in the order of `Publisher::queued`.
            let mut slot = self.publisher.lock().await;
            if !slot.as_ref().is_some_and(Publisher::alive) {
                let id = format!("{}-pub-{}", self.client_id, random8());
                let mut options = self.options(id, false, 64);
                options.set_outgoing_inflight_upper_limit(PUBLISHES_IN_FLIGHT);
                let (client, events) = self.connect(options).await?;
                *slot = Some(Publisher::start(client, events));
            }
            let Some(p) = slot.as_ref() else {
                return Err(unavailable("no connection"));
            };
            p.send(to, message.body, properties).await?
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(unavailable(
                "the connection closed before the broker acknowledged",
            )),
            Err(_) => Err(unavailable(format!(
                "the broker did not acknowledge within {ANSWER_TIMEOUT:?}"
            ))),
        }
    }
}

/// Polls an event loop, forwarding its events, until the connection fails
/// (then `why` says how) or nobody listens.
async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Event>,
    why: Arc<std::sync::Mutex<Option<String>>>,
) {
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if tx.send(event).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(broker = "mqtt", error = %e, "the connection ended");
                *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                    "{}:{}: {e}",
                    eventloop.options.broker_address().0,
                    eventloop.options.broker_address().1
                ));
                return;
            }
        }
    }
}

/// Publishes in flight at once on the publishing connection.
const PUBLISHES_IN_FLIGHT: u16 = 64;

type Answer = tokio::sync::oneshot::Sender<Result<Published, BrokerError>>;

/// The publishing connection. Publishes are pipelined: each waits in
/// `queued` until the event loop sends it (it sends them in the order they
/// were queued, each as `Outgoing::Publish(packet id)`), then by its packet
/// id until its PUBACK. The connection never resends (it is dropped when it
/// fails, and the caller retries), so that order holds.
struct Publisher {
    client: AsyncClient,
    queued: Arc<std::sync::Mutex<std::collections::VecDeque<Answer>>>,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Publisher {
    fn start(client: AsyncClient, mut events: mpsc::UnboundedReceiver<Event>) -> Publisher {
        use std::sync::atomic::{AtomicBool, Ordering};
        let queued: Arc<std::sync::Mutex<std::collections::VecDeque<Answer>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (q, a) = (queued.clone(), alive.clone());
        tokio::spawn(async move {
            let mut sent: std::collections::HashMap<u16, Answer> = Default::default();
            while let Some(event) = events.recv().await {
                match event {
                    Event::Outgoing(Outgoing::Publish(pkid)) => {
                        let next = q.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                        if let Some(answer) = next {
                            sent.insert(pkid, answer);
                        }
                    }
                    Event::Incoming(Packet::PubAck(ack)) => {
                        if let Some(answer) = sent.remove(&ack.pkid) {
                            let _ = answer.send(match ack.reason {
                                PubAckReason::Success => Ok(Published::Accepted),
                                PubAckReason::NoMatchingSubscribers => Ok(Published::Unroutable),
                                other => Err(BrokerError::Refused(format!(
                                    "the broker did not take the message: {other:?}"
                                ))),
                            });
                        }
                    }
                    _ => {}
                }
            }
            // The connection ended: what waits is answered by its sender's
            // drop (unavailable).
            a.store(false, Ordering::Release);
            q.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        Publisher {
            client,
            queued,
            alive,
        }
    }

    fn alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Queues a publish; the receiver gets the broker's answer.
    async fn send(
        &self,
        to: &str,
        body: Bytes,
        properties: PublishProperties,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Published, BrokerError>>, BrokerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(tx);
        if let Err(e) = self
            .client
            .publish_with_properties(to, QoS::AtLeastOnce, false, body, properties)
            .await
        {
            // Its answer is queued with nothing to match it: this
            // connection's order is lost, so it is done with.
            self.alive
                .store(false, std::sync::atomic::Ordering::Release);
            let _ = self.client.try_disconnect();
            return Err(unavailable(e));
        }
        Ok(rx)
    }
}

/// The TLS client configuration: the webpki roots, ring (as the rest of
/// replyd). Built once per broker handle; an `mqtts://` URL never falls back
/// to plain TCP.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| format!("mqtt: cannot set up TLS: {e}"))
}

#[async_trait]
impl Broker for MqttBroker {
    fn channel(&self) -> OutboxChannel {
        OutboxChannel::Mqtt
    }

    /// A topic exists while someone subscribes to it: nothing to declare.
    async fn declare(&self, _destination: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn subscribe(
        &self,
        source: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Received>, BrokerError> {
        let inner = &self.inner;
        let id = format!("{}-{}", inner.client_id, digest8(source));
        let filter = if inner.share_group.is_empty() {
            source.to_string()
        } else {
            format!("$share/{}/{source}", inner.share_group)
        };
        let (client, events) = inner.connect(inner.options(id, true, prefetch)).await?;
        listen(self.inner.clone(), client, events, filter, prefetch, true).await
    }

    async fn inbox(&self) -> Result<(String, mpsc::Receiver<Received>), BrokerError> {
        let inner = &self.inner;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("{INBOX_PREFIX}{token}");
        let id = format!("{}-inbox-{}", inner.client_id, &token[..8]);
        let (client, events) = inner.connect(inner.options(id, false, 256)).await?;
        let rx = listen(
            self.inner.clone(),
            client,
            events,
            topic.clone(),
            256,
            false,
        )
        .await?;
        Ok((topic, rx))
    }

    async fn publish(&self, to: &str, message: Message) -> Result<Published, BrokerError> {
        self.inner.publish(to, message).await
    }
}

/// Subscribes `client` to `filter` and forwards its messages until the
/// connection ends. With `settled`, each message waits for its owner to
/// settle it; without (an inbox), it is acknowledged as it arrives.
async fn listen(
    inner: Arc<Inner>,
    client: AsyncClient,
    mut events: mpsc::UnboundedReceiver<Event>,
    filter: String,
    prefetch: u16,
    settled: bool,
) -> Result<mpsc::Receiver<Received>, BrokerError> {
    client
        .subscribe_many(vec![Filter::new(filter.clone(), QoS::AtLeastOnce)])
        .await
        .map_err(unavailable)?;
    // Until the SUBACK, messages of a resumed session may come first: keep
    // them.
    let mut early = Vec::new();
    let subscribed = tokio::time::timeout(ANSWER_TIMEOUT, async {
        while let Some(e) = events.recv().await {
            match e {
                Event::Incoming(Packet::SubAck(ack)) => {
                    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
                    return match ack.return_codes.first() {
                        Some(SubscribeReasonCode::Success(_)) => Ok(()),
                        other => Err(BrokerError::Refused(format!(
                            "subscribing to {filter:?}: {other:?}"
                        ))),
                    };
                }
                Event::Incoming(Packet::Publish(p)) => early.push(p),
                _ => {}
            }
        }
        Err(unavailable("the connection closed while subscribing"))
    })
    .await
    .unwrap_or_else(|_| Err(unavailable("the broker did not answer the subscription")));
    if let Err(e) = subscribed {
        let _ = client.try_disconnect();
        return Err(e);
    }
    let (tx, rx) = mpsc::channel(usize::from(prefetch.max(1)));
    tokio::spawn(async move {
        let forward = |p: Publish| {
            if !settled {
                let _ = client.try_ack(&p);
            }
            Received {
                message: message_of(&p),
                redelivered: p.dup,
                settle: Box::new(MqttSettle {
                    inner: inner.clone(),
                    client: client.clone(),
                    publish: settled.then_some(p),
                }),
            }
        };
        for p in early {
            if tx.send(forward(p)).await.is_err() {
                return;
            }
        }
        while let Some(e) = events.recv().await {
            if let Event::Incoming(Packet::Publish(p)) = e
                && tx.send(forward(p)).await.is_err()
            {
                break;
            }
        }
        // Unacknowledged messages stay in the session: the broker delivers
        // them again when it resumes.
        let _ = client.try_disconnect();
    });
    Ok(rx)
}

/// Settles through the connection that received the message.
struct MqttSettle {
    inner: Arc<Inner>,
    client: AsyncClient,
    /// The message, when it waits for its acknowledgement.
    publish: Option<Publish>,
}

#[async_trait]
impl Settle for MqttSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        if let Some(p) = &self.publish {
            self.client.ack(p).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Published again to its topic, then acknowledged (MQTT has no
    /// negative acknowledgement). Should the publish fail, it stays
    /// unacknowledged, and the broker delivers it again with the session.
    async fn requeue(self: Box<Self>) -> Result<(), BrokerError> {
        let Some(p) = &self.publish else {
            return Ok(());
        };
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        self.inner.publish(&topic, message_of(p)).await?;
        self.client.ack(p).await.map_err(unavailable)
    }
}

/// API.md §6's metadata from an MQTT 5 publish.
fn message_of(p: &Publish) -> Message {
    let mut props = Props::default();
    if let Some(pp) = &p.properties {
        props.reply_to = pp.response_topic.clone();
        props.content_type = pp.content_type.clone();
        props.correlation_id = pp.correlation_data.as_deref().map(correlation_text);
        let mut headers = BTreeMap::new();
        for (k, v) in &pp.user_properties {
            if k == MESSAGE_ID {
                props.message_id = Some(v.clone());
            } else {
                headers.insert(k.clone(), v.clone());
            }
        }
        props.headers = headers;
    }
    Message {
        body: p.payload.clone(),
        props,
    }
}

/// MQTT 5 publish properties from API.md §6's metadata.
fn properties(p: &Props) -> PublishProperties {
    let correlation = p
        .correlation_id
        .as_deref()
        .map(|c| Bytes::from(correlation_bytes(c)));
    let mut user_properties: Vec<(String, String)> = p
        .message_id
        .iter()
        .map(|id| (MESSAGE_ID.to_string(), id.clone()))
        .collect();
    user_properties.extend(p.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    PublishProperties {
        response_topic: p.reply_to.clone(),
        correlation_data: correlation,
        content_type: p.content_type.clone(),
        user_properties,
        ..PublishProperties::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_received(props: PublishProperties) -> Publish {
        let mut p = Publish::new("t", QoS::AtLeastOnce, "body", None);
        p.properties = Some(props);
        p
    }

    #[test]
    fn metadata_round_trips_through_mqtt_properties() {
        let p = Props {
            message_id: Some("m-1".into()),
            correlation_id: Some("c-1".into()),
            reply_to: Some("clients/7/replies".into()),
            content_type: Some("application/json".into()),
            ..Props::default()
        }
        .with_header("x-replyd-queue", "report")
        .with_header("x-replyd-progress", "true");
        let back = message_of(&as_received(properties(&p)));
        assert_eq!(back.props, p);
        assert_eq!(&back.body[..], b"body");
    }

    #[test]
    fn binary_correlation_data_comes_back_as_it_was() {
        let raw = Bytes::from_static(&[0xff, 0x00, 0x10, 0x80]);
        let received = message_of(&as_received(PublishProperties {
            correlation_data: Some(raw.clone()),
            ..PublishProperties::default()
        }));
        assert_ne!(received.props.correlation_id.as_deref(), Some(""));
        assert_eq!(properties(&received.props).correlation_data, Some(raw));
        // Text is carried as its bytes.
        let plain = properties(&Props {
            correlation_id: Some("abc".into()),
            ..Props::default()
        });
        assert_eq!(plain.correlation_data.as_deref(), Some(&b"abc"[..]));
    }

    /// A broker that is not there: an operation fails as unavailable (to
    /// be tried again), naming where it tried and why.
    #[tokio::test]
    async fn an_absent_broker_is_unavailable_and_says_where() {
        let b = MqttBroker::new(&MqttConfig {
            url: "mqtt://127.0.0.1:1".into(),
            ..MqttConfig::default()
        })
        .unwrap();
        let e = b.publish("t", Message::default()).await.unwrap_err();
        let BrokerError::Unavailable(why) = &e else {
            panic!("{e:?}")
        };
        assert!(why.contains("127.0.0.1:1"), "{why}");
        assert!(matches!(
            b.subscribe("t", 1).await,
            Err(BrokerError::Unavailable(_))
        ));
    }

    #[test]
    fn the_url_gives_host_port_tls_and_credentials() {
        let cfg = |url: &str| MqttConfig {
            url: url.into(),
            ..MqttConfig::default()
        };
        let b = MqttBroker::new(&cfg("mqtts://u%40x:p%2Fw@broker.test")).unwrap();
        assert_eq!(
            (b.inner.host.as_str(), b.inner.port, b.inner.tls.is_some()),
            ("broker.test", 8883, true)
        );
        assert_eq!(
            b.inner.credentials,
            Some(("u@x".to_string(), "p/w".to_string()))
        );
        let b = MqttBroker::new(&cfg("mqtt://[::1]:1884")).unwrap();
        assert_eq!(
            (b.inner.host.as_str(), b.inner.port, b.inner.tls.is_some()),
            ("::1", 1884, false)
        );
        assert_eq!(b.inner.credentials, None);
    }
}
