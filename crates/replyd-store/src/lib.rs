//! replyd's stores. [`sqlite::SqliteStore`] is the embedded default;
//! `postgres::PgStore` (feature `postgres`) lets many nodes share one
//! database; [`conformance`] is the suite every store must pass.

pub mod conformance;
mod listing;
#[cfg(feature = "postgres")]
pub mod postgres;
mod record;
pub mod sqlite;
mod streams;

pub use sqlite::{SqliteOptions, SqliteStore, WriterStats};

#[cfg(feature = "postgres")]
pub use postgres::{PgOptions, PgStore};
