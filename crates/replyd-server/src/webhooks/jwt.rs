//! JWT-signed deliveries: a `webhook-jwt` header beside the Standard
//! Webhooks ones, for receivers that verify tokens against a JWKS (as
//! Plaid's `Plaid-Verification` does).
//!
//! The token is a compact JWS, `alg` ES256 with the signing key's `kid`,
//! whose claims bind it to one message: `iss` (the configured issuer),
//! `aud` (the endpoint URL), `iat`, `exp` (`iat` + 5 min), `jti` (the
//! `webhook-id`), `sub` (the job id), `tenant` (the job's) and
//! `body_sha256` (lowercase hex of the SHA-256 of the exact body bytes).
//!
//! The keys live in the store (setting [`SETTING`]), so every node of a
//! cluster signs alike: the first node to start generates one, `replyd
//! keys generate` adds another (published at once, signing from its
//! `not_before`), `replyd keys retire` removes one. Each node re-reads the
//! set every [`REFRESH`]. The public halves are served at
//! `/.well-known/jwks.json`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use replyd_core::{Store, StoreError};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The store setting that keeps the key set.
pub const SETTING: &str = "webhook_jwt_keys";

/// How long a token is valid after it is issued.
pub const LIFETIME: i64 = 300;

/// How often each node re-reads the key set.
pub const REFRESH: Duration = Duration::from_secs(30);

/// One ES256 key.
pub struct JwtKey {
    /// The RFC 7638 thumbprint of its public key.
    pub kid: String,
    pub created_at: DateTime<Utc>,
    /// When it starts signing (it is published from `created_at`).
    pub not_before: DateTime<Utc>,
    pkcs8: Vec<u8>,
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("not_before", &self.not_before)
            .finish_non_exhaustive()
    }
}

/// A key set that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("the stored webhook JWT keys cannot be read: {0}")]
pub struct BadKeys(String);

/// How a key is kept.
#[derive(Serialize, Deserialize)]
struct Stored {
    kid: String,
    /// PKCS#8, base64.
    pkcs8: String,
    created_at: DateTime<Utc>,
    not_before: DateTime<Utc>,
}

impl JwtKey {
    /// A fresh key, signing from `not_before`.
    pub fn generate(now: DateTime<Utc>, not_before: DateTime<Utc>) -> JwtKey {
        let rng = SystemRandom::new();
        // Generating a P-256 key fails only if the system has no randomness.
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("the system's random number generator");
        JwtKey::from_pkcs8(pkcs8.as_ref().to_vec(), now, not_before)
            .expect("a key ring just generated")
    }

    fn from_pkcs8(
        pkcs8: Vec<u8>,
        created_at: DateTime<Utc>,
        not_before: DateTime<Utc>,
    ) -> Result<JwtKey, BadKeys> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| BadKeys(e.to_string()))?;
        let (x, y) = coordinates(&pair);
        // RFC 7638: the members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Ok(JwtKey {
            kid,
            created_at,
            not_before,
            pkcs8,
            pair,
        })
    }

    /// Its public half as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let (x, y) = coordinates(&self.pair);
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        })
    }

    /// A compact JWS of `claims`.
    pub fn sign(&self, claims: &Claims<'_>) -> String {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default()));
        // Signing fails only if the system has no randomness.
        let signature = self
            .pair
            .sign(&SystemRandom::new(), token.as_bytes())
            .expect("the system's random number generator");
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        token
    }
}

/// The public key's x and y, base64url.
fn coordinates(pair: &EcdsaKeyPair) -> (String, String) {
    // An uncompressed point: 0x04, then x and y of 32 bytes each.
    let point = pair.public_key().as_ref();
    (
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
}

/// What a token says.
#[derive(Debug, Serialize)]
pub struct Claims<'a> {
    pub iss: &'a str,
    pub aud: &'a str,
    pub iat: i64,
    pub exp: i64,
    pub jti: &'a str,
    pub sub: &'a str,
    /// The job's tenant: receivers of a replyd that serves several tell
    /// them apart by it (they share the server's keys).
    pub tenant: &'a str,
    pub body_sha256: String,
}

impl<'a> Claims<'a> {
    /// The claims of one delivery attempt made at `now` (seconds).
    pub fn of(
        issuer: &'a str,
        url: &'a str,
        message_id: &'a str,
        job: &'a str,
        tenant: &'a str,
        body: &[u8],
        now: i64,
    ) -> Claims<'a> {
        Claims {
            iss: issuer,
            aud: url,
            iat: now,
            exp: now + LIFETIME,
            jti: message_id,
            sub: job,
            tenant,
            body_sha256: hex::encode(Sha256::digest(body)),
        }
    }
}

/// Every key, oldest first.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<JwtKey>,
}

impl KeySet {
    pub fn decode(bytes: &[u8]) -> Result<KeySet, BadKeys> {
        let stored: Vec<Stored> =
            serde_json::from_slice(bytes).map_err(|e| BadKeys(e.to_string()))?;
        let keys = stored
            .into_iter()
            .map(|s| {
                let pkcs8 = STANDARD
                    .decode(&s.pkcs8)
                    .map_err(|e| BadKeys(e.to_string()))?;
                JwtKey::from_pkcs8(pkcs8, s.created_at, s.not_before)
            })
            .collect::<Result<_, _>>()?;
        Ok(KeySet { keys })
    }

    pub fn encode(&self) -> Vec<u8> {
        let stored: Vec<Stored> = self
            .keys
            .iter()
            .map(|k| Stored {
                kid: k.kid.clone(),
                pkcs8: STANDARD.encode(&k.pkcs8),
                created_at: k.created_at,
                not_before: k.not_before,
            })
            .collect();
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// The key that signs at `now`: of those whose `not_before` has come,
    /// the one that came last.
    pub fn signer(&self, now: DateTime<Utc>) -> Option<&JwtKey> {
        self.keys
            .iter()
            .filter(|k| k.not_before <= now)
            .max_by_key(|k| (k.not_before, k.created_at))
    }

    /// The public keys: `{"keys": [...]}`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": self.keys.iter().map(JwtKey::jwk).collect::<Vec<_>>()})
    }
}

/// The key set a node signs with, kept fresh from the store.
#[derive(Debug, Default)]
pub struct Keys {
    current: RwLock<Arc<KeySet>>,
    /// The stored bytes `current` was parsed from.
    read: std::sync::Mutex<Vec<u8>>,
}

impl Keys {
    pub fn get(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the set from `store`, generating the first key if it has none.
    /// Generates a key only when the store has none, and parses the set
    /// only when it changed since the last read (this runs every
    /// [`REFRESH`] on every node).
    pub async fn load(&self, store: &dyn Store, now: DateTime<Utc>) -> Result<(), StoreError> {
        let bytes = match store.setting(SETTING).await? {
            Some(bytes) => bytes,
            None => {
                let first = KeySet {
                    keys: vec![JwtKey::generate(now, now)],
                };
                store.setting_or_init(SETTING, first.encode()).await?
            }
        };
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        if *read == bytes {
            return Ok(());
        }
        let set = KeySet::decode(&bytes).map_err(StoreError::backend)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        *read = bytes;
        Ok(())
    }

    /// Re-reads the set every [`REFRESH`] until `shutdown`.
    pub async fn refresh(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        clock: replyd_core::Clock,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
            if let Err(e) = self.load(&*store, clock.now()).await {
                tracing::warn!(error = %e, "could not re-read the webhook JWT keys; signing with those read before");
            }
        }
    }
}

/// Adds a key that signs from `not_before` to the store's set (the CLI's
/// `keys generate`), or at once if no key signs now; returns its id and
/// when it signs from.
pub async fn add_key(
    store: &dyn Store,
    now: DateTime<Utc>,
    not_before: DateTime<Utc>,
) -> Result<(String, DateTime<Utc>), StoreError> {
    let added = change(store, |set| {
        let from = if set.signer(now).is_some() {
            not_before
        } else {
            now
        };
        let key = JwtKey::generate(now, from);
        let answer = (key.kid.clone(), key.not_before);
        set.keys.push(key);
        Ok::<_, std::convert::Infallible>(answer)
    })
    .await?;
    Ok(added.unwrap_or_else(|never| match never {}))
}

/// Why a key cannot be retired.
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error("no key has the id {0:?}")]
    Unknown(String),
    #[error("{0:?} is the key that signs now; generate its successor first")]
    Signing(String),
}

/// Removes a key from the store's set (the CLI's `keys retire`); the key
/// that signs at `now` cannot be removed.
pub async fn retire_key(
    store: &dyn Store,
    kid: &str,
    now: DateTime<Utc>,
) -> Result<Result<(), RetireError>, StoreError> {
    change(store, |set| {
        if set.signer(now).is_some_and(|k| k.kid == kid) {
            return Err(RetireError::Signing(kid.to_string()));
        }
        let before = set.keys.len();
        set.keys.retain(|k| k.kid != kid);
        if set.keys.len() == before {
            return Err(RetireError::Unknown(kid.to_string()));
        }
        Ok(())
    })
    .await
}

/// Read, change, write back unless another writer was first (then again).
async fn change<T, E>(
    store: &dyn Store,
    mut edit: impl FnMut(&mut KeySet) -> Result<T, E>,
) -> Result<Result<T, E>, StoreError> {
    loop {
        let old = store.setting(SETTING).await?;
        let mut set = match &old {
            Some(bytes) => KeySet::decode(bytes).map_err(StoreError::backend)?,
            None => KeySet::default(),
        };
        let answer = match edit(&mut set) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        if store
            .replace_setting(SETTING, old.as_deref(), set.encode())
            .await?
        {
            return Ok(Ok(answer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn a_token_verifies_under_its_jwk_and_says_what_it_binds() {
        let key = JwtKey::generate(at(0), at(0));
        let body = br#"{"type":"job.succeeded"}"#;
        let claims = Claims::of(
            "https://replyd.test",
            "https://r.test/h",
            "msg_1",
            "j1",
            "acme",
            body,
            1000,
        );
        let token = key.sign(&claims);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.kid.as_str());
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(payload["exp"], 1300);
        assert_eq!(payload["jti"], "msg_1");
        assert_eq!(payload["sub"], "j1");
        assert_eq!(payload["tenant"], "acme");
        assert_eq!(payload["aud"], "https://r.test/h");
        assert_eq!(
            payload["body_sha256"].as_str().unwrap(),
            hex::encode(Sha256::digest(body))
        );
        // Verify with the public key rebuilt from the JWK alone.
        let jwk = key.jwk();
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &point,
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public.verify(signed.as_bytes(), &sig).expect("verifies");
        let tampered = format!("{}.{}x", parts[0], parts[1]);
        assert!(public.verify(tampered.as_bytes(), &sig).is_err());
    }

    #[test]
    fn the_set_round_trips_and_the_newest_active_key_signs() {
        let old = JwtKey::generate(at(0), at(0));
        let next = JwtKey::generate(at(100), at(700));
        let (old_kid, next_kid) = (old.kid.clone(), next.kid.clone());
        assert_ne!(old_kid, next_kid);
        let set = KeySet::decode(
            &KeySet {
                keys: vec![old, next],
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(set.keys.len(), 2);
        assert_eq!(set.signer(at(699)).unwrap().kid, old_kid, "not yet");
        assert_eq!(set.signer(at(700)).unwrap().kid, next_kid);
        assert!(set.signer(at(-1)).is_none());
        let jwks = set.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(
            kids,
            [old_kid.as_str(), next_kid.as_str()],
            "both published"
        );
        assert!(KeySet::decode(b"[{\"kid\":1}]").is_err());
    }
}
