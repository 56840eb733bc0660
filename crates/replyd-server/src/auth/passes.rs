//! The console's passes, each a MAC under the cluster secret (so any node
//! checks one without a lookup) with its own label:
//!
//! - a **session** (`cs_…`): minted when someone signs in to the console
//!   with an API key, kept in an `HttpOnly`, `SameSite=Strict` cookie. It
//!   names the key by a MAC of its digest (never the key), so it stops
//!   working when the key leaves the configuration, and it expires.
//! - a session's **CSRF token**: a MAC of the session, which the console's
//!   script reads from `GET /ui/session` (another origin cannot) and sends
//!   back as `X-CSRF-Token` with every request that changes something.
//! - a **portal pass** (`pt_…`): an expiring, signed view of one tenant's
//!   jobs and deliveries, read-only, that an admin hands out as a link.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const SESSION_PREFIX: &str = "cs_";
pub const PORTAL_PREFIX: &str = "pt_";
/// The cookie a console session is kept in.
pub const SESSION_COOKIE: &str = "replyd_session";

/// Bytes of a MAC kept in a pass.
const MAC_LEN: usize = 24;
/// Bytes of a key's id in a session.
const KEY_ID_LEN: usize = 16;
/// The longest tenant name a portal pass carries.
const MAX_TENANT: usize = 200;

#[derive(Clone)]
pub struct Passes {
    secret: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for Passes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passes")
    }
}

impl Passes {
    pub fn new(secret: std::sync::Arc<[u8]>) -> Passes {
        Passes { secret }
    }

    fn mac(&self, label: &[u8], body: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes a key of any length");
        m.update(b"replyd-console/");
        m.update(label);
        m.update(&[0]);
        m.update(body);
        m.finalize().into_bytes().into()
    }

    /// The id a session names an API key by (from the key's digest).
    pub fn key_id(&self, key_digest: &[u8; 32]) -> [u8; KEY_ID_LEN] {
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&self.mac(b"key-id", key_digest)[..KEY_ID_LEN]);
        id
    }

    /// A session for the key with id `key`, good until `expires`.
    pub fn session(&self, key: [u8; KEY_ID_LEN], expires: DateTime<Utc>) -> String {
        let mut body = Vec::with_capacity(KEY_ID_LEN + 8 + MAC_LEN);
        body.extend_from_slice(&key);
        body.extend_from_slice(&expires.timestamp().to_be_bytes());
        let mac = self.mac(b"session", &body);
        body.extend_from_slice(&mac[..MAC_LEN]);
        format!("{SESSION_PREFIX}{}", B64.encode(body))
    }

    /// The key a session names and when it expires, if it is genuine and
    /// has not expired at `now`.
    pub fn open_session(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Option<([u8; KEY_ID_LEN], DateTime<Utc>)> {
        let raw = B64.decode(token.strip_prefix(SESSION_PREFIX)?).ok()?;
        if raw.len() != KEY_ID_LEN + 8 + MAC_LEN {
            return None;
        }
        let (body, mac) = raw.split_at(KEY_ID_LEN + 8);
        if !bool::from(self.mac(b"session", body)[..MAC_LEN].ct_eq(mac)) {
            return None;
        }
        let expires = expiry(&body[KEY_ID_LEN..])?;
        if expires <= now {
            return None;
        }
        Some((body[..KEY_ID_LEN].try_into().ok()?, expires))
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, session: &str) -> String {
        B64.encode(&self.mac(b"csrf", session.as_bytes())[..18])
    }

    /// Whether `sent` is the CSRF token of `session`.
    pub fn csrf_matches(&self, session: &str, sent: &str) -> bool {
        bool::from(self.csrf(session).as_bytes().ct_eq(sent.as_bytes()))
    }

    /// A portal pass to `tenant`'s view, good until `expires`; `None` for
    /// a tenant name too long to carry.
    pub fn portal(&self, tenant: &str, expires: DateTime<Utc>) -> Option<String> {
        if tenant.len() > MAX_TENANT {
            return None;
        }
        let mut body = Vec::with_capacity(8 + tenant.len() + MAC_LEN);
        body.extend_from_slice(&expires.timestamp().to_be_bytes());
        body.extend_from_slice(tenant.as_bytes());
        let mac = self.mac(b"portal", &body);
        body.extend_from_slice(&mac[..MAC_LEN]);
        Some(format!("{PORTAL_PREFIX}{}", B64.encode(body)))
    }

    /// The tenant of a genuine portal pass that has not expired at `now`,
    /// with its expiry.
    pub fn open_portal(&self, token: &str, now: DateTime<Utc>) -> Option<(String, DateTime<Utc>)> {
        let raw = B64.decode(token.strip_prefix(PORTAL_PREFIX)?).ok()?;
        if raw.len() <= 8 + MAC_LEN || raw.len() > 8 + MAX_TENANT + MAC_LEN {
            return None;
        }
        let (body, mac) = raw.split_at(raw.len() - MAC_LEN);
        if !bool::from(self.mac(b"portal", body)[..MAC_LEN].ct_eq(mac)) {
            return None;
        }
        let expires = expiry(&body[..8])?;
        let tenant = std::str::from_utf8(&body[8..]).ok()?;
        (expires > now).then(|| (tenant.to_string(), expires))
    }
}

fn expiry(b: &[u8]) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::from_be_bytes(b.try_into().ok()?), 0)
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passes() -> Passes {
        Passes::new(b"secret".to_vec().into())
    }

    #[test]
    fn sessions_open_until_they_expire_and_never_when_altered() {
        let p = passes();
        let now = Utc::now();
        let key = p.key_id(&[7; 32]);
        let s = p.session(key, now + chrono::Duration::seconds(60));
        assert_eq!(p.open_session(&s, now).map(|o| o.0), Some(key));
        assert!(
            p.open_session(&s, now + chrono::Duration::seconds(61))
                .is_none()
        );
        let other = Passes::new(b"other".to_vec().into());
        assert!(other.open_session(&s, now).is_none(), "another cluster's");
        let mut altered = s.clone().into_bytes();
        let i = altered.len() - 40;
        altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
        assert!(
            p.open_session(std::str::from_utf8(&altered).unwrap(), now)
                .is_none()
        );
        assert!(p.open_session("cs_", now).is_none());
        assert!(p.open_session("cs_!!!", now).is_none());
        // A portal pass is not a session, nor the reverse.
        let portal = p
            .portal("acme", now + chrono::Duration::seconds(60))
            .unwrap();
        assert!(
            p.open_session(&portal.replacen("pt_", "cs_", 1), now)
                .is_none()
        );
        assert!(p.open_portal(&s.replacen("cs_", "pt_", 1), now).is_none());
    }

    #[test]
    fn portal_passes_carry_their_tenant_and_expire() {
        let p = passes();
        let now = Utc::now();
        let pass = p
            .portal("acme", now + chrono::Duration::seconds(60))
            .unwrap();
        assert_eq!(p.open_portal(&pass, now).unwrap().0, "acme");
        assert!(
            p.open_portal(&pass, now + chrono::Duration::seconds(60))
                .is_none()
        );
        assert!(p.portal(&"x".repeat(201), now).is_none());
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let p = passes();
        let now = Utc::now() + chrono::Duration::seconds(60);
        let a = p.session(p.key_id(&[1; 32]), now);
        let b = p.session(p.key_id(&[2; 32]), now);
        assert!(p.csrf_matches(&a, &p.csrf(&a)));
        assert!(!p.csrf_matches(&a, &p.csrf(&b)));
        assert!(!p.csrf_matches(&a, ""));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "a=1; replyd_session=cs_x".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("cs_x"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "replyd"), None);
    }
}
