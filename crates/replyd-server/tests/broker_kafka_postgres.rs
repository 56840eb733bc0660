//! API.md §6 over Kafka: the broker contract (`common/broker_cases.rs`)
//! against librdkafka's mock cluster, on the PostgreSQL store.
//!
//! Without PostgreSQL on 127.0.0.1:5432 the tests skip, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(all(feature = "kafka", feature = "postgres"))]

mod common;

use common::kafka::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Postgres;

include!("common/broker_cases.rs");
