//! Webhooks (API.md §2): the SSRF guard that vets every outbound URL
//! (`ssrf`), Standard Webhooks signing (`signing`), one delivery attempt
//! and the retry schedule (`deliver`), and the dispatcher that works the
//! outbox (`dispatch`).

pub mod deliver;
pub mod dispatch;
pub mod signing;
pub mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use replyd_core::EventKind;
use replyd_proto as proto;

use crate::config::{Webhooks, secs};
use crate::error::{ApiError, ApiResult};
use deliver::{Deliverer, Schedule};
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
    pub schedule: Schedule,
    pub concurrency: usize,
    pub per_endpoint: usize,
    pub attempt_timeout: Duration,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// From validated configuration, resolving names with the system.
    pub fn new(config: &Webhooks) -> Runtime {
        Runtime::with_resolver(config, Arc::new(SystemResolver))
    }

    pub fn with_resolver(config: &Webhooks, resolver: Arc<dyn Resolver>) -> Runtime {
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
            deliverer: Deliverer::new(
                guard.clone(),
                resolver.clone(),
                secs(config.timeout),
                config.max_response,
            ),
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
            schedule: Schedule {
                delays: config.retry_schedule.iter().map(|d| secs(*d)).collect(),
                max_retry_after: secs(config.max_retry_after),
                jitter: 0.1,
            },
            concurrency: config.concurrency,
            per_endpoint: config.per_endpoint,
            attempt_timeout: secs(config.timeout),
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
        Ok(serde_json::json!({"url": spec.url, "events": spec.events}))
    }
}
