//! Submissions' group commit: concurrent submits share one transaction.
//!
//! A submit is three rows (the job, its key for the console's lists, its
//! `job.accepted` event) and a commit; alone, the commit's round trips and
//! WAL flush are most of its cost. So `submit` hands the job to a queue,
//! and a few flushers each take what has gathered (up to [`MAX_JOBS`] jobs
//! or [`MAX_BYTES`] of input) and write it with one statement, which
//! commits on its own (its implicit transaction); each caller is answered
//! after that commit. While one flusher commits, the next batch gathers:
//! the busier the server, the larger the batches.
//!
//! Idempotency keys: the unique index decides, as for one job. A key
//! already committed (or repeated within the batch) inserts nothing, and
//! the job holding it answers. Rows are inserted keyed jobs first, in
//! (tenant, key) order, so two batches that share keys wait on each other
//! in one order and cannot deadlock.

use super::events::next_position_ctes;
use super::outbox::owe;
use super::{Inner, backend};
use crate::record::{decode, ms};
use bytes::Bytes;
use replyd_core::event::EventKind;
use replyd_core::job::{JobRecord, JobState};
use replyd_core::store::{StoreError, StoreResult, Submitted};
use sqlx::postgres::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use tokio::sync::{Mutex, mpsc, oneshot};

/// The most jobs one transaction carries.
pub(super) const MAX_JOBS: usize = 500;

/// A batch stops gathering past this many bytes of input.
pub(super) const MAX_BYTES: usize = 4 << 20;

/// A job waiting for its batch's commit.
pub(super) struct Pending {
    pub job: JobRecord,
    pub input: Bytes,
    /// The record as JSON, encoded by the caller's task.
    pub text: String,
    pub answer: oneshot::Sender<StoreResult<Submitted>>,
}

pub(super) type Queue = Arc<Mutex<mpsc::Receiver<Pending>>>;

/// Submits waiting for a flusher at most; past this, callers wait to
/// queue theirs.
pub(super) const QUEUED: usize = 4096;

/// One flusher: takes what has gathered, writes it, answers. Stops when
/// the store (which holds the queue's sender) is dropped.
pub(super) async fn flusher(inner: Weak<Inner>, pool: PgPool, queue: Queue) {
    let mut batch = Vec::new();
    loop {
        {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut bytes = first.input.len();
            batch.push(first);
            while batch.len() < MAX_JOBS && bytes < MAX_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        bytes += p.input.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
        }
        let jobs = std::mem::take(&mut batch);
        match write(&pool, &jobs).await {
            Err(StoreError::Backend(e)) if jobs.len() > 1 => {
                // One job the database refuses (a value it cannot take)
                // must not fail the others: each on its own.
                tracing::debug!(error = %e, jobs = jobs.len(), "a batch of submits failed; one by one");
                for p in jobs {
                    let written = write(&pool, std::slice::from_ref(&p)).await;
                    answer(&inner, vec![p], written);
                }
            }
            written => answer(&inner, jobs, written),
        }
    }
}

/// Answers each of `jobs` from their transaction's outcome: its own
/// answer, or the failure (a lone job gets it as it is; the callers of a
/// batch that failed as a whole are told to try again).
#[allow(clippy::type_complexity)]
fn answer(inner: &Weak<Inner>, jobs: Vec<Pending>, written: StoreResult<Written>) {
    match written {
        Ok((answers, top, places)) => {
            announce(inner, top);
            if let Some(inner) = inner.upgrade() {
                inner.floors.saw_at(answers.iter().filter_map(|a| match a {
                    Ok(Submitted::Created(job)) if job.state == JobState::Queued => Some((
                        job,
                        places.get(&job.id.0).copied().unwrap_or(job.order_at()),
                    )),
                    _ => None,
                }));
            }
            for (p, a) in jobs.into_iter().zip(answers) {
                let _ = p.answer.send(a);
            }
        }
        Err(e) if jobs.len() == 1 => {
            if let Some(p) = jobs.into_iter().next() {
                let _ = p.answer.send(Err(e));
            }
        }
        Err(e) => {
            let why = e.to_string();
            for p in jobs {
                let _ = p
                    .answer
                    .send(Err(StoreError::Unavailable(why.clone().into())));
            }
        }
    }
}

/// Says that events were appended, up to `top`.
fn announce(inner: &Weak<Inner>, top: Option<i64>) {
    if let (Some(top), Some(inner)) = (top, inner.upgrade()) {
        inner.appended(top);
    }
}

/// What a batch's transaction did: each job's answer, in order, the
/// highest event position written, and the grouped jobs' places in their
/// queues' order (by id).
type Written = (
    Vec<StoreResult<Submitted>>,
    Option<i64>,
    HashMap<uuid::Uuid, i64>,
);

/// Writes `jobs` in one transaction.
///
/// Most batches are one statement and its implicit transaction (one
/// round trip: jobs, their keys and their events together): no BEGIN, no
/// COMMIT of its own. A batch with a grouped job (its place in the queue
/// is read and its group's clock moved first, `fair.rs`) or a job owed a
/// delivery of `job.accepted` (an outbox row each) takes a transaction
/// around the same statement.
async fn write(pool: &PgPool, jobs: &[Pending]) -> StoreResult<Written> {
    // Keyed jobs first, by (tenant, key): the order rows are locked in.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            let j = &jobs[i].job;
            (
                j.idempotency_key.is_none(),
                j.idempotency_key.as_deref(),
                j.tenant.0.as_str(),
            )
        };
        key(a).cmp(&key(b))
    });
    let rows: Vec<&Pending> = order.iter().map(|&i| &jobs[i]).collect();
    let plain = rows
        .iter()
        .all(|p| p.job.group.is_none() && p.job.owed(EventKind::Accepted).next().is_none());
    let (created, top, places) = if plain {
        let places = HashMap::new();
        let (created, top) = insert(pool, &rows, &places).await?;
        (created, top, places)
    } else {
        let mut tx = pool.begin().await.map_err(backend)?;
        let records: Vec<&JobRecord> = rows.iter().map(|p| &p.job).collect();
        let now = records.iter().map(|j| ms(j.created_at)).max().unwrap_or(0);
        let places = super::fair::places(&mut tx, &records, now).await?;
        let (created, top) = insert(&mut *tx, &rows, &places).await?;
        for p in rows.iter().filter(|p| created.contains(&p.job.id.0)) {
            for (channel, target) in p.job.owed(EventKind::Accepted) {
                owe(
                    &mut tx,
                    &p.job,
                    EventKind::Accepted,
                    channel,
                    &target,
                    &p.text,
                    p.job.updated_at,
                )
                .await?;
            }
        }
        tx.commit().await.map_err(backend)?;
        (created, top, places)
    };
    // The jobs that hold the keys of those that inserted nothing: those
    // committed (a conflict with a transaction in flight waits for it).
    let holders = holders(pool, jobs.iter().filter(|p| !created.contains(&p.job.id.0))).await?;
    let answers = jobs
        .iter()
        .map(|p| {
            if created.contains(&p.job.id.0) {
                return Ok(Submitted::Created(p.job.clone()));
            }
            let key = (
                p.job.tenant.0.clone(),
                p.job.idempotency_key.clone().unwrap_or_default(),
            );
            match holders.get(&key) {
                Some(existing) if existing.request_hash == p.job.request_hash => {
                    Ok(Submitted::Existing(existing.clone()))
                }
                Some(_) => Err(StoreError::IdempotencyMismatch),
                // A row that did not insert conflicted with a key, whose
                // holder committed; gone since (deleted), it is told so.
                None => Err(StoreError::Backend(
                    "a job that did not insert has no key holder".into(),
                )),
            }
        })
        .collect();
    Ok((answers, top, places))
}

/// Inserts `rows` (in their order) in one statement: the jobs (a row
/// whose idempotency key is taken inserts nothing), the created ones'
/// keys for the console's lists (schema v14) and their `job.accepted`
/// events, positioned as `events::append_events` does (after this
/// transaction's earlier events, in the rows' order; a batch holds at most
/// [`MAX_JOBS`], far below a transaction's 65,536). Returns the ids
/// created and the highest position written.
async fn insert<'e>(
    db: impl sqlx::PgExecutor<'e>,
    rows: &[&Pending],
    places: &HashMap<uuid::Uuid, i64>,
) -> StoreResult<(HashSet<uuid::Uuid>, Option<i64>)> {
    let written: Vec<(uuid::Uuid, Option<i64>)> = sqlx::query_as(concat!(
        "WITH created AS (
             INSERT INTO jobs (id, tenant, queue, state, run_at, idempotency_key, input, record,
                               order_at)
             SELECT id, tenant, queue, state, run_at, idempotency_key, input, record, order_at
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::text[], $7::bytea[], $8::text[], $9::bigint[])
                  WITH ORDINALITY AS j(id, tenant, queue, state, run_at, idempotency_key,
                                       input, record, order_at, n)
             ORDER BY n
             ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id, tenant, queue
         ), keys AS (
             INSERT INTO job_keys (tenant, queue, id) SELECT tenant, queue, id FROM created
         ), ",
        next_position_ctes!(),
        ", appended AS (
             INSERT INTO events (position, job_id, kind, at, job)
             SELECT next.p + row_number() OVER (ORDER BY e.n) - 1, e.id, $11, e.at, e.record
             FROM next, unnest($1::uuid[], $10::bigint[], $8::text[])
                  WITH ORDINALITY AS e(id, at, record, n)
             WHERE e.id IN (SELECT id FROM created)
             RETURNING position
         )
         SELECT id, (SELECT max(position) FROM appended) FROM created"
    ))
    .bind(rows.iter().map(|p| p.job.id.0).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|p| p.job.tenant.0.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|p| p.job.queue.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|p| p.job.state.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|p| ms(p.job.run_at)).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|p| p.job.idempotency_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|p| &p.input[..]).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.text.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|p| places.get(&p.job.id.0).copied().unwrap_or(p.job.order_at()))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|p| ms(p.job.updated_at))
            .collect::<Vec<_>>(),
    )
    .bind(EventKind::Accepted.name())
    .fetch_all(db)
    .await
    .map_err(backend)?;
    let top = written.iter().filter_map(|(_, top)| *top).max();
    Ok((written.into_iter().map(|(id, _)| id).collect(), top))
}

/// The records holding the (tenant, key) of each of `jobs`.
async fn holders<'a>(
    pool: &PgPool,
    jobs: impl Iterator<Item = &'a Pending>,
) -> StoreResult<HashMap<(String, String), JobRecord>> {
    let (tenants, keys): (Vec<&str>, Vec<&str>) = jobs
        .filter_map(|p| Some((p.job.tenant.0.as_str(), p.job.idempotency_key.as_deref()?)))
        .unzip();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT j.record FROM unnest($1::text[], $2::text[]) AS k(tenant, key),
             LATERAL (SELECT record FROM jobs
                      WHERE tenant = k.tenant AND idempotency_key = k.key) j",
    )
    .bind(&tenants)
    .bind(&keys)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    texts
        .iter()
        .map(|t| {
            let job = decode(t)?;
            let key = (
                job.tenant.0.clone(),
                job.idempotency_key.clone().unwrap_or_default(),
            );
            Ok((key, job))
        })
        .collect()
}
