//! Test support shared by this crate's and the server's test suites.

/// The plan of a delivery claim (`claim_deliveries`' own statement) as
/// PostgreSQL ran it, `EXPLAIN (ANALYZE, BUFFERS)` a line each, in a
/// transaction rolled back after.
pub async fn explain_claim(
    url: &str,
    channel: &str,
    now_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<String>> {
    let pool = sqlx::PgPool::connect(url).await?;
    let mut tx = pool.begin().await?;
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", super::outbox::claim_sql());
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(now_ms)
        .bind(limit)
        .bind(now_ms + 60_000)
        .bind(channel)
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    pool.close().await;
    Ok(plan)
}

/// The plan of a garbage sweep's selection (`collect_garbage`' own
/// statement), as [`explain_claim`] gives it.
pub async fn explain_garbage(url: &str, now_ms: i64, limit: i64) -> sqlx::Result<Vec<String>> {
    let pool = sqlx::PgPool::connect(url).await?;
    let mut tx = pool.begin().await?;
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", super::garbage::GARBAGE);
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    pool.close().await;
    Ok(plan)
}

/// The plan of a lease's selection (`lease`'s own statement) of `limit`
/// jobs of `queue`, as [`explain_claim`] gives it.
pub async fn explain_lease(
    url: &str,
    queue: &str,
    now_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<String>> {
    let pool = sqlx::PgPool::connect(url).await?;
    let mut tx = pool.begin().await?;
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", super::leases::LEASE);
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(queue)
        .bind(now_ms)
        .bind(None::<&str>)
        .bind(limit)
        .bind(i64::MIN)
        .bind(uuid::Uuid::nil())
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    pool.close().await;
    Ok(plan)
}

/// The plan of a listing (`list`'s own statement for `q`), as
/// [`explain_claim`] gives it.
pub async fn explain_list(
    url: &str,
    q: &replyd_core::store::ListQuery,
) -> sqlx::Result<Vec<String>> {
    let pool = sqlx::PgPool::connect(url).await?;
    let mut tx = pool.begin().await?;
    let (mut b, _) = super::jobs::list_query("EXPLAIN (ANALYZE, BUFFERS) ", q);
    let plan: Vec<String> = b.build_query_scalar().fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    pool.close().await;
    Ok(plan)
}

/// Migrates the schema of `url` up to `version` only, as an older
/// replyd left it (tests of an upgrade).
pub async fn migrate_schema_to(url: &str, version: i64) -> replyd_core::store::StoreResult<()> {
    let pool = sqlx::PgPool::connect(url)
        .await
        .map_err(replyd_core::store::StoreError::backend)?;
    super::schema::migrate_to(&pool, version).await?;
    pool.close().await;
    Ok(())
}

/// A plain job of `tenant` on `queue` (input `{}`, one attempt, kept an
/// hour): what the PostgreSQL store's tests submit.
pub fn job(tenant: &str, queue: &str) -> replyd_core::job::NewJob {
    replyd_core::job::NewJob::plain(replyd_core::Tenant(tenant.into()), queue)
}

/// The server tests run against: `REPLYD_TEST_DATABASE_URL`, by default
/// the local `test` database.
pub fn url() -> String {
    std::env::var("REPLYD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A URL for a fresh, empty schema (its `search_path`), so that tests
/// running at once do not see each other's rows. `None` (with a message
/// saying why) when no PostgreSQL answers; with
/// `REPLYD_REQUIRE_SERVICES=1` that panics instead. Schemas of earlier
/// runs with the same `prefix` are dropped once per process.
pub async fn fresh_schema(prefix: &'static str) -> Option<String> {
    fresh_schema_at(&url(), prefix).await
}

/// As [`fresh_schema`], in the database at `base`.
pub async fn fresh_schema_at(base: &str, prefix: &'static str) -> Option<String> {
    let base = base.to_string();
    let admin = match sqlx::PgPool::connect(&base).await {
        Ok(p) => p,
        Err(e) => {
            replyd_testkit::skip(
                &format!("PostgreSQL at {base} ({e})"),
                "run scripts/test, or start PostgreSQL (REPLYD_TEST_DATABASE_URL names another)",
            );
            return None;
        }
    };
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let old: Vec<String> = sqlx::query_scalar(
                "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)",
            )
            .bind(format!("{prefix}_"))
            .fetch_all(&admin)
            .await
            .unwrap_or_default();
            for s in old {
                let drop = format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE");
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
            }
        })
        .await;
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&admin)
        .await
        .expect("create a test schema");
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}
