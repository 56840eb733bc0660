//! The broker contract over RabbitMQ on the PostgreSQL store (a fresh
//! schema per server). Without either service the tests skip, saying so,
//! unless `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(all(feature = "amqp", feature = "postgres"))]

mod common;

use common::amqp::{EXECUTOR, cleanup, client, section};

const BACKEND: common::Backend = common::Backend::Postgres;

include!("common/broker_cases.rs");
