//! Dead letters as a canary, failing endpoints paused and resumed,
//! operational events (SSE and the operational webhook) end to end: a real
//! server, a real receiver on 127.0.0.1, the SQLite store.

mod common;

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/operations_cases.rs");
