//! The [`Broker`] of AWS SNS, on the AWS SDK and `[sqs]`'s settings.
//!
//! SNS keeps nothing: a topic hands each message to its subscriptions at
//! once. So every destination of this broker is a topic *and* an SQS
//! queue of the same name subscribed to it with raw message delivery
//! (created when the destination is declared, with a queue policy that
//! lets the topic send to it): what is published to the topic waits in
//! the queue until someone receives it, and receiving is SQS's (`[sqs]`'s
//! broker does it). Messages and their metadata are SQS's (API.md §6 as
//! message attributes, `sqs/client.rs`).
//!
//! - An **inbox** (a requester's reply address) is a private topic, read
//!   through its queue.
//! - **Publishing** to a topic is `Publish` (its success is SNS's
//!   confirmation; a FIFO topic's message group is the requester's
//!   correlation id or the job, its deduplication id the message id or
//!   the job and state). A destination that is an SQS queue URL (a
//!   requester's reply queue, an inbox) goes to SQS.
//! - A `ReplyTo` topic is answered only if it is one of this broker's own
//!   topics or one `[sqs]`'s `account_id` and `reply_topics` allow: never
//!   an arbitrary ARN a requester names; a bare name is one of its own or
//!   unroutable (no topic is ever created for a requester).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sns::error::ProvideErrorMetadata;
use aws_sdk_sns::types::MessageAttributeValue as Attribute;
use replyd_core::outbox::Channel as OutboxChannel;
use tokio::sync::mpsc;

use crate::brokers::sqs::client::{SqsBroker, describe, encode, unavailable};
use crate::brokers::{Broker, BrokerError, Message, Published, Received, headers};
use crate::config::brokers::sns::topic_name;
use crate::config::brokers::sqs::{SqsConfig, is_topic, reply_topic_allowed};

/// AWS SNS, through the queues of `[sqs]`'s endpoint.
pub struct SnsBroker {
    sqs: SqsBroker,
    config: SqsConfig,
    /// This broker's own topics: name → ARN (and each ARN → itself).
    topics: tokio::sync::Mutex<HashMap<String, String>>,
    /// replyd's reply topic (`sns.reply_topic`): a work message that
    /// names it as its `reply_to` names its ARN instead, which is what a
    /// worker outside replyd (a Lambda function) can publish to.
    reply_topic: Option<String>,
}

impl std::fmt::Debug for SnsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SnsBroker {
    /// The broker on `[sqs]`'s settings; nothing connects until it is used.
    pub fn new(config: &SqsConfig) -> SnsBroker {
        SnsBroker {
            sqs: SqsBroker::new(config),
            config: config.clone(),
            topics: tokio::sync::Mutex::new(HashMap::new()),
            reply_topic: None,
        }
    }

    /// The broker whose work messages name `topic` (replyd's reply
    /// topic) by its ARN.
    pub fn with_reply_topic(mut self, topic: &str) -> SnsBroker {
        self.reply_topic = Some(topic.to_string());
        self
    }

    /// The ARN of `topic` (a name or an ARN), created if absent (SNS's
    /// `CreateTopic` is idempotent), remembered as one of this broker's.
    async fn own_topic(&self, topic: &str) -> Result<String, BrokerError> {
        if let Some(arn) = self.topics.lock().await.get(topic) {
            return Ok(arn.clone());
        }
        let name = topic_name(topic);
        let mut create = self.sqs.sns().await.create_topic().name(name);
        if name.ends_with(".fifo") {
            create = create.attributes("FifoTopic", "true");
        }
        let arn = create
            .send()
            .await
            .map_err(|e| unavailable(format!("creating topic {name:?}: {}", describe(&e))))?
            .topic_arn()
            .map(str::to_string)
            .ok_or_else(|| unavailable(format!("SNS named no ARN for {name:?}")))?;
        let mut topics = self.topics.lock().await;
        topics.insert(topic.to_string(), arn.clone());
        topics.insert(arn.clone(), arn.clone());
        Ok(arn)
    }

    /// Whether `arn` may be published to: one of this broker's topics, or
    /// one `[sqs]` allows replies to.
    async fn may_publish(&self, arn: &str) -> bool {
        self.topics.lock().await.contains_key(arn) || reply_topic_allowed(&self.config, arn)
    }
}

#[async_trait]
impl Broker for SnsBroker {
    fn channel(&self) -> OutboxChannel {
        OutboxChannel::Sns
    }

    /// The topic, and the queue of its name subscribed to it.
    async fn declare(&self, destination: &str) -> Result<(), BrokerError> {
        let arn = self.own_topic(destination).await?;
        let queue_arn = self
            .sqs
            .queue_for_topic(topic_name(destination), &arn)
            .await?;
        // Subscribing again with the same attributes is SNS's no-op.
        self.sqs
            .sns()
            .await
            .subscribe()
            .topic_arn(&arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .map_err(|e| unavailable(format!("subscribing to {arn}: {}", describe(&e))))?;
        Ok(())
    }

    async fn subscribe(
        &self,
        source: &str,
        prefetch: u16,
    ) -> Result<mpsc::Receiver<Received>, BrokerError> {
        self.declare(source).await?;
        self.sqs.subscribe(topic_name(source), prefetch).await
    }

    /// A private topic (and the queue of its name subscribed to it): the
    /// reply address is the topic's ARN.
    async fn inbox(&self) -> Result<(String, mpsc::Receiver<Received>), BrokerError> {
        let name = format!("replyd-inbox-{}", uuid::Uuid::new_v4().simple());
        let rx = self.subscribe(&name, 256).await?;
        Ok((self.own_topic(&name).await?, rx))
    }

    async fn publish(&self, to: &str, mut message: Message) -> Result<Published, BrokerError> {
        if let Some(reply) = &self.reply_topic
            && message.props.reply_to.as_ref() == Some(reply)
        {
            message.props.reply_to = Some(self.own_topic(reply).await?);
        }
        if to.starts_with("https://") || to.starts_with("http://") {
            return self.sqs.publish(to, message).await;
        }
        let arn = if is_topic(to) {
            to.to_string()
        } else {
            match self.topics.lock().await.get(to) {
                Some(arn) => arn.clone(),
                None => {
                    tracing::warn!(broker = "sns", to = %to, "a topic name replyd did not declare is no reply address (name a topic ARN or a queue URL)");
                    return Ok(Published::Unroutable);
                }
            }
        };
        if !self.may_publish(&arn).await {
            tracing::warn!(broker = "sns", to = %arn, "a reply to an SNS topic that sqs.account_id and sqs.reply_topics do not allow is refused");
            return Ok(Published::Unroutable);
        }
        publish_to(self.sqs.sns().await, &arn, &message).await
    }
}

/// Publishes `message` to topic `arn` with its metadata as message
/// attributes (SQS's encoding); to a FIFO topic as [`fifo_ids`] says.
pub(crate) async fn publish_to(
    client: &aws_sdk_sns::Client,
    arn: &str,
    message: &Message,
) -> Result<Published, BrokerError> {
    let (body, attributes) = encode(message);
    let mut publish = client.publish().topic_arn(arn).message(body);
    for (name, value) in attributes {
        let v = Attribute::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| BrokerError::Refused(e.to_string()))?;
        publish = publish.message_attributes(name, v);
    }
    if arn.ends_with(".fifo") {
        let (group, dedupe) = fifo_ids(message);
        publish = publish
            .message_group_id(group)
            .message_deduplication_id(dedupe);
    }
    match publish.send().await {
        Ok(_) => Ok(Published::Accepted),
        Err(e) if matches!(e.code(), Some("NotFound" | "NotFoundException")) => {
            Ok(Published::Unroutable)
        }
        Err(e) => Err(unavailable(describe(&e))),
    }
}

/// A message's group and deduplication id in a FIFO topic: the group its
/// requester asked for (`x-replyd-reply-group`, kept in `Props::echo`),
/// else its correlation id (a requester's replies in order), else its
/// job; deduplicated by its message id (a reply's is one per job event,
/// the same on each retry; a work message's one per attempt), else its job
/// and state.
pub fn fifo_ids(message: &Message) -> (String, String) {
    let props = &message.props;
    let job = props.header(headers::JOB_ID).unwrap_or("replyd");
    let group = props
        .echo
        .get(headers::REPLY_GROUP)
        .or(props.correlation_id.as_ref())
        .map_or(job, String::as_str);
    let dedupe = props
        .message_id
        .clone()
        .unwrap_or_else(|| format!("{job}:{}", props.header(headers::STATE).unwrap_or("reply")));
    (group.to_string(), dedupe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::Props;

    #[test]
    fn a_fifo_topic_groups_by_the_requesters_choice_else_its_correlation() {
        let reply = |echo: Option<&str>, corr: Option<&str>, id: Option<&str>| Message {
            body: Default::default(),
            props: Props {
                correlation_id: corr.map(String::from),
                message_id: id.map(String::from),
                echo: echo
                    .map(|g| [(headers::REPLY_GROUP.to_string(), g.to_string())].into())
                    .unwrap_or_default(),
                ..Props::default()
            }
            .with_header(headers::JOB_ID, "j-1")
            .with_header(headers::STATE, "succeeded"),
        };
        assert_eq!(
            fifo_ids(&reply(Some("tenant-7"), Some("c-1"), Some("m-1"))),
            ("tenant-7".into(), "m-1".into())
        );
        assert_eq!(
            fifo_ids(&reply(None, Some("c-1"), None)),
            ("c-1".into(), "j-1:succeeded".into())
        );
        assert_eq!(
            fifo_ids(&reply(None, None, Some("m-2"))),
            ("j-1".into(), "m-2".into())
        );
    }
}
