//! API.md §2 (webhooks) end to end: a real server, a real receiver on
//! 127.0.0.1, the SQLite store.

mod common;

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/webhook_cases.rs");
