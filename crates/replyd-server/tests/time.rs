//! Leases, backoff and TTLs end to end, on a paused clock that the tests move
//! by hand: nothing here sleeps for the durations it tests.

mod common;

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/time_cases.rs");
