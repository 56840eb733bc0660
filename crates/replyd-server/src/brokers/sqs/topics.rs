//! SNS topics as destinations of messages in SQS's encoding (API.md §6's
//! metadata as message attributes, `client.rs`): a reply to a `ReplyTo`
//! that is a topic ARN, and every publish of the `sns` broker
//! (`brokers::sns::client`, which reads its topics through SQS queues).
//! Feature `sns`.

use aws_sdk_sns::error::ProvideErrorMetadata;
use aws_sdk_sns::types::MessageAttributeValue as Attribute;

use super::client::{describe, encode, unavailable};
use crate::brokers::{BrokerError, Message, Published, headers};

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
