//! `replyd bench --scenarios pg --database-url URL`: the submit and
//! end-to-end scenarios on PostgreSQL with 1 and 3 nodes (`--nodes`), each
//! against the database's own ceiling, measured in the same run: a bare
//! client executing the statements replyd executes, at the same
//! concurrency, with nothing else around them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use replyd_core::job::NewJob;
use replyd_core::{JobId, Tenant};
use replyd_store::postgres::testing::fresh_schema_at;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use crate::BenchArgs;
use crate::e2e::{drain_run, e2e_run};
use crate::harness::{Replyd, Storage, load, report, start_replyd_with};

/// The pg scenario; its end to end figures, a row per node count.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Vec<crate::peers::PgFigures>> {
    let url = args
        .database_url
        .as_deref()
        .context("the pg scenario needs --database-url")?;
    let admin = PgPool::connect(url).await?;
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&admin)
        .await?;
    // Encryption costs both ends CPU: on this machine's loopback TLS took
    // 7-24 % off the figures (BENCHMARKS.md); the peers' PostgreSQL has
    // none, so a comparison with them wants `?sslmode=disable`.
    let tls: bool = sqlx::query_scalar(
        "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
    )
    .fetch_one(&admin)
    .await?;
    println!(
        "\npg: PostgreSQL, synchronous_commit = {sync}, {} clients, {} connections to it in all, {}",
        args.clients,
        args.pg_connections,
        if tls {
            "over TLS (`?sslmode=disable` for the peers' terms)"
        } else {
            "unencrypted"
        }
    );
    let mut figures = Vec::new();
    for &nodes in &args.nodes {
        submit(args, url, nodes).await?;
        figures.push(e2e(args, url, nodes).await?);
    }
    // The measurements' schemas go with the scenario: a bench run leaves
    // nothing in the database it was given.
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, 'bench_')",
    )
    .fetch_all(&admin)
    .await?;
    for s in schemas {
        let drop = format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE");
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&admin)
            .await?;
    }
    Ok(figures)
}

/// A fresh schema of `url`'s database; its URL.
async fn schema(url: &str) -> anyhow::Result<String> {
    fresh_schema_at(url, "bench")
        .await
        .context("no PostgreSQL answered at the bench URL")
}

async fn nodes_on(
    args: &BenchArgs,
    url: &str,
    n: usize,
) -> anyhow::Result<(Vec<Replyd>, Vec<SocketAddr>)> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let pool = node_pool(args, n);
        nodes.push(
            start_replyd_with(&Storage::Postgres(url.to_string()), |c| {
                c.storage.postgres_pool_size = pool;
            })
            .await?,
        );
    }
    let addrs = nodes.iter().map(|n| n.addr).collect();
    Ok((nodes, addrs))
}

async fn submit(args: &BenchArgs, url: &str, n: usize) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.duration);
    println!("  submit, {n} node(s), {:.0} s each:", args.duration);
    let db = schema(url).await?;
    let (nodes, addrs) = nodes_on(args, &db, n).await?;
    load(&addrs, args.clients, Duration::from_secs(1)).await?;
    let replyd = load(&addrs, args.clients, duration).await?;
    for node in nodes {
        node.stop().await;
    }
    report("replyd on PostgreSQL", &replyd);
    let conns = db_concurrency(args, n);
    let ceiling = insert_ceiling(&db, conns, duration).await?;
    println!(
        "  {:<34} {ceiling:>9.0} jobs/s   (the same rows, {CEILING_BATCH} jobs a transaction, {conns} connections)",
        "bare client (ceiling)"
    );
    println!("  ratio to ceiling: {:.2}", replyd.rate() / ceiling);
    Ok(())
}

async fn e2e(args: &BenchArgs, url: &str, n: usize) -> anyhow::Result<crate::peers::PgFigures> {
    println!(
        "  e2e, {n} node(s): {} jobs, {} workers (batch {}):",
        args.jobs, args.workers, args.batch
    );
    let db = schema(url).await?;
    let (nodes, addrs) = nodes_on(args, &db, n).await?;
    let run = e2e_run(args, &addrs).await?;
    for node in nodes {
        node.stop().await;
    }
    let rate = run.rate();
    println!(
        "  {:<34} {rate:>9.0} jobs/s   ({} in {:.2} s; {})",
        "replyd on PostgreSQL",
        run.done,
        run.elapsed.as_secs_f64(),
        run.submit_line()
    );
    // The peers' shape (pg-boss's e2e): the jobs enqueued first, then the
    // workers' drain timed; a fresh schema.
    let db2 = schema(url).await?;
    let (nodes, addrs) = nodes_on(args, &db2, n).await?;
    let drained = drain_run(args, &addrs, args.jobs).await;
    for node in nodes {
        node.stop().await;
    }
    let drained = args.jobs as f64 / drained?.as_secs_f64();
    println!(
        "  {:<34} {drained:>9.0} jobs/s   (enqueued first, then the workers' drain: pg-boss's e2e shape)",
        "replyd on PostgreSQL, drain"
    );
    let ceiling = e2e_ceiling(&db, args, db_concurrency(args, n)).await?;
    println!(
        "  {:<34} {ceiling:>9.0} jobs/s   (batched insert, set-based claim and complete)",
        "bare client (ceiling)"
    );
    println!("  ratio to ceiling: {:.2}", rate / ceiling);
    Ok(crate::peers::PgFigures {
        nodes: n,
        e2e: rate,
        drain: drained,
    })
}

/// Each of `n` nodes' pool: `--pg-connections` shared.
fn node_pool(args: &BenchArgs, n: usize) -> u32 {
    (args.pg_connections / n as u32).max(4)
}

/// The database connections `n` nodes use at most: the ceiling's client
/// gets as many.
fn db_concurrency(args: &BenchArgs, n: usize) -> usize {
    n * node_pool(args, n) as usize
}

/// A job row and its text as replyd writes them.
fn job_row() -> (JobId, String) {
    let (job, _) = NewJob {
        id: JobId::new(),
        tenant: Tenant::open(),
        queue: "bench".into(),
        input: bytes::Bytes::from_static(b"{\"n\":1}"),
        max_attempts: 1,
        timeout: Duration::from_secs(60),
        ttl: Duration::from_secs(86_400),
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
    }
    .into_record(chrono::Utc::now());
    (job.id, serde_json::to_string(&job).unwrap_or_default())
}

/// Positions for events of the current transaction, as replyd writes
/// them (`replyd-store`'s `postgres/events.rs`): `$n` ordinals from 0.
const EVENTS: &str = "INSERT INTO events (position, job_id, kind, at, job)
     SELECT pg_current_xact_id()::text::bigint * 65536 + (SELECT shift FROM event_origin)
            + e.n - 1, e.job_id, $2, $3, e.job
     FROM unnest($1::uuid[], $4::text[]) WITH ORDINALITY AS e(job_id, job, n)";

/// Appends one event of `kind` for each of `ids` (with its record).
async fn append<T: AsRef<str>>(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ids: &[uuid::Uuid],
    kind: &str,
    now: i64,
    texts: &[T],
) -> anyhow::Result<()> {
    let texts: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
    sqlx::query(EVENTS)
        .bind(ids)
        .bind(kind)
        .bind(now)
        .bind(&texts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A well-written client's submit: `batch` jobs and their events in one
/// transaction, a statement each.
async fn insert_jobs(pool: &PgPool, batch: usize) -> anyhow::Result<()> {
    let rows: Vec<(JobId, String)> = (0..batch).map(|_| job_row()).collect();
    let ids: Vec<uuid::Uuid> = rows.iter().map(|(id, _)| id.0).collect();
    let texts: Vec<&str> = rows.iter().map(|(_, t)| t.as_str()).collect();
    let now = chrono::Utc::now().timestamp_millis();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "WITH created AS (
             INSERT INTO jobs (id, tenant, queue, state, run_at, input, record)
             SELECT id, 'default', 'bench', 'queued', $2, '\\x7b226e223a317d', record
             FROM unnest($1::uuid[], $3::text[]) AS j(id, record)
             RETURNING tenant, queue, id
         )
         INSERT INTO job_keys (tenant, queue, id) SELECT tenant, queue, id FROM created",
    )
    .bind(&ids)
    .bind(now)
    .bind(&texts)
    .execute(&mut *tx)
    .await?;
    append(&mut tx, &ids, "job.accepted", now, &texts).await?;
    tx.commit().await?;
    Ok(())
}

async fn pool(url: &str, size: usize) -> anyhow::Result<PgPool> {
    // Migrate the fresh schema the way a node would.
    replyd_store::PgStore::connect(url, Default::default()).await?;
    Ok(PgPoolOptions::new()
        .max_connections(size as u32)
        .connect(url)
        .await?)
}

/// The bare client's submit rate: `clients` callers, each handing its job
/// to a batch of [`CEILING_BATCH`] (one transaction) as replyd's group
/// commit does, on as many connections as the nodes have.
async fn insert_ceiling(url: &str, clients: usize, duration: Duration) -> anyhow::Result<f64> {
    let pool = pool(url, clients).await?;
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (pool, done) = (pool.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                insert_jobs(&pool, CEILING_BATCH).await?;
                done.fetch_add(CEILING_BATCH, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Jobs per transaction of the bare client.
const CEILING_BATCH: usize = 100;

/// A well-written client end to end, set-based as replyd's statements
/// are: jobs inserted [`CEILING_BATCH`] to a transaction, claimed
/// `--batch` at a time (`UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP
/// LOCKED) RETURNING`), completed a claim at a time, each step with its
/// events.
async fn e2e_ceiling(url: &str, args: &BenchArgs, conns: usize) -> anyhow::Result<f64> {
    let n = args.jobs;
    let pool = pool(url, conns).await?;
    let submitted = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..(conns / 2).max(1) {
        let (pool, submitted) = (pool.clone(), submitted.clone());
        tasks.push(tokio::spawn(async move {
            while submitted.fetch_add(CEILING_BATCH, Ordering::Relaxed) < n {
                insert_jobs(&pool, CEILING_BATCH).await?;
            }
            anyhow::Ok(())
        }));
    }
    for _ in 0..args.workers {
        let (pool, completed, batch) = (pool.clone(), completed.clone(), i64::from(args.batch));
        tasks.push(tokio::spawn(async move {
            while completed.load(Ordering::Relaxed) < n {
                let now = chrono::Utc::now().timestamp_millis();
                let mut tx = pool.begin().await?;
                let rows = sqlx::query(
                    "UPDATE jobs SET state = 'running', lease_expires_at = $3
                     WHERE id IN (SELECT id FROM jobs WHERE queue = 'bench' AND state = 'queued'
                                    AND run_at <= $1 ORDER BY run_at, id LIMIT $2
                                  FOR UPDATE SKIP LOCKED)
                     RETURNING id, record, input",
                )
                .bind(now)
                .bind(batch)
                .bind(now + 120_000)
                .fetch_all(&mut *tx)
                .await?;
                let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get("id")).collect();
                let texts: Vec<String> = rows.iter().map(|r| r.get("record")).collect();
                if !ids.is_empty() {
                    append(&mut tx, &ids, "job.started", now, &texts).await?;
                }
                tx.commit().await?;
                if ids.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL,
                                     expires_at = $2, record = u.record
                     FROM unnest($1::uuid[], $3::text[]) AS u(id, record)
                     WHERE jobs.id = u.id",
                )
                .bind(&ids)
                .bind(now + 86_400_000)
                .bind(&texts)
                .execute(&mut *tx)
                .await?;
                append(&mut tx, &ids, "job.succeeded", now, &texts).await?;
                sqlx::query(
                    "INSERT INTO job_outputs (job_id, content_type, body)
                     SELECT id, 'application/json', '\\x6e756c6c' FROM unnest($1::uuid[]) AS u(id)",
                )
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                completed.fetch_add(ids.len(), Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(completed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
