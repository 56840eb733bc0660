//! An SQS message that came through an SNS subscription without raw
//! message delivery: its body is SNS's JSON envelope (`Type:
//! Notification`, `MessageId`, `TopicArn`, `Message`, and the publisher's
//! `MessageAttributes` as `{"Name": {"Type": "String", "Value": "…"}}`).
//! The request is the envelope's `Message` with those attributes, and SNS's
//! `MessageId` (the same on each of SNS's redeliveries) its duplicate key
//! unless the publisher set one. (With raw message delivery, SNS puts the
//! message and its attributes in the SQS message itself, read as any.)
//!
//! The envelope's signature is not checked here: the queue's access policy
//! says who may send to it, as for any request.

use serde::Deserialize;

/// What an SNS notification carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// SNS's id of the notification.
    pub message_id: String,
    pub topic_arn: String,
    pub message: String,
    /// The publisher's String and Number attributes (others are not
    /// metadata replyd reads).
    pub attributes: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    r#type: String,
    message_id: String,
    topic_arn: String,
    message: String,
    #[serde(default)]
    message_attributes: std::collections::BTreeMap<String, Attribute>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attribute {
    r#type: String,
    value: String,
}

/// The notification `body` is, if it is SNS's envelope of one.
pub fn notification(body: &str) -> Option<Notification> {
    // Cheap refusal of ordinary bodies before parsing.
    if !body.trim_start().starts_with('{') || !body.contains("\"TopicArn\"") {
        return None;
    }
    let e: Envelope = serde_json::from_str(body).ok()?;
    if e.r#type != "Notification" || !e.topic_arn.starts_with("arn:") {
        return None;
    }
    let attributes = e
        .message_attributes
        .into_iter()
        .filter(|(_, a)| a.r#type == "String" || a.r#type == "Number")
        .map(|(k, a)| (k, a.value))
        .collect();
    Some(Notification {
        message_id: e.message_id,
        topic_arn: e.topic_arn,
        message: e.message,
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_gives_its_message_attributes_and_id() {
        let body = serde_json::json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:requests",
            "Message": "{\"seconds\":1}",
            "Timestamp": "2026-12-07T10:00:00.000Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/x.pem",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
            "MessageAttributes": {
                "CorrelationId": {"Type": "String", "Value": "c-1"},
                "ReplyTo": {"Type": "String", "Value": "http://127.0.0.1:5000/123/replies"},
                "x-replyd-max-attempts": {"Type": "Number", "Value": "2"},
                "blob": {"Type": "Binary", "Value": "AAE="}
            }
        })
        .to_string();
        let n = notification(&body).unwrap();
        assert_eq!(n.message_id, "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324");
        assert_eq!(n.message, "{\"seconds\":1}");
        assert_eq!(
            n.attributes,
            [
                ("CorrelationId".to_string(), "c-1".to_string()),
                (
                    "ReplyTo".to_string(),
                    "http://127.0.0.1:5000/123/replies".to_string()
                ),
                ("x-replyd-max-attempts".to_string(), "2".to_string()),
            ]
        );
    }

    #[test]
    fn other_bodies_are_not_envelopes() {
        for body in [
            "{\"seconds\":1}",
            "not json",
            r#"{"Type":"SubscriptionConfirmation","MessageId":"m","TopicArn":"arn:aws:sns:r:1:t","Message":"x"}"#,
            r#"{"Type":"Notification","MessageId":"m","TopicArn":"nope","Message":"x"}"#,
            r#"{"Type":"Notification","TopicArn":"arn:aws:sns:r:1:t","Message":"x"}"#,
        ] {
            assert_eq!(notification(body), None, "{body}");
        }
    }
}
