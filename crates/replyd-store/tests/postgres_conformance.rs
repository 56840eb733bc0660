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

/// A plain job of `tenant` on queue `q`.
fn job(tenant: &str) -> replyd_core::job::NewJob {
    testing::job(tenant, "q")
}

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
                (i, store.submit(job(tenant), chrono::Utc::now()).await)
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
    // Alone in its batch, it is refused as it is (not "try again").
    let alone = store.submit(job("bad\0tenant"), chrono::Utc::now()).await;
    assert!(
        matches!(alone, Err(replyd_core::store::StoreError::Backend(_))),
        "{alone:?}"
    );
}

/// A lease scans a queue from past the last job it leased (`leases.rs`,
/// the floor). A job that comes in below the floor (its `run_at` older
/// than the jobs leased since, as a slow submit's is) is still leased,
/// at the latest by the next scan from the start, within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_below_the_lease_floor_is_still_leased() {
    let Some(store) = fresh().await else { return };
    let lease = || replyd_core::store::LeaseQuery {
        queue: "q".into(),
        tenant: None,
        worker: "w".into(),
        length: std::time::Duration::from_secs(60),
        max: 10,
        limits: Default::default(),
    };
    let now = chrono::Utc::now();
    for _ in 0..3 {
        store.submit(job("t"), now).await.unwrap();
    }
    assert_eq!(store.lease(lease(), now).await.unwrap().len(), 3);
    // Submitted "ten seconds ago": below the floor the lease left.
    let late = store
        .submit(job("t"), now - chrono::Duration::seconds(10))
        .await
        .unwrap()
        .job()
        .id;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let got = store.lease(lease(), chrono::Utc::now()).await.unwrap();
        if let Some(l) = got.first() {
            assert_eq!(l.job.id, late);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job below the floor was never leased"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // And a store's view of when the queue's next job is due sees it too.
    assert!(store.next_run_at("q").await.unwrap().is_none());
}

/// A deleted job takes its console key (`job_keys`, schema v14) with it:
/// none is left behind to be walked by the tenant's listings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_leaves_no_key_behind() {
    let Some(url) = testing::fresh_schema("conformance").await else {
        return;
    };
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let now = chrono::Utc::now();
    let kept = store.submit(job("t"), now).await.unwrap().job().id;
    let gone = store.submit(job("t"), now).await.unwrap().job().id;
    use replyd_core::Store;
    store
        .apply(gone, None, replyd_core::job::Command::Cancel, None, now)
        .await
        .unwrap();
    store.delete(gone).await.unwrap();
    let keys: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM job_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, [kept.0]);
    pool.close().await;
}
