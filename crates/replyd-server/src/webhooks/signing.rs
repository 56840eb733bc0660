//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>):
//! `webhook-id`, `webhook-timestamp` and `webhook-signature` headers, the
//! signature being `v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
//! under a `whsec_<base64 key>` secret. During a rotation several secrets
//! sign at once: the header then carries one signature per secret,
//! space-separated, and a receiver accepts any it knows.
//!
//! The asymmetric scheme `v1a` signs the same content with Ed25519 under a
//! `whsk_<base64 of a 32-byte seed>` key; receivers verify with its public
//! key (`whpk_<base64>`), so they hold nothing that could forge a message.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A `whsec_` signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why a string is not a signing secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret is whsec_ followed by base64 of 24 to 64 bytes")]
pub struct BadSecret;

impl std::str::FromStr for Secret {
    type Err = BadSecret;

    fn from_str(s: &str) -> Result<Secret, BadSecret> {
        crate::config::webhooks::secret_bytes(s)
            .map(Secret)
            .ok_or(BadSecret)
    }
}

impl Secret {
    /// A fresh random secret.
    pub fn generate() -> Secret {
        Secret(rand::random::<[u8; 32]>().to_vec())
    }

    /// The `whsec_…` form.
    pub fn expose(&self) -> String {
        format!("whsec_{}", STANDARD.encode(&self.0))
    }

    /// `v1,<signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// A `whsk_` Ed25519 signing key (`v1a`).
pub struct SigningKey {
    pair: ring::signature::Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

/// Why a string is not a signing key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an Ed25519 webhook key is whsk_ followed by base64 of a 32-byte seed")]
pub struct BadKey;

impl std::str::FromStr for SigningKey {
    type Err = BadKey;

    fn from_str(s: &str) -> Result<SigningKey, BadKey> {
        let seed = crate::config::webhooks::signing_seed(s).ok_or(BadKey)?;
        let pair =
            ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| BadKey)?;
        Ok(SigningKey { pair })
    }
}

impl SigningKey {
    /// The public key receivers verify with: `whpk_<base64>`.
    pub fn public_key(&self) -> String {
        use ring::signature::KeyPair;
        format!("whpk_{}", STANDARD.encode(self.pair.public_key().as_ref()))
    }

    /// `v1a,<signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut content = Vec::with_capacity(id.len() + body.len() + 24);
        content.extend_from_slice(id.as_bytes());
        content.push(b'.');
        content.extend_from_slice(timestamp.to_string().as_bytes());
        content.push(b'.');
        content.extend_from_slice(body);
        format!("v1a,{}", STANDARD.encode(self.pair.sign(&content).as_ref()))
    }
}

/// The `webhook-signature` header: one signature per secret, then one per
/// Ed25519 key.
pub fn signature_header(
    secrets: &[Secret],
    keys: &[std::sync::Arc<SigningKey>],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .chain(keys.iter().map(|k| k.sign(id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specs_example_signature() {
        // The example of the Standard Webhooks specification.
        let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let header = signature_header(&[a.clone(), b.clone()], &[], "msg_1", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [a.sign("msg_1", 1, b"{}"), b.sign("msg_1", 1, b"{}")]
        );
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn secrets_parse_strictly_and_round_trip() {
        let s = Secret::generate();
        assert_eq!(s.expose().parse::<Secret>().unwrap(), s);
        for bad in ["", "whsec_", "secret", "whsec_!!!", "whsec_c2hvcnQ="] {
            assert!(bad.parse::<Secret>().is_err(), "{bad}");
        }
        assert_eq!(format!("{s:?}"), "Secret(…)", "never printed");
    }
}
