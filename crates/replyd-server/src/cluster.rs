//! Work that one node of a cluster does at a time, and how far it has
//! come: a lease and a cursor kept in the store's settings (shared by
//! every node on PostgreSQL; trivially this node's on SQLite). The
//! operational webhook and the span exporter's reading of the event log
//! use them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use replyd_core::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// A lease on one piece of work: held by one node until it lapses.
#[derive(Debug)]
pub struct Singleton {
    setting: &'static str,
    me: String,
    lease_for: Duration,
}

#[derive(Serialize, Deserialize)]
struct Lease {
    node: String,
    until: DateTime<Utc>,
}

impl Singleton {
    /// The lease kept in setting `setting`, lasting `lease_for` (renewed
    /// when half has passed).
    pub fn new(setting: &'static str, lease_for: Duration) -> Singleton {
        Singleton {
            setting,
            me: uuid::Uuid::new_v4().to_string(),
            lease_for,
        }
    }

    /// Takes or renews the lease; whether this node holds it.
    pub async fn hold(&self, store: &dyn Store, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let old = store.setting(self.setting).await?;
        let current: Option<Lease> = old.as_deref().and_then(|b| serde_json::from_slice(b).ok());
        let half = chrono::Duration::from_std(self.lease_for / 2).unwrap_or_default();
        match &current {
            Some(l) if l.node == self.me && l.until - now > half => return Ok(true),
            Some(l) if l.node != self.me && l.until > now => return Ok(false),
            _ => {}
        }
        let new = Lease {
            node: self.me.clone(),
            until: now + chrono::Duration::from_std(self.lease_for).unwrap_or_default(),
        };
        let bytes = serde_json::to_vec(&new).unwrap_or_default();
        store
            .replace_setting(self.setting, old.as_deref(), bytes)
            .await
    }
}

/// A position (an id) kept in a setting, moved only from the value last
/// read, so that a node whose lease lapsed cannot move it back.
#[derive(Debug, Clone, Copy)]
pub struct Cursor(pub &'static str);

/// A cursor's value and its stored bytes (what a move must find).
pub type Position = (i64, Vec<u8>);

impl Cursor {
    /// Its value, or `None` if it was never set.
    pub async fn get(self, store: &dyn Store) -> Result<Option<Position>, StoreError> {
        Ok(store
            .setting(self.0)
            .await?
            .map(|bytes| (parse(&bytes), bytes)))
    }

    /// Its value, set to `init` first if it was never set.
    pub async fn get_or_init(self, store: &dyn Store, init: i64) -> Result<Position, StoreError> {
        let kept = store
            .setting_or_init(self.0, init.to_string().into_bytes())
            .await?;
        Ok((parse(&kept), kept))
    }

    /// Moves it from `from` to `to`; false if another node moved it first.
    pub async fn advance(
        self,
        store: &dyn Store,
        from: &Position,
        to: i64,
    ) -> Result<bool, StoreError> {
        store
            .replace_setting(self.0, Some(&from.1), to.to_string().into_bytes())
            .await
    }
}

fn parse(bytes: &[u8]) -> i64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
