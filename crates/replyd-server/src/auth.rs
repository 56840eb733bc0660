//! Who is calling: API keys (tenant + role) from the configuration, and job
//! tokens, the capability that grants read, stream and cancel of one job.
//!
//! Keys are looked up by their SHA-256 digest, so the lookup does not leak
//! their content through timing; job tokens are an HMAC of the job id under
//! the cluster secret, so any node can check one without storing it.

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
    /// Lease and work on jobs.
    Work,
    /// Metrics and other operator views.
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

    /// Whether this caller may do `action`, on `job` when one is named.
    /// Another tenant's job is reported exactly like a missing one.
    pub fn check(&self, action: Action, job: Option<(JobId, &Tenant)>) -> Result<(), ApiError> {
        match self {
            Caller::Anonymous => Err(ApiError::unauthorized(
                "missing credentials: send Authorization: Bearer <api key or job token>",
            )),
            Caller::JobToken(id) => match (action, job) {
                (Action::Read | Action::Cancel, Some((job_id, _))) if job_id == *id => Ok(()),
                (Action::Read | Action::Cancel, Some(_)) => Err(ApiError::job_not_found()),
                _ => Err(ApiError::forbidden(
                    "a job token grants access to its own job only",
                )),
            },
            Caller::Key { tenant, role } => {
                let allowed = match role {
                    Role::Admin => true,
                    Role::Client => {
                        matches!(action, Action::Submit | Action::Read | Action::Cancel)
                    }
                    Role::Worker => matches!(action, Action::Work | Action::Read),
                };
                if !allowed {
                    return Err(ApiError::forbidden(format!(
                        "a {} key may not do this",
                        role_name(*role)
                    )));
                }
                match (tenant, job) {
                    (Some(mine), Some((_, theirs))) if mine != theirs => {
                        Err(ApiError::job_not_found())
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Client => "client",
        Role::Worker => "worker",
        Role::Admin => "admin",
    }
}

/// The prefix that tells a job token from an API key.
pub const TOKEN_PREFIX: &str = "jt_";

/// Checks credentials and mints job tokens.
pub struct Authenticator {
    keys: HashMap<[u8; 32], (Option<Tenant>, Role)>,
    open: bool,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(keys: &[ApiKey], secret: Vec<u8>) -> Authenticator {
        let keys = keys
            .iter()
            .map(|k| {
                let tenant = (k.tenant != "*").then(|| Tenant(k.tenant.clone()));
                (digest(k.key.as_bytes()), (tenant, k.role))
            })
            .collect::<HashMap<_, _>>();
        Authenticator {
            open: keys.is_empty(),
            keys,
            secret,
        }
    }

    /// The job token of `id`.
    pub fn job_token(&self, id: JobId) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(b"replyd job token v1\0");
        mac.update(id.0.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..24])
        )
    }

    /// Who sent these headers (and `access_token` query parameter), for a
    /// request about `job` if the route names one.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        access_token: Option<&str>,
        job: Option<JobId>,
    ) -> Result<Caller, ApiError> {
        let bearer = self.bearer(headers, access_token)?;
        self.identify_token(bearer, job)
    }

    /// The credential a request carries: the Bearer token of its
    /// Authorization header, else its `access_token` parameter.
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
            None => access_token,
        })
    }

    /// Who holds `bearer` (an API key or a job token), for an action on
    /// `job` if one is named. A job token is valid only with its own job.
    pub fn identify_token(
        &self,
        bearer: Option<&str>,
        job: Option<JobId>,
    ) -> Result<Caller, ApiError> {
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
            let Some(id) = job else {
                return Err(ApiError::forbidden(
                    "a job token grants access to its own job only",
                ));
            };
            let expected = self.job_token(id);
            return if bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
                Ok(Caller::JobToken(id))
            } else {
                // Wrong token for this job: as if the job did not exist.
                Err(ApiError::job_not_found())
            };
        }
        if self.open {
            return Ok(Caller::Key {
                tenant: Some(Tenant::open()),
                role: Role::Admin,
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
            ],
            b"secret".to_vec(),
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
        let c = a.identify(&bearer("client-key-a"), None, None).unwrap();
        let ta = Tenant("a".into());
        let tb = Tenant("b".into());
        let id = JobId::new();
        assert!(c.check(Action::Submit, None).is_ok());
        assert!(c.check(Action::Read, Some((id, &ta))).is_ok());
        let e = c.check(Action::Read, Some((id, &tb))).unwrap_err();
        assert_eq!(e.status, 404, "another tenant's job looks missing");
        assert_eq!(c.check(Action::Work, None).unwrap_err().status, 403);
        let w = a.identify(&bearer("worker-key-all"), None, None).unwrap();
        assert!(w.check(Action::Work, Some((id, &tb))).is_ok());
        assert_eq!(w.check(Action::Submit, None).unwrap_err().status, 403);
        assert_eq!(
            a.identify(&bearer("nope-nope"), None, None)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            a.identify(&HeaderMap::new(), None, None)
                .unwrap()
                .check(Action::Read, None)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn job_tokens_open_their_own_job_only() {
        let a = auth();
        let id = JobId::new();
        let other = JobId::new();
        let token = a.job_token(id);
        assert!(token.starts_with("jt_") && token.len() > 30);
        let t = Tenant("a".into());
        let c = a
            .identify(&HeaderMap::new(), Some(&token), Some(id))
            .unwrap();
        assert!(c.check(Action::Read, Some((id, &t))).is_ok());
        assert!(c.check(Action::Cancel, Some((id, &t))).is_ok());
        assert_eq!(c.check(Action::Submit, None).unwrap_err().status, 403);
        assert_eq!(
            c.check(Action::Work, Some((id, &t))).unwrap_err().status,
            403
        );
        // The same token presented for another job is refused as not found.
        let e = a.identify(&bearer(&token), None, Some(other)).unwrap_err();
        assert_eq!(e.status, 404);
        // Another secret mints another token.
        let b = Authenticator::new(&[], b"other".to_vec());
        assert_ne!(b.job_token(id), token);
    }

    #[test]
    fn an_open_server_treats_everyone_as_the_default_tenant() {
        let a = Authenticator::new(&[], b"s".to_vec());
        let c = a.identify(&HeaderMap::new(), None, None).unwrap();
        assert_eq!(c.tenant(), Some(&Tenant::open()));
        assert!(c.check(Action::Operate, None).is_ok());
    }
}
