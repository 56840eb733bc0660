//! The web console, served at `/ui/` from assets built into the binary
//! (the top-level `console/` folder; no network access at run time), and
//! what it needs beyond the API every client uses:
//!
//! - signing in: `POST /ui/session` with an API key sets the session
//!   cookie (`HttpOnly`, `SameSite=Strict`, `Secure` behind TLS);
//!   `GET /ui/session` tells the page who it is and its CSRF token;
//!   `DELETE /ui/session` signs out;
//! - [`guard`], on every route: a request that is authenticated by that
//!   cookie (no Authorization header) must come from this origin and,
//!   unless it is a read, carry the CSRF token;
//! - portal links: `POST /v1/portal-links` mints one (an admin, for a
//!   tenant); `/ui/portal#pt_…` opens it, in a frame where
//!   `console.frame_ancestors` allows;
//! - a strict Content Security Policy: scripts and styles from this
//!   origin only, nothing inline.

mod assets;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_proto as proto;

use super::{AppState, body, parse_json};
use crate::auth::passes::{self, SESSION_COOKIE, SESSION_PREFIX};
use crate::auth::{Action, Caller, role_name};
use crate::error::{ApiError, ApiResult};

/// The header the console sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The console's routes (none when `console.enabled` is off, but the
/// portal-link API).
pub fn router(app: &AppState) -> Router<AppState> {
    let api = Router::new().route("/v1/portal-links", axum::routing::post(portal_link));
    if !app.config.console.enabled {
        return api;
    }
    let mut r = api
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/portal", get(portal))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/session", get(session).post(sign_in).delete(sign_out));
    // `/` is the console's unless a gateway route claims it.
    if !app.config.routes.iter().any(|r| r.path == "/") {
        r = r.route("/", get(|| async { Redirect::temporary("/ui/") }));
    }
    r
}

/// Refuses a request authenticated by the console's session cookie that
/// comes from another site, or that changes something without the
/// session's CSRF token (`http::front` asks this of every request).
/// Requests with an Authorization header (API clients, the portal) or a
/// job token in the query carry their credential explicitly and pass.
pub fn screen(app: &AppState, req: &Request) -> ApiResult<()> {
    let h = req.headers();
    // A job token in the query (a link handed to a browser) is the
    // credential then, not the cookie the browser also sends.
    let ambient = !h.contains_key(header::AUTHORIZATION)
        && !super::front::token_in_query(req)
        && passes::cookie(h, SESSION_COOKIE).is_some_and(|c| c.starts_with(SESSION_PREFIX));
    if ambient {
        check_ambient(app, req)?;
    }
    Ok(())
}

fn check_ambient(app: &AppState, req: &Request) -> ApiResult<()> {
    let h = req.headers();
    let refuse = |why: &str| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            format!("a console session is not accepted here: {why}"),
        ))
    };
    if h.get("sec-fetch-site").is_some_and(|v| v == "cross-site") {
        return refuse("the request came from another site");
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host));
        if !same {
            return refuse("the request came from another origin");
        }
    }
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let signs_in = req.method() == Method::POST && req.uri().path() == "/ui/session";
    if reads || signs_in {
        return Ok(());
    }
    let session = passes::cookie(h, SESSION_COOKIE).unwrap_or("");
    let sent = h
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !app.auth.passes.csrf_matches(session, sent) {
        return refuse("the X-CSRF-Token header is missing or wrong (reload the console)");
    }
    Ok(())
}

/// The headers every console page gets: a strict CSP (`frame_ancestors`
/// the origins that may frame it), no sniffing, no referrer, revalidate.
fn page(body: &'static [u8], frame_ancestors: &str) -> Response {
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors {frame_ancestors}"
    );
    let mut res = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    if frame_ancestors == "'none'" {
        res.headers_mut()
            .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    res
}

async fn index() -> Response {
    page(assets::INDEX, "'none'")
}

async fn portal(State(app): State<AppState>) -> Response {
    let allowed = &app.config.console.frame_ancestors;
    if allowed.is_empty() {
        page(assets::PORTAL, "'none'")
    } else {
        page(assets::PORTAL, &allowed.join(" "))
    }
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(a) = assets::find(&name) else {
        return ApiError::not_found("no such asset").into_response();
    };
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == a.etag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::ETAG,
                HeaderValue::from_str(&a.etag).unwrap_or(HeaderValue::from_static("\"\"")),
            ),
        ],
        a.body,
    )
        .into_response()
}

fn view(
    app: &AppState,
    caller: &Caller,
    csrf: String,
    expires_at: DateTime<Utc>,
    portal: bool,
) -> ApiResult<proto::ConsoleSession> {
    match caller {
        Caller::Key { tenant, role } => Ok(proto::ConsoleSession {
            tenant: tenant.as_ref().map_or("*".to_string(), |t| t.0.clone()),
            role: role_name(*role).to_string(),
            csrf,
            expires_at,
            portal,
            queues: app.config.queues.keys().cloned().collect(),
        }),
        Caller::JobToken(_) => Err(ApiError::forbidden("a job token cannot open the console")),
        Caller::Anonymous => Err(ApiError::unauthorized("sign in with an API key")),
    }
}

/// Who the console is signed in as, with its CSRF token.
async fn session(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    let now = Utc::now();
    let bearer = app.auth.bearer(&headers, None)?.unwrap_or("");
    let (csrf, expires_at, portal) =
        if let Some((_, exp)) = app.auth.passes.open_session(bearer, now) {
            (app.auth.passes.csrf(bearer), exp, false)
        } else if let Some((_, exp)) = app.auth.passes.open_portal(bearer, now) {
            // Sent as a header, not a cookie: nothing to forge.
            (String::new(), exp, true)
        } else {
            let ttl = chrono::Duration::seconds(app.config.console.session_ttl as i64);
            (String::new(), now + ttl, false)
        };
    let view = view(
        &app,
        &caller,
        csrf,
        expires_at,
        portal && !app.auth.is_open(),
    )?;
    Ok((StatusCode::OK, no_store(), axum::Json(view)).into_response())
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    key: String,
}

/// Signs in with an API key: the session cookie, and who that is.
async fn sign_in(
    State(app): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: SignIn = parse_json(&headers, &body(raw, 4096)?)?;
    let key = req.key.trim();
    let now = Utc::now();
    let expires = now + chrono::Duration::seconds(app.config.console.session_ttl as i64);
    let Some(session) = app.auth.session_for(key, expires) else {
        return Err(if app.auth.is_open() {
            ApiError::bad_request("no API keys are configured: the console needs no sign-in")
        } else {
            ApiError::unauthorized("unknown API key")
        });
    };
    let caller = app.auth.identify_token(Some(key))?;
    caller.may(Action::Read, false)?;
    let view = view(
        &app,
        &caller,
        app.auth.passes.csrf(&session),
        expires,
        false,
    )?;
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        app.config.console.session_ttl as i64,
        if secure(&app, &headers) {
            "; Secure"
        } else {
            ""
        }
    );
    let mut res = (StatusCode::OK, no_store(), axum::Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// Signs out: the cookie is cleared.
async fn sign_out(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let cookie = format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure(&app, &headers) {
            "; Secure"
        } else {
            ""
        }
    );
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// Whether the browser reaches this server over TLS (a proxy in front
/// says so, or the configured public URL does): then the cookie is
/// `Secure`.
fn secure(app: &AppState, headers: &HeaderMap) -> bool {
    app.config
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// Mint a portal link: one tenant's jobs and deliveries, read-only, until
/// it expires.
#[utoipa::path(post, path = "/v1/portal-links", tag = "console", operation_id = "create_portal_link",
    request_body = proto::PortalLinkRequest,
    responses((status = 201, body = proto::PortalLink),
              (status = 400, body = proto::Problem),
              (status = 403, description = "Not an admin key, or another tenant's", body = proto::Problem)))]
pub async fn portal_link(
    State(app): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = app.auth.identify(&headers, None)?;
    caller.check(Action::Endpoints, None)?;
    let req: proto::PortalLinkRequest = parse_json(&headers, &body(raw, 4096)?)?;
    let tenant = match (caller.tenant(), req.tenant) {
        (Some(mine), None) => mine.0.clone(),
        (Some(mine), Some(t)) if t == mine.0 => t,
        (Some(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "a tenant's admin key mints links to its own tenant only",
            ));
        }
        (None, Some(t)) if !t.is_empty() && t != "*" => t,
        (None, _) => {
            return Err(ApiError::bad_request(
                "tenant: which tenant the portal shows",
            ));
        }
    };
    let ttl = req.ttl.unwrap_or(3600);
    if !(60..=604_800).contains(&ttl) {
        return Err(ApiError::bad_request(
            "ttl must be between 60 and 604800 seconds",
        ));
    }
    let expires_at = Utc::now() + chrono::Duration::seconds(ttl as i64);
    let pass = app
        .auth
        .passes
        .portal(&tenant, expires_at)
        .ok_or_else(|| ApiError::bad_request("tenant is longer than 200 bytes"))?;
    // Where browsers reach this server: the configured public URL, else
    // the host this request was sent to.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = match (&app.config.public_url, host) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(host)) => {
            let scheme = if secure(&app, &headers) {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        }
        (None, None) => app.config.public_url(),
    };
    let link = proto::PortalLink {
        url: format!("{origin}/ui/portal#{pass}"),
        tenant,
        expires_at,
    };
    Ok((StatusCode::CREATED, no_store(), axum::Json(link)).into_response())
}
