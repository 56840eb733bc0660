//! The `api` cases against PostgreSQL (a fresh schema per server).
//! Without a server they skip, saying so, unless `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "postgres")]

mod common;

const BACKEND: common::Backend = common::Backend::Postgres;

include!("common/api_cases.rs");
include!("common/batch_cases.rs");
include!("common/console_cases.rs");
include!("common/trace_cases.rs");
include!("common/flow_cases.rs");
