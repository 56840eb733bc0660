//! API.md §6 over Kafka: the broker contract (`common/broker_cases.rs`)
//! against librdkafka's mock cluster, on the SQLite store.

#![cfg(feature = "kafka")]

mod common;

use common::kafka::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");
