//! The one error type of the HTTP edge. Every error leaves as RFC 9457
//! `application/problem+json` with a precise `detail`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use replyd_core::job::TransitionError;
use replyd_core::store::StoreError;
use replyd_proto::Problem;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// The last part of `urn:replyd:problem:<slug>`.
    pub slug: &'static str,
    pub detail: String,
    /// Seconds, for 503 and 409-while-in-flight answers.
    pub retry_after: Option<u64>,
    /// Other headers the answer carries (`RateLimit`…).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            slug,
            detail: detail.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn invalid_json(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-json", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn job_not_found() -> ApiError {
        ApiError::not_found("no such job")
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn conflict(slug: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, slug, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("urn:replyd:problem:{}", self.slug),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, detail = %self.detail, "server error");
        }
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut res = (self.status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        for (name, value) in self.headers {
            h.insert(name, value);
        }
        res
    }
}

impl From<crate::limits::Over> for ApiError {
    /// A client's or tenant's limit: 429; the server's own: 503. Either
    /// way the place comes free when something held ends, so a short
    /// Retry-After.
    fn from(over: crate::limits::Over) -> ApiError {
        let status = if over.scope == "total" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        let slug = match over.held {
            crate::limits::Held::Connection => "too-many-connections",
            crate::limits::Held::Stream => "too-many-streams",
            crate::limits::Held::WebSocket => "too-many-websockets",
            crate::limits::Held::Subscription => "too-many-subscriptions",
            crate::limits::Held::Wait => "too-many-waits",
        };
        ApiError::new(status, slug, over.to_string()).with_retry_after(5)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::job_not_found(),
            StoreError::Transition(t) => t.into(),
            StoreError::IdempotencyMismatch => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "this Idempotency-Key was used before with a different request body",
            ),
            StoreError::AlreadyDelivered => ApiError::conflict(
                "already-delivered",
                "this delivery succeeded already; to send it again, ask with ?redeliver=true",
            ),
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::unavailable("the database is unavailable; try again shortly")
            }
            StoreError::Backend(e) => {
                tracing::error!(error = %e, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an internal error occurred; it has been logged",
                )
            }
        }
    }
}

impl From<TransitionError> for ApiError {
    fn from(e: TransitionError) -> ApiError {
        let slug = match e {
            TransitionError::LeaseLost => "lease-lost",
            TransitionError::AlreadyFinished(_) => "job-finished",
            TransitionError::CancelRequested => "job-canceled",
            TransitionError::NotQueued(_) => "job-not-queued",
            TransitionError::LeaseNotExpired => "lease-active",
            TransitionError::NotFinished(_) => "job-not-finished",
            TransitionError::NotDue => "job-not-due",
        };
        ApiError::conflict(slug, e.to_string())
    }
}

/// An error and its sources, `: `-separated (for logs and attempt logs).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
