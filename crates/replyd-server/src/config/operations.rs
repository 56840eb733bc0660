//! `[operations]`: what operators are told of dead letters and failing
//! webhook endpoints, and where.

use serde::Deserialize;

use super::is_http_url;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Operations {
    /// The operational webhook: operational events (`delivery.dead_lettered`,
    /// `endpoint.disabled`, `endpoint.recovered`, `dlq.threshold_exceeded`)
    /// are POSTed here, signed like every webhook. None by default.
    pub webhook_url: Option<String>,
    /// A webhook endpoint (a tenant's URL) with this many dead letters in
    /// a row is paused: its deliveries are held until it is resumed
    /// (`POST /v1/endpoints/resume`). 0: never.
    pub disable_endpoint_after: u32,
    /// A tenant's dead letters on one channel reaching this many raise
    /// `dlq.threshold_exceeded`. 0: never.
    pub dlq_threshold: u64,
}

impl Default for Operations {
    fn default() -> Self {
        Operations {
            webhook_url: None,
            disable_endpoint_after: 5,
            dlq_threshold: 1000,
        }
    }
}

impl Operations {
    pub fn check(&self) -> Result<(), String> {
        if let Some(u) = &self.webhook_url
            && (!is_http_url(u) || u.len() > 2048)
        {
            return Err("operations.webhook_url must be an http:// or https:// URL".into());
        }
        Ok(())
    }

    /// What the stores watch as they record attempts.
    pub fn watch(&self) -> replyd_core::ops::Watch {
        replyd_core::ops::Watch {
            disable_after: self.disable_endpoint_after,
            dlq_threshold: self.dlq_threshold,
        }
    }
}
