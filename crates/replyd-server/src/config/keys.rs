//! `[[api_keys]]`: who may call, as which tenant and role.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Worker,
    Admin,
    /// Reads jobs and deliveries, changes nothing: a read-only console
    /// user (and what a portal link grants).
    Viewer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The bearer token.
    pub key: String,
    /// The tenant whose jobs the key sees; `"*"` (admin and worker keys
    /// only) sees every tenant's.
    pub tenant: String,
    pub role: Role,
}

/// Checks the keys: long enough, each once, with a tenant; `"*"` (every
/// tenant) is for worker and admin keys only.
pub fn check(keys: &[ApiKey]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for k in keys {
        if k.key.len() < 8 {
            return Err(format!(
                "api key of tenant {:?} is shorter than 8 characters",
                k.tenant
            ));
        }
        if !seen.insert(&k.key) {
            return Err(format!("api key of tenant {:?} is listed twice", k.tenant));
        }
        if k.tenant.is_empty() {
            return Err("an api key has an empty tenant".into());
        }
        if k.tenant == "*" && k.role == Role::Client {
            return Err("a client key cannot have tenant \"*\"".into());
        }
    }
    Ok(())
}
