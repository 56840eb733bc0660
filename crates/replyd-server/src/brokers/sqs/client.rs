//! The [`Broker`] of AWS SQS, on the AWS SDK.
//!
//! API.md §6: a request's `reply_to` is the message attribute `ReplyTo` (a
//! queue URL, or a queue name) and its correlation id `CorrelationId`;
//! `MessageId` (an attribute the requester sets; without it, SQS's own
//! message id, the same on a redelivery) is the duplicate key;
//! `ContentType` and the `x-replyd-*` headers are attributes too. SQS
//! bodies are text: a body that is not UTF-8 is sent as base64, marked by
//! the attribute `x-replyd-body-encoding: base64`, and read back as its
//! bytes.
//!
//! - **Receiving** long-polls the queue; a received message stays hidden
//!   for `visibility_timeout` and is deleted when it is acknowledged; one
//!   given back is made visible again at once. One that is neither within
//!   the timeout is received again (a duplicate, which replyd tells by its
//!   message id).
//! - **Publishing** is `SendMessage`: its success is SQS's confirmation; a
//!   queue that does not exist is a requester gone ([`Published::Unroutable`]).
//! - Queues replyd consumes, and dead-letter queues, are created if absent.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use base64::Engine;
use bytes::Bytes;
use replyd_core::outbox::Channel as OutboxChannel;
use tokio::sync::mpsc;

use crate::brokers::{Broker, BrokerError, Message, Props, Published, Received, Settle};
#[cfg(feature = "sns")]
use crate::config::brokers::sqs::reply_topic_allowed;
use crate::config::brokers::sqs::{SqsConfig, is_topic};

const MESSAGE_ID: &str = "MessageId";
const CORRELATION_ID: &str = "CorrelationId";
const REPLY_TO: &str = "ReplyTo";
const CONTENT_TYPE: &str = "ContentType";
const BODY_ENCODING: &str = "x-replyd-body-encoding";
/// SQS carries at most this many message attributes.
const MAX_ATTRIBUTES: usize = 10;
/// Seconds a receive waits for messages (SQS's long poll; at most 20).
const LONG_POLL: i32 = 10;

/// An SQS endpoint (AWS's, or another).
pub struct SqsBroker {
    config: SqsConfig,
    client: tokio::sync::OnceCell<Client>,
    /// Feature `sns`: the SNS client replies to topics go through.
    #[cfg(feature = "sns")]
    sns: tokio::sync::OnceCell<aws_sdk_sns::Client>,
    /// Queue URLs by name.
    urls: tokio::sync::Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for SqsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// The SDK's error as text, with its code (SQS's and SNS's alike).
pub(crate) fn describe<E: ProvideErrorMetadata + std::fmt::Display>(e: &E) -> String {
    match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => e.to_string(),
    }
}

fn no_such_queue<E: ProvideErrorMetadata>(e: &E) -> bool {
    matches!(
        e.code(),
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
    )
}

impl SqsBroker {
    /// The broker of a `[sqs]` section; nothing connects until it is used.
    pub fn new(config: &SqsConfig) -> SqsBroker {
        SqsBroker {
            config: config.clone(),
            client: tokio::sync::OnceCell::new(),
            #[cfg(feature = "sns")]
            sns: tokio::sync::OnceCell::new(),
            urls: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async { Client::new(&sdk_config(&self.config).await) })
            .await
    }

    /// Feature `sns`: the SNS client, on the same settings.
    #[cfg(feature = "sns")]
    pub(crate) async fn sns(&self) -> &aws_sdk_sns::Client {
        self.sns
            .get_or_init(|| async { aws_sdk_sns::Client::new(&sdk_config(&self.config).await) })
            .await
    }

    /// The URL of `destination` (a URL already, or a queue name), creating
    /// the queue with `create`; `None`: no such queue.
    pub(crate) async fn url(
        &self,
        destination: &str,
        create: bool,
    ) -> Result<Option<String>, BrokerError> {
        if destination.starts_with("https://") || destination.starts_with("http://") {
            return Ok(Some(destination.to_string()));
        }
        if let Some(u) = self.urls.lock().await.get(destination) {
            return Ok(Some(u.clone()));
        }
        let client = self.client().await;
        let url = match client.get_queue_url().queue_name(destination).send().await {
            Ok(r) => r.queue_url().map(str::to_string),
            Err(e) if no_such_queue(&e) => {
                if !create {
                    return Ok(None);
                }
                let mut create = client.create_queue().queue_name(destination);
                if destination.ends_with(".fifo") {
                    create = create
                        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true");
                }
                let r = create.send().await.map_err(|e| {
                    unavailable(format!("creating queue {destination:?}: {}", describe(&e)))
                })?;
                r.queue_url().map(str::to_string)
            }
            Err(e) => return Err(unavailable(describe(&e))),
        };
        let Some(url) = url else {
            return Err(unavailable(format!("SQS named no URL for {destination:?}")));
        };
        self.urls
            .lock()
            .await
            .insert(destination.to_string(), url.clone());
        Ok(Some(url))
    }

    /// Long-polls `url` into a receiver until it is dropped or a receive
    /// fails (then it ends, and its owner subscribes again).
    fn poll(&self, url: String, prefetch: u16, settle: bool) -> mpsc::Receiver<Received> {
        let capacity = usize::from(prefetch.max(1));
        let (tx, rx) = mpsc::channel(capacity);
        let client = self.client.get().cloned();
        let visibility = i32::try_from(self.config.visibility_timeout).unwrap_or(60);
        tokio::spawn(async move {
            let Some(client) = client else { return };
            loop {
                let room = tx.capacity().clamp(1, 10);
                let received = tokio::select! {
                    _ = tx.closed() => return,
                    r = client
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(i32::try_from(room).unwrap_or(10))
                        .wait_time_seconds(LONG_POLL)
                        .visibility_timeout(visibility)
                        .message_attribute_names("All")
                        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                        .send() => r,
                };
                let messages = match received {
                    Ok(r) => r.messages.unwrap_or_default(),
                    Err(e) => {
                        tracing::warn!(broker = "sqs", queue = %url, error = %describe(&e), "receiving stopped");
                        return;
                    }
                };
                for m in messages {
                    let Some(handle) = m.receipt_handle().map(str::to_string) else {
                        continue;
                    };
                    let redelivered = m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| n > 1);
                    let r = Received {
                        message: message_of(&m),
                        redelivered,
                        settle: Box::new(SqsSettle {
                            client: client.clone(),
                            url: url.clone(),
                            handle,
                            settle,
                        }),
                    };
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}

#[async_trait]
impl Broker for SqsBroker {
    fn channel(&self) -> OutboxChannel {
        OutboxChannel::Sqs
    }

    async fn declare(&self, destination: &str) -> Result<(), BrokerError> {
        self.url(destination, true).await.map(|_| ())
    }

    async fn subscribe(
        &self,
        source: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Received>, BrokerError> {
        let url = self
            .url(source, true)
            .await?
            .ok_or_else(|| unavailable(format!("no queue {source:?}")))?;
        Ok(self.poll(url, prefetch, true))
    }

    async fn inbox(&self) -> Result<(String, mpsc::Receiver<Received>), BrokerError> {
        let name = format!("replyd-inbox-{}", uuid::Uuid::new_v4().simple());
        let url = self
            .url(&name, true)
            .await?
            .ok_or_else(|| unavailable("the inbox was not created"))?;
        let rx = self.poll(url.clone(), 256, true);
        Ok((url, rx))
    }

    async fn publish(&self, to: &str, message: Message) -> Result<Published, BrokerError> {
        if is_topic(to) {
            return self.publish_to_topic(to, message).await;
        }
        if !reply_host_allowed(&self.config, to) {
            // A requester names its reply queue: only one on the SQS replyd
            // talks to (its endpoint's host, or AWS's), never another host.
            tracing::warn!(broker = "sqs", to = %to, "a queue URL on another host than the SQS endpoint is refused");
            return Ok(Published::Unroutable);
        }
        let Some(url) = self.url(to, false).await? else {
            return Ok(Published::Unroutable);
        };
        let (body, attributes) = encode(&message);
        let mut send = self
            .client()
            .await
            .send_message()
            .queue_url(&url)
            .message_body(body);
        for (name, value) in attributes {
            let v = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| BrokerError::Refused(e.to_string()))?;
            send = send.message_attributes(name, v);
        }
        if url.ends_with(".fifo") {
            // A FIFO queue wants a group (one job's messages in order) and
            // a deduplication id.
            let id = message
                .props
                .message_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let group = message
                .props
                .header(crate::brokers::headers::JOB_ID)
                .unwrap_or("replyd")
                .to_string();
            send = send.message_group_id(group).message_deduplication_id(id);
        }
        match send.send().await {
            Ok(_) => Ok(Published::Accepted),
            Err(e) if no_such_queue(&e) => {
                self.urls.lock().await.remove(to);
                Ok(Published::Unroutable)
            }
            Err(e) => Err(unavailable(describe(&e))),
        }
    }
}

/// The AWS settings of a `[sqs]` section (SQS's and SNS's clients share
/// them): its region, its credentials or AWS's chain, its endpoint.
pub(crate) async fn sdk_config(c: &SqsConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(c.region.clone()));
    if let (Some(id), Some(secret)) = (&c.access_key_id, &c.secret_access_key) {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            id.clone(),
            secret.clone(),
            None,
            None,
            "replyd-config",
        ));
    }
    if let Some(e) = &c.endpoint_url {
        loader = loader.endpoint_url(e.clone());
    }
    loader.load().await
}

impl SqsBroker {
    /// A reply to an SNS topic (a `ReplyTo` that is a topic ARN): only a
    /// topic the section allows (`reply_topics`, `account_id`).
    #[cfg(feature = "sns")]
    async fn publish_to_topic(
        &self,
        arn: &str,
        message: Message,
    ) -> Result<Published, BrokerError> {
        if !reply_topic_allowed(&self.config, arn) {
            tracing::warn!(broker = "sqs", to = %arn, "a reply to an SNS topic that sqs.account_id and sqs.reply_topics do not allow is refused");
            return Ok(Published::Unroutable);
        }
        super::topics::publish_to(self.sns().await, arn, &message).await
    }

    /// The SQS queue `queue` (created if absent) that SNS topic
    /// `topic_arn` may send to (its access policy says so), and its ARN.
    #[cfg(feature = "sns")]
    pub(crate) async fn queue_for_topic(
        &self,
        queue: &str,
        topic_arn: &str,
    ) -> Result<String, BrokerError> {
        use aws_sdk_sqs::types::QueueAttributeName as Name;
        let url = self
            .url(queue, true)
            .await?
            .ok_or_else(|| unavailable(format!("no queue {queue:?}")))?;
        let client = self.client().await;
        let got = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(Name::QueueArn)
            .send()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        let arn = got
            .attributes()
            .and_then(|a| a.get(&Name::QueueArn))
            .cloned()
            .ok_or_else(|| unavailable(format!("SQS named no ARN for {queue:?}")))?;
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "replyd-sns",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }],
        });
        client
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(Name::Policy, policy.to_string())
            .send()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        Ok(arn)
    }

    /// Without the feature `sns`, a topic is no reply address.
    #[cfg(not(feature = "sns"))]
    async fn publish_to_topic(&self, arn: &str, _: Message) -> Result<Published, BrokerError> {
        tracing::warn!(broker = "sqs", to = %arn, "a reply to an SNS topic needs replyd built with --features sns");
        Ok(Published::Unroutable)
    }
}

/// Whether `to` may be published to: a queue name, or a queue URL on the
/// configured endpoint's host (without one, on AWS's SQS hosts).
fn reply_host_allowed(config: &SqsConfig, to: &str) -> bool {
    if !(to.starts_with("https://") || to.starts_with("http://")) {
        return true;
    }
    let Some(host) = url::Url::parse(to)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    else {
        return false;
    };
    match &config.endpoint_url {
        Some(e) => url::Url::parse(e)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .is_some_and(|h| h == host),
        None => host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn"),
    }
}

/// Deletes (acknowledges) or shows again (gives back) a received message.
struct SqsSettle {
    client: Client,
    url: String,
    handle: String,
    settle: bool,
}

#[async_trait]
impl Settle for SqsSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        if !self.settle {
            return Ok(());
        }
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&self.handle)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(describe(&e)))
    }

    async fn requeue(self: Box<Self>) -> Result<(), BrokerError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&self.handle)
            .visibility_timeout(0)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(describe(&e)))
    }
}

/// The body (text) and attributes of a message (at most SQS's ten; API.md's
/// first, then replyd's headers, then the rest).
pub(crate) fn encode(m: &Message) -> (String, Vec<(String, String)>) {
    let p = &m.props;
    let mut attributes: Vec<(String, String)> = [
        (MESSAGE_ID, &p.message_id),
        (CORRELATION_ID, &p.correlation_id),
        (REPLY_TO, &p.reply_to),
        (CONTENT_TYPE, &p.content_type),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
    .collect();
    let body = match std::str::from_utf8(&m.body) {
        Ok(text) => text.to_string(),
        Err(_) => {
            attributes.push((BODY_ENCODING.to_string(), "base64".to_string()));
            base64::engine::general_purpose::STANDARD.encode(&m.body)
        }
    };
    let (ours, others): (Vec<_>, Vec<_>) = p
        .headers
        .iter()
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .partition(|(k, _)| k.starts_with("x-replyd-"));
    for (k, v) in ours.into_iter().chain(others) {
        if attributes.len() >= MAX_ATTRIBUTES {
            break;
        }
        attributes.push((k.clone(), v.clone()));
    }
    (body, attributes)
}

/// API.md §6's metadata from a received message (or from the SNS
/// notification it carries: `super::envelope`).
fn message_of(m: &aws_sdk_sqs::types::Message) -> Message {
    let attrs: Vec<(String, String)> = m
        .message_attributes()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_string())))
        .collect();
    let text = m.body().unwrap_or_default();
    if attrs.is_empty()
        && let Some(n) = super::envelope::notification(text)
    {
        return n.into_message();
    }
    let (mut props, base64_body) = props_of(attrs);
    if props.message_id.is_none() {
        props.message_id = m.message_id().map(str::to_string);
    }
    let body = if base64_body {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from(text.to_string()))
    } else {
        Bytes::from(text.to_string())
    };
    Message { body, props }
}

/// The metadata in a message's attributes, and whether its body is base64.
pub(crate) fn props_of(attrs: Vec<(String, String)>) -> (Props, bool) {
    let mut props = Props::default();
    let mut base64_body = false;
    for (k, value) in attrs {
        match k.as_str() {
            MESSAGE_ID => props.message_id = Some(value),
            CORRELATION_ID => props.correlation_id = Some(value),
            REPLY_TO => props.reply_to = Some(value),
            CONTENT_TYPE => props.content_type = Some(value),
            BODY_ENCODING => base64_body = value == "base64",
            crate::brokers::headers::REPLY_GROUP => {
                props.echo.insert(k, value);
            }
            _ => {
                props.headers.insert(k, value);
            }
        }
    }
    (props, base64_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_received(body: String, attributes: Vec<(String, String)>) -> aws_sdk_sqs::types::Message {
        let mut b = aws_sdk_sqs::types::Message::builder()
            .body(body)
            .message_id("sqs-own-id");
        for (k, v) in attributes {
            b = b.message_attributes(
                k,
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .unwrap(),
            );
        }
        b.build()
    }

    #[test]
    fn metadata_and_bodies_round_trip_through_attributes() {
        let p = Props {
            message_id: Some("m-1".into()),
            correlation_id: Some("c-1".into()),
            reply_to: Some("http://127.0.0.1:5000/123/replies".into()),
            content_type: Some("application/pdf".into()),
            ..Props::default()
        }
        .with_header("x-replyd-queue", "report");
        for body in [
            Bytes::from_static(b"{\"n\":1}"),
            Bytes::from_static(&[0xff, 0, 0x25]),
        ] {
            let m = Message {
                body: body.clone(),
                props: p.clone(),
            };
            let (text, attrs) = encode(&m);
            let back = message_of(&as_received(text, attrs));
            assert_eq!(back, m);
        }
        // Without its own MessageId, SQS's is the duplicate key.
        let plain = message_of(&as_received("{}".into(), vec![]));
        assert_eq!(plain.props.message_id.as_deref(), Some("sqs-own-id"));
    }

    #[test]
    fn an_sns_notification_is_its_message_and_sns_id_is_the_duplicate_key() {
        let envelope = |attrs: serde_json::Value| {
            serde_json::json!({
                "Type": "Notification",
                "MessageId": "sns-id",
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:requests",
                "Message": "{\"n\":1}",
                "MessageAttributes": attrs,
            })
            .to_string()
        };
        let text = |v: &str| serde_json::json!({"Type": "String", "Value": v});
        let m = message_of(&as_received(
            envelope(serde_json::json!({
                "CorrelationId": text("c-1"),
                "ReplyTo": text("replies"),
                "x-replyd-queue": text("report"),
            })),
            vec![],
        ));
        assert_eq!(&m.body[..], b"{\"n\":1}");
        assert_eq!(
            m.props.message_id.as_deref(),
            Some("sns-id"),
            "not SQS's own id"
        );
        assert_eq!(m.props.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(m.props.reply_to.as_deref(), Some("replies"));
        assert_eq!(m.props.header("x-replyd-queue"), Some("report"));
        // The publisher's own MessageId wins, as over SQS.
        let own = message_of(&as_received(
            envelope(serde_json::json!({"MessageId": text("mine")})),
            vec![],
        ));
        assert_eq!(own.props.message_id.as_deref(), Some("mine"));
        // A message with attributes of its own is read as it is.
        let raw = message_of(&as_received(
            envelope(serde_json::json!({})),
            vec![("CorrelationId".into(), "c-2".into())],
        ));
        let body: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
        assert_eq!(body["Type"], "Notification", "the envelope itself");
        assert_eq!(raw.props.correlation_id.as_deref(), Some("c-2"));
    }

    #[test]
    fn reply_queue_urls_stay_on_the_sqs_host() {
        let local = SqsConfig {
            endpoint_url: Some("http://127.0.0.1:5000".into()),
            ..SqsConfig::default()
        };
        assert!(reply_host_allowed(&local, "replies"));
        assert!(reply_host_allowed(
            &local,
            "http://127.0.0.1:5000/123/replies"
        ));
        assert!(!reply_host_allowed(
            &local,
            "http://127.0.0.2:5000/123/replies"
        ));
        assert!(!reply_host_allowed(&local, "http://[::1/123"));
        let aws = SqsConfig::default();
        assert!(reply_host_allowed(
            &aws,
            "https://sqs.eu-west-1.amazonaws.com/123456789012/replies"
        ));
        assert!(!reply_host_allowed(
            &aws,
            "https://sqs.evil.test/123/replies"
        ));
        assert!(!reply_host_allowed(
            &aws,
            "https://amazonaws.com.evil.test/1/r"
        ));
    }

    #[test]
    fn at_most_ten_attributes_ours_first() {
        let mut p = Props {
            correlation_id: Some("c".into()),
            ..Props::default()
        };
        for i in 0..12 {
            p = p.with_header(&format!("h{i:02}"), "x");
        }
        p = p.with_header("x-replyd-error", "why");
        let (_, attrs) = encode(&Message {
            body: Bytes::new(),
            props: p,
        });
        assert_eq!(attrs.len(), MAX_ATTRIBUTES);
        assert!(attrs.iter().any(|(k, _)| k == "x-replyd-error"));
        assert_eq!(attrs[0].0, CORRELATION_ID);
    }
}
