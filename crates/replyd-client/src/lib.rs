//! The Rust SDK for replyd (API.md §1 and §5).
//!
//! A [`Client`] talks to one replyd server with an optional API key (sent as
//! `Authorization: Bearer`). It covers the client side (submit, get, wait,
//! result, cancel, delete, list) and the worker side (lease, heartbeat,
//! progress, complete, fail). Job ids go in the path; the job tokens that the
//! server puts into a job's `links` are not used by the client.
//!
//! The client never follows redirects: `GET /v1/jobs/{id}` answers `303 See
//! Other` for a succeeded job, and that answer is the job's status, not a hop.
//!
//! [`Client::wait`] follows the job over Server-Sent Events (API.md §3),
//! resuming with `Last-Event-ID` when the connection drops, and falls back
//! to long polling where the server does not stream.
//!
//! ```no_run
//! # async fn demo() -> replyd_client::Result<()> {
//! use replyd_client::{Client, proto::SubmitRequest};
//! let client = Client::new("http://127.0.0.1:8202", None)?;
//! let req = SubmitRequest {
//!     queue: "report".into(),
//!     input: serde_json::json!({"month": "2024-05"}),
//!     webhook: None,
//!     max_attempts: None,
//!     timeout: None,
//!     ttl: None,
//! };
//! let job = client.submit(&req, None).await?;
//! let done = client.wait(&job.id, None).await?;
//! if done.state == replyd_client::proto::JobState::Succeeded {
//!     let result = client.result(&done.id).await?;
//!     println!("{} bytes of {}", result.body.len(), result.content_type);
//! }
//! # Ok(()) }
//! ```
//!
//! Progress as it happens: [`Client::wait_with`] calls back with the job
//! after each of its events, and [`Client::events`] hands out the events
//! themselves (id, name, job), to follow a job in your own loop and resume
//! it later from the last id seen:
//!
//! ```no_run
//! # async fn demo(client: replyd_client::Client, id: &str) -> replyd_client::Result<()> {
//! use futures::StreamExt;
//! use replyd_client::{Transport, WaitOptions};
//!
//! // A callback per event; polling is used only if the server does not stream.
//! let done = client
//!     .wait_with(id, None, |job| {
//!         if let Some(p) = &job.progress {
//!             println!("{} {:?} {:?}", job.state, p.percent, p.message);
//!         }
//!     })
//!     .await?;
//!
//! // The same, and which transport served it.
//! let opts = WaitOptions { timeout: Some(std::time::Duration::from_secs(60)), ..Default::default() };
//! let waited = client.wait_with_options(id, &opts, |_| {}).await?;
//! if waited.transport == Transport::Polling {
//!     eprintln!("no event stream: {:?}", waited.fallback);
//! }
//!
//! // The raw events, from the start (or after a stored id).
//! let mut events = std::pin::pin!(client.events(id, None));
//! let mut last_id = None;
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("#{} {} -> {}", event.id, event.event, event.job.state);
//!     last_id = Some(event.id); // keep it to resume with client.events(id, last_id)
//! }
//! # let _ = (done, last_id);
//! # Ok(()) }
//! ```

mod events;
pub mod worker;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{
    CONTENT_LOCATION, CONTENT_TYPE, ETAG, HeaderMap, IF_NONE_MATCH, RETRY_AFTER,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;

pub use events::JobEvent;
pub use replyd_proto as proto;
use replyd_proto::{
    CompleteRequest, FailReason, FailRequest, HeartbeatRequest, Job, JobList, JobState,
    LEASE_ID_HEADER, Lease, LeaseBatch, LeaseRequest, LeaseStatus, Problem, ProgressRequest,
    SubmitRequest,
};

/// How long one long-poll request asks the server to hold (`Prefer: wait=30`).
const LONG_POLL: Duration = Duration::from_secs(30);
/// The longest pause between two polls, whatever `Retry-After` says.
const MAX_POLL_PAUSE: Duration = Duration::from_secs(5);
/// The pause between polls when the server gives no `Retry-After`.
const DEFAULT_POLL_PAUSE: Duration = Duration::from_secs(1);
/// The shortest pause between polls, so that `Retry-After: 0` cannot spin.
const MIN_POLL_PAUSE: Duration = Duration::from_millis(100);
/// Extra time a held request (long poll, lease wait) may take beyond the hold.
const HOLD_GRACE: Duration = Duration::from_secs(30);

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to replyd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be made or its answer not read (connection
    /// refused, timeout, TLS, ...).
    #[error("request to replyd failed")]
    Http(#[from] reqwest::Error),
    /// The server answered 4xx or 5xx. `problem` is its RFC 9457 body, or one
    /// made up from the status and the body text when the body is not a problem.
    #[error("{problem}")]
    Api { status: u16, problem: Problem },
    /// The server answered a status this call does not expect.
    #[error("unexpected answer from replyd ({status}): {body}")]
    Unexpected { status: u16, body: String },
    /// A success answer whose body is not what the contract says.
    #[error("could not decode replyd's {status} answer")]
    Decode {
        status: u16,
        #[source]
        source: serde_json::Error,
    },
    /// [`Client::wait`] ran out of time; `job` is the last state seen.
    #[error("timed out waiting for job {} (still {})", job.id, job.state)]
    Timeout { job: Box<Job> },
    /// The server URL given to [`Client::new`] is unusable.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A job's event stream could not be used: the answer was not
    /// `text/event-stream`, an event was malformed, or the stream broke off.
    #[error("event stream: {0}")]
    Stream(String),
}

impl Error {
    /// The HTTP status of the answer that caused this error, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http(e) => e.status().map(|s| s.as_u16()),
            Error::Api { status, .. }
            | Error::Unexpected { status, .. }
            | Error::Decode { status, .. } => Some(*status),
            Error::Timeout { .. } | Error::InvalidUrl { .. } | Error::Stream(_) => None,
        }
    }

    /// Whether the server answered with this HTTP status.
    pub fn is_status(&self, status: u16) -> bool {
        self.status() == Some(status)
    }

    /// The problem the server sent, for [`Error::Api`].
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// A job as `GET /v1/jobs/{id}` answered it, with what the answer's headers add.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    pub job: Job,
    /// `Retry-After`: when the server suggests polling again (pending jobs).
    pub retry_after: Option<Duration>,
    /// `ETag`, verbatim (quotes included), for `If-None-Match` long polling.
    pub etag: Option<String>,
}

/// A job's result: the body exactly as the worker gave it, with its type.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub content_type: String,
    pub body: Bytes,
}

impl JobResult {
    /// Whether the content type is JSON (`application/json` or `+json`).
    pub fn is_json(&self) -> bool {
        let essence = self.content_type.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
            || essence.to_ascii_lowercase().ends_with("+json")
    }

    /// Decodes the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }
}

/// The answer to [`Client::submit_and_wait`].
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// The job succeeded within the wait: here is its result.
    Done { job_id: String, result: JobResult },
    /// The job is still pending (or failed): the usual 202 representation.
    Accepted(Box<Job>),
}

/// How a job is followed until it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Server-Sent Events: `GET /v1/jobs/{id}/events`, an event per change.
    Events,
    /// Long polling: `GET /v1/jobs/{id}` with `If-None-Match` and
    /// `Prefer: wait`. Changes that come close together may be seen as one.
    Polling,
}

/// How [`Client::wait_with_options`] waits.
#[derive(Debug, Clone, Default)]
pub struct WaitOptions {
    /// Give up with [`Error::Timeout`] once this has passed.
    pub timeout: Option<Duration>,
    /// `None` (the default): events, falling back to polling when the
    /// server does not stream or the stream keeps failing. `Some(t)`: only
    /// `t`; with [`Transport::Events`], a stream failure is the error.
    pub transport: Option<Transport>,
}

/// What [`Client::wait_with_options`] answers.
#[derive(Debug)]
pub struct Waited {
    /// The finished job.
    pub job: Job,
    /// The transport that saw the job finish.
    pub transport: Transport,
    /// How many times the event stream was resumed (`Last-Event-ID`) after
    /// a dropped connection or a `stream.overflow`.
    pub reconnects: u32,
    /// Why events were given up for polling, when they were.
    pub fallback: Option<Error>,
}

/// A connection to one replyd server. Cheap to clone; clones share a pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The server's base URL; API paths are appended to its path.
    base: Url,
    /// Sent as a Bearer token on every request. Never printed.
    api_key: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8202`),
    /// authenticating with `api_key` when given.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Client> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let mut base = Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("the scheme must be http or https".into()));
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("replyd-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            http,
            base,
            api_key: api_key.filter(|k| !k.is_empty()),
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    // ---- client API (API.md §1) ------------------------------------------

    /// `POST /v1/jobs`: submits a job and answers its representation (202).
    /// With an `idempotency_key`, a repeat of the same request answers the
    /// same job.
    pub async fn submit(&self, req: &SubmitRequest, idempotency_key: Option<&str>) -> Result<Job> {
        let resp = self.submit_request(req, idempotency_key).send().await?;
        match resp.status().as_u16() {
            200..=202 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    /// `POST /v1/jobs` with `Prefer: wait=N`: if the job succeeds within
    /// `wait_secs` the answer is its result; otherwise the 202 representation.
    pub async fn submit_and_wait(
        &self,
        req: &SubmitRequest,
        idempotency_key: Option<&str>,
        wait_secs: u32,
    ) -> Result<Submitted> {
        let hold = Duration::from_secs(wait_secs.into());
        let resp = self
            .submit_request(req, idempotency_key)
            .header("prefer", format!("wait={wait_secs}"))
            .timeout(hold + HOLD_GRACE)
            .send()
            .await?;
        let location = header_str(resp.headers(), &CONTENT_LOCATION);
        match resp.status().as_u16() {
            202 => Ok(Submitted::Accepted(Box::new(json_body(resp).await?))),
            // The result itself (200, or an upstream's own 2xx), named by
            // Content-Location.
            status @ 200..=299 => {
                let Some(job_id) = location.as_deref().and_then(job_id_from_location) else {
                    return Err(Error::Unexpected {
                        status,
                        body: "a result answer to submit without a Content-Location naming the job"
                            .into(),
                    });
                };
                let result = job_result(resp).await?;
                Ok(Submitted::Done { job_id, result })
            }
            _ => Err(error_from(resp).await),
        }
    }

    fn submit_request(&self, req: &SubmitRequest, idempotency_key: Option<&str>) -> RequestBuilder {
        let rb = self
            .request(Method::POST, self.url(&["v1", "jobs"]))
            .json(req);
        match idempotency_key {
            Some(key) => rb.header("idempotency-key", key),
            None => rb,
        }
    }

    /// `GET /v1/jobs/{id}`: the job, whatever its state (202 pending, 303
    /// succeeded, 200 failed or canceled).
    pub async fn get(&self, id: &str) -> Result<JobStatus> {
        let resp = self
            .request(Method::GET, self.job_url(id, None))
            .send()
            .await?;
        job_status(resp).await
    }

    /// `GET /v1/jobs/{id}` with `If-None-Match: etag`: `None` when the job
    /// is unchanged (304). With `hold`, also `Prefer: wait=N` (1 to 60 s):
    /// the server holds the request until the job changes or N seconds pass.
    pub async fn get_if_changed(
        &self,
        id: &str,
        etag: &str,
        hold: Option<Duration>,
    ) -> Result<Option<JobStatus>> {
        let mut rb = self
            .request(Method::GET, self.job_url(id, None))
            .header(IF_NONE_MATCH, etag);
        if let Some(hold) = hold {
            let secs = hold.as_secs().clamp(1, 60);
            rb = rb
                .header("prefer", format!("wait={secs}"))
                .timeout(Duration::from_secs(secs) + HOLD_GRACE);
        }
        let resp = rb.send().await?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        job_status(resp).await.map(Some)
    }

    /// Waits until the job is finished and answers it. See [`Client::wait_with`].
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Job> {
        self.wait_with(id, timeout, |_| {}).await
    }

    /// Waits until the job is finished (succeeded, failed or canceled) and
    /// answers it, calling `on_change` with the job after each of its
    /// events (accepted, started, each progress, ..., the terminal one), so
    /// that a caller can draw progress. A job followed from its start is
    /// first seen as it was accepted: the stream replays its history.
    ///
    /// Follows the job's event stream ([`Client::events`]), resuming with
    /// `Last-Event-ID` when the connection drops. Where the server does not
    /// stream (404, 405 or 501 on the events endpoint, an answer that is not
    /// `text/event-stream`) or the stream keeps failing, it falls back to
    /// long polling (`If-None-Match` with the last `ETag` and
    /// `Prefer: wait=30`, pausing as `Retry-After` says where the server
    /// does not hold the request), without calling back twice for the same
    /// state. With a `timeout`, gives up with [`Error::Timeout`] once it has
    /// passed. See [`Client::wait_with_options`] to choose the transport
    /// and learn which one was used.
    pub async fn wait_with<F>(
        &self,
        id: &str,
        timeout: Option<Duration>,
        on_change: F,
    ) -> Result<Job>
    where
        F: FnMut(&Job),
    {
        let opts = WaitOptions {
            timeout,
            transport: None,
        };
        Ok(self.wait_with_options(id, &opts, on_change).await?.job)
    }

    /// [`Client::wait_with`], with a choice of transport, answering which
    /// one saw the job finish.
    pub async fn wait_with_options<F>(
        &self,
        id: &str,
        opts: &WaitOptions,
        mut on_change: F,
    ) -> Result<Waited>
    where
        F: FnMut(&Job),
    {
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        let mut seen: Option<Job> = None;
        let mut reconnects = 0;
        let mut fallback = None;
        if opts.transport != Some(Transport::Polling) {
            let mut follower = events::Follower::new(self.clone(), id, None);
            let outcome = loop {
                let step = match deadline {
                    Some(deadline) => {
                        match tokio::time::timeout_at(deadline, follower.next()).await {
                            Ok(step) => step,
                            Err(_) => break StreamOutcome::TimedOut,
                        }
                    }
                    None => follower.next().await,
                };
                match step {
                    Ok(events::Step::Event(event)) => {
                        on_change(&event.job);
                        let terminal = event.is_terminal();
                        seen = Some(event.job);
                        if terminal {
                            break StreamOutcome::Finished;
                        }
                    }
                    Ok(events::Step::End | events::Step::NoContent) => break StreamOutcome::Ended,
                    Err(e) => break StreamOutcome::Failed(e),
                }
            };
            reconnects = follower.reconnects;
            let waited = |job| Waited {
                job,
                transport: Transport::Events,
                reconnects,
                fallback: None,
            };
            match outcome {
                StreamOutcome::Finished => {
                    return Ok(waited(seen.expect("a finished stream saw the job")));
                }
                StreamOutcome::TimedOut => {
                    let job = match seen {
                        Some(job) => job,
                        None => {
                            let job = self.get(id).await?.job;
                            on_change(&job);
                            if job.state.is_terminal() {
                                return Ok(waited(job));
                            }
                            job
                        }
                    };
                    return Err(Error::Timeout { job: Box::new(job) });
                }
                // The stream had ended before we came (204): read the job.
                StreamOutcome::Ended => {
                    let job = self.get(id).await?.job;
                    if seen.as_ref() != Some(&job) {
                        on_change(&job);
                    }
                    if job.state.is_terminal() {
                        return Ok(waited(job));
                    }
                    seen = Some(job);
                }
                StreamOutcome::Failed(e) if opts.transport == Some(Transport::Events) => {
                    return Err(e);
                }
                StreamOutcome::Failed(e) => fallback = Some(e),
            }
        }
        let job = self
            .poll_until_done(id, deadline, seen, &mut on_change)
            .await?;
        Ok(Waited {
            job,
            transport: Transport::Polling,
            reconnects,
            fallback,
        })
    }

    /// Long polls the job until it is finished or `deadline` passes.
    /// `on_change` is called on every change, and first with the state the
    /// first read finds unless that is `seen` (what the caller last saw).
    async fn poll_until_done<F>(
        &self,
        id: &str,
        deadline: Option<Instant>,
        seen: Option<Job>,
        on_change: &mut F,
    ) -> Result<Job>
    where
        F: FnMut(&Job),
    {
        let mut last = self.get(id).await?;
        if seen.as_ref() != Some(&last.job) {
            on_change(&last.job);
        }
        // Whether to pause before the next request: set when the server
        // answered "unchanged" without holding the request.
        let mut pause = false;
        loop {
            if last.job.state.is_terminal() {
                return Ok(last.job);
            }
            let remaining = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Timeout {
                            job: Box::new(last.job),
                        });
                    }
                    Some(left)
                }
                None => None,
            };
            if pause || last.etag.is_none() {
                let mut nap = poll_pause(last.retry_after);
                if let Some(left) = remaining {
                    nap = nap.min(left);
                }
                tokio::time::sleep(nap).await;
            }
            let hold = remaining.map_or(LONG_POLL, |left| left.min(LONG_POLL));
            let started = Instant::now();
            let fresh = match &last.etag {
                Some(etag) => self.get_if_changed(id, etag, Some(hold)).await?,
                None => Some(self.get(id).await?),
            };
            let held = started.elapsed() + Duration::from_secs(1) >= hold;
            match fresh {
                Some(st) if st.etag != last.etag || st.job != last.job => {
                    on_change(&st.job);
                    last = st;
                    pause = false;
                }
                Some(st) => {
                    last.retry_after = st.retry_after;
                    pause = !held;
                }
                None => pause = !held,
            }
        }
    }

    /// `GET /v1/jobs/{id}/result`: the result of a succeeded job. A job that
    /// is not finished, failed or was canceled is `409`; an expired one `410`.
    pub async fn result(&self, id: &str) -> Result<JobResult> {
        let resp = self
            .request(Method::GET, self.job_url(id, Some("result")))
            .send()
            .await?;
        match resp.status().as_u16() {
            // An upstream's answer (the gateway, an http queue) is replayed
            // with its own 2xx status.
            200..=299 => job_result(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    /// `POST /v1/jobs/{id}/cancel`: cancels a queued job at once, or asks a
    /// running job's worker to stop (the job is then still running). A
    /// finished job is `409`.
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        let resp = self
            .request(Method::POST, self.job_url(id, Some("cancel")))
            .send()
            .await?;
        match resp.status().as_u16() {
            200 | 202 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    /// `DELETE /v1/jobs/{id}`: removes a finished job and its result.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let resp = self
            .request(Method::DELETE, self.job_url(id, None))
            .send()
            .await?;
        expect_success(resp).await
    }

    /// `GET /v1/jobs`: one page of the caller's jobs, optionally of one queue
    /// and one state. Pass the answer's `next_cursor` to get the next page.
    pub async fn list(
        &self,
        queue: Option<&str>,
        state: Option<JobState>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<JobList> {
        let mut url = self.url(&["v1", "jobs"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(queue) = queue {
                query.append_pair("queue", queue);
            }
            if let Some(state) = state {
                query.append_pair("state", state.as_str());
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let resp = self.request(Method::GET, url).send().await?;
        match resp.status().as_u16() {
            200 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    // ---- worker API (API.md §5) ------------------------------------------

    /// `POST /v1/queues/{queue}/lease`: leases one job, or `None` when none
    /// came within `req.wait` seconds (204). `req.batch` is ignored; see
    /// [`Client::lease_batch`].
    pub async fn lease(&self, queue: &str, req: &LeaseRequest) -> Result<Option<Lease>> {
        let req = LeaseRequest {
            batch: None,
            ..req.clone()
        };
        let resp = self.lease_request(queue, &req).send().await?;
        match resp.status().as_u16() {
            200 => json_body(resp).await.map(Some),
            204 => Ok(None),
            _ => Err(error_from(resp).await),
        }
    }

    /// `POST /v1/queues/{queue}/lease` with a `batch` size (1 when
    /// `req.batch` is unset): up to that many jobs, possibly none.
    pub async fn lease_batch(&self, queue: &str, req: &LeaseRequest) -> Result<Vec<Lease>> {
        let req = LeaseRequest {
            batch: Some(req.batch.unwrap_or(1)),
            ..req.clone()
        };
        let resp = self.lease_request(queue, &req).send().await?;
        match resp.status().as_u16() {
            200 => Ok(json_body::<LeaseBatch>(resp).await?.leases),
            204 => Ok(Vec::new()),
            _ => Err(error_from(resp).await),
        }
    }

    fn lease_request(&self, queue: &str, req: &LeaseRequest) -> RequestBuilder {
        let hold = req
            .wait
            .filter(|w| w.is_finite() && *w > 0.0)
            .map_or(Duration::ZERO, |w| Duration::from_secs_f64(w.min(3600.0)));
        self.request(Method::POST, self.url(&["v1", "queues", queue, "lease"]))
            .json(req)
            .timeout(hold + HOLD_GRACE)
    }

    /// `POST /v1/jobs/{id}/heartbeat`: renews the lease (by `lease_secs`, or
    /// the lease's own length) and tells whether a cancel was requested. A
    /// lost lease is `409`.
    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        lease_secs: Option<f64>,
    ) -> Result<LeaseStatus> {
        let body = HeartbeatRequest {
            lease_id: lease_id.to_owned(),
            lease: lease_secs,
        };
        self.lease_call(id, "heartbeat", &body).await
    }

    /// `POST /v1/jobs/{id}/progress`: reports how far the job has come.
    pub async fn progress(
        &self,
        id: &str,
        lease_id: &str,
        percent: Option<f64>,
        message: Option<&str>,
    ) -> Result<LeaseStatus> {
        let body = ProgressRequest {
            lease_id: lease_id.to_owned(),
            percent,
            message: message.map(str::to_owned),
        };
        self.lease_call(id, "progress", &body).await
    }

    async fn lease_call<B: Serialize>(
        &self,
        id: &str,
        action: &str,
        body: &B,
    ) -> Result<LeaseStatus> {
        let resp = self
            .request(Method::POST, self.job_url(id, Some(action)))
            .json(body)
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => json_body(resp).await,
            _ => Err(error_from(resp).await),
        }
    }

    /// `POST /v1/jobs/{id}/complete` with a JSON result.
    pub async fn complete_json(&self, id: &str, lease_id: &str, result: Value) -> Result<()> {
        let body = CompleteRequest {
            lease_id: lease_id.to_owned(),
            result,
        };
        let resp = self
            .request(Method::POST, self.job_url(id, Some("complete")))
            .json(&body)
            .send()
            .await?;
        expect_success(resp).await
    }

    /// `POST /v1/jobs/{id}/complete` with a raw result: the body is stored
    /// as is and served with `content_type`.
    pub async fn complete_raw(
        &self,
        id: &str,
        lease_id: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<()> {
        let resp = self
            .request(Method::POST, self.job_url(id, Some("complete")))
            .header(CONTENT_TYPE, content_type)
            .header(LEASE_ID_HEADER, lease_id)
            .body(body)
            .send()
            .await?;
        expect_success(resp).await
    }

    /// `POST /v1/jobs/{id}/fail`: the attempt failed. With `retry`, the job
    /// is tried again (with backoff) if it has attempts left.
    pub async fn fail(&self, id: &str, lease_id: &str, message: &str, retry: bool) -> Result<()> {
        let body = FailRequest {
            lease_id: lease_id.to_owned(),
            error: FailReason::Message(message.to_owned()),
            retry,
        };
        let resp = self
            .request(Method::POST, self.job_url(id, Some("fail")))
            .json(&body)
            .send()
            .await?;
        expect_success(resp).await
    }

    // ---- plumbing ---------------------------------------------------------

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.api_key {
            Some(key) => rb.bearer_auth(key),
            None => rb,
        }
    }

    /// The base URL with `segments` appended, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in Client::new: an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// `/v1/jobs/{id}` or `/v1/jobs/{id}/{action}`.
    fn job_url(&self, id: &str, action: Option<&str>) -> Url {
        match action {
            Some(action) => self.url(&["v1", "jobs", id, action]),
            None => self.url(&["v1", "jobs", id]),
        }
    }
}

/// How following a job's events ended, in [`Client::wait_with_options`].
enum StreamOutcome {
    /// The terminal event came.
    Finished,
    /// The stream had already ended (204).
    Ended,
    TimedOut,
    Failed(Error),
}

/// Reads a `GET /v1/jobs/{id}` answer.
async fn job_status(resp: Response) -> Result<JobStatus> {
    match resp.status().as_u16() {
        200 | 202 | 303 => {
            let headers = resp.headers();
            let retry_after = header_str(headers, &RETRY_AFTER)
                .and_then(|v| parse_retry_after(&v, SystemTime::now()));
            let etag = header_str(headers, &ETAG);
            let job = json_body(resp).await?;
            Ok(JobStatus {
                job,
                retry_after,
                etag,
            })
        }
        _ => Err(error_from(resp).await),
    }
}

/// Reads a result body with its content type.
async fn job_result(resp: Response) -> Result<JobResult> {
    let content_type = header_str(resp.headers(), &CONTENT_TYPE)
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let body = resp.bytes().await?;
    Ok(JobResult { content_type, body })
}

/// Decodes a success answer's JSON body.
async fn json_body<T: DeserializeOwned>(resp: Response) -> Result<T> {
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    serde_json::from_slice(&body).map_err(|source| Error::Decode { status, source })
}

/// Accepts any 2xx answer, ignoring its body.
async fn expect_success(resp: Response) -> Result<()> {
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(error_from(resp).await)
    }
}

/// The error for an answer the caller did not expect.
async fn error_from(resp: Response) -> Error {
    let status = resp.status();
    let body = match resp.bytes().await {
        Ok(body) => body,
        Err(e) => return Error::Http(e),
    };
    if status.is_client_error() || status.is_server_error() {
        Error::Api {
            status: status.as_u16(),
            problem: problem_from_body(status, &body),
        }
    } else {
        Error::Unexpected {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// The RFC 9457 problem in an error body, or one made up from the status
/// and the body text when the body is not a problem. Missing members of a
/// partial problem are filled in.
fn problem_from_body(status: StatusCode, body: &[u8]) -> Problem {
    let title = status.canonical_reason().unwrap_or("Error").to_owned();
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body)
        && ["type", "title", "detail"]
            .iter()
            .any(|k| map.contains_key(*k))
    {
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
        return Problem {
            type_: text("type").unwrap_or_else(|| "about:blank".to_owned()),
            title: text("title").unwrap_or(title),
            status: map
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(status.as_u16()),
            detail: text("detail").unwrap_or_default(),
        };
    }
    Problem {
        type_: "about:blank".to_owned(),
        title,
        status: status.as_u16(),
        detail: String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds (a decimal is tolerated)
/// or an HTTP-date, which is turned into the time left until it from `now`.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(at.with_timezone(&chrono::Utc));
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long to pause before polling again, given the server's `Retry-After`.
fn poll_pause(retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or(DEFAULT_POLL_PAUSE)
        .clamp(MIN_POLL_PAUSE, MAX_POLL_PAUSE)
}

/// The job id in a `Content-Location` / `Location` such as
/// `/v1/jobs/ID/result?access_token=...` (absolute URLs too).
fn job_id_from_location(location: &str) -> Option<String> {
    let path = location.split(['?', '#']).next()?;
    let (_, rest) = path.split_once("/v1/jobs/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| id.to_owned())
}

fn header_str(headers: &HeaderMap, name: &reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests;
