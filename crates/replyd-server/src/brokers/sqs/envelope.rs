//! SNS's JSON message: what SNS pushes to an HTTP(S) subscriber, and the
//! body of an SQS message that came through an SNS subscription without
//! raw message delivery. `Type` is `Notification` (a published message:
//! `Message`, `MessageId`, `TopicArn`, the publisher's `MessageAttributes`
//! as `{"Name": {"Type": "String", "Value": "…"}}`), or, pushed only,
//! `SubscriptionConfirmation` and `UnsubscribeConfirmation` (with
//! `SubscribeURL` and `Token`). Each carries SNS's signature of its
//! [`Envelope::signed_text`], checked by `brokers::sns::push` for pushed
//! messages.
//!
//! A notification's request is its `Message` with those attributes, and
//! SNS's `MessageId` (the same on each of SNS's redeliveries) its duplicate
//! key unless the publisher set one. (With raw message delivery, SNS puts
//! the message and its attributes in the SQS message itself, read as any.)
//! In an SQS queue the signature is not checked: the queue's access policy
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

/// An SNS message, as SNS sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Envelope {
    pub r#type: String,
    pub message_id: String,
    pub topic_arn: String,
    pub message: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub signature_version: String,
    #[serde(default)]
    pub signature: String,
    #[serde(default, rename = "SigningCertURL")]
    pub signing_cert_url: String,
    #[serde(default, rename = "SubscribeURL")]
    pub subscribe_url: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    message_attributes: std::collections::BTreeMap<String, Attribute>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attribute {
    r#type: String,
    value: String,
}

impl Envelope {
    /// What SNS signs (AWS's "Verifying the signatures of Amazon SNS
    /// messages"): each field's name and value, a line each, in this
    /// order; a notification's `Subject` only when it has one.
    pub fn signed_text(&self) -> String {
        let mut fields: Vec<(&str, &str)> =
            vec![("Message", &self.message), ("MessageId", &self.message_id)];
        if self.r#type == "Notification" {
            if let Some(s) = &self.subject {
                fields.push(("Subject", s));
            }
            fields.push(("Timestamp", &self.timestamp));
        } else {
            fields.push(("SubscribeURL", self.subscribe_url.as_deref().unwrap_or("")));
            fields.push(("Timestamp", &self.timestamp));
            fields.push(("Token", self.token.as_deref().unwrap_or("")));
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push(("Type", &self.r#type));
        let mut text = String::new();
        for (name, value) in fields {
            text.push_str(name);
            text.push('\n');
            text.push_str(value);
            text.push('\n');
        }
        text
    }

    /// The notification it is, if it is one.
    pub fn into_notification(self) -> Option<Notification> {
        if self.r#type != "Notification" || !self.topic_arn.starts_with("arn:") {
            return None;
        }
        let attributes = self
            .message_attributes
            .into_iter()
            .filter(|(_, a)| a.r#type == "String" || a.r#type == "Number")
            .map(|(k, a)| (k, a.value))
            .collect();
        Some(Notification {
            message_id: self.message_id,
            topic_arn: self.topic_arn,
            message: self.message,
            attributes,
        })
    }
}

impl Notification {
    /// The request it carries: its message, its attributes as API.md §6's
    /// metadata, SNS's `MessageId` as the duplicate key unless the
    /// publisher set one.
    pub fn into_message(self) -> crate::brokers::Message {
        let mut props = crate::brokers::sqs::client::props_of(self.attributes).0;
        props.message_id.get_or_insert(self.message_id);
        crate::brokers::Message {
            body: bytes::Bytes::from(self.message),
            props,
        }
    }
}

/// The notification `body` is, if it is SNS's envelope of one.
pub fn notification(body: &str) -> Option<Notification> {
    // Cheap refusal of ordinary bodies before parsing.
    if !body.trim_start().starts_with('{') || !body.contains("\"TopicArn\"") {
        return None;
    }
    serde_json::from_str::<Envelope>(body)
        .ok()?
        .into_notification()
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

    /// The signed text of each kind of message, as AWS documents it.
    #[test]
    fn the_signed_text_lists_the_documented_fields_in_order() {
        let n: Envelope = serde_json::from_value(serde_json::json!({
            "Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:r:1:t",
            "Subject": "s", "Message": "hi", "Timestamp": "2026-12-07T10:00:00.000Z",
            "SignatureVersion": "2", "Signature": "x", "SigningCertURL": "https://sns.r.amazonaws.com/c.pem",
        }))
        .unwrap();
        assert_eq!(
            n.signed_text(),
            "Message\nhi\nMessageId\nm\nSubject\ns\nTimestamp\n2026-12-07T10:00:00.000Z\nTopicArn\narn:aws:sns:r:1:t\nType\nNotification\n"
        );
        let mut no_subject = n.clone();
        no_subject.subject = None;
        assert!(!no_subject.signed_text().contains("Subject"));
        let c: Envelope = serde_json::from_value(serde_json::json!({
            "Type": "SubscriptionConfirmation", "MessageId": "m", "TopicArn": "arn:aws:sns:r:1:t",
            "Message": "confirm", "Timestamp": "T", "Token": "tok",
            "SubscribeURL": "https://sns.r.amazonaws.com/?Action=ConfirmSubscription",
            "SignatureVersion": "1", "Signature": "x", "SigningCertURL": "https://sns.r.amazonaws.com/c.pem",
        }))
        .unwrap();
        assert_eq!(
            c.signed_text(),
            "Message\nconfirm\nMessageId\nm\nSubscribeURL\nhttps://sns.r.amazonaws.com/?Action=ConfirmSubscription\nTimestamp\nT\nToken\ntok\nTopicArn\narn:aws:sns:r:1:t\nType\nSubscriptionConfirmation\n"
        );
    }
}
