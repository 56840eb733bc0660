//! What every request passes through around the router, in one service
//! ([`Front`]) rather than a stack of `Router::layer`s: axum wraps each
//! such layer around every route as its own boxed service, cloned for each
//! request (a clone of a layer clones the layers inside it), and that
//! glue cost more CPU per submit than the SQLite writer did (the frame-pointer
//! profile in BENCHMARKS.md, 2026-12-07). In order:
//!
//! - a panic in a handler is a 500 (`internal`), logged;
//! - the console's guard ([`console::screen`]): a request authenticated by
//!   the session cookie must come from this origin and carry the CSRF
//!   token when it changes something;
//! - the body's deadline (`limits.body_timeout`, counted from when the
//!   headers were read) and size (`limits.max_body`, unless a route sets
//!   its own);
//! - a request that carries a job token in its URL may be read by a page of
//!   any origin ([`token_cors`]);
//! - the request latency histogram, by route template ([`Observe`], the one
//!   layer inside the router: only there is the matched route known).

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::FutureExt;
use tower::{Layer, Service, ServiceExt};

use super::{AppState, console, method_label};
use crate::error::ApiError;

/// The whole HTTP API: the router inside [`Front`], with the default body
/// limit (a plain tower layer: it tells the extractors the limit through
/// the request's extensions).
pub type Api = Front<<DefaultBodyLimit as Layer<Router>>::Service>;

/// Wraps `router` (with its state) in what every request passes through.
pub fn wrap(app: AppState, router: Router) -> Api {
    let limits = &app.config.limits;
    let body_timeout = crate::config::secs(limits.body_timeout);
    let inner = DefaultBodyLimit::max(limits.max_body).layer(router);
    Front {
        inner,
        app,
        body_timeout,
    }
}

/// The service every request enters by (see the module's docs).
#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    app: AppState,
    body_timeout: Duration,
}

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready; each call readies its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let inner = self.inner.clone();
        let app = self.app.clone();
        let deadline = tokio::time::Instant::now() + self.body_timeout;
        Box::pin(async move {
            let by_token = token_in_query(&req);
            // Everything the request reaches is inside the unwind guard,
            // the console's screen too.
            let answer = AssertUnwindSafe(async move {
                if let Err(e) = console::screen(&app, &req) {
                    return e.into_response();
                }
                let req = req.map(|inner| {
                    axum::body::Body::new(Deadline {
                        inner,
                        timer: None,
                        deadline,
                    })
                });
                match inner.oneshot(req).await {
                    Ok(res) => res,
                }
            });
            let mut res = match answer.catch_unwind().await {
                Ok(res) => res,
                Err(_) => {
                    tracing::error!("a request handler panicked");
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "an internal error occurred; it has been logged",
                    )
                    .into_response()
                }
            };
            if by_token {
                token_cors(&mut res);
            }
            Ok(res)
        })
    }
}

/// Whether the request carries a job token in its URL (`?access_token=`).
pub fn token_in_query(req: &Request) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("access_token=")))
}

/// A request that carries its job token in the URL (`?access_token=jt_…`,
/// as links hand it to a browser) may come from a page of any origin: its
/// answer says so (`Access-Control-Allow-Origin: *`, and the headers a
/// poller reads), unless its handler said otherwise (an event stream or a
/// Durable Stream names the headers its readers need). No ambient
/// credential is involved (a token in the URL is not sent by a browser on
/// its own), and requests with an API key or the console's cookie get no
/// CORS headers.
fn token_cors(res: &mut Response) {
    if !res
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        super::allow_any_origin(
            res.headers_mut(),
            "location, retry-after, etag, content-location",
        );
    }
}

/// A body that fails once its deadline (`limits.body_timeout` after its
/// headers were read) passes before it has all arrived: a client that
/// trickles a body holds a connection and a buffer, and is cut off with
/// 408 instead. The timer is made only when a read has to wait (most
/// bodies have arrived with their headers).
struct Deadline {
    inner: axum::body::Body,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: tokio::time::Instant,
}

/// Why a body read failed: it did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within limits.body_timeout")]
pub struct BodyTimedOut;

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Records `replyd_http_request_duration_seconds` by route (never by raw
/// URI, which may carry a job token). Every label has a bounded set of
/// values: the route is a template (or `unmatched`), the method one of
/// HTTP's (or `other`: a client may send any token as a method), the
/// status a code.
#[derive(Clone, Copy, Default)]
pub struct Observe;

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed { inner }
    }
}

/// [`Observe`] around a route.
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
}

impl<S> Service<Request> for Observed<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let method = method_label(req.method());
        let route = req.extensions().get::<MatchedPath>().cloned();
        Timed {
            inner: self.inner.call(req),
            start: Instant::now(),
            method,
            route,
        }
    }
}

pin_project_lite::pin_project! {
    /// A route's answer, timed.
    pub struct Timed<F> {
        #[pin]
        inner: F,
        start: Instant,
        method: &'static str,
        route: Option<MatchedPath>,
    }
}

impl<F, E> Future for Timed<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        if let Ok(res) = &res {
            let route = this
                .route
                .as_ref()
                .map_or("unmatched", |p| p.as_str())
                .to_string();
            metrics::histogram!(
                "replyd_http_request_duration_seconds",
                "method" => *this.method,
                "route" => route,
                "status" => res.status().as_u16().to_string(),
            )
            .record(this.start.elapsed().as_secs_f64());
        }
        Poll::Ready(res)
    }
}
