//! API.md §6 over AWS SNS (topics, read through SQS queues subscribed to
//! them): the broker contract (`common/broker_cases.rs`) against a local
//! SNS and SQS (moto_server on 127.0.0.1:5000), on the SQLite store.
//!
//! Without it the tests skip, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "sns")]

mod common;

use common::sns::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Sqlite;

include!("common/broker_cases.rs");
