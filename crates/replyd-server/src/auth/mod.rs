//! Who is calling: API keys (tenant + role) from the configuration, job
//! tokens, the capability that grants read, stream and cancel of one job,
//! and the console's passes ([`passes`]: a signed-in session, a portal).
//!
//! Keys are looked up by their SHA-256 digest, so the lookup does not leak
//! their content through timing; job tokens are an HMAC of the job id under
//! the cluster secret, so any node can check one without storing it.

pub mod passes;

use std::collections::HashMap;

use axum::http::HeaderMap;
use base64::Engine;
use hmac::{Hmac, Mac};
use replyd_core::{JobId, Tenant};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ApiKey, Role};
use crate::error::ApiError;

/// What a request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An API key. `tenant: None` is an operator key that sees every tenant.
    Key { tenant: Option<Tenant>, role: Role },
    /// A job token: this one job only, read and cancel.
    JobToken(JobId),
    /// No credentials.
    Anonymous,
}

/// Something a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Submit and list jobs.
    Submit,
    /// Read a job, its result, its events.
    Read,
    /// Cancel or delete a job.
    Cancel,
    /// Read deliveries: they show webhook URLs, reply addresses and what
    /// receivers answered, which a job token (handed to a browser) must
    /// not.
    Deliveries,
    /// Replay deliveries.
    Replay,
    /// Lease and work on jobs.
    Work,
    /// Failing webhook endpoints and operational events; resuming a
    /// paused endpoint: admin keys (a tenant's admin sees its tenant's).
    Endpoints,
    /// Metrics and other operator views: an admin key of every tenant
    /// (`"*"`) only.
    Operate,
}

impl Caller {
    /// The tenant a new job belongs to.
    pub fn tenant(&self) -> Option<&Tenant> {
        match self {
            Caller::Key { tenant, .. } => tenant.as_ref(),
            _ => None,
        }
    }

    /// The tenant the caller's new jobs belong to; 403 for an operator key
    /// (tenant `*`), which owns none.
    pub fn owner(&self) -> Result<Tenant, ApiError> {
        self.tenant().cloned().ok_or_else(|| {
            ApiError::forbidden(
                "an operator key (tenant \"*\") cannot own jobs; use a tenant's key",
            )
        })
    }

    /// What can be decided from the caller alone, before any job is looked
    /// up (so that the answer says nothing about whether a job exists):
    /// 401 without credentials, 403 for a role that may not do `action`.
    /// `names_a_job`: the request is about one job (a job token is good
    /// for nothing else).
    pub fn may(&self, action: Action, names_a_job: bool) -> Result<(), ApiError> {
        match self {
            Caller::Anonymous => Err(ApiError::unauthorized(
                "missing credentials: send Authorization: Bearer <api key or job token>",
            )),
            Caller::JobToken(_) => match action {
                Action::Read | Action::Cancel if names_a_job => Ok(()),
                _ => Err(ApiError::forbidden(
                    "a job token grants access to its own job only",
                )),
            },
            Caller::Key { tenant, role } => {
                let allowed = match role {
                    Role::Admin => action != Action::Operate || tenant.is_none(),
                    Role::Client => matches!(
                        action,
                        Action::Submit
                            | Action::Read
                            | Action::Cancel
                            | Action::Deliveries
                            | Action::Replay
                    ),
                    Role::Worker => matches!(action, Action::Work | Action::Read),
                    Role::Viewer => matches!(action, Action::Read | Action::Deliveries),
                };
                if allowed {
                    Ok(())
                } else if action == Action::Operate && *role == Role::Admin {
                    Err(ApiError::forbidden(
                        "operator views (metrics) need an admin key of every tenant (tenant \"*\")",
                    ))
                } else {
                    Err(ApiError::forbidden(format!(
                        "a {} key may not do this",
                        role_name(*role)
                    )))
                }
            }
        }
    }

    /// Whether the caller reaches job `id` of `tenant`: another tenant's
    /// job, or another job's token, is reported exactly like a missing job.
    pub fn reaches(&self, id: JobId, tenant: &Tenant) -> Result<(), ApiError> {
        match self {
            Caller::JobToken(own) if *own != id => Err(ApiError::job_not_found()),
            Caller::Key {
                tenant: Some(mine), ..
            } if mine != tenant => Err(ApiError::job_not_found()),
            _ => Ok(()),
        }
    }

    /// `may` and `reaches` together, for a request about `job` if it names
    /// one.
    pub fn check(&self, action: Action, job: Option<(JobId, &Tenant)>) -> Result<(), ApiError> {
        self.may(action, job.is_some())?;
        match job {
            Some((id, tenant)) => self.reaches(id, tenant),
            None => Ok(()),
        }
    }
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Client => "client",
        Role::Worker => "worker",
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    }
}

/// The prefix that tells a job token from an API key.
pub const TOKEN_PREFIX: &str = "jt_";

/// A job token's bytes: the job id, then the first 24 bytes of its MAC.
const TOKEN_LEN: usize = 16 + 24;

/// Mints and opens job tokens: a job's id and a MAC of it under the
/// cluster secret, so that any node checks one without a lookup (and
/// before anything is said about the job).
#[derive(Clone)]
pub struct JobTokens {
    secret: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for JobTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTokens").finish_non_exhaustive()
    }
}

impl JobTokens {
    pub fn new(secret: Vec<u8>) -> JobTokens {
        JobTokens {
            secret: secret.into(),
        }
    }

    fn mac(&self, id: JobId) -> [u8; 24] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(b"replyd job token v1\0");
        mac.update(id.0.as_bytes());
        let tag = mac.finalize().into_bytes();
        tag[..24].try_into().expect("a SHA-256 MAC has 32 bytes")
    }

    /// The job token of `id`.
    pub fn mint(&self, id: JobId) -> String {
        let mut raw = [0u8; TOKEN_LEN];
        raw[..16].copy_from_slice(id.0.as_bytes());
        raw[16..].copy_from_slice(&self.mac(id));
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        )
    }

    /// The job a token opens, if it is one of this cluster's.
    pub fn open(&self, token: &str) -> Option<JobId> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.strip_prefix(TOKEN_PREFIX)?)
            .ok()?;
        if raw.len() != TOKEN_LEN {
            return None;
        }
        let id = JobId(uuid::Uuid::from_slice(&raw[..16]).ok()?);
        bool::from(self.mac(id).ct_eq(&raw[16..])).then_some(id)
    }
}

/// Checks credentials (API keys, job tokens).
pub struct Authenticator {
    keys: HashMap<[u8; 32], (Option<Tenant>, Role)>,
    /// The keys by the id a console session names them by.
    sessions: HashMap<[u8; 16], [u8; 32]>,
    open: bool,
    tokens: JobTokens,
    pub passes: passes::Passes,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(keys: &[ApiKey], tokens: JobTokens) -> Authenticator {
        let keys = keys
            .iter()
            .map(|k| {
                let tenant = (k.tenant != "*").then(|| Tenant(k.tenant.clone()));
                (digest(k.key.as_bytes()), (tenant, k.role))
            })
            .collect::<HashMap<_, _>>();
        let passes = passes::Passes::new(tokens.secret.clone());
        Authenticator {
            open: keys.is_empty(),
            sessions: keys.keys().map(|d| (passes.key_id(d), *d)).collect(),
            keys,
            tokens,
            passes,
        }
    }

    /// Whether no keys are configured (every caller is the open tenant's
    /// admin).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// A console session for `key`, good until `expires`; `None` for a key
    /// that is not configured.
    pub fn session_for(&self, key: &str, expires: chrono::DateTime<chrono::Utc>) -> Option<String> {
        let digest = digest(key.as_bytes());
        self.keys
            .contains_key(&digest)
            .then(|| self.passes.session(self.passes.key_id(&digest), expires))
    }

    /// Who sent these headers (and `access_token` query parameter).
    pub fn identify(
        &self,
        headers: &HeaderMap,
        access_token: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let bearer = self.bearer(headers, access_token)?;
        self.identify_token(bearer)
    }

    /// The credential a request carries: the Bearer token of its
    /// Authorization header, else its `access_token` parameter, which may
    /// only be a job token: an API key in a URL ends up in logs, browser
    /// histories and `Referer` headers.
    pub fn bearer<'a>(
        &self,
        headers: &'a HeaderMap,
        access_token: Option<&'a str>,
    ) -> Result<Option<&'a str>, ApiError> {
        Ok(match headers.get(axum::http::header::AUTHORIZATION) {
            Some(v) => {
                let v = v
                    .to_str()
                    .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
                let token = v
                    .strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        ApiError::unauthorized("the Authorization header must be: Bearer <token>")
                    })?;
                Some(token.trim())
            }
            None => match access_token {
                Some(t) if !t.starts_with(TOKEN_PREFIX) => {
                    return Err(ApiError::unauthorized(
                        "only a job token (jt_…) may be sent as access_token; \
                         send an API key as Authorization: Bearer <key>",
                    ));
                }
                // A browser signed in to the console: its session cookie
                // (the console's middleware has checked its CSRF token
                // and origin, `crate::http::console::screen`).
                None => passes::cookie(headers, passes::SESSION_COOKIE)
                    .filter(|c| c.starts_with(passes::SESSION_PREFIX)),
                t => t,
            },
        })
    }

    /// Who holds `bearer`: an API key, or a job token (then the caller is
    /// that job's, whatever job the request names).
    pub fn identify_token(&self, bearer: Option<&str>) -> Result<Caller, ApiError> {
        let Some(token) = bearer else {
            return Ok(if self.open {
                Caller::Key {
                    tenant: Some(Tenant::open()),
                    role: Role::Admin,
                }
            } else {
                Caller::Anonymous
            });
        };
        if token.starts_with(TOKEN_PREFIX) {
            return self
                .tokens
                .open(token)
                .map(Caller::JobToken)
                .ok_or_else(|| ApiError::unauthorized("invalid job token"));
        }
        if self.open {
            return Ok(Caller::Key {
                tenant: Some(Tenant::open()),
                role: Role::Admin,
            });
        }
        let now = chrono::Utc::now();
        if token.starts_with(passes::SESSION_PREFIX) {
            return self
                .passes
                .open_session(token, now)
                .and_then(|(id, _)| self.sessions.get(&id))
                .and_then(|d| self.keys.get(d))
                .map(|(tenant, role)| Caller::Key {
                    tenant: tenant.clone(),
                    role: *role,
                })
                .ok_or_else(|| {
                    ApiError::unauthorized("the console session expired or its key was removed")
                });
        }
        if token.starts_with(passes::PORTAL_PREFIX) {
            return self
                .passes
                .open_portal(token, now)
                .map(|(tenant, _)| Caller::Key {
                    tenant: Some(Tenant(tenant)),
                    role: Role::Viewer,
                })
                .ok_or_else(|| {
                    ApiError::unauthorized("the portal link expired or is not genuine")
                });
        }
        match self.keys.get(&digest(token.as_bytes())) {
            Some((tenant, role)) => Ok(Caller::Key {
                tenant: tenant.clone(),
                role: *role,
            }),
            None => Err(ApiError::unauthorized("unknown API key")),
        }
    }
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> Authenticator {
        Authenticator::new(
            &[
                ApiKey {
                    key: "client-key-a".into(),
                    tenant: "a".into(),
                    role: Role::Client,
                },
                ApiKey {
                    key: "worker-key-all".into(),
                    tenant: "*".into(),
                    role: Role::Worker,
                },
                ApiKey {
                    key: "admin-key-a".into(),
                    tenant: "a".into(),
                    role: Role::Admin,
                },
                ApiKey {
                    key: "admin-key-all".into(),
                    tenant: "*".into(),
                    role: Role::Admin,
                },
            ],
            JobTokens::new(b"secret".to_vec()),
        )
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
        h
    }

    #[test]
    fn keys_carry_tenant_and_role() {
        let a = auth();
        let c = a.identify(&bearer("client-key-a"), None).unwrap();
        let ta = Tenant("a".into());
        let tb = Tenant("b".into());
        let id = JobId::new();
        assert!(c.check(Action::Submit, None).is_ok());
        assert!(c.check(Action::Read, Some((id, &ta))).is_ok());
        assert!(c.check(Action::Deliveries, Some((id, &ta))).is_ok());
        let e = c.check(Action::Read, Some((id, &tb))).unwrap_err();
        assert_eq!(e.status, 404, "another tenant's job looks missing");
        assert_eq!(c.check(Action::Work, None).unwrap_err().status, 403);
        let w = a.identify(&bearer("worker-key-all"), None).unwrap();
        assert!(w.check(Action::Work, Some((id, &tb))).is_ok());
        assert_eq!(w.check(Action::Submit, None).unwrap_err().status, 403);
        assert_eq!(w.check(Action::Deliveries, None).unwrap_err().status, 403);
        assert_eq!(
            a.identify(&bearer("nope-nope"), None).unwrap_err().status,
            401
        );
        assert_eq!(
            a.identify(&HeaderMap::new(), None)
                .unwrap()
                .check(Action::Read, None)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn only_an_admin_of_every_tenant_operates() {
        let a = auth();
        let mine = a.identify(&bearer("admin-key-a"), None).unwrap();
        assert_eq!(mine.check(Action::Operate, None).unwrap_err().status, 403);
        assert!(mine.check(Action::Submit, None).is_ok());
        let all = a.identify(&bearer("admin-key-all"), None).unwrap();
        assert!(all.check(Action::Operate, None).is_ok());
    }

    #[test]
    fn job_tokens_open_their_own_job_only() {
        let a = auth();
        let id = JobId::new();
        let other = JobId::new();
        let token = JobTokens::new(b"secret".to_vec()).mint(id);
        assert!(token.starts_with("jt_") && token.len() > 50);
        let t = Tenant("a".into());
        let c = a.identify(&HeaderMap::new(), Some(&token)).unwrap();
        assert_eq!(c, Caller::JobToken(id));
        assert!(c.check(Action::Read, Some((id, &t))).is_ok());
        assert!(c.check(Action::Cancel, Some((id, &t))).is_ok());
        for action in [Action::Submit, Action::Read, Action::Deliveries] {
            assert_eq!(c.check(action, None).unwrap_err().status, 403);
        }
        assert_eq!(
            c.check(Action::Work, Some((id, &t))).unwrap_err().status,
            403
        );
        assert_eq!(
            c.check(Action::Deliveries, Some((id, &t)))
                .unwrap_err()
                .status,
            403,
            "a job token does not show deliveries"
        );
        // The same token presented for another job: as if it did not exist.
        let c = a.identify(&bearer(&token), None).unwrap();
        assert_eq!(
            c.check(Action::Read, Some((other, &t))).unwrap_err().status,
            404
        );
        // Another secret mints another token, and refuses this one.
        let b = Authenticator::new(&[], JobTokens::new(b"other".to_vec()));
        assert_ne!(JobTokens::new(b"other".to_vec()).mint(id), token);
        assert_eq!(b.identify(&bearer(&token), None).unwrap_err().status, 401);
        // A token that is not one: 401, whatever it names.
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        for bad in [forged.as_str(), "jt_", "jt_!!!!", "jt_AAAA"] {
            assert_eq!(a.identify(&bearer(bad), None).unwrap_err().status, 401);
        }
    }

    #[test]
    fn api_keys_are_refused_in_urls() {
        let a = auth();
        let e = a
            .identify(&HeaderMap::new(), Some("client-key-a"))
            .unwrap_err();
        assert_eq!(e.status, 401);
        let token = JobTokens::new(b"secret".to_vec()).mint(JobId::new());
        assert!(a.identify(&HeaderMap::new(), Some(&token)).is_ok());
        // The header wins over the parameter.
        assert!(
            a.identify(&bearer("client-key-a"), Some("whatever"))
                .is_ok()
        );
    }

    #[test]
    fn an_open_server_treats_everyone_as_the_default_tenant() {
        let a = Authenticator::new(&[], JobTokens::new(b"s".to_vec()));
        let c = a.identify(&HeaderMap::new(), None).unwrap();
        assert_eq!(c.tenant(), Some(&Tenant::open()));
        assert!(c.check(Action::Submit, None).is_ok());
    }
}
