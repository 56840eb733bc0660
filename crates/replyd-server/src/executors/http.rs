//! `executor = "http"`, and the gateway's routes (each route's queue has
//! this executor): one HTTP request per job to an upstream service, whose
//! answer is the job's result.
//!
//! - An `http` queue POSTs the job's input (JSON) to its `url`.
//! - A gateway route's job is a request a client made to replyd
//!   ([`Captured`]: method, path, query, the allow-listed headers, body);
//!   it is replayed to the route's upstream, the path and query after its
//!   base URL.
//!
//! A 2xx answer succeeds the job: its body (at most `limits.max_result`
//! bytes) with its content type, and its status and allow-listed headers,
//! replayed at `/result`. An answer that streams (`text/event-stream`, or
//! chunked: no `Content-Length`) is also the job's output stream as it
//! arrives (`/v1/jobs/{id}/output`); such an answer larger than
//! `limits.max_result` has its output as its result, and an attempt that
//! streamed is not tried again. Any other answer fails the attempt with the
//! status and an excerpt of the body; so does an upstream that cannot be
//! reached or does not answer within the queue's `timeout`. A failed
//! attempt is tried again (with backoff, until `max_attempts`) only if the
//! queue's `retry` allows it for the request's method, and only for a
//! timeout, an unreachable upstream, or 408, 425, 429, 500, 502, 503 or
//! 504. Redirects are not followed (a 3xx is an answer like any other).
//! At most `concurrency` requests are in flight per node; a canceled job's
//! request is dropped.
//!
//! Upstream URLs come from the operator's configuration, so they are not
//! put through the webhooks' SSRF guard.

use replyd_core::trace::SpanOf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use replyd_core::job::{Command, JobError};
use replyd_core::store::{JobOutput, Leased, Move, Upstream};
use replyd_core::{JobId, LeaseId, Tenant};
use serde::{Deserialize, Serialize};

use super::output::Tee;
use crate::app::App;
use crate::config::{HttpTarget, secs};

/// How much of a failed answer's body the job's error keeps.
const EXCERPT: usize = 512;

/// A request the gateway took: a gateway job's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    pub method: String,
    /// The request's path, from the root (the route's prefix included).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The allow-listed request headers, lower-case names.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body_base64: String,
}

/// The request to send for a job.
#[derive(Debug)]
struct Outgoing {
    method: reqwest::Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// What the job asks of the upstream.
fn outgoing(target: &HttpTarget, input: &Bytes) -> Result<Outgoing, String> {
    if !target.gateway {
        return Ok(Outgoing {
            method: reqwest::Method::POST,
            url: target.url.clone(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: input.clone(),
        });
    }
    let c: Captured = serde_json::from_slice(input)
        .map_err(|e| format!("the job's input is not a captured request: {e}"))?;
    let method = reqwest::Method::from_bytes(c.method.as_bytes())
        .map_err(|_| format!("not an HTTP method: {:?}", c.method))?;
    let url = under_base(&target.url, &c.path, c.query.as_deref())?;
    let body = base64::engine::general_purpose::STANDARD
        .decode(&c.body_base64)
        .map_err(|e| format!("the captured body is not base64: {e}"))?;
    Ok(Outgoing {
        method,
        url,
        headers: c.headers,
        body: body.into(),
    })
}

/// Why a request path may not be replayed under an upstream's base path:
/// a dot-segment (`..`, `.`, in any percent-encoded spelling, however many
/// times encoded) or an encoded slash or backslash would let the URL the
/// upstream sees leave the route (`/reports/../admin` is `/admin` to every
/// URL parser, `%2e%2e` is `..` to WHATWG's, `%2f` is `/` to many servers).
/// A route is matched on the path as sent, so such a path is refused rather
/// than normalised.
pub const PATH_RULE: &str = "the path may not contain dot-segments (. or ..), backslashes or \
                             encoded slashes, in any spelling";

/// Whether `path` (a request path as sent, from the root) stays where it
/// says it is when it is put after a base URL.
pub fn contained_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') || path.contains('\\') {
        return Err(PATH_RULE);
    }
    for segment in path.split('/') {
        // Decode until nothing changes (a double-encoded `%252e` is a `.`
        // to a server that decodes twice); a few rounds are plenty.
        let mut s = std::borrow::Cow::Borrowed(segment);
        for _ in 0..4 {
            let decoded = percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned();
            if decoded == s {
                break;
            }
            s = std::borrow::Cow::Owned(decoded);
        }
        if s == "." || s == ".." || s.contains(['/', '\\']) {
            return Err(PATH_RULE);
        }
    }
    Ok(())
}

/// `base` (an upstream's base URL) with `path` and `query` after it,
/// refused unless the URL's path is exactly the base's path followed by
/// `path`: nothing the client sent may move it out from under the base.
fn under_base(base: &str, path: &str, query: Option<&str>) -> Result<String, String> {
    contained_path(path).map_err(str::to_string)?;
    let base = url::Url::parse(base).map_err(|e| format!("bad upstream URL: {e}"))?;
    let prefix = base.path().trim_end_matches('/');
    let mut url = base.clone();
    url.set_path(&format!("{prefix}{path}"));
    url.set_query(query);
    if url.path() != format!("{prefix}{path}") {
        return Err(PATH_RULE.to_string());
    }
    Ok(url.into())
}

/// Statuses worth another attempt.
fn retryable(status: u16) -> bool {
    matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504)
}

/// Runs queue `queue` until shutdown.
pub async fn run(app: Arc<App>, queue: String) {
    let Some(q) = app.config.queues.get(&queue).cloned() else {
        return;
    };
    let Some(target) = q.http.clone() else {
        return;
    };
    let timeout = secs(q.timeout);
    // The answer is due a moment before the lease runs out, so that the
    // outcome is recorded before the reaper would requeue the job.
    let margin = (timeout / 20).min(Duration::from_millis(250));
    let client = match crate::outbound::client()
        .timeout(timeout - margin)
        .user_agent(concat!("replyd/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(queue = %queue, error = %e, "cannot build the HTTP client");
            return;
        }
    };
    let target = Arc::new(target);
    let leasing = super::Leasing {
        queue,
        worker: format!("http:{}", target.url),
        length: timeout + Duration::from_secs(5),
        concurrency: q.concurrency as usize,
    };
    super::work(app, leasing, move |app, job| {
        let (client, target) = (client.clone(), target.clone());
        async move { run_one(&app, &client, &target, job).await }
    })
    .await
}

/// How an attempt ended.
enum Ended {
    /// With its result (none: the streamed output is the result).
    Answered(Option<JobOutput>),
    Failed(JobError, bool),
    /// Canceled or shutting down: the request was dropped.
    Stopped,
}

async fn run_one(app: &App, client: &reqwest::Client, target: &HttpTarget, leased: Leased) {
    let Leased {
        job,
        input,
        lease_id,
    } = leased;
    let id = job.id;
    // Made by `call` once the answer turns out to stream.
    let mut tee = None;
    let ended = match outgoing(target, &input) {
        Err(e) => Ended::Failed(JobError::new("bad-request", e), false),
        Ok(mut req) => {
            // The upstream call continues the job's trace (replacing a
            // forwarded client's own headers).
            if let Some(t) = app.telemetry.outgoing(&job, SpanOf::Attempt(job.attempt)) {
                req.headers.retain(|(k, _)| {
                    !k.eq_ignore_ascii_case("traceparent") && !k.eq_ignore_ascii_case("tracestate")
                });
                req.headers.push(("traceparent".into(), t.traceparent));
                req.headers
                    .extend(t.tracestate.map(|s| ("tracestate".into(), s)));
            }
            let may_retry = target.retry.allows(req.method.as_str());
            let output = OutputTo {
                app,
                output_type: job.output_type.as_deref(),
                job: (id, job.tenant.clone(), lease_id.clone()),
                tee: &mut tee,
            };
            let call = call(client, target, req, may_retry, output);
            tokio::select! {
                ended = call => ended,
                () = super::cancel_requested(app, id) => Ended::Stopped,
                _ = app.shutdown.cancelled() => Ended::Stopped,
            }
        }
    };
    // All of the output before the outcome; an attempt that streamed some
    // is not tried again (`super::output`).
    let streamed = match tee {
        Some(t) => t.finish().await,
        None => 0,
    };
    let (cmd, output) = match ended {
        Ended::Answered(out) => (Command::Complete { lease_id }, out),
        Ended::Failed(error, retry) => (
            Command::Fail {
                lease_id,
                error,
                retry: retry && streamed == 0,
            },
            None,
        ),
        Ended::Stopped => (
            Command::Fail {
                lease_id,
                error: JobError::new("stopped", "the request to the upstream was dropped"),
                retry: streamed == 0,
            },
            None,
        ),
    };
    if let Err(e) = app.finisher.apply(Move { id, cmd, output }).await {
        tracing::warn!(job = %id, error = %e, "cannot record the upstream's answer");
    }
}

/// Where a streamed answer goes: job `job`'s output, through `tee` (made
/// when the answer starts).
struct OutputTo<'a> {
    app: &'a App,
    output_type: Option<&'a str>,
    job: (JobId, Tenant, LeaseId),
    tee: &'a mut Option<Tee>,
}

/// Whether an answer streams, so that it is recorded as the job's output
/// while it arrives: Server-Sent Events, or a body of no stated length
/// (chunked, or up to the connection's end) unless it is one JSON value
/// (whose chunks are not messages of a JSON stream).
fn streams(res: &reqwest::Response) -> bool {
    let media = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    media == "text/event-stream"
        || (res.content_length().is_none() && !replyd_core::stream::is_json(&media))
}

/// Sends the request and reads the answer; a 2xx answer that streams goes
/// to the job's output as it arrives, and is its result too unless it
/// exceeds `limits.max_result` (then the output alone is).
async fn call(
    client: &reqwest::Client,
    target: &HttpTarget,
    req: Outgoing,
    may_retry: bool,
    output: OutputTo<'_>,
) -> Ended {
    let max_result = output.app.config.limits.max_result;
    let mut builder = client.request(req.method, &req.url);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    let res = match builder.body(req.body).send().await {
        Ok(r) => r,
        Err(e) => {
            let what = if e.is_timeout() {
                "the upstream did not answer in time"
            } else {
                "the upstream cannot be reached"
            };
            return Ended::Failed(
                JobError::new(
                    "upstream-unreachable",
                    format!("{what}: {}", crate::error::chain(&e)),
                ),
                may_retry,
            );
        }
    };
    let status = res.status();
    let headers: Vec<(String, String)> = res
        .headers()
        .iter()
        .filter(|(k, _)| target.response_headers.iter().any(|h| h == k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let content_type = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    if status.is_success() && streams(&res) {
        *output.tee = Some(Tee::start(
            output.app,
            output.job.clone(),
            // The type the submission named, else the answer's.
            Arc::from(output.output_type.unwrap_or(content_type.as_str())),
        ));
    }
    let body = match read_capped(res, max_result, output.tee.as_ref()).await {
        Ok(b) => b,
        Err(Some(e)) => {
            return Ended::Failed(
                JobError::new(
                    "upstream-unreachable",
                    format!("reading the upstream's answer: {}", crate::error::chain(&e)),
                ),
                may_retry,
            );
        }
        Err(None) => {
            return Ended::Failed(
                JobError::new(
                    "result-too-large",
                    format!("the upstream's answer exceeds limits.max_result ({max_result} bytes)"),
                ),
                false,
            );
        }
    };
    let Some(body) = body else {
        // Streamed, and too large to keep twice: the output is the result.
        return Ended::Answered(None);
    };
    if !status.is_success() {
        let cut = body.len().min(EXCERPT);
        let excerpt = String::from_utf8_lossy(&body[..cut]);
        let message = format!("the upstream answered {status}: {excerpt}");
        return Ended::Failed(
            JobError::upstream(status.as_u16(), message),
            may_retry && retryable(status.as_u16()),
        );
    }
    Ended::Answered(Some(JobOutput {
        content_type,
        body,
        upstream: Some(Upstream {
            status: status.as_u16(),
            headers,
        }),
    }))
}

/// The body, also sent to `tee` chunk by chunk when there is one. Past
/// `cap` bytes it is `Err(None)`, or with a tee `Ok(None)` (the tee has
/// all of it); `Err(Some)` if it breaks off.
async fn read_capped(
    res: reqwest::Response,
    cap: usize,
    tee: Option<&Tee>,
) -> Result<Option<Bytes>, Option<reqwest::Error>> {
    if tee.is_none() && res.content_length().is_some_and(|n| n > cap as u64) {
        return Err(None);
    }
    let mut out = Some(Vec::new());
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Some)?;
        if let Some(kept) = &mut out {
            if kept.len() + chunk.len() > cap {
                if tee.is_none() {
                    return Err(None);
                }
                out = None;
            } else {
                kept.extend_from_slice(&chunk);
            }
        }
        if let Some(t) = tee {
            t.send(chunk).await;
        }
    }
    Ok(out.map(Bytes::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamRetry;

    fn gateway() -> HttpTarget {
        HttpTarget {
            url: "http://127.0.0.1:9000".into(),
            gateway: true,
            retry: UpstreamRetry::Idempotent,
            forward_headers: vec![],
            response_headers: vec![],
        }
    }

    #[test]
    fn a_captured_request_is_replayed_under_the_base_url() {
        let c = Captured {
            method: "PUT".into(),
            path: "/reports/7".into(),
            query: Some("draft=1".into()),
            headers: vec![("content-type".into(), "text/csv".into())],
            body_base64: base64::engine::general_purpose::STANDARD.encode(b"a,b\n"),
        };
        let input = Bytes::from(serde_json::to_vec(&c).unwrap());
        let o = outgoing(&gateway(), &input).unwrap();
        assert_eq!(o.method, reqwest::Method::PUT);
        assert_eq!(o.url, "http://127.0.0.1:9000/reports/7?draft=1");
        let under_api = HttpTarget {
            url: "http://127.0.0.1:9000/api".into(),
            ..gateway()
        };
        let o = outgoing(&under_api, &input).unwrap();
        assert_eq!(o.url, "http://127.0.0.1:9000/api/reports/7?draft=1");
        assert_eq!(o.headers, c.headers);
        assert_eq!(&o.body[..], b"a,b\n");
        assert!(outgoing(&gateway(), &Bytes::from_static(b"{}")).is_err());
    }

    /// Every way out from under the base path a client could spell is
    /// refused, before and after the URL is built; ordinary paths pass.
    #[test]
    fn a_replayed_path_stays_under_its_base() {
        for bad in [
            "/reports/../admin",
            "/reports/..",
            "/reports/./x",
            "/reports/%2e%2e/admin",
            "/reports/%2E%2e/admin",
            "/reports/.%2E/.%2e/secret",
            "/reports/%2e/x",
            "/reports%2f..%2fadmin",
            "/reports/a%2Fb",
            "/reports/a%5cb",
            "/reports/..%5c..%5cadmin",
            "/reports\\..\\admin",
            "/reports/%252e%252e/admin",
            "/reports/%25252e%25252e/admin",
            "reports/x",
        ] {
            assert!(contained_path(bad).is_err(), "{bad} must be refused");
            assert!(
                under_base("http://127.0.0.1:9/api", bad, None).is_err(),
                "{bad} must not be replayed"
            );
        }
        for good in [
            "/reports",
            "/reports/",
            "/reports/7",
            "/reports/a.b/..c/...",
            "/reports/%20x",
            "/reports//double",
        ] {
            assert!(contained_path(good).is_ok(), "{good}");
            let url = under_base("http://127.0.0.1:9/api/", good, Some("a=1")).unwrap();
            assert!(url.starts_with("http://127.0.0.1:9/api/reports"), "{url}");
            assert!(url.ends_with("?a=1"), "{url}");
        }
    }

    #[test]
    fn an_http_queue_posts_the_input() {
        let target = HttpTarget {
            url: "http://127.0.0.1:9000/render".into(),
            gateway: false,
            ..gateway()
        };
        let o = outgoing(&target, &Bytes::from_static(b"{\"n\":1}")).unwrap();
        assert_eq!(o.method, reqwest::Method::POST);
        assert_eq!(o.url, "http://127.0.0.1:9000/render");
        assert_eq!(&o.body[..], b"{\"n\":1}");
    }

    #[test]
    fn which_failures_are_worth_another_attempt() {
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(retryable(s), "{s}");
        }
        for s in [400, 401, 404, 409, 422, 501, 505, 302] {
            assert!(!retryable(s), "{s}");
        }
        assert!(UpstreamRetry::Idempotent.allows("GET"));
        assert!(UpstreamRetry::Idempotent.allows("put"));
        assert!(!UpstreamRetry::Idempotent.allows("POST"));
        assert!(!UpstreamRetry::Idempotent.allows("PATCH"));
        assert!(UpstreamRetry::Always.allows("POST"));
        assert!(!UpstreamRetry::Never.allows("GET"));
    }
}
