//! Several nodes on one PostgreSQL database: a reader on one node that
//! resumes the event log from the last id it saw never skips and never
//! repeats an event, while writers on every node commit out of order.

#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use replyd_core::event::EventKind;
use replyd_core::job::{Command, NewJob, Progress};
use replyd_core::store::{LeaseQuery, Store};
use replyd_core::{JobId, Tenant};
use replyd_store::postgres::testing;
use replyd_store::{PgOptions, PgStore};

fn job(queue: &str) -> NewJob {
    testing::job(Tenant::open().0.as_str(), queue)
}

/// Submit, lease, two progress reports, complete: five events per job.
async fn work(store: PgStore, queue: String, stop: Arc<AtomicBool>) -> Vec<JobId> {
    let mut done = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = chrono::Utc::now();
        let id = store.submit(job(&queue), now).await.unwrap().job().id;
        let lease = store
            .lease(
                LeaseQuery {
                    queue: queue.clone(),
                    tenant: None,
                    worker: queue.clone(),
                    length: Duration::from_secs(60),
                    max: 1,
                    limits: Default::default(),
                },
                now,
            )
            .await
            .unwrap()
            .remove(0);
        assert_eq!(lease.job.id, id);
        for p in [30.0, 60.0] {
            let cmd = Command::Progress {
                lease_id: lease.lease_id.clone(),
                progress: Progress {
                    percent: Some(p),
                    message: None,
                },
            };
            store.apply(id, None, cmd, None, now).await.unwrap();
        }
        let cmd = Command::Complete {
            lease_id: lease.lease_id,
        };
        store.apply(id, None, cmd, None, now).await.unwrap();
        done.push(id);
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_on_another_node_never_skips_or_repeats() {
    let Some(url) = testing::fresh_schema("cluster").await else {
        return;
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(PgStore::connect(&url, PgOptions::default()).await.unwrap());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for w in 0..4 {
            writers.push(tokio::spawn(work(
                node.clone(),
                format!("q{n}-{w}"),
                stop.clone(),
            )));
        }
    }
    // The reader, on a node of its own, resumes from the last id it saw.
    let reader = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let mut seen = Vec::new();
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        for e in reader.log(last, 200).await.unwrap() {
            assert!(last.is_none_or(|l| e.id > l), "{:?} after {last:?}", e.id);
            last = Some(e.id);
            seen.push(e);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut jobs = Vec::new();
    for w in writers {
        jobs.extend(w.await.unwrap());
    }
    // Drain: wait until every commit is readable, then read to the end.
    assert!(nodes[0].settle(Duration::from_secs(10)).await.unwrap());
    loop {
        let page = reader.log(last, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        for e in page {
            assert!(last.is_none_or(|l| e.id > l));
            last = Some(e.id);
            seen.push(e);
        }
    }
    assert!(jobs.len() >= 30, "only {} jobs were written", jobs.len());
    // Nothing skipped, nothing repeated: exactly five events per job.
    assert_eq!(seen.len(), jobs.len() * 5);
    let ids: HashSet<_> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), seen.len(), "an event was seen twice");
    // And each job's events came in the order they happened.
    use EventKind::*;
    for id in jobs {
        let kinds: Vec<_> = seen
            .iter()
            .filter(|e| e.job_id == id)
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [Accepted, Started, Progress, Progress, Succeeded],
            "job {id}"
        );
        // The per-job read from any node agrees with the log.
        let per_job = nodes[1].events(id, None).await.unwrap();
        let from_log: Vec<_> = seen.iter().filter(|e| e.job_id == id).cloned().collect();
        assert_eq!(per_job, from_log);
    }
}

/// A job deleted right after its last event commits, while a reader
/// follows the log: no position is handed out twice and the reader misses
/// none of the jobs kept. (With the sequencer of migrations 1–9 a position
/// once was handed out again: the floor was read before the delete.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn positions_are_never_reused_when_deletes_race_a_reader() {
    let Some(url) = testing::fresh_schema("reuse").await else {
        return;
    };
    let writer = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let reader = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // The reader follows the log as a node's listener does.
    let follow = {
        let (reader, stop) = (reader.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut last = None;
            loop {
                let done = stop.load(Ordering::Relaxed);
                for e in reader.log(last, 1000).await.unwrap() {
                    last = Some(e.id);
                    seen.push(e);
                }
                if done {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut kept = Vec::new();
    for _ in 0..150 {
        let now = chrono::Utc::now();
        let gone = writer.submit(job("q"), now).await.unwrap().job().id;
        writer
            .apply(gone, None, Command::Cancel, None, now)
            .await
            .unwrap();
        writer.delete(gone).await.unwrap();
        kept.push(writer.submit(job("q"), now).await.unwrap().job().id);
    }
    assert!(writer.settle(Duration::from_secs(10)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = follow.await.unwrap();
    let ids: HashSet<_> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), seen.len(), "a position was handed out twice");
    let accepted: HashSet<_> = seen
        .iter()
        .filter(|e| e.kind == EventKind::Accepted)
        .map(|e| e.job_id)
        .collect();
    let missed = kept.iter().filter(|id| !accepted.contains(id)).count();
    assert_eq!(
        missed,
        0,
        "the reader missed {missed} of {} jobs",
        kept.len()
    );
}

/// Nodes that start at once on an empty database take turns migrating.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_together_migrate_once() {
    let Some(url) = testing::fresh_schema("migrate").await else {
        return;
    };
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url, PgOptions::default()).await })
        })
        .collect();
    let mut stores = Vec::new();
    for s in starts {
        stores.push(s.await.unwrap().expect("every node starts"));
    }
    let id = stores[0]
        .submit(job("q"), chrono::Utc::now())
        .await
        .unwrap()
        .job()
        .id;
    assert!(stores[3].get(id).await.unwrap().is_some());
}

/// A batch of outcomes whose job another transaction holds (a node in the
/// middle of that job's transition): the batch does not wait for it with
/// the others' rows locked. The jobs that were free commit at once, the
/// held one's move is applied once the holder lets go, each answered on
/// its own, and every job's events read back in the order they happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_outcomes_never_waits_for_a_held_job_with_others_locked() {
    let Some(url) = testing::fresh_schema("held").await else {
        return;
    };
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let now = chrono::Utc::now();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(store.submit(job("q"), now).await.unwrap().job().id);
    }
    let leased = store
        .lease(
            LeaseQuery {
                queue: "q".into(),
                tenant: None,
                worker: "w".into(),
                length: Duration::from_secs(60),
                max: 3,
                limits: Default::default(),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(leased.len(), 3);
    // Another session holds the middle job's row.
    let held = ids[1];
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(held.0)
        .execute(&mut *holder)
        .await
        .unwrap();
    let moves = leased
        .iter()
        .map(|l| replyd_core::store::Move {
            id: l.job.id,
            cmd: Command::Complete {
                lease_id: l.lease_id.clone(),
            },
            output: None,
        })
        .collect();
    let batch = {
        let store = store.clone();
        tokio::spawn(async move { store.apply_many(None, moves, now).await })
    };
    // The free jobs are done while the held one is still held.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut states = Vec::new();
        for id in [ids[0], ids[2]] {
            states.push(store.get(id).await.unwrap().unwrap().state);
        }
        if states
            .iter()
            .all(|s| *s == replyd_core::JobState::Succeeded)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the free jobs waited for the held one: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!batch.is_finished(), "the held job's move did not wait");
    assert_eq!(
        store.get(held).await.unwrap().unwrap().state,
        replyd_core::JobState::Running
    );
    holder.commit().await.unwrap();
    let answers = batch.await.unwrap().unwrap();
    assert_eq!(answers.len(), 3);
    for (answer, id) in answers.into_iter().zip(&ids) {
        let job = answer.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(job.id, *id);
        assert_eq!(job.state, replyd_core::JobState::Succeeded);
    }
    assert!(store.settle(Duration::from_secs(10)).await.unwrap());
    let log = store.log(None, 100).await.unwrap();
    use EventKind::*;
    for id in &ids {
        let kinds: Vec<_> = log
            .iter()
            .filter(|e| e.job_id == *id)
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [Accepted, Started, Succeeded], "job {id}");
    }
}

/// An event log written by the sequencer (migrations 1–9), upgraded:
/// events it had not positioned get positions past the old ones, in the
/// order they were written; new events come after every old position and
/// after the floor of removed ones; a reader that had read the old log
/// resumes into the new one without a gap or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_log_goes_on_after_the_sequencers_positions() {
    let Some(url) = testing::fresh_schema("upgrade").await else {
        return;
    };
    testing::migrate_schema_to(&url, 9).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // Four old jobs' accepted events: two positioned (5 and 9), two not
    // yet; the floor says position 12 was removed.
    let mut old = Vec::new();
    for position in [Some(5_i64), Some(9), None, None] {
        let record = job("q").into_record(chrono::Utc::now()).0;
        let text = serde_json::to_string(&record).unwrap();
        sqlx::query(
            "INSERT INTO jobs (id, tenant, queue, state, run_at, input, record)
             VALUES ($1, $2, 'q', 'queued', 0, '\\x7b7d', $3)",
        )
        .bind(record.id.0)
        .bind(&record.tenant.0)
        .bind(&text)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO events (job_id, kind, at, job, position)
             VALUES ($1, 'job.accepted', 0, $2, $3)",
        )
        .bind(record.id.0)
        .bind(&text)
        .bind(position)
        .execute(&pool)
        .await
        .unwrap();
        old.push(record.id);
    }
    sqlx::query("INSERT INTO log_floor (one, below) VALUES (1, 12)")
        .execute(&pool)
        .await
        .unwrap();
    // A reader had read up to 9.
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let fresh = store.submit(job("q"), chrono::Utc::now()).await.unwrap();
    assert!(store.settle(Duration::from_secs(10)).await.unwrap());
    let after_nine = store
        .log(Some(replyd_core::event::EventId(9)), 100)
        .await
        .unwrap();
    let read: Vec<(i64, JobId)> = after_nine.iter().map(|e| (e.id.0, e.job_id)).collect();
    assert_eq!(read.len(), 3, "{read:?}");
    // The unpositioned two, past the floor, in the order written.
    assert_eq!(read[0], (13, old[2]));
    assert_eq!(read[1], (14, old[3]));
    assert_eq!(read[2].1, fresh.job().id);
    assert!(read[2].0 > 14);
    let all = store.log(None, 100).await.unwrap();
    let positions: Vec<i64> = all.iter().map(|e| e.id.0).collect();
    assert_eq!(&positions[..4], [5, 9, 13, 14]);
    // The old jobs are listed by their tenant (the keys of v14 carried
    // them over), newest first, the fresh one with them.
    let listed = store
        .list(replyd_core::store::ListQuery {
            tenant: Some(fresh.job().tenant.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<JobId> = listed.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, [fresh.job().id, old[3], old[2], old[1], old[0]]);
    pool.close().await;
}

/// A writing transaction open elsewhere holds the log's horizon: a job
/// submitted after it began is in its own events at once, but in the log
/// only once that transaction ends (and then in order), so no reader of
/// the log can pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_writing_transaction_holds_the_log_until_it_ends() {
    let Some(url) = testing::fresh_schema("horizon").await else {
        return;
    };
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let first = store.submit(job("q"), chrono::Utc::now()).await.unwrap();
    assert!(store.settle(Duration::from_secs(10)).await.unwrap());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut open = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    let second = store.submit(job("q"), chrono::Utc::now()).await.unwrap();
    let own = store.events(second.job().id, None).await.unwrap();
    assert_eq!(own.len(), 1, "a job's own events are read at once");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = store.log(None, 100).await.unwrap();
    let ids: Vec<JobId> = log.iter().map(|e| e.job_id).collect();
    assert_eq!(ids, [first.job().id], "the log passed an open transaction");
    assert!(!store.settle(Duration::from_millis(100)).await.unwrap());
    open.commit().await.unwrap();
    assert!(store.settle(Duration::from_secs(10)).await.unwrap());
    let log = store.log(None, 100).await.unwrap();
    let ids: Vec<JobId> = log.iter().map(|e| e.job_id).collect();
    assert_eq!(ids, [first.job().id, second.job().id]);
    pool.close().await;
}
