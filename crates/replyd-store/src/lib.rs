//! replyd's stores. [`sqlite::SqliteStore`] is the embedded default;
//! [`conformance`] is the suite every store must pass.

pub mod conformance;
pub mod migrations;
pub mod sqlite;

pub use sqlite::{SqliteOptions, SqliteStore, WriterStats};
