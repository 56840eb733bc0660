//! The conformance suite against PostgreSQL, each test in a fresh schema of
//! `REPLYD_TEST_DATABASE_URL` (default: the local `test` database). Without
//! a server the tests skip, saying so, unless `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "postgres")]

use std::sync::Arc;

use replyd_store::postgres::testing;
use replyd_store::{PgOptions, PgStore};

async fn fresh() -> Option<Arc<dyn replyd_core::Store>> {
    let url = testing::fresh_schema("conformance").await?;
    Some(Arc::new(
        PgStore::connect(&url, PgOptions::default()).await.unwrap(),
    ))
}

replyd_store::conformance_tests!(fresh().await);
