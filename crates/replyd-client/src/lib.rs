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
//!     output: None,
//!     priority: None,
//!     delay: None,
//!     run_at: None,
//!     group: None,
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

mod error;
mod events;
mod jobs;
mod leases;
pub mod output;
mod queues;
mod wait;
pub mod worker;

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Url};

pub use error::{Error, Result};
pub use events::JobEvent;
pub use jobs::{JobResult, JobStatus, Submitted};
pub use replyd_proto as proto;
pub use wait::{Transport, WaitOptions, Waited};

/// Extra time a held request (long poll, lease wait) may take beyond the hold.
pub(crate) const HOLD_GRACE: Duration = Duration::from_secs(30);

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

    pub(crate) fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.api_key {
            Some(key) => rb.bearer_auth(key),
            None => rb,
        }
    }

    /// The base URL with `segments` appended, each percent-encoded.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in Client::new: an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// `/v1/jobs/{id}` or `/v1/jobs/{id}/{action}`.
    pub(crate) fn job_url(&self, id: &str, action: Option<&str>) -> Url {
        match action {
            Some(action) => self.url(&["v1", "jobs", id, action]),
            None => self.url(&["v1", "jobs", id]),
        }
    }
}

#[cfg(test)]
mod tests;
