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

/// Submits share transactions (`postgres/submits.rs`): one the database
/// refuses (text holding a NUL) fails alone, and the ones committed with
/// it in a batch are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_the_database_refuses_fails_alone() {
    let Some(store) = fresh().await else { return };
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let tenant = if i == 17 { "bad\0tenant" } else { "t" };
                let job = replyd_core::job::NewJob {
                    id: replyd_core::JobId::new(),
                    tenant: replyd_core::Tenant(tenant.into()),
                    queue: "q".into(),
                    input: bytes::Bytes::from_static(b"{}"),
                    max_attempts: 1,
                    timeout: std::time::Duration::from_secs(60),
                    ttl: std::time::Duration::from_secs(60),
                    webhook: None,
                    reply: None,
                    idempotency_key: None,
                    request_hash: None,
                    output_type: None,
                };
                (i, store.submit(job, chrono::Utc::now()).await)
            })
        })
        .collect();
    let mut kept = Vec::new();
    for task in tasks {
        let (i, answer) = task.await.unwrap();
        match (i, answer) {
            (17, Err(replyd_core::store::StoreError::Backend(_))) => {}
            (17, other) => panic!("the refused job was answered {other:?}"),
            (_, Ok(s)) => kept.push(s.job().id),
            (i, Err(e)) => panic!("job {i} failed with the refused one: {e}"),
        }
    }
    assert_eq!(kept.len(), 63);
    for id in kept {
        assert!(store.get(id).await.unwrap().is_some(), "{id} was not kept");
    }
}
