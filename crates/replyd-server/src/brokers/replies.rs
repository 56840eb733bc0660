//! Replies to requests that came over a broker: the outbox [`Sender`] of a
//! broker's channel, the same for every broker.
//!
//! A reply carries the request's correlation id, `message_id` = the
//! delivery's id (the same on every attempt, so a requester can drop a
//! duplicate), and headers `x-replyd-job-id`, `x-replyd-state` (the job's
//! state after the event) and `x-replyd-event`. A success's body is the
//! job's result with its content type (a job that only streamed output:
//! the output when it is at most 64 KiB, else the job's representation,
//! which links to it); any other reply's (a failure, a
//! cancellation, a progress report) is the job's representation as JSON,
//! whose `error` says why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use replyd_core::EventKind;
use replyd_core::outbox::{Channel, Delivery, ReplyTarget};
use replyd_core::store::{Claimed, JobOutput};
use replyd_core::trace::SpanOf;

use super::{Broker, Message, Props, Published, headers};
use crate::outbox::{Attempt, Limits, Sender, Verdict};
use crate::render::{Renderer, wire_state};

/// Publishes a broker channel's replies.
pub struct Replies {
    pub broker: Arc<dyn Broker>,
    /// Where a success's result is read.
    pub store: Arc<dyn replyd_core::Store>,
    pub render: Renderer,
    pub limits: Limits,
    /// The trace headers each reply carries.
    pub telemetry: crate::telemetry::Telemetry,
}

impl Replies {
    /// The reply message of a delivery.
    async fn reply(&self, c: &Claimed, target: &ReplyTarget) -> Result<Message, String> {
        let d = &c.delivery;
        let job = &d.job;
        let props = Props {
            message_id: Some(d.message_id()),
            correlation_id: target.correlation_id.clone(),
            echo: target.echo.clone(),
            ..Props::default()
        }
        .with_header(headers::JOB_ID, job.id.to_string())
        .with_header(headers::STATE, wire_state(job.state).as_str())
        .with_header(headers::EVENT, d.kind.name())
        .with_trace(
            self.telemetry
                .outgoing(job, SpanOf::Delivery(d.id, d.attempts + 1)),
        );
        let (content_type, body) = if d.kind == EventKind::Succeeded {
            // Small results came with the claim; a larger one is read now.
            let output = match &c.result {
                Some(out) => Some(out.clone()),
                None => self.store.output(job.id).await.map_err(|e| e.to_string())?,
            };
            let JobOutput {
                content_type,
                body,
                upstream,
            } = output.unwrap_or(JobOutput {
                content_type: "application/json".into(),
                body: "null".into(),
                upstream: None,
            });
            if upstream.is_none() && &body[..] == b"null" && job.output.is_some() {
                // No result of its own, and an output too large to carry
                // (a small one came as the result): the job, which links
                // to it.
                let rep = serde_json::to_vec(&self.render.job(job)).map_err(|e| e.to_string())?;
                ("application/json".to_string(), rep.into())
            } else {
                (content_type, body)
            }
        } else {
            let rep = serde_json::to_vec(&self.render.job(job)).map_err(|e| e.to_string())?;
            ("application/json".to_string(), rep.into())
        };
        Ok(Message {
            body,
            props: Props {
                content_type: Some(content_type),
                ..props
            },
        })
    }
}

#[async_trait]
impl Sender for Replies {
    fn channel(&self) -> Channel {
        self.broker.channel()
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    /// One broker: one endpoint.
    fn endpoint(&self, _: &Delivery) -> String {
        self.broker.channel().as_str().to_string()
    }

    async fn attempt(&self, c: &Claimed, _now: chrono::DateTime<chrono::Utc>) -> Attempt {
        let start = Instant::now();
        let d = &c.delivery;
        let failed = |verdict: Verdict, error: String| Attempt {
            verdict,
            status: None,
            latency: start.elapsed(),
            error: Some(error),
            retry_after: None,
        };
        let Some(target) = ReplyTarget::decode(&d.target) else {
            return failed(
                Verdict::Refused,
                format!("not a reply address: {:?}", d.target),
            );
        };
        let message = match self.reply(c, &target).await {
            Ok(m) => m,
            Err(e) => return failed(Verdict::Retry, e),
        };
        let published = tokio::time::timeout(
            self.limits.attempt_timeout,
            self.broker.publish(&target.to, message),
        )
        .await;
        match published {
            Ok(Ok(Published::Accepted)) => Attempt {
                verdict: Verdict::Delivered,
                status: None,
                latency: start.elapsed(),
                error: None,
                retry_after: None,
            },
            Ok(Ok(Published::Unroutable)) => failed(
                Verdict::Gone,
                format!("nothing receives at {:?}: the requester is gone", target.to),
            ),
            Ok(Err(e)) => failed(Verdict::Retry, e.to_string()),
            Err(_) => failed(
                Verdict::Retry,
                format!(
                    "the broker did not confirm within {:?}",
                    self.limits.attempt_timeout
                ),
            ),
        }
    }
}

pub use crate::config::brokers::DEFAULT_SCHEDULE;

/// How long a reply waits for the broker's confirmation.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
