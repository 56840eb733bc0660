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
use replyd_core::outbox::Channel as OutboxChannel;
use tokio::sync::mpsc;

use crate::brokers::sqs::client::{SqsBroker, describe, unavailable};
use crate::brokers::sqs::topics::publish_to;
use crate::brokers::{Broker, BrokerError, Message, Published, Received};
use crate::config::brokers::sns::{topic_arn, topic_name};
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

    /// The ARN of `topic`, remembered as one of this broker's: a name, or
    /// an ARN in `[sqs]`'s `account_id` and region, is created if absent
    /// (SNS's `CreateTopic` is idempotent); any other ARN is taken as it
    /// is (a topic of another account or region is never created here).
    async fn own_topic(&self, topic: &str) -> Result<String, BrokerError> {
        if let Some(arn) = self.topics.lock().await.get(topic) {
            return Ok(arn.clone());
        }
        if let Some((_, region, account, _)) = topic_arn(topic)
            && !(region == self.config.region && self.config.account_id.as_deref() == Some(account))
        {
            let arn = topic.to_string();
            self.topics.lock().await.insert(arn.clone(), arn.clone());
            return Ok(arn);
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
