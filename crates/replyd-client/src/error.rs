//! What can go wrong, and how an answer that is not a success becomes an
//! [`Error`].

use std::time::{Duration, SystemTime};

use reqwest::{Response, StatusCode};
use serde_json::Value;

use replyd_proto::{Job, Problem};

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

    /// Whether trying again may succeed: no answer came, or the server was
    /// unavailable (5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Http(e) => e.status().is_none_or(|s| s.is_server_error()),
            _ => self
                .status()
                .is_some_and(|s| s == 429 || (500..600).contains(&s)),
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

/// Accepts any 2xx answer, ignoring its body.
pub(crate) async fn expect_success(resp: Response) -> Result<()> {
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(error_from(resp).await)
    }
}

/// The error for an answer the caller did not expect.
pub(crate) async fn error_from(resp: Response) -> Error {
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
pub(crate) fn problem_from_body(status: StatusCode, body: &[u8]) -> Problem {
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
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(at.with_timezone(&chrono::Utc));
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}
