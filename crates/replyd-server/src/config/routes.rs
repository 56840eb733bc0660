//! `[[routes]]`: gateway mode, requests under a path replayed to an
//! upstream as jobs (each route gets a queue of its own, made here).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::is_http_url;
use super::queues::{
    Executor, FORWARD_HEADERS, HttpTarget, QueueConfig, RESPONSE_HEADERS, UpstreamRetry,
};

/// Gateway mode: `method` requests under `path` become jobs of a queue of
/// their own, whose executor replays them to `upstream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `POST`, `GET`, …, or `*` for any.
    pub method: String,
    /// A path prefix (`/reports` takes `/reports` and `/reports/…`).
    pub path: String,
    /// The service's base URL; the request's path and query follow it.
    pub upstream: String,
    /// Seconds the upstream may take to answer.
    #[serde(default = "Route::default_timeout")]
    pub timeout: f64,
    /// The route's job queue (default: `gateway` and the path, `/` as `.`).
    #[serde(default)]
    pub queue: Option<String>,
    /// Requests in flight to the upstream at once, per node.
    #[serde(default = "Route::default_concurrency")]
    pub concurrency: u32,
    /// Attempts for a request that may be retried.
    #[serde(default = "Route::default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "Route::default_retry")]
    pub retry: UpstreamRetry,
    /// Seconds a finished job (the stored answer) is kept.
    #[serde(default = "Route::default_ttl")]
    pub ttl: f64,
    /// Request headers passed on (lower case).
    #[serde(default = "Route::default_forward")]
    pub forward_headers: Vec<String>,
    /// Answer headers kept and replayed (lower case).
    #[serde(default = "Route::default_response")]
    pub response_headers: Vec<String>,
    /// Answer each request with the upstream's answer, passed through as it
    /// arrives when it streams (the job's output), rather than with a 202
    /// (which `Prefer: respond-async` still asks for).
    #[serde(default)]
    pub stream: bool,
    /// Replay the request's path without the route's prefix (`/openai`
    /// with upstream `https://api.example.com`: `/openai/v1/models` goes to
    /// `https://api.example.com/v1/models`).
    #[serde(default)]
    pub strip_prefix: bool,
}

impl Route {
    fn default_timeout() -> f64 {
        60.0
    }
    fn default_concurrency() -> u32 {
        16
    }
    fn default_attempts() -> u32 {
        3
    }
    fn default_retry() -> UpstreamRetry {
        UpstreamRetry::Idempotent
    }
    fn default_ttl() -> f64 {
        86_400.0
    }
    fn default_forward() -> Vec<String> {
        FORWARD_HEADERS.iter().map(|h| h.to_string()).collect()
    }
    pub fn default_response() -> Vec<String> {
        RESPONSE_HEADERS.iter().map(|h| h.to_string()).collect()
    }

    /// The route's job queue.
    pub fn queue_name(&self) -> String {
        self.queue.clone().unwrap_or_else(|| {
            let path: String = self
                .path
                .trim_matches('/')
                .chars()
                .map(|c| match c {
                    '/' => '.',
                    c if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' => c,
                    _ => '_',
                })
                .collect();
            let name = if path.is_empty() {
                "gateway".to_string()
            } else {
                format!("gateway.{path}")
            };
            name.chars().take(64).collect()
        })
    }

    /// The path replayed upstream for a request at `path` (one it matches).
    pub fn upstream_path<'a>(&self, path: &'a str) -> &'a str {
        if !self.strip_prefix {
            return path;
        }
        match path.get(self.path.trim_end_matches('/').len()..) {
            Some(rest) if rest.starts_with('/') => rest,
            _ => "/",
        }
    }

    /// Whether it takes a request for `method` at `path`.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.method == "*" || self.method.eq_ignore_ascii_case(method))
            && (path == self.path
                || self.path.ends_with('/') && path.starts_with(&self.path)
                || path
                    .strip_prefix(&self.path)
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

/// Checks the routes and gives each its queue in `queues` (`max_ttl`: the
/// longest a job is kept).
pub fn resolve(
    routes: &[Route],
    queues: &mut BTreeMap<String, QueueConfig>,
    max_ttl: f64,
) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, r) in routes.iter().enumerate() {
        let at = format!("routes[{i}] ({} {})", r.method, r.path);
        r.check(&at, max_ttl)?;
        if !seen.insert((r.method.to_ascii_uppercase(), r.path.clone())) {
            return Err(format!("{at}: listed twice"));
        }
        let queue = r.queue_name();
        let base = r.upstream.trim_end_matches('/').to_string();
        let made_before = queues
            .get(&queue)
            .is_some_and(|q| q.http.as_ref().is_some_and(|h| h.gateway && h.url == base));
        if made_before {
            continue;
        }
        if queues.contains_key(&queue) {
            return Err(format!(
                "{at}: its queue {queue:?} is configured already (name another with `queue`)"
            ));
        }
        let lower = |hs: &[String]| hs.iter().map(|h| h.to_ascii_lowercase()).collect();
        queues.insert(
            queue,
            QueueConfig {
                executor: Executor::Http,
                max_attempts: if r.retry == UpstreamRetry::Never {
                    1
                } else {
                    r.max_attempts
                },
                timeout: r.timeout,
                ttl: r.ttl,
                concurrency: r.concurrency,
                url: Some(r.upstream.clone()),
                retry: Some(r.retry),
                http: Some(HttpTarget {
                    url: base,
                    gateway: true,
                    retry: r.retry,
                    forward_headers: lower(&r.forward_headers),
                    response_headers: lower(&r.response_headers),
                }),
                ..QueueConfig::default()
            },
        );
    }
    Ok(())
}

impl Route {
    /// The route's own keys (`at` names it in messages).
    fn check(&self, at: &str, max_ttl: f64) -> Result<(), String> {
        let method_ok = self.method == "*"
            || (!self.method.is_empty() && self.method.bytes().all(|b| b.is_ascii_alphabetic()));
        if !method_ok {
            return Err(format!("{at}: method must be an HTTP method or \"*\""));
        }
        if !self.path.starts_with('/')
            || self.path.contains(['?', '#', ' '])
            || self.path.len() > 512
        {
            return Err(format!(
                "{at}: path must be a path prefix such as \"/reports\""
            ));
        }
        let reserved = ["/v1", "/healthz", "/readyz", "/metrics", "/openapi.json"];
        if self.path == "/"
            || reserved
                .iter()
                .any(|p| self.path == *p || self.path.starts_with(&format!("{p}/")))
        {
            return Err(format!(
                "{at}: the path is replyd's own (/, /v1, /healthz, /readyz, /metrics, /openapi.json)"
            ));
        }
        if !is_http_url(&self.upstream) || self.upstream.contains(['?', '#']) {
            return Err(format!(
                "{at}: upstream must be an http:// or https:// base URL"
            ));
        }
        if !(self.timeout > 0.0 && self.timeout <= 7.0 * 86_400.0) {
            return Err(format!("{at}: timeout must be in (0, 604800] seconds"));
        }
        if self.concurrency == 0 || self.max_attempts == 0 {
            return Err(format!(
                "{at}: concurrency and max_attempts must be at least 1"
            ));
        }
        if !(self.ttl >= 0.0 && self.ttl <= max_ttl) {
            return Err(format!("{at}: ttl must be in [0, limits.max_ttl] seconds"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, strip_prefix: bool) -> Route {
        let toml = format!(
            "method = \"POST\"\npath = {path:?}\nupstream = \"http://127.0.0.1:9\"\nstrip_prefix = {strip_prefix}"
        );
        toml::from_str(&toml).unwrap()
    }

    #[test]
    fn a_stripped_prefix_leaves_the_rest_of_the_path() {
        let r = route("/openai", true);
        assert_eq!(
            r.upstream_path("/openai/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(r.upstream_path("/openai"), "/");
        let r = route("/openai/", true);
        assert_eq!(r.upstream_path("/openai/v1/models"), "/v1/models");
        let r = route("/openai", false);
        assert_eq!(
            r.upstream_path("/openai/v1/models"),
            "/openai/v1/models",
            "kept unless asked"
        );
        assert!(!r.stream, "streaming is asked for");
    }
}
