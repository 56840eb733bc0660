//! API.md §6 over MQTT 5: the broker contract (`common/broker_cases.rs`)
//! against the local Mosquitto, on the SQLite store.
//!
//! Without an MQTT broker on 127.0.0.1:1883 the tests skip, saying so,
//! unless `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "mqtt")]

mod common;

use common::mqtt::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");
