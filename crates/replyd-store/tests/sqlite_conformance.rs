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
                    trace: None,
                    priority: 0,
                    head_start: std::time::Duration::ZERO,
                    group: None,
                    run_at: None,
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

/// A pause outlives the store: the reopened store (which keeps the paused
/// queues in memory too) still leases nothing of the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_restart() {
    use replyd_core::Store;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let now = chrono::Utc::now();
    let lease = replyd_core::store::LeaseQuery {
        queue: "q".into(),
        tenant: None,
        worker: "w".into(),
        length: std::time::Duration::from_secs(60),
        max: 10,
        limits: Default::default(),
    };
    {
        let store = SqliteStore::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        let job = replyd_core::NewJob {
            id: replyd_core::JobId::new(),
            tenant: replyd_core::Tenant::open(),
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
            trace: None,
            priority: 0,
            head_start: std::time::Duration::ZERO,
            group: None,
            run_at: None,
        };
        store.submit(job, now).await.unwrap();
        assert!(store.pause_queue("q", true, now).await.unwrap());
    }
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    assert!(store.lease(lease.clone(), now).await.unwrap().is_empty());
    assert_eq!(store.next_run_at("q").await.unwrap(), None);
    assert!(store.pause_queue("q", false, now).await.unwrap());
    assert_eq!(store.lease(lease, now).await.unwrap().len(), 1);
}
