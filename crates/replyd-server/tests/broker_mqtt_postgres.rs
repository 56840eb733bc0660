//! The broker contract over MQTT 5 on the PostgreSQL store (a fresh schema
//! per server). Without either service the tests skip, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(all(feature = "mqtt", feature = "postgres"))]

mod common;

use common::mqtt::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Postgres;

include!("common/broker_cases.rs");
