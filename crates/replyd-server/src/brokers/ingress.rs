//! Requests that arrive over a broker become jobs (API.md §6), for every
//! broker alike.
//!
//! A request is a message whose body is the job's input (JSON) and whose
//! `x-replyd-queue` header names the queue (else the configured default).
//! Its `reply_to` and `correlation_id` say where the reply goes; the job
//! keeps them, and the store owes the reply in the transaction of the job's
//! terminal event (the outbox). The message is acknowledged only once the
//! job is durable. A duplicate (the same `message_id`, or without one the
//! same `correlation_id`) makes no second job: the submission's idempotency
//! key finds the first, and the duplicate's `reply_to` is owed the
//! outcome too: at once if the job has finished, else when it does (a
//! requester that restarted with a new callback queue still gets its
//! reply). A request that cannot be accepted (not JSON, an unknown queue, a
//! bad option) is published to the dead-letter destination with the reason
//! in `x-replyd-error`, then acknowledged; its requester, if it named a
//! `reply_to`, gets a `rejected` reply at once.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use replyd_core::Tenant;
use replyd_core::outbox::{Channel, ReplySpec, ReplyTarget};
use replyd_core::store::Submitted;
use replyd_proto as proto;

use super::{Broker, Message, Props, Published, Received, headers};
use crate::app::{App, Submission, request_hash};
use crate::error::ApiError;

/// How one broker's requests become jobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The tenant of the jobs that arrive this way.
    pub tenant: Tenant,
    /// The queue of a request without `x-replyd-queue`.
    pub default_queue: Option<String>,
    /// Where a request that cannot be accepted goes, with the reason.
    pub dead_letter: String,
    /// Requests handled at once (and unacknowledged at the broker).
    pub prefetch: u16,
}

/// Why a request was not accepted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request itself is wrong: dead-letter it with this reason.
    Reject(String),
    /// replyd cannot take it now (the store is unavailable, a duplicate is
    /// still being accepted): give it back to be delivered again.
    Later(String),
}

/// Consumes `source` until shutdown (see [`consume`](super::consume)).
pub async fn run(app: Arc<App>, broker: Arc<dyn Broker>, source: String, settings: Settings) {
    let settings = Arc::new(settings);
    let prefetch = settings.prefetch;
    let (a, b) = (app.clone(), broker.clone());
    super::consume(app, broker, source, prefetch, "requests", move |r| {
        let (app, broker, settings) = (a.clone(), b.clone(), settings.clone());
        async move { handle(&app, &*broker, &settings, r).await }
    })
    .await;
}

/// Handles one request: accepts it (then acknowledges it), dead-letters it,
/// or gives it back.
pub async fn handle(app: &App, broker: &dyn Broker, settings: &Settings, r: Received) {
    let Received {
        message, settle, ..
    } = r;
    let outcome = match accept(app, broker.channel(), settings, &message).await {
        Ok(()) => "accepted",
        Err(Refusal::Reject(reason)) => {
            match dead_letter(broker, settings, &message, &reason).await {
                Ok(Published::Accepted) => {}
                // A broker whose topics exist only while someone subscribes
                // (MQTT) has nowhere to keep it: the requester still learns
                // why, below.
                Ok(Published::Unroutable) => {
                    tracing::warn!(
                        broker = broker.channel().as_str(),
                        dead_letter = %settings.dead_letter,
                        reason = %reason,
                        "nothing receives dead letters there: a rejected request is dropped"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot dead-letter a request; it will be delivered again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = settle.requeue().await;
                    return;
                }
            }
            reject_reply(broker, &message, &reason).await;
            "rejected"
        }
        Err(Refusal::Later(reason)) => {
            tracing::info!(reason = %reason, "a request is given back to the broker");
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Err(e) = settle.requeue().await {
                tracing::warn!(error = %e, "cannot give a request back; the broker redelivers it");
            }
            metrics::counter!("replyd_broker_requests_total", "broker" => broker.channel().as_str(), "outcome" => "requeued").increment(1);
            return;
        }
    };
    metrics::counter!("replyd_broker_requests_total", "broker" => broker.channel().as_str(), "outcome" => outcome).increment(1);
    // If this ack is lost the broker delivers the request again, and the
    // duplicate finds its job.
    if let Err(e) = settle.ack().await {
        tracing::warn!(error = %e, "cannot acknowledge a request; it will be delivered again");
    }
}

/// A request's submission, parsed from the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub submit: proto::SubmitRequest,
    /// Ask for a reply on each progress report too.
    pub progress: bool,
}

/// Reads a request from a message.
pub fn parse(settings: &Settings, m: &Message, max_body: usize) -> Result<Request, String> {
    if m.body.len() > max_body {
        return Err(format!(
            "the body is {} bytes, more than limits.max_body ({max_body})",
            m.body.len()
        ));
    }
    let queue = match m.props.header(headers::QUEUE) {
        Some(q) => q.to_string(),
        None => settings.default_queue.clone().ok_or_else(|| {
            format!(
                "no {} header, and no default queue is configured",
                headers::QUEUE
            )
        })?,
    };
    let input: serde_json::Value = serde_json::from_slice(&m.body)
        .map_err(|e| format!("the body must be JSON (the job's input): {e}"))?;
    let number = |name: &str| -> Result<Option<f64>, String> {
        m.props
            .header(name)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| format!("header {name}: {v:?} is not a number"))
            })
            .transpose()
    };
    let max_attempts = match number(headers::MAX_ATTEMPTS)? {
        Some(n) if n.fract() == 0.0 && (1.0..=f64::from(u32::MAX)).contains(&n) => Some(n as u32),
        Some(_) => {
            return Err(format!(
                "header {}: a whole number of at least 1",
                headers::MAX_ATTEMPTS
            ));
        }
        None => None,
    };
    let priority = match number(headers::PRIORITY)? {
        Some(n) if n.fract() == 0.0 && (0.0..=9.0).contains(&n) => Some(n as u8),
        Some(_) => return Err(format!("header {}: 0 to 9", headers::PRIORITY)),
        None => None,
    };
    let run_at = match m.props.header(headers::RUN_AT).map(str::trim) {
        Some(v) => Some(
            chrono::DateTime::parse_from_rfc3339(v)
                .map_err(|e| {
                    format!(
                        "header {}: {v:?} is not an RFC 3339 time: {e}",
                        headers::RUN_AT
                    )
                })?
                .to_utc(),
        ),
        None => None,
    };
    let progress = match m.props.header(headers::PROGRESS).map(str::trim) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(v) => {
            return Err(format!(
                "header {}: {v:?} is neither true nor false",
                headers::PROGRESS
            ));
        }
    };
    Ok(Request {
        submit: proto::SubmitRequest {
            queue,
            input,
            webhook: None,
            max_attempts,
            timeout: number(headers::TIMEOUT)?,
            ttl: number(headers::TTL)?,
            output: None,
            priority,
            delay: number(headers::DELAY)?,
            run_at,
            group: m.props.header(headers::GROUP).map(str::to_string),
        },
        progress,
    })
}

/// The key that tells a duplicate: the message id, else the correlation id
/// (a digest of it when it is too long for a key).
pub fn dedupe_key(props: &Props) -> Option<String> {
    let (kind, id) = match (&props.message_id, &props.correlation_id) {
        (Some(id), _) if !id.is_empty() => ("msg", id),
        (_, Some(c)) if !c.is_empty() => ("corr", c),
        _ => return None,
    };
    let printable = id.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    Some(if id.len() <= 240 && printable {
        format!("{kind}:{id}")
    } else {
        use sha2::{Digest, Sha256};
        format!("{kind}#{}", hex::encode(Sha256::digest(id.as_bytes())))
    })
}

/// Submits the request's job (durable when this returns).
pub async fn accept(
    app: &App,
    channel: Channel,
    settings: &Settings,
    m: &Message,
) -> Result<(), Refusal> {
    let req = parse(settings, m, app.config.limits.max_body).map_err(Refusal::Reject)?;
    let key = dedupe_key(&m.props);
    let hash = key
        .as_ref()
        .map(|_| request_hash(&serde_json::to_value(&req.submit).unwrap_or_default()));
    let reply = m.props.reply_to.as_ref().map(|to| ReplySpec {
        channel,
        target: ReplyTarget {
            to: to.clone(),
            correlation_id: m.props.correlation_id.clone(),
            echo: m.props.echo.clone(),
        },
        progress: req.progress,
    });
    let submission = || Submission {
        tenant: settings.tenant.clone(),
        request: req.submit.clone(),
        idempotency_key: key.clone(),
        request_hash: hash.clone(),
        reply: reply.clone(),
        trace: m.props.trace(),
        via: channel.as_str(),
    };
    let mut submitted = app.submit(submission()).await;
    // A duplicate that came while the first is still being accepted (409):
    // that takes a moment; then it is an ordinary duplicate.
    for _ in 0..20 {
        match &submitted {
            Err(e) if e.status == StatusCode::CONFLICT => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                submitted = app.submit(submission()).await;
            }
            _ => break,
        }
    }
    match submitted {
        Ok(Submitted::Created(_)) => Ok(()),
        Ok(Submitted::Existing(job)) => {
            // A duplicate: no second job, and the outcome is owed to the
            // duplicate's address too (at once if the job has finished;
            // when it finishes if not, unless it is the first's address).
            if let Some(reply) = reply {
                app.store
                    .ask_reply(job.id, reply, app.now())
                    .await
                    .map_err(|e| Refusal::Later(e.to_string()))?;
            }
            Ok(())
        }
        Err(e) if e.status.is_client_error() && e.status != StatusCode::CONFLICT => {
            Err(Refusal::Reject(e.detail))
        }
        Err(e) => Err(Refusal::Later(e.detail)),
    }
}

/// Publishes the request, as it came, to the dead-letter destination with
/// the reason.
async fn dead_letter(
    broker: &dyn Broker,
    settings: &Settings,
    m: &Message,
    reason: &str,
) -> Result<Published, super::BrokerError> {
    // Declared as it is needed (dead letters are rare), so that it exists
    // after whatever happened to the broker meanwhile.
    if let Err(e) = broker.declare(&settings.dead_letter).await {
        tracing::warn!(dead_letter = %settings.dead_letter, error = %e, "cannot declare the dead-letter destination");
    }
    let mut dead = m.clone();
    dead.props = dead.props.with_header(headers::ERROR, reason);
    broker.publish(&settings.dead_letter, dead).await
}

/// Tells a requester at once that its request made no job (best effort:
/// the dead letter keeps the request either way).
pub(crate) async fn reject_reply(broker: &dyn Broker, m: &Message, reason: &str) {
    let Some(to) = &m.props.reply_to else { return };
    let problem = ApiError::bad_request(reason).problem();
    let reply = Message {
        body: serde_json::to_vec(&problem).unwrap_or_default().into(),
        props: Props {
            correlation_id: m.props.correlation_id.clone(),
            content_type: Some("application/problem+json".into()),
            echo: m.props.echo.clone(),
            ..Props::default()
        }
        .with_header(headers::STATE, "rejected")
        .with_header(headers::ERROR, reason),
    };
    if let Err(e) = broker.publish(to, reply).await {
        tracing::info!(error = %e, "cannot tell a requester its request was rejected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            tenant: Tenant::open(),
            default_queue: Some("report".into()),
            dead_letter: "dead".into(),
            prefetch: 8,
        }
    }

    fn message(body: &str, headers: &[(&str, &str)]) -> Message {
        let mut props = Props::default();
        for (k, v) in headers {
            props = props.with_header(k, *v);
        }
        Message {
            body: body.to_string().into(),
            props,
        }
    }

    #[test]
    fn a_request_is_its_input_and_headers() {
        let r = parse(
            &settings(),
            &message(
                r#"{"n":1}"#,
                &[
                    (headers::QUEUE, "thumbs"),
                    (headers::MAX_ATTEMPTS, "5"),
                    (headers::TIMEOUT, "30"),
                    (headers::TTL, "60.5"),
                    (headers::PROGRESS, "true"),
                    (headers::PRIORITY, "7"),
                    (headers::RUN_AT, "2030-01-02T03:04:05Z"),
                ],
            ),
            1024,
        )
        .unwrap();
        assert_eq!(r.submit.priority, Some(7));
        assert_eq!(
            r.submit.run_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2030-01-02T03:04:05+00:00")
        );
        assert_eq!(r.submit.queue, "thumbs");
        assert_eq!(r.submit.input, serde_json::json!({"n": 1}));
        assert_eq!(r.submit.max_attempts, Some(5));
        assert_eq!(r.submit.timeout, Some(30.0));
        assert_eq!(r.submit.ttl, Some(60.5));
        assert!(r.progress);
        let plain = parse(&settings(), &message("[]", &[]), 1024).unwrap();
        assert_eq!(plain.submit.queue, "report", "the default queue");
        assert!(!plain.progress);
    }

    #[test]
    fn what_cannot_be_a_request_says_why() {
        let s = settings();
        // (body, headers, what the reason says)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("not json", &[], "must be JSON"),
            (
                "{}",
                &[(headers::MAX_ATTEMPTS, "0")],
                "x-replyd-max-attempts",
            ),
            (
                "{}",
                &[(headers::MAX_ATTEMPTS, "1.5")],
                "x-replyd-max-attempts",
            ),
            ("{}", &[(headers::TIMEOUT, "soon")], "x-replyd-timeout"),
            ("{}", &[(headers::PROGRESS, "maybe")], "x-replyd-progress"),
            ("{}", &[(headers::PRIORITY, "10")], "x-replyd-priority"),
            ("{}", &[(headers::PRIORITY, "1.5")], "x-replyd-priority"),
            ("{}", &[(headers::DELAY, "later")], "x-replyd-delay"),
            ("{}", &[(headers::RUN_AT, "tomorrow")], "x-replyd-run-at"),
        ];
        for (body, hs, says) in cases {
            let e = parse(&s, &message(body, hs), 1024).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let big = "1".repeat(2000);
        assert!(
            parse(&s, &message(&big, &[]), 1024)
                .unwrap_err()
                .contains("max_body")
        );
        let no_default = Settings {
            default_queue: None,
            ..settings()
        };
        assert!(
            parse(&no_default, &message("{}", &[]), 1024)
                .unwrap_err()
                .contains("x-replyd-queue")
        );
    }

    #[test]
    fn duplicates_are_told_by_message_id_else_correlation_id() {
        let mut p = Props {
            correlation_id: Some("c".into()),
            ..Props::default()
        };
        assert_eq!(dedupe_key(&p).as_deref(), Some("corr:c"));
        p.message_id = Some("m".into());
        assert_eq!(dedupe_key(&p).as_deref(), Some("msg:m"));
        assert_eq!(dedupe_key(&Props::default()), None);
        p.message_id = Some("x".repeat(300));
        let long = dedupe_key(&p).unwrap();
        assert!(long.starts_with("msg#") && long.len() == 68, "{long}");
        p.message_id = Some("ünïcode".into());
        assert!(dedupe_key(&p).unwrap().starts_with("msg#"));
    }
}
