//! The conformance suite against the embedded SQLite store, each test on a
//! fresh database file.

use std::sync::Arc;

use replyd_store::{SqliteOptions, SqliteStore};

async fn fresh() -> Arc<dyn replyd_core::Store> {
    // The directory lives as long as the test process; each store gets its own.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    Arc::new(
        SqliteStore::open(dir.path().join("replyd.db"), SqliteOptions::default())
            .await
            .unwrap(),
    )
}

replyd_store::conformance_tests!(fresh().await);
