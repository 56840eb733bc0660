//! API.md §6 over AWS SQS: the broker contract (`common/broker_cases.rs`)
//! against a local SQS (moto_server on 127.0.0.1:5000), on the PostgreSQL
//! store.
//!
//! Without it the tests skip, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(all(feature = "sqs", feature = "postgres"))]

mod common;

use common::sqs::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Postgres;

include!("common/broker_cases.rs");
