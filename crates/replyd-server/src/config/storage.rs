//! `[storage]`: where jobs are kept (a SQLite file, or PostgreSQL).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// The SQLite database file.
    pub sqlite: PathBuf,
    /// PostgreSQL instead of SQLite: many nodes may share it.
    pub postgres_url: Option<String>,
    /// Connections this node keeps to PostgreSQL.
    pub postgres_pool_size: u32,
    /// Seconds a request waits for a free connection before it is answered
    /// 503 (also how quickly requests fail while the database is down).
    pub postgres_acquire_timeout: f64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            sqlite: PathBuf::from("./replyd.db"),
            postgres_url: None,
            postgres_pool_size: 32,
            postgres_acquire_timeout: 2.0,
        }
    }
}

impl Storage {
    pub fn check(&self) -> Result<(), String> {
        if self.postgres_url.is_some() && !cfg!(feature = "postgres") {
            return Err(
                "this replyd was built without PostgreSQL: rebuild with `--features postgres`"
                    .into(),
            );
        }
        if !(1..=1000).contains(&self.postgres_pool_size) {
            return Err("storage.postgres_pool_size must be between 1 and 1000".into());
        }
        if !(self.postgres_acquire_timeout > 0.0 && self.postgres_acquire_timeout <= 600.0) {
            return Err("storage.postgres_acquire_timeout must be in (0, 600] seconds".into());
        }
        Ok(())
    }
}
