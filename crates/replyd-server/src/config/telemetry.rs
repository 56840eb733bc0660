//! `[telemetry]`: OpenTelemetry traces, exported over OTLP (feature `otel`).
//!
//! W3C Trace Context is taken in, kept and passed on whatever this says;
//! these keys only decide whether replyd makes spans of its own and where
//! it sends them.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// Where spans go, OTLP over HTTP with JSON bodies, such as
    /// `http://127.0.0.1:4318` (an OpenTelemetry Collector): each batch is
    /// POSTed to `/v1/traces` there (or to the URL itself when its path
    /// already ends so). None by default: no spans are made.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of replyd's spans.
    pub service_name: String,
    /// Of the jobs submitted without a trace, the share that starts one
    /// (0 to 1). A job submitted in a trace follows its sampled flag.
    pub sample_ratio: f64,
    /// Headers sent with each export (a vendor's API key, say).
    pub headers: BTreeMap<String, String>,
    /// Seconds one export may take.
    pub timeout: f64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: None,
            service_name: "replyd".into(),
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
            timeout: 10.0,
        }
    }
}

impl Telemetry {
    /// The URL batches are POSTed to, when spans are exported.
    pub fn traces_url(&self) -> Option<String> {
        let e = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if e.ends_with("/v1/traces") {
            e.to_string()
        } else {
            format!("{e}/v1/traces")
        })
    }

    pub fn check(&self) -> Result<(), String> {
        if let Some(e) = &self.otlp_endpoint {
            if !cfg!(feature = "otel") {
                return Err(
                    "telemetry.otlp_endpoint: this replyd was built without the `otel` feature"
                        .into(),
                );
            }
            let ok = url::Url::parse(e)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(format!(
                    "telemetry.otlp_endpoint: {e:?} is not an http(s) URL such as http://127.0.0.1:4318"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err("telemetry.sample_ratio must be between 0 and 1".into());
        }
        if !(self.timeout > 0.0 && self.timeout <= 300.0) {
            return Err("telemetry.timeout must be between 0 and 300 seconds".into());
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                return Err(format!("telemetry.headers: {k:?} is not a valid header"));
            }
        }
        if self.service_name.trim().is_empty() {
            return Err("telemetry.service_name must not be empty".into());
        }
        Ok(())
    }
}
