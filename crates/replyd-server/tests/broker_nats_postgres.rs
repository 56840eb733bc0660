//! API.md §6 over NATS: the broker contract (`common/broker_cases.rs`)
//! against the local NATS server, on the PostgreSQL store.
//!
//! Without a NATS server on 127.0.0.1:4222 the tests skip, saying so,
//! unless `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(all(feature = "nats", feature = "postgres"))]

mod common;

use common::nats::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Postgres;

include!("common/broker_cases.rs");
