//! The plans of PostgreSQL statements whose cost must not depend on table
//! statistics. Measured in pages touched (`EXPLAIN (ANALYZE, BUFFERS)`),
//! which is the work done, not in time.

#![cfg(feature = "postgres")]

use replyd_store::postgres::testing;
use replyd_store::{PgOptions, PgStore};

/// The pages a plan touched in all (its top node's `Buffers:` line).
fn pages(plan: &[String]) -> u64 {
    let line = plan
        .iter()
        .find(|l| l.trim_start().starts_with("Buffers:"))
        .unwrap_or_else(|| panic!("no Buffers line in\n{}", plan.join("\n")));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| matches!(*k, "hit" | "read" | "dirtied" | "written"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// A claim of 256 from an outbox that grew to 20,000 pending deliveries
/// (and 100,000 delivered) since its last ANALYZE touches tens of pages per
/// delivery it returns (here about 6,200: 1,300 to find them, the rest to
/// update the rows and their indexes). Before migration 6 the planner,
/// without fitting statistics, probed every candidate with a BitmapAnd
/// over the channel's whole pending index: about 870,000 pages (6 to 10 s)
/// for one claim.
#[tokio::test]
async fn a_delivery_claim_stays_cheap_without_statistics() {
    let Some(url) = testing::fresh_schema("plans").await else {
        return;
    };
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // A job record as the outbox keeps it (each row's own text).
    let record = testing::job(replyd_core::Tenant::open().0.as_str(), "q")
        .into_record(chrono::Utc::now())
        .0;
    let record = serde_json::to_string(&record).unwrap().replace('\'', "''");
    // Statistics of the empty table, as a new deployment has them.
    sqlx::query("ANALYZE outbox").execute(&pool).await.unwrap();
    for (state, rows, due) in [
        ("delivered", 100_000, "g"),
        ("pending", 20_000, "1000 + g % 1000"),
    ] {
        let sql = format!(
            "INSERT INTO outbox (job_id, tenant, queue, kind, target, job, state, next_at,
                                 created_at, updated_at, channel)
             SELECT gen_random_uuid(), 't', 'q', 'job.succeeded', 'http://127.0.0.1/',
                    '{record}', '{state}', {due}, g, g, 'webhook'
             FROM generate_series(1, {rows}) g"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    // Every fifth job owes a second delivery, behind its first: it is not
    // due until the first is done.
    sqlx::query(
        "INSERT INTO outbox (job_id, tenant, queue, kind, target, job, state, next_at,
                             created_at, updated_at, channel)
         SELECT job_id, tenant, queue, 'job.canceled', target, job, 'pending', next_at, 0, 0, channel
         FROM outbox WHERE state = 'pending' AND id % 5 = 0",
    )
    .execute(&pool)
    .await
    .unwrap();
    let plan = testing::explain_claim(&url, "webhook", 2_000, 256)
        .await
        .unwrap();
    let text = plan.join("\n");
    assert!(text.contains("rows=256 loops=1"), "claims 256:\n{text}");
    let touched = pages(&plan);
    assert!(
        touched < 15_000,
        "a claim of 256 touched {touched} pages:\n{text}"
    );
    // The same claim through the store: the oldest pending of each job only.
    let claimed = replyd_core::Store::claim_deliveries(
        &store,
        replyd_core::outbox::Channel::Webhook,
        chrono::DateTime::from_timestamp_millis(2_000).unwrap(),
        std::time::Duration::from_secs(60),
        256,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 256);
    assert!(
        claimed
            .iter()
            .all(|c| c.delivery.kind == replyd_core::event::EventKind::Succeeded),
        "a job's later delivery waits for its first"
    );
    pool.close().await;
}

/// A garbage sweep over 200,000 jobs of which none has expired reads a
/// few pages of `jobs_expiry`, not the table: without statistics (a table
/// that grew since its last ANALYZE) a bare LIMIT made PostgreSQL scan all
/// 12,500 pages on every sweep.
#[tokio::test]
async fn a_garbage_sweep_walks_the_expiry_index_without_statistics() {
    let Some(url) = testing::fresh_schema("plans").await else {
        return;
    };
    let _store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("ANALYZE jobs").execute(&pool).await.unwrap();
    for (state, expires) in [("queued", "NULL"), ("succeeded", "10000000")] {
        let sql = format!(
            "INSERT INTO jobs (id, tenant, queue, state, run_at, record, input, expires_at)
             SELECT gen_random_uuid(), 't', 'q', '{state}', g, repeat('x', 400), '\\x7b7d',
                    {expires}
             FROM generate_series(1, 100000) g"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    let plan = testing::explain_garbage(&url, 100, 256).await.unwrap();
    let text = plan.join("\n");
    assert!(
        text.contains("jobs_expiry"),
        "walks the expiry index:\n{text}"
    );
    let touched = pages(&plan);
    assert!(touched < 100, "a sweep touched {touched} pages:\n{text}");
    pool.close().await;
}

/// A lease of 100 from 50,000 queued jobs submitted in one millisecond
/// (one `run_at`) reads about the 100 rows it takes. Before migration 9
/// `jobs_ready` ordered by run_at only: every lease sorted all 50,000
/// (about 2,900 pages and a spill to disk, 37 ms; 147 ms each while a
/// drain ran).
#[tokio::test]
async fn a_lease_stops_at_its_limit_when_jobs_share_a_run_at() {
    let Some(url) = testing::fresh_schema("plans").await else {
        return;
    };
    let _store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, tenant, queue, state, run_at, record, input)
         SELECT gen_random_uuid(), 't', 'q', 'queued', 1000, repeat('x', 400), '\\x7b7d'
         FROM generate_series(1, 50000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE jobs").execute(&pool).await.unwrap();
    let plan = testing::explain_lease(&url, "q", 2_000, 100).await.unwrap();
    let text = plan.join("\n");
    assert!(text.contains("rows=100 loops=1"), "takes 100:\n{text}");
    assert!(!text.contains("Sort"), "sorted the queue:\n{text}");
    let touched = pages(&plan);
    assert!(
        touched < 1_000,
        "a lease of 100 touched {touched} pages:\n{text}"
    );
    pool.close().await;
}

/// A tenant's or a queue's page of jobs, when 100,000 newer jobs are
/// another tenant's in another queue (the table grown since its last
/// ANALYZE), reads the few pages of its own keys (`job_keys`, schema v14)
/// and rows: not the newer jobs, which a walk of the primary key would
/// read all of (about 7,000 pages) to reach them.
#[tokio::test]
async fn a_small_tenants_page_walks_its_own_keys() {
    let Some(url) = testing::fresh_schema("plans").await else {
        return;
    };
    let _store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("ANALYZE jobs").execute(&pool).await.unwrap();
    sqlx::query("ANALYZE job_keys")
        .execute(&pool)
        .await
        .unwrap();
    // The small tenant's five jobs sort below every other id: the oldest.
    for sql in [
        "INSERT INTO jobs (id, tenant, queue, state, run_at, record, input)
         SELECT ('00000000-0000-7000-8000-' || lpad(g::text, 12, '0'))::uuid, 'small', 'rare',
                'succeeded', g, repeat('x', 400), '\\x7b7d'
         FROM generate_series(1, 5) g",
        "INSERT INTO jobs (id, tenant, queue, state, run_at, record, input)
         SELECT gen_random_uuid(), 'big', 'q', 'succeeded', g, repeat('x', 400), '\\x7b7d'
         FROM generate_series(1, 100000) g",
        "INSERT INTO job_keys (tenant, queue, id) SELECT tenant, queue, id FROM jobs",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let tenant = replyd_core::store::ListQuery {
        tenant: Some(replyd_core::Tenant("small".into())),
        limit: 10,
        ..Default::default()
    };
    let queue = replyd_core::store::ListQuery {
        queue: Some("rare".into()),
        limit: 10,
        ..Default::default()
    };
    for (q, index) in [(tenant, "job_keys_tenant"), (queue, "job_keys_queue")] {
        let plan = testing::explain_list(&url, &q).await.unwrap();
        let text = plan.join("\n");
        assert!(text.contains("rows=5 loops=1"), "finds 5:\n{text}");
        assert!(text.contains(index), "walks {index}:\n{text}");
        let touched = pages(&plan);
        assert!(
            touched < 100,
            "a page of 5 touched {touched} pages:\n{text}"
        );
    }
    pool.close().await;
}
