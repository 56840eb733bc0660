//! `console`: the console's job lists at scale (issue 16). A replyd whose
//! store holds N jobs (`--console-jobs`, 1,000,000 by default), made
//! through the store as a load makes them: submitted by 10 tenants to 5
//! queues, then leased and worked off, 97% succeeding, 2% failing (one job
//! in 50,000 with a rare message), 1% canceled while queued,
//! and a backlog of 2% left queued. Then each of the console's lists is
//! read through `Store::list` (p50 and worst of 21 reads, beside the
//! newest page unfiltered, the baseline: one index walk of 50 rows), and,
//! where Node.js and Chromium are present, the console's first paint of
//! each list in headless Chromium (navigation start to the rows shown).
//!
//! SQLite always; PostgreSQL too with `--database-url` (feature
//! `postgres`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use replyd_core::job::{Command, JobError, JobState, NewJob};
use replyd_core::store::{JobOutput, LeaseQuery, ListQuery, Move};
use replyd_core::{JobId, Store, Tenant};

use crate::BenchArgs;
use crate::harness::{Replyd, Storage, start_replyd_with};

const TENANTS: usize = 10;
const QUEUES: usize = 5;
/// Submitters (and so the group commits' size) while seeding.
const SEEDERS: usize = 64;
/// The key the browser signs in with: an operator's, who sees every
/// tenant's jobs.
const OPERATOR_KEY: &str = "bench-console-operator";
/// Reads per list.
const READS: usize = 21;

pub async fn run(args: &BenchArgs, dir: &Path) -> anyhow::Result<()> {
    let n = args.console_jobs;
    println!("\nconsole: the job list with {n} jobs in the table");
    let sqlite = Storage::Sqlite(dir.join("bench-console.db"));
    measure("SQLite", &sqlite, n).await?;
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.database_url {
        let schema = replyd_store::postgres::testing::fresh_schema_at(url, "bench_console")
            .await
            .ok_or_else(|| anyhow::anyhow!("no PostgreSQL answered at the bench URL"))?;
        measure("PostgreSQL", &Storage::Postgres(schema), n).await?;
    }
    Ok(())
}

async fn measure(name: &str, storage: &Storage, n: usize) -> anyhow::Result<()> {
    let replyd = start_replyd_with(storage, |c| {
        for q in 0..QUEUES {
            c.queues.insert(format!("q{q}"), Default::default());
        }
        c.api_keys.push(replyd_server::config::ApiKey {
            key: OPERATOR_KEY.into(),
            tenant: "*".into(),
            role: replyd_server::config::Role::Admin,
        });
    })
    .await?;
    let seeded = Instant::now();
    let keys = seed(&replyd.store, n).await?;
    println!(
        "  {name}: {n} jobs made in {:.0} s (submitted, worked off through the store)",
        seeded.elapsed().as_secs_f64()
    );
    lists(&replyd, keys).await?;
    paint(&replyd).await;
    replyd.stop().await;
    Ok(())
}

/// Fills the store; the idempotency key of a job in the middle.
async fn seed(store: &Arc<dyn Store>, n: usize) -> anyhow::Result<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..SEEDERS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut i = s;
            while i < n {
                let job = NewJob {
                    id: JobId::new(),
                    tenant: Tenant(format!("t{}", i % TENANTS)),
                    queue: format!("q{}", i % QUEUES),
                    input: Bytes::from(format!(r#"{{"customer":"c{}","n":{i}}}"#, i % 1000)),
                    max_attempts: 1,
                    timeout: Duration::from_secs(600),
                    ttl: Duration::from_secs(30 * 86_400),
                    webhook: None,
                    reply: None,
                    idempotency_key: (i % 10 == 0).then(|| format!("order-{i}")),
                    request_hash: (i % 10 == 0).then(|| format!("h{i}")),
                    output_type: None,
                    trace: None,
                    priority: 0,
                    head_start: std::time::Duration::ZERO,
                    group: None,
                    run_at: None,
                };
                store.submit(job, chrono::Utc::now()).await?;
                i += SEEDERS;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    // 1% canceled while queued: every hundredth job of each page.
    let mut before = None;
    loop {
        let page = store
            .list(ListQuery {
                state: Some(JobState::Queued),
                before,
                limit: 1000,
                scan: Some(100_000),
                ..Default::default()
            })
            .await?;
        let moves = page
            .jobs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 100 == 7)
            .map(|(_, j)| Move {
                id: j.id,
                cmd: Command::Cancel,
                output: None,
            })
            .collect();
        store.apply_many(None, moves, chrono::Utc::now()).await?;
        before = page.next;
        if before.is_none() {
            break;
        }
    }
    // Work each queue off but for its last 2%, as workers would.
    let mut tasks = tokio::task::JoinSet::new();
    for q in 0..QUEUES {
        let store = store.clone();
        let keep = n / QUEUES / 50;
        tasks.spawn(async move {
            let mut done = 0usize;
            loop {
                let left = n / QUEUES - done;
                if left <= keep {
                    break;
                }
                let leased = store
                    .lease(
                        LeaseQuery {
                            queue: format!("q{q}"),
                            tenant: None,
                            worker: "seed".into(),
                            length: Duration::from_secs(600),
                            max: (left - keep).min(1000) as u32,
                            limits: Default::default(),
                        },
                        chrono::Utc::now(),
                    )
                    .await?;
                if leased.is_empty() {
                    break;
                }
                done += leased.len();
                let moves = leased
                    .into_iter()
                    .map(|l| {
                        let roll = l.job.id.0.as_u128() % 1000;
                        let cmd = if roll < 20 {
                            // One job in 50,000 fails with a rare message.
                            let rare = roll == 0 && (l.job.id.0.as_u128() >> 20) % 50 == 0;
                            let message = if rare {
                                "disk quota exceeded on volume 7".to_string()
                            } else {
                                format!("upstream timed out after {} s", 30 + roll)
                            };
                            Command::Fail {
                                lease_id: l.lease_id,
                                error: JobError::new("upstream", message),
                                retry: false,
                            }
                        } else {
                            Command::Complete {
                                lease_id: l.lease_id,
                            }
                        };
                        let output = matches!(cmd, Command::Complete { .. }).then(|| JobOutput {
                            content_type: "application/json".into(),
                            body: Bytes::from_static(b"{\"ok\":true}"),
                            upstream: None,
                        });
                        Move {
                            id: l.job.id,
                            cmd,
                            output,
                        }
                    })
                    .collect();
                store.apply_many(None, moves, chrono::Utc::now()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(format!("order-{}", (n / 2) / 10 * 10))
}

/// Each of the console's lists, read [`READS`] times through the store.
async fn lists(replyd: &Replyd, key: String) -> anyhow::Result<()> {
    let store = &replyd.store;
    let newest = store
        .list(ListQuery {
            limit: 1,
            ..Default::default()
        })
        .await?;
    let Some(newest) = newest.jobs.first() else {
        anyhow::bail!("the store is empty");
    };
    // A minute-long range a little before the newest job.
    let end = newest.created_at - chrono::Duration::seconds(2);
    let page = |q: ListQuery| ListQuery { limit: 50, ..q };
    let cases: Vec<(&str, ListQuery)> = vec![
        (
            "newest 50, every tenant (baseline)",
            page(ListQuery::default()),
        ),
        (
            "one tenant",
            page(ListQuery {
                tenant: Some(Tenant("t3".into())),
                ..Default::default()
            }),
        ),
        (
            "one queue",
            page(ListQuery {
                queue: Some("q2".into()),
                ..Default::default()
            }),
        ),
        (
            "failed",
            page(ListQuery {
                state: Some(JobState::Failed),
                ..Default::default()
            }),
        ),
        (
            "failed, one queue, one tenant",
            page(ListQuery {
                state: Some(JobState::Failed),
                queue: Some("q1".into()),
                tenant: Some(Tenant("t1".into())),
                ..Default::default()
            }),
        ),
        (
            "canceled",
            page(ListQuery {
                state: Some(JobState::Canceled),
                ..Default::default()
            }),
        ),
        (
            "queued (the backlog)",
            page(ListQuery {
                state: Some(JobState::Queued),
                ..Default::default()
            }),
        ),
        (
            "succeeded, one queue",
            page(ListQuery {
                state: Some(JobState::Succeeded),
                queue: Some("q4".into()),
                ..Default::default()
            }),
        ),
        (
            "text in 1 job of 50,000 (error)",
            page(ListQuery {
                text: Some("disk quota".into()),
                ..Default::default()
            }),
        ),
        (
            "text in 1 job of 1,000 (input)",
            page(ListQuery {
                text: Some("\"c42\"".into()),
                ..Default::default()
            }),
        ),
        (
            "idempotency key, any tenant",
            page(ListQuery {
                idempotency_key: Some(key),
                ..Default::default()
            }),
        ),
        (
            "a minute's range",
            page(ListQuery {
                since: Some(end - chrono::Duration::seconds(60)),
                until: Some(end),
                ..Default::default()
            }),
        ),
    ];
    println!(
        "  {:<36} {:>8} {:>8} {:>6} {:>5} {:>7}",
        "list (store read)", "p50 ms", "max ms", "rows", "more", "x base"
    );
    let mut base = None;
    for (name, q) in cases {
        let mut times = Vec::with_capacity(READS);
        let mut last = None;
        for _ in 0..READS {
            let t = Instant::now();
            last = Some(store.list(q.clone()).await?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let p50 = times[READS / 2];
        let max = times[READS - 1];
        let b = *base.get_or_insert(p50);
        let page = last.unwrap_or_default();
        println!(
            "  {name:<36} {p50:>8.2} {max:>8.2} {:>6} {:>5} {:>7.1}",
            page.jobs.len(),
            if page.next.is_some() { "yes" } else { "no" },
            p50 / b
        );
    }
    // Keyset paging: the 20th page costs what the first does.
    let mut q = ListQuery {
        limit: 50,
        ..Default::default()
    };
    let t = Instant::now();
    for _ in 0..19 {
        q.before = store.list(q.clone()).await?.next;
    }
    let nineteen = t.elapsed().as_secs_f64() * 1e3 / 19.0;
    let t = Instant::now();
    store.list(q).await?;
    println!(
        "  page 20 of the newest: {:.2} ms (pages 1-19: {nineteen:.2} ms each)",
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// The console's first paint of each list in headless Chromium, if it
/// can run here.
async fn paint(replyd: &Replyd) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../replyd/tests/browser/console_paint.mjs");
    let modules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../replyd/tests/browser/node_modules/playwright-core");
    if !modules.exists() {
        println!(
            "  first paint: skipped (no playwright-core: npm ci --prefix crates/replyd/tests/browser)"
        );
        return;
    }
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{}", replyd.addr))
        .arg(OPERATOR_KEY)
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                println!("  {line}");
            }
        }
        Ok(o) => println!(
            "  first paint: the browser failed: {}",
            String::from_utf8_lossy(&o.stdout).trim()
        ),
        Err(e) => println!("  first paint: skipped (node: {e})"),
    }
}
