//! API.md §1 and §5 against a real server on a real socket.

mod common;

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/api_cases.rs");
include!("common/batch_cases.rs");
include!("common/console_cases.rs");
include!("common/trace_cases.rs");
include!("common/flow_cases.rs");
