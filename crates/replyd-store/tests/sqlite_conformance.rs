//! The conformance suite against the embedded SQLite store, each test on a
//! fresh database file.

use std::sync::Arc;

use replyd_store::{SqliteOptions, SqliteStore};

async fn fresh() -> Option<Arc<dyn replyd_core::Store>> {
    // The directory lives as long as the test process; each store gets its own.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    Some(Arc::new(
        SqliteStore::open(dir.path().join("replyd.db"), SqliteOptions::default())
            .await
            .unwrap(),
    ))
}

replyd_store::conformance_tests!(fresh().await);

/// Concurrent writes share commits: far fewer transactions (and fsyncs) than
/// operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_group_committed() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("g.db"), SqliteOptions::default())
        .await
        .unwrap();
    let before = store.stats().commits.load(Ordering::Relaxed);
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let job = replyd_core::NewJob {
                    id: replyd_core::JobId::new(),
                    tenant: replyd_core::Tenant::open(),
                    queue: "q".into(),
                    input: bytes::Bytes::from_static(b"{}"),
                    max_attempts: 1,
                    timeout: std::time::Duration::from_secs(1),
                    ttl: std::time::Duration::from_secs(1),
                    webhook: None,
                    reply: None,
                    idempotency_key: None,
                    request_hash: None,
                    output_type: None,
                };
                replyd_core::Store::submit(&store, job, chrono::Utc::now())
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let commits = store.stats().commits.load(Ordering::Relaxed) - before;
    assert!(commits >= 1);
    assert!(
        commits <= 100,
        "400 concurrent submissions took {commits} commits: group commit is not batching"
    );
}
