//! API.md §3 (Server-Sent Events) and §4 (WebSocket) against a real server
//! on a real socket, with the SQLite store.

mod common;

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/stream_cases.rs");
