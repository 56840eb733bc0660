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
use crate::harness::{Replyd, Storage, load, report, start_replyd};

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let url = args
        .database_url
        .as_deref()
        .context("the pg scenario needs --database-url")?;
    let admin = PgPool::connect(url).await?;
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&admin)
        .await?;
    println!(
        "\npg: PostgreSQL, synchronous_commit = {sync}, {} clients",
        args.clients
    );
    for &nodes in &args.nodes {
        submit(args, url, nodes).await?;
        e2e(args, url, nodes).await?;
    }
    Ok(())
}

/// A fresh schema of `url`'s database; its URL.
async fn schema(url: &str) -> anyhow::Result<String> {
    fresh_schema_at(url, "bench")
        .await
        .context("no PostgreSQL answered at the bench URL")
}

async fn nodes_on(url: &str, n: usize) -> anyhow::Result<(Vec<Replyd>, Vec<SocketAddr>)> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(start_replyd(&Storage::Postgres(url.to_string())).await?);
    }
    let addrs = nodes.iter().map(|n| n.addr).collect();
    Ok((nodes, addrs))
}

async fn submit(args: &BenchArgs, url: &str, n: usize) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.duration);
    println!("  submit, {n} node(s), {:.0} s each:", args.duration);
    let db = schema(url).await?;
    let (nodes, addrs) = nodes_on(&db, n).await?;
    load(&addrs, args.clients, Duration::from_secs(1)).await?;
    let replyd = load(&addrs, args.clients, duration).await?;
    for node in nodes {
        node.stop().await;
    }
    report("replyd on PostgreSQL", &replyd);
    let conns = db_concurrency(n);
    let ceiling = insert_ceiling(&db, conns, duration).await?;
    println!(
        "  {:<34} {ceiling:>9.0} jobs/s   (the same INSERTs, a transaction per job, {conns} connections)",
        "bare client (ceiling)"
    );
    println!("  ratio to ceiling: {:.2}", replyd.rate() / ceiling);
    Ok(())
}

async fn e2e(args: &BenchArgs, url: &str, n: usize) -> anyhow::Result<()> {
    println!(
        "  e2e, {n} node(s): {} jobs, {} workers (batch {}):",
        args.jobs, args.workers, args.batch
    );
    let db = schema(url).await?;
    let (nodes, addrs) = nodes_on(&db, n).await?;
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
    let (nodes, addrs) = nodes_on(&db2, n).await?;
    let drained = drain_run(args, &addrs, args.jobs).await;
    for node in nodes {
        node.stop().await;
    }
    let drained = args.jobs as f64 / drained?.as_secs_f64();
    println!(
        "  {:<34} {drained:>9.0} jobs/s   (enqueued first, then the workers' drain: pg-boss's e2e shape)",
        "replyd on PostgreSQL, drain"
    );
    let ceiling = e2e_ceiling(&db, args, db_concurrency(n)).await?;
    println!(
        "  {:<34} {ceiling:>9.0} jobs/s   (insert, SKIP LOCKED claim, complete)",
        "bare client (ceiling)"
    );
    println!("  ratio to ceiling: {:.2}", rate / ceiling);
    Ok(())
}

/// The database connections `n` nodes use at most: the ceiling's client
/// gets as many.
fn db_concurrency(n: usize) -> usize {
    n * replyd_store::PgOptions::default().max_connections as usize
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
    }
    .into_record(chrono::Utc::now());
    (job.id, serde_json::to_string(&job).unwrap_or_default())
}

/// replyd's submit statements (`PgStore::submit`), one transaction a job.
async fn insert_job(pool: &PgPool) -> anyhow::Result<()> {
    let (id, text) = job_row();
    let now = chrono::Utc::now().timestamp_millis();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO jobs (id, tenant, queue, state, run_at, idempotency_key, input, record)
         VALUES ($1, 'default', 'bench', 'queued', $2, NULL, $3, $4)
         ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(id.0)
    .bind(now)
    .bind(&b"{\"n\":1}"[..])
    .bind(&text)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO events (job_id, kind, at, job) VALUES ($1, 'job.accepted', $2, $3)")
        .bind(id.0)
        .bind(now)
        .bind(&text)
        .execute(&mut *tx)
        .await?;
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
                insert_job(&pool).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// replyd's statements for one job end to end: the submit, a SKIP LOCKED
/// claim in batches, and a completion per job.
async fn e2e_ceiling(url: &str, args: &BenchArgs, conns: usize) -> anyhow::Result<f64> {
    let n = args.jobs;
    let pool = pool(url, conns).await?;
    let submitted = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns.min(args.clients) {
        let (pool, submitted) = (pool.clone(), submitted.clone());
        tasks.push(tokio::spawn(async move {
            while submitted.fetch_add(1, Ordering::Relaxed) < n {
                insert_job(&pool).await?;
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
                    "SELECT id, record FROM jobs WHERE queue = 'bench' AND state = 'queued'
                       AND run_at <= $1 ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                )
                .bind(now)
                .bind(batch)
                .fetch_all(&mut *tx)
                .await?;
                let mut claimed = Vec::new();
                for row in &rows {
                    let id: uuid::Uuid = row.get("id");
                    let text: String = row.get("record");
                    sqlx::query("UPDATE jobs SET state = 'running', lease_expires_at = $2, record = $3 WHERE id = $1")
                        .bind(id)
                        .bind(now + 120_000)
                        .bind(&text)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("INSERT INTO events (job_id, kind, at, job) VALUES ($1, 'job.started', $2, $3)")
                        .bind(id)
                        .bind(now)
                        .bind(&text)
                        .execute(&mut *tx)
                        .await?;
                    claimed.push((id, text));
                }
                tx.commit().await?;
                if claimed.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                for (id, text) in claimed {
                    let mut tx = pool.begin().await?;
                    sqlx::query("SELECT record FROM jobs WHERE id = $1 FOR UPDATE")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, expires_at = $2, record = $3 WHERE id = $1")
                        .bind(id)
                        .bind(now + 86_400_000)
                        .bind(&text)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("INSERT INTO events (job_id, kind, at, job) VALUES ($1, 'job.succeeded', $2, $3)")
                        .bind(id)
                        .bind(now)
                        .bind(&text)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("INSERT INTO job_outputs (job_id, content_type, body) VALUES ($1, 'application/json', 'null')")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(completed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
