//! Operations: liveness, readiness, Prometheus metrics, the OpenAPI
//! document, the webhook tokens' public keys.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use replyd_core::JobState;

use super::AppState;
use crate::auth::Action;
use crate::error::{ApiError, ApiResult};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/.well-known/jwks.json", get(jwks))
}

/// The public keys that verify `webhook-jwt` tokens (RFC 7517), every key
/// of a rotation. No authentication: receivers fetch it.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "operations",
    responses((status = 200, description = "A JWK set: ES256 keys by `kid`")))]
pub async fn jwks(State(app): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        app.webhooks.jwt_keys.get().jwks().to_string(),
    )
        .into_response()
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
pub async fn healthz() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

/// The server can serve: its database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200), (status = 503, body = replyd_proto::Problem)))]
pub async fn readyz(State(app): State<AppState>) -> ApiResult<Response> {
    if app.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    app.store.ping().await?;
    Ok(healthz().await)
}

/// The process-wide Prometheus recorder (the `metrics` facade is global;
/// every server in a process shares it).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ])
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows only job counts"
            );
        }
        handle
    })
}

/// Prometheus metrics: jobs by queue and state and queue depth (read from
/// the database, so every node reports the whole cluster), and request
/// latency. Needs an admin key when keys are configured.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    // An open server (no keys: loopback only) shows them to anyone.
    if !app.config.is_open() {
        app.auth
            .identify(&headers, None)?
            .check(Action::Operate, None)?;
    }
    let counts = app.stats.counts(&*app.store).await?;
    let mut out = String::new();
    out.push_str("# HELP replyd_jobs Jobs by queue and state.\n# TYPE replyd_jobs gauge\n");
    for q in app.config.queues.keys() {
        for st in JobState::ALL {
            let n = counts
                .iter()
                .find(|c| &c.queue == q && c.state == st)
                .map_or(0, |c| c.count);
            out.push_str(&format!(
                "replyd_jobs{{queue=\"{q}\",state=\"{}\"}} {n}\n",
                st.as_str()
            ));
        }
    }
    out.push_str("# HELP replyd_queue_depth Jobs waiting to run, by queue.\n# TYPE replyd_queue_depth gauge\n");
    for q in app.config.queues.keys() {
        let n = counts
            .iter()
            .find(|c| &c.queue == q && c.state == JobState::Queued)
            .map_or(0, |c| c.count);
        out.push_str(&format!("replyd_queue_depth{{queue=\"{q}\"}} {n}\n"));
    }
    dead_letters(&mut out, app.store.dead_letters().await?, app.now());
    out.push_str(&prometheus().render());
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response())
}

/// Dead-letter series beyond which the smallest are summed into one per
/// channel (`tenant="_other"`): a label set per tenant, bounded.
pub const MAX_DEAD_LETTER_SERIES: usize = 1000;

/// `replyd_dead_letters{channel,tenant}` and the age of the oldest, read
/// from counts the store keeps (no outbox scan per scrape).
fn dead_letters(
    out: &mut String,
    mut groups: Vec<replyd_core::ops::DeadLetters>,
    now: chrono::DateTime<chrono::Utc>,
) {
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    let mut series: Vec<(String, String, u64, Option<chrono::DateTime<chrono::Utc>>)> = Vec::new();
    for g in groups {
        if series.len() < MAX_DEAD_LETTER_SERIES {
            series.push((g.channel.as_str().into(), g.tenant.0, g.count, g.oldest));
            continue;
        }
        let channel = g.channel.as_str();
        match series
            .iter_mut()
            .find(|s| s.0 == channel && s.1 == OTHER_TENANTS)
        {
            Some(s) => {
                s.2 += g.count;
                s.3 = match (s.3, g.oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            None => series.push((channel.into(), OTHER_TENANTS.into(), g.count, g.oldest)),
        }
    }
    out.push_str(
        "# HELP replyd_dead_letters Dead-lettered deliveries awaiting a replay, by channel and tenant.\n\
         # TYPE replyd_dead_letters gauge\n",
    );
    for (channel, tenant, n, _) in &series {
        let tenant = label(tenant);
        out.push_str(&format!(
            "replyd_dead_letters{{channel=\"{channel}\",tenant=\"{tenant}\"}} {n}\n"
        ));
    }
    out.push_str(
        "# HELP replyd_dead_letter_oldest_age_seconds Seconds since the oldest dead letter died, by channel and tenant.\n\
         # TYPE replyd_dead_letter_oldest_age_seconds gauge\n",
    );
    for (channel, tenant, _, oldest) in &series {
        if let Some(oldest) = oldest {
            let age = (now - *oldest).num_milliseconds().max(0) as f64 / 1000.0;
            let tenant = label(tenant);
            out.push_str(&format!(
                "replyd_dead_letter_oldest_age_seconds{{channel=\"{channel}\",tenant=\"{tenant}\"}} {age}\n"
            ));
        }
    }
}

/// The tenant label of the dead letters beyond [`MAX_DEAD_LETTER_SERIES`].
const OTHER_TENANTS: &str = "_other";

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The OpenAPI document, generated from the handlers and wire types.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200)))]
pub async fn openapi() -> Response {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        serde_json::to_string_pretty(&super::openapi::document()).unwrap_or_default()
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        DOC.as_str(),
    )
        .into_response()
}
