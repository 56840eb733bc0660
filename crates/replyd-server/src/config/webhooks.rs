//! `[webhooks]`: signing secrets and keys, the SSRF allow-list, the retry
//! schedule and the delivery limits. The secrets' and keys' text forms are
//! defined here (`secret_bytes`, `signing_seed`); the runtime's signing
//! reads them through these.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::is_http_url;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhooks {
    /// The signing secret (`whsec_…`). Without one, submissions with a
    /// webhook are refused.
    pub secret: Option<String>,
    /// Secrets that also sign during a rotation (receivers may still know
    /// only these).
    pub previous_secrets: Vec<String>,
    /// Ed25519 keys (`whsk_…`) that add a `v1a` signature to every
    /// delivery.
    pub signing_keys: Vec<String>,
    /// Networks the SSRF guard lets through (e.g. `127.0.0.0/8` for local
    /// development). Empty by default.
    pub allow_networks: Vec<String>,
    /// Seconds before each attempt.
    pub retry_schedule: Vec<f64>,
    /// Seconds one attempt may take.
    pub timeout: f64,
    /// The longest, in seconds, a receiver's Retry-After may delay the next
    /// attempt.
    pub max_retry_after: f64,
    /// Bytes of a receiver's answer kept (in the attempt log).
    pub max_response: usize,
    /// Attempts in flight at once, over all endpoints.
    pub concurrency: usize,
    /// Attempts in flight at once to one endpoint (scheme, host, port).
    pub per_endpoint: usize,
    /// Secrets of particular tenants, in place of `secret`.
    pub tenants: BTreeMap<String, TenantWebhooks>,
    /// Every delivery also carries a `webhook-jwt` token (ES256; the keys
    /// are kept in the store and published at `/.well-known/jwks.json`).
    pub jwt: bool,
    /// The tokens' `iss`: by default the server's `public_url`.
    pub jwt_issuer: Option<String>,
    /// An HTTP(S) proxy every delivery goes through (e.g. an egress proxy
    /// that enforces its own allow-list). Proxy settings in the
    /// environment are never used.
    pub proxy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantWebhooks {
    pub secret: Option<String>,
    pub previous_secrets: Vec<String>,
    /// This tenant's deliveries carry a `webhook-jwt` token.
    pub jwt: bool,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            secret: None,
            previous_secrets: Vec::new(),
            signing_keys: Vec::new(),
            allow_networks: Vec::new(),
            retry_schedule: vec![0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
            timeout: 15.0,
            max_retry_after: 3600.0,
            max_response: 4096,
            concurrency: 64,
            per_endpoint: 4,
            tenants: BTreeMap::new(),
            jwt: false,
            jwt_issuer: None,
            proxy: None,
        }
    }
}

/// The key of a signing secret `whsec_<base64 of 24 to 64 bytes>`.
pub fn secret_bytes(s: &str) -> Option<Vec<u8>> {
    let key = STANDARD.decode(s.strip_prefix("whsec_")?).ok()?;
    (24..=64).contains(&key.len()).then_some(key)
}

/// The seed of an Ed25519 signing key `whsk_<base64 of 32 bytes>`.
pub fn signing_seed(s: &str) -> Option<Vec<u8>> {
    let seed = STANDARD.decode(s.strip_prefix("whsk_")?).ok()?;
    (seed.len() == 32).then_some(seed)
}

impl Webhooks {
    pub fn check(&self) -> Result<(), String> {
        let tenant_secrets = self
            .tenants
            .values()
            .flat_map(|t| t.secret.iter().chain(&t.previous_secrets));
        for s in self
            .secret
            .iter()
            .chain(&self.previous_secrets)
            .chain(tenant_secrets)
        {
            if secret_bytes(s).is_none() {
                return Err("webhooks.secret and webhooks.previous_secrets must be whsec_ followed by base64 of 24 to 64 bytes".into());
            }
        }
        if self.signing_keys.iter().any(|k| signing_seed(k).is_none()) {
            return Err(
                "webhooks.signing_keys must be whsk_ followed by base64 of a 32-byte Ed25519 seed"
                    .into(),
            );
        }
        for n in &self.allow_networks {
            if n.parse::<ipnet::IpNet>().is_err() {
                return Err(format!(
                    "webhooks.allow_networks: {n:?} is not a CIDR network"
                ));
            }
        }
        if let Some(iss) = &self.jwt_issuer
            && (iss.is_empty() || iss.len() > 512)
        {
            return Err("webhooks.jwt_issuer must be 1 to 512 characters".into());
        }
        if let Some(p) = &self.proxy
            && !is_http_url(p)
        {
            return Err("webhooks.proxy must be an http:// or https:// URL".into());
        }
        if self.retry_schedule.is_empty()
            || self
                .retry_schedule
                .iter()
                .any(|d| !(*d >= 0.0 && *d <= 7.0 * 86_400.0))
        {
            return Err(
                "webhooks.retry_schedule must list 1 or more delays of 0 to 604800 seconds".into(),
            );
        }
        if !(self.timeout > 0.0 && self.timeout <= 300.0) {
            return Err("webhooks.timeout must be in (0, 300] seconds".into());
        }
        if !(0.0..=86_400.0).contains(&self.max_retry_after) {
            return Err("webhooks.max_retry_after must be in [0, 86400] seconds".into());
        }
        if self.concurrency == 0 || self.per_endpoint == 0 || self.max_response > 1 << 20 {
            return Err("webhooks.concurrency and per_endpoint must be at least 1; max_response at most 1 MiB".into());
        }
        Ok(())
    }
}
