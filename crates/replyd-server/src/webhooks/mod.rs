//! Webhooks (API.md §2): the SSRF guard that vets every outbound URL
//! (`ssrf`), Standard Webhooks signing (`signing`), one delivery attempt
//! (`deliver`), and the [`Runtime`] that vets a submission's webhook and is
//! the webhook channel's [`Sender`] for the outbox dispatcher.

pub mod deliver;
pub mod jwt;
pub mod operational;
pub mod signing;
pub mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use replyd_core::outbox::{Channel, Delivery, INLINE_RESULT};
use replyd_core::store::{Claimed, JobOutput};
use replyd_core::trace::SpanOf;
use replyd_core::{EventKind, JobState};
use replyd_proto as proto;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::{Webhooks, secs};
use crate::error::{ApiError, ApiResult};
use crate::outbox::{Attempt, Limits, Schedule, Sender};
use crate::render::Renderer;
use deliver::{Deliverer, Message};
use signing::Secret;
use ssrf::{Guard, Resolver, SystemResolver};

/// What the server needs to vet, sign and send webhooks.
pub struct Runtime {
    pub guard: Guard,
    pub resolver: Arc<dyn Resolver>,
    /// The current secret first, then those of a rotation's overlap.
    pub secrets: Vec<Secret>,
    /// Ed25519 keys (`v1a`) that sign every delivery too.
    pub keys: Vec<Arc<signing::SigningKey>>,
    /// Tenants with secrets of their own.
    pub tenant_secrets: std::collections::HashMap<String, Vec<Secret>>,
    pub deliverer: Deliverer,
    /// The ES256 keys of `webhook-jwt` tokens, read from the store.
    pub jwt_keys: Arc<jwt::Keys>,
    /// Who gets tokens: everyone, these tenants, or jobs that ask.
    pub jwt_all: bool,
    pub jwt_tenants: std::collections::HashSet<String>,
    /// The tokens' `iss`.
    pub issuer: String,
    pub limits: Limits,
    /// The job in a payload.
    pub render: Renderer,
    /// The trace headers each delivery carries.
    pub telemetry: crate::telemetry::Telemetry,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// From validated configuration, resolving names with the system;
    /// tokens are issued as `issuer`.
    pub fn new(config: &Webhooks, issuer: String, render: Renderer) -> Runtime {
        Runtime::with_resolver(config, issuer, render, Arc::new(SystemResolver))
    }

    pub fn with_resolver(
        config: &Webhooks,
        issuer: String,
        render: Renderer,
        resolver: Arc<dyn Resolver>,
    ) -> Runtime {
        let deliverer = Deliverer::new(
            Guard::new(
                config
                    .allow_networks
                    .iter()
                    .filter_map(|n| n.parse().ok())
                    .collect(),
            ),
            resolver.clone(),
            secs(config.timeout),
            config.max_response,
            config.proxy.as_deref(),
        )
        // Validation has parsed the proxy URL; a TLS backend is compiled in.
        .expect("a webhook client from validated configuration");
        let guard = Guard::new(
            config
                .allow_networks
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
        );
        let parse = |current: &Option<String>, previous: &Vec<String>| -> Vec<Secret> {
            current
                .iter()
                .chain(previous)
                .filter_map(|s| s.parse().ok())
                .collect()
        };
        let secrets = parse(&config.secret, &config.previous_secrets);
        let tenant_secrets = config
            .tenants
            .iter()
            .map(|(t, c)| (t.clone(), parse(&c.secret, &c.previous_secrets)))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        Runtime {
            deliverer,
            guard,
            resolver,
            secrets,
            keys: config
                .signing_keys
                .iter()
                .filter_map(|k| k.parse().ok())
                .map(Arc::new)
                .collect(),
            tenant_secrets,
            render,
            telemetry: crate::telemetry::Telemetry::off(),
            jwt_keys: Arc::default(),
            jwt_all: config.jwt,
            jwt_tenants: config
                .tenants
                .iter()
                .filter(|(_, t)| t.jwt)
                .map(|(name, _)| name.clone())
                .collect(),
            issuer,
            limits: Limits {
                concurrency: config.concurrency,
                per_endpoint: config.per_endpoint,
                attempt_timeout: secs(config.timeout),
                schedule: Schedule {
                    delays: config.retry_schedule.iter().map(|d| secs(*d)).collect(),
                    max_retry_after: secs(config.max_retry_after),
                    jitter: 0.1,
                },
            },
        }
    }

    /// The secrets that sign `tenant`'s webhooks: its own, else the
    /// server's.
    pub fn secrets_of(&self, tenant: &replyd_core::Tenant) -> &[Secret] {
        self.tenant_secrets
            .get(&tenant.0)
            .map_or(&self.secrets[..], |s| &s[..])
    }

    /// Vets a submission's webhook: a configured secret, known event
    /// names, and a URL the guard lets through at every address it
    /// resolves to now (delivery checks again). Returns what the job keeps.
    pub async fn vet(
        &self,
        tenant: &replyd_core::Tenant,
        spec: &proto::WebhookSpec,
    ) -> ApiResult<serde_json::Value> {
        if self.secrets_of(tenant).is_empty() {
            return Err(ApiError::bad_request(
                "webhooks are not configured on this server (it has no webhooks.secret)",
            ));
        }
        for name in spec.events.iter().flatten() {
            if EventKind::parse(name).is_none() {
                return Err(ApiError::bad_request(format!(
                    "webhook.events: unknown event {name:?}"
                )));
            }
        }
        if spec.url.len() > 2048 {
            return Err(ApiError::bad_request(
                "webhook.url is longer than 2048 bytes",
            ));
        }
        let bad = |e: ssrf::Refused| ApiError::bad_request(format!("webhook.url: {e}"));
        let url = self.guard.parse(&spec.url).map_err(bad)?;
        let resolved = tokio::time::timeout(
            Duration::from_secs(5),
            self.guard.resolve(&url, &*self.resolver),
        )
        .await
        .map_err(|_| ApiError::bad_request("webhook.url: its host did not resolve in 5 s"))?;
        resolved.map_err(bad)?;
        let mut kept = serde_json::json!({"url": spec.url, "events": spec.events});
        if spec.jwt {
            kept["jwt"] = true.into();
        }
        Ok(kept)
    }

    /// The `webhook-jwt` token of a delivery of `d` with `body` at `now`,
    /// if the server, its tenant or its job asks for one.
    pub fn token(
        &self,
        d: &Delivery,
        message_id: &str,
        body: &[u8],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<String> {
        let asked = self.jwt_all
            || self.jwt_tenants.contains(&d.job.tenant.0)
            || d.job
                .webhook
                .as_ref()
                .is_some_and(|w| w.get("jwt") == Some(&serde_json::Value::Bool(true)));
        if !asked {
            return None;
        }
        let keys = self.jwt_keys.get();
        let Some(key) = keys.signer(now) else {
            tracing::warn!("a delivery asks for a JWT but no key signs yet; sent without one");
            return None;
        };
        let job = d.job.id.to_string();
        Some(key.sign(&jwt::Claims::of(
            &self.issuer,
            &d.target,
            message_id,
            &job,
            &d.job.tenant.0,
            body,
            now.timestamp(),
        )))
    }
}

#[async_trait]
impl Sender for Runtime {
    fn channel(&self) -> Channel {
        Channel::Webhook
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn endpoint(&self, d: &Delivery) -> String {
        endpoint_of(&d.target)
    }

    async fn attempt(&self, c: &Claimed, now: chrono::DateTime<chrono::Utc>) -> Attempt {
        let d = &c.delivery;
        let id = d.message_id();
        let body = payload(&self.render, d, c.result.as_ref());
        let attempt = d.attempts + 1;
        let msg = Message {
            jwt: self.token(d, &id, &body, now),
            id,
            body,
            trace: self
                .telemetry
                .outgoing(&d.job, SpanOf::Delivery(d.id, attempt)),
        };
        self.deliverer
            .attempt(
                &d.target,
                &msg,
                self.secrets_of(&d.job.tenant),
                &self.keys,
                now,
            )
            .await
    }
}

/// scheme://host:port: what per-endpoint limits count by.
fn endpoint_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => url.to_string(),
    }
}

/// The envelope: `{"type", "timestamp", "data"}`.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: PayloadData<'a>,
}

/// The job as it was after the event, and its result when inline.
#[derive(Serialize)]
struct PayloadData<'a> {
    #[serde(flatten)]
    job: replyd_proto::Job,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
}

/// The body of a delivery: the job as it was after the event, with a small
/// JSON result inline. The same bytes on every attempt.
fn payload(render: &Renderer, d: &Delivery, result: Option<&JobOutput>) -> Bytes {
    let result = result
        .filter(|out| {
            d.kind == EventKind::Succeeded
                && d.job.state == JobState::Succeeded
                && out.content_type.starts_with("application/json")
                && out.body.len() <= INLINE_RESULT
        })
        .and_then(|out| serde_json::from_slice::<&RawValue>(&out.body).ok());
    let body = Payload {
        kind: d.kind.name(),
        timestamp: d
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        data: PayloadData {
            job: render.job(&d.job),
            result,
        },
    };
    serde_json::to_vec(&body).unwrap_or_default().into()
}
