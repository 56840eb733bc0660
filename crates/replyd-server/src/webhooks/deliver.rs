//! One delivery attempt, and when to try again.
//!
//! An attempt POSTs a signed message to a vetted URL: the client's DNS
//! resolver is the SSRF guard's ([`super::ssrf::Guard::resolve`]), so the
//! connection goes only to an address that passed, whatever the name says
//! the next time it is asked (DNS rebinding); an IP-literal URL is checked
//! before sending. Redirects are not followed (a 3xx is a failure), each
//! attempt has a timeout, and at most `max_response` bytes of the answer
//! are read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use super::signing::{Secret, SigningKey, signature_header};
use super::ssrf::{Guard, Refused, Resolver};
use crate::outbox::{Attempt, Verdict};

/// A message to deliver: the same id on every attempt, so a receiver can
/// drop duplicates.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub body: Bytes,
    /// The `webhook-jwt` header, when the delivery carries one.
    pub jwt: Option<String>,
    /// The `traceparent` and `tracestate` headers, when the job is in a
    /// trace.
    pub trace: Option<crate::telemetry::Outgoing>,
}

/// Sends webhooks.
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    guard: Guard,
    /// Set when deliveries go through the operator's proxy: names are then
    /// vetted here before each attempt, since the proxy resolves them.
    resolver_for_proxy: Option<Arc<dyn Resolver>>,
    max_response: usize,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

impl Deliverer {
    /// A deliverer that connects only to vetted addresses. Proxy settings
    /// in the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) are
    /// never followed: a proxy would resolve the name itself, past the
    /// guard. Only `proxy`, the operator's explicit choice
    /// (`webhooks.proxy`), is used.
    pub fn new(
        guard: Guard,
        resolver: Arc<dyn Resolver>,
        timeout: Duration,
        max_response: usize,
        proxy: Option<&str>,
    ) -> Result<Deliverer, reqwest::Error> {
        let mut builder = crate::outbound::client()
            .timeout(timeout)
            .user_agent(concat!("replyd-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(super::ssrf::Vetting {
                guard: guard.clone(),
                resolver: resolver.clone(),
            }));
        if let Some(p) = proxy {
            builder = builder.proxy(reqwest::Proxy::all(p)?);
        }
        Ok(Deliverer {
            client: builder.build()?,
            guard,
            resolver_for_proxy: proxy.map(|_| resolver),
            max_response,
        })
    }

    /// POSTs `msg` to `url`, signed with every secret and key, stamped
    /// `now`.
    pub async fn attempt(
        &self,
        url: &str,
        msg: &Message,
        secrets: &[Secret],
        keys: &[Arc<SigningKey>],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Attempt {
        let start = Instant::now();
        let refused = |e: Refused| Attempt {
            verdict: Verdict::Refused,
            status: None,
            latency: start.elapsed(),
            error: Some(e.to_string()),
            retry_after: None,
        };
        // IP literals never reach the resolver: check them here.
        let url = match self.guard.parse(url) {
            Ok(u) => u,
            Err(e) => return refused(e),
        };
        // Through a proxy, the name is resolved there: vet it here first.
        if let Some(resolver) = &self.resolver_for_proxy
            && let Err(e) = self.guard.resolve(&url, &**resolver).await
        {
            return refused(e);
        }
        let ts = now.timestamp();
        let mut request = self.client.post(url);
        if let Some(token) = &msg.jwt {
            request = request.header("webhook-jwt", token);
        }
        if let Some(t) = &msg.trace {
            request = request.header("traceparent", &t.traceparent);
            if let Some(state) = &t.tracestate {
                request = request.header("tracestate", state);
            }
        }
        let sent = request
            .header("content-type", "application/json")
            .header("webhook-id", &msg.id)
            .header("webhook-timestamp", ts.to_string())
            .header(
                "webhook-signature",
                signature_header(secrets, keys, &msg.id, ts, &msg.body),
            )
            .body(msg.body.clone())
            .send()
            .await;
        let res = match sent {
            Ok(r) => r,
            Err(e) => {
                // The guard, inside the resolver, may have refused it.
                let verdict = if refused_by_guard(&e) {
                    Verdict::Refused
                } else {
                    Verdict::Retry
                };
                let text = crate::error::chain(&e);
                return Attempt {
                    verdict,
                    status: None,
                    latency: start.elapsed(),
                    error: Some(text),
                    retry_after: None,
                };
            }
        };
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now));
        let excerpt = read_capped(res, self.max_response).await;
        let verdict = match status {
            200..=299 => Verdict::Delivered,
            410 => Verdict::Gone,
            _ => Verdict::Retry,
        };
        Attempt {
            error: (verdict != Verdict::Delivered)
                .then(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&excerpt))),
            verdict,
            status: Some(status),
            latency: start.elapsed(),
            retry_after,
        }
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date
/// (as of `now`; a date in the past is no delay).
fn parse_retry_after(v: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some((at.to_utc() - now).to_std().unwrap_or_default())
}

/// At most `cap` bytes of the body; the rest is not read.
async fn read_capped(res: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut body = res.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        let room = cap - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    out
}

/// Whether the SSRF guard's refusal is somewhere in the error's chain.
fn refused_by_guard(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<Refused>().is_some() {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("1994-11-06T08:49:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(37))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
