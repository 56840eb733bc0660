//! Jobs: submitting, reading, listing, moving (every transition), deleting, counting.

use super::events::{FORGET_EVENTS_OF_JOBS, append_events};
use super::submits::Pending;
use super::{PgStore, Tx, backend};
use crate::listing;
use crate::record::{decode, encode_upstream, json_err, ms};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::event::EventKind;
use replyd_core::job::{Command, JobRecord, JobState, NewJob, RetryPolicy, TransitionError};
use replyd_core::store::{
    Counts, JobOutput, JobPage, ListQuery, Move, Seen, StateCount, StoreError, StoreResult,
    Submitted,
};
use replyd_core::{JobId, Tenant};
use sqlx::Row;

pub(super) async fn submit(s: &PgStore, new: NewJob, now: DateTime<Utc>) -> StoreResult<Submitted> {
    let (job, input) = new.into_record(now);
    let text = serde_json::to_string(&job).map_err(json_err)?;
    let (answer, answered) = tokio::sync::oneshot::channel();
    let gone = || StoreError::Unavailable("the store is closing".into());
    s.inner
        .submits
        .send(Pending {
            job,
            input,
            text,
            answer,
        })
        .await
        .map_err(|_| gone())?;
    answered.await.map_err(|_| gone())?
}

pub(super) async fn get(s: &PgStore, id: JobId) -> StoreResult<Option<JobRecord>> {
    let text: Option<String> = sqlx::query_scalar("SELECT record FROM jobs WHERE id = $1")
        .bind(id.0)
        .fetch_optional(&s.inner.pool)
        .await
        .map_err(backend)?;
    text.as_deref().map(decode).transpose()
}

pub(super) async fn input(s: &PgStore, id: JobId) -> StoreResult<Option<Bytes>> {
    let body: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT input FROM jobs WHERE id = $1")
        .bind(id.0)
        .fetch_optional(&s.inner.pool)
        .await
        .map_err(backend)?;
    Ok(body.flatten().map(Bytes::from))
}

pub(super) async fn output(s: &PgStore, id: JobId) -> StoreResult<Option<JobOutput>> {
    let row = sqlx::query("SELECT content_type, body, upstream FROM job_outputs WHERE job_id = $1")
        .bind(id.0)
        .fetch_optional(&s.inner.pool)
        .await
        .map_err(backend)?;
    Ok(row.map(|r| JobOutput {
        content_type: r.get("content_type"),
        body: Bytes::from(r.get::<Vec<u8>, _>("body")),
        upstream: r
            .get::<Option<String>, _>("upstream")
            .and_then(|u| serde_json::from_str(&u).ok()),
    }))
}

/// Jobs newest first (see `crate::listing`): a statement of just the
/// filters given (so that the planner sees a partial index's state as a
/// literal, `listing::access`). The rows of the walk come out one by one
/// with whether they match, numbered; the statement returns the matches
/// and the row at the scan's bound, and stops at `limit` of them, so that
/// PostgreSQL reads no further than the page needs. A lookup by
/// idempotency key (a handful of rows) is fenced off (`OFFSET 0`) from the
/// order, so that the planner takes its index whatever its statistics say.
///
/// A walk by tenant or by queue reads `job_keys` (schema v14) in id order
/// and each job's row by its id; the id bounds are on the walked index.
pub(super) async fn list(s: &PgStore, q: ListQuery) -> StoreResult<JobPage> {
    let (mut b, bound) = list_query("", &q);
    let rows = b.build().fetch_all(&s.inner.pool).await.map_err(backend)?;
    let mut page = JobPage::default();
    for row in rows {
        let id = JobId(row.get::<uuid::Uuid, _>("id"));
        if row.get::<bool, _>("m") {
            page.jobs.push(decode(row.get::<&str, _>("record"))?);
            if page.jobs.len() >= q.limit as usize {
                page.next = Some(id);
                break;
            }
        }
        if row.get::<i64, _>("rn") == bound {
            // The scan stopped at its bound: go on below this row.
            page.next = Some(id);
            break;
        }
    }
    Ok(page)
}

/// [`list`]'s statement after `head` (`EXPLAIN …` in the plans' tests),
/// and the scan's bound.
pub(super) fn list_query(head: &str, q: &ListQuery) -> (sqlx::QueryBuilder<sqlx::Postgres>, i64) {
    let (lower, upper) = listing::bounds(q);
    let bound = if listing::filters_rows(q) {
        i64::from(listing::scan_bound(q))
    } else {
        i64::from(q.limit)
    };
    let access = listing::access(q);
    // On a partial or queue index the tenant is tested row by row too:
    // in the WHERE clause, a planner without fresh statistics may combine
    // it with the tenant's index and sort every match (30 ms for 20,000
    // failed jobs), where walking the index newest first stops at the page.
    let tenant_in_walk = access != listing::Access::Key;
    // What the walk reads: `job_keys` by queue or by tenant, or `jobs`.
    let by_keys = access == listing::Access::Queue
        || (access == listing::Access::Key && q.idempotency_key.is_none() && q.tenant.is_some());
    let walked = if by_keys { "k.id" } else { "j.id" };
    let mut b = sqlx::QueryBuilder::<sqlx::Postgres>::new(head);
    b.push(
        "SELECT id, m, rn, CASE WHEN m THEN record END AS record FROM (
             SELECT id, record, m, row_number() OVER (ORDER BY id DESC) AS rn FROM (
                 SELECT ",
    );
    b.push(walked).push(" AS id, j.record, coalesce(true");
    if let Some(queue) = &q.queue {
        b.push(" AND j.queue = ").push_bind(queue.clone());
    }
    if let Some(state) = q.state {
        b.push(" AND j.state = ").push_bind(state.as_str());
    }
    if let Some(text) = &q.text {
        let p = listing::like_pattern(text);
        b.push(" AND (convert_from(j.input, 'UTF8') ILIKE ")
            .push_bind(p.clone())
            .push(" OR (j.record::jsonb #>> '{error,message}') ILIKE ")
            .push_bind(p)
            .push(")");
    }
    if let Some(t) = q.tenant.as_ref().filter(|_| tenant_in_walk) {
        b.push(" AND j.tenant = ").push_bind(t.0.clone());
    }
    b.push(if by_keys {
        ", false) AS m FROM job_keys k JOIN jobs j ON j.id = k.id WHERE true"
    } else {
        ", false) AS m FROM jobs j WHERE true"
    });
    match access {
        listing::Access::Ended(state) => {
            b.push(format!(" AND j.state = '{state}'"));
        }
        listing::Access::Queue => {
            b.push(" AND k.queue = ").push_bind(q.queue.clone());
        }
        listing::Access::Key => {}
    }
    if let Some(t) = q.tenant.as_ref().filter(|_| !tenant_in_walk) {
        let column = if by_keys { "k.tenant" } else { "j.tenant" };
        b.push(format!(" AND {column} = ")).push_bind(t.0.clone());
    }
    if let Some(key) = &q.idempotency_key {
        b.push(" AND j.idempotency_key = ").push_bind(key.clone());
    }
    if let Some(l) = lower {
        b.push(format!(" AND {walked} >= ")).push_bind(l.0);
    }
    if let Some(u) = upper {
        b.push(format!(" AND {walked} < ")).push_bind(u.0);
    }
    if q.idempotency_key.is_some() {
        b.push(" OFFSET 0");
    }
    b.push(") f ORDER BY id DESC LIMIT ")
        .push_bind(bound)
        .push(") w WHERE m OR rn = ")
        .push_bind(bound)
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(q.limit));
    (b, bound)
}

pub(super) async fn apply(
    s: &PgStore,
    id: JobId,
    scope: Option<&Tenant>,
    cmd: Command,
    output: Option<JobOutput>,
    now: DateTime<Utc>,
) -> StoreResult<JobRecord> {
    let mut tx = s.begin().await?;
    let (job, refused, appended) =
        match transition(&mut tx, id, scope, cmd, output, now, &s.inner.retry).await {
            Ok(t) => t,
            Err(e) => return s.abort(tx, e).await,
        };
    s.commit(tx, appended).await?;
    match refused {
        Some(e) => Err(StoreError::Transition(e)),
        None => Ok(job),
    }
}

/// Every move in one transaction (one commit), each answered on its own:
/// a move the job refuses (or a job not found) is that move's answer and
/// writes nothing; only the database's failure fails them all. The moves
/// of a job another transaction holds are applied after, each in a
/// transaction of its own (see [`transition_all`]).
pub(super) async fn apply_many(
    s: &PgStore,
    scope: Option<&Tenant>,
    moves: Vec<Move>,
    now: DateTime<Utc>,
) -> StoreResult<Vec<StoreResult<JobRecord>>> {
    let mut tx = s.begin().await?;
    let (moved, appended) = match transition_all(&mut tx, moves, scope, now, &s.inner.retry).await {
        Ok(t) => t,
        Err(e) => return s.abort(tx, e).await,
    };
    s.commit(tx, appended).await?;
    let mut answers = Vec::with_capacity(moved.len());
    for m in moved {
        answers.push(match m {
            Moved::Done(r) => match r {
                Ok((_, Some(refused))) => Err(StoreError::Transition(refused)),
                Ok((job, None)) => Ok(job),
                Err(e) => Err(e),
            },
            Moved::Busy(m) => apply(s, m.id, scope, m.cmd, m.output, now).await,
        });
    }
    Ok(answers)
}

/// A move of [`transition_all`]: decided (the job's new record and what it
/// refused, or why not), or not tried because another transaction holds
/// the job.
// Short-lived, one per move of a batch: boxing the common variant would
// cost an allocation per move to save a copy.
#[allow(clippy::large_enum_variant)]
pub(super) enum Moved {
    Done(StoreResult<(JobRecord, Option<TransitionError>)>),
    Busy(Move),
}

/// [`transition`] for many jobs at once, in a handful of statements
/// whatever their number: the rows are locked (in id order, so that two
/// batches sharing jobs cannot deadlock) and read in one, each move is
/// decided in order (a job named twice sees its first move), then one
/// UPDATE, one INSERT of events and one of outputs write them all. Each
/// move's answer is its own; `Err` only for the database's failure.
///
/// Rows another transaction holds are skipped, not waited for: their
/// moves come back [`Moved::Busy`], for the caller to apply in a
/// transaction of their own. A transaction that waited for a job's row
/// after locking another would hold a transaction id older than the
/// holder's, and its event would be placed before the holder's though it
/// happened after (`events.rs`). Returns the highest position appended.
pub(super) async fn transition_all(
    tx: &mut Tx,
    moves: Vec<Move>,
    scope: Option<&Tenant>,
    now: DateTime<Utc>,
    retry: &RetryPolicy,
) -> StoreResult<(Vec<Moved>, Option<i64>)> {
    let ids: Vec<uuid::Uuid> = moves.iter().map(|m| m.id.0).collect();
    let locked = lock_jobs(tx, &ids).await?;
    transition_locked(tx, moves, locked, scope, now, retry).await
}

/// Jobs' rows this transaction holds: each one's place (`ctid`) and
/// record; and of the ids asked for, those another transaction holds.
pub(super) struct Locked {
    places: std::collections::HashMap<uuid::Uuid, String>,
    current: std::collections::HashMap<uuid::Uuid, JobRecord>,
    held: std::collections::HashSet<uuid::Uuid>,
}

impl Locked {
    /// The rows (`id`, `place`: `ctid::text`, `record`) of a statement
    /// that locked them itself (a lease's pick): none held by another.
    pub(super) fn from_rows(rows: &[sqlx::postgres::PgRow]) -> StoreResult<Locked> {
        Ok(Locked {
            places: rows.iter().map(|r| (r.get("id"), r.get("place"))).collect(),
            current: rows
                .iter()
                .map(|r| Ok((r.get::<uuid::Uuid, _>("id"), decode(r.get("record"))?)))
                .collect::<StoreResult<_>>()?,
            held: Default::default(),
        })
    }
}

/// Locks the rows of `ids` (in id order, so that two batches sharing jobs
/// cannot deadlock), skipping those another transaction holds.
async fn lock_jobs(tx: &mut Tx, ids: &[uuid::Uuid]) -> StoreResult<Locked> {
    // Each row's place (`ctid`) as well: the UPDATE of `transition_locked`
    // finds the rows by it (a TID scan), which no planner estimate can
    // turn into a scan of the whole table. A row locked here keeps its
    // place until this transaction updates it.
    let rows = sqlx::query(
        "SELECT id, ctid::text AS place, record FROM jobs WHERE id = ANY($1)
         ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    let mut locked = Locked::from_rows(&rows)?;
    // Of the jobs not locked, those that exist are held by another.
    let missing: Vec<uuid::Uuid> = ids
        .iter()
        .filter(|id| !locked.current.contains_key(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        locked.held = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
            .bind(&missing)
            .fetch_all(&mut **tx)
            .await
            .map_err(backend)?
            .into_iter()
            .collect();
    }
    Ok(locked)
}

/// [`transition_all`] of jobs whose rows are `locked` already.
pub(super) async fn transition_locked(
    tx: &mut Tx,
    moves: Vec<Move>,
    locked: Locked,
    scope: Option<&Tenant>,
    now: DateTime<Utc>,
    retry: &RetryPolicy,
) -> StoreResult<(Vec<Moved>, Option<i64>)> {
    let Locked {
        places,
        mut current,
        held,
    } = locked;
    let mut answers = Vec::with_capacity(moves.len());
    // What to write: each job's last record (by id), every event in order,
    // each job's last output.
    let mut written: std::collections::HashMap<uuid::Uuid, String> = Default::default();
    let mut events: Vec<(JobRecord, EventKind, String)> = Vec::new();
    let mut outputs: std::collections::HashMap<uuid::Uuid, JobOutput> = Default::default();
    for m in moves {
        if held.contains(&m.id.0) {
            answers.push(Moved::Busy(m));
            continue;
        }
        let Some(job) = current.get(&m.id.0).cloned() else {
            answers.push(Moved::Done(Err(StoreError::NotFound)));
            continue;
        };
        let t = match crate::record::transition(job, scope, m.cmd, m.output, now, retry) {
            Ok(t) => t,
            Err(e @ (StoreError::Backend(_) | StoreError::Unavailable(_))) => return Err(e),
            Err(e) => {
                answers.push(Moved::Done(Err(e)));
                continue;
            }
        };
        written.insert(m.id.0, t.text.clone());
        if let Some(kind) = t.event {
            events.push((t.job.clone(), kind, t.text.clone()));
        }
        if let Some(out) = t.output {
            outputs.insert(m.id.0, out);
        }
        current.insert(m.id.0, t.job.clone());
        answers.push(Moved::Done(Ok((t.job, t.refused))));
    }
    if !written.is_empty() {
        let jobs: Vec<&JobRecord> = written.keys().map(|id| &current[id]).collect();
        // Joined on the id by a hash of the batch, the rows read by their
        // places: a plain join on the id was planned as a scan of the
        // whole table while it held some thousands of jobs (its
        // statistics said a scan was cheaper than the index), each batch
        // then reading every job (3 ms at 20,000; issue 25).
        let updated = sqlx::query(
            "UPDATE jobs SET state = u.state, run_at = u.run_at,
                             lease_expires_at = u.lease_expires_at,
                             expires_at = u.expires_at, record = u.record,
                             order_at = u.order_at
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::bigint[])
                  AS u(id, state, run_at, lease_expires_at, expires_at, record, order_at)
             WHERE jobs.ctid = ANY($8::text[]::tid[]) AND jobs.id = u.id",
        )
        .bind(jobs.iter().map(|j| j.id.0).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.state.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| ms(j.run_at)).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.lease.as_ref().map(|l| ms(l.expires_at)))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| j.expires_at.map(ms))
                .collect::<Vec<_>>(),
        )
        .bind(
            jobs.iter()
                .map(|j| written[&j.id.0].as_str())
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|j| j.order_at()).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| places[&j.id.0].as_str())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await
        .map_err(backend)?
        .rows_affected();
        // Locked rows cannot have moved; should one have, the batch must
        // not commit without it.
        if updated != jobs.len() as u64 {
            return Err(StoreError::Backend(
                format!("{updated} of {} locked jobs updated", jobs.len()).into(),
            ));
        }
    }
    // In the moves' order: positions follow it.
    let appended: Vec<_> = events
        .iter()
        .map(|(job, kind, text)| (job, *kind, text.as_str()))
        .collect();
    let top = append_events(tx, &appended).await?;
    if !outputs.is_empty() {
        let outs: Vec<(&uuid::Uuid, &JobOutput)> = outputs.iter().collect();
        sqlx::query(
            "INSERT INTO job_outputs (job_id, content_type, body, upstream)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[])
             ON CONFLICT (job_id) DO UPDATE SET content_type = excluded.content_type,
                 body = excluded.body, upstream = excluded.upstream",
        )
        .bind(outs.iter().map(|(id, _)| **id).collect::<Vec<_>>())
        .bind(
            outs.iter()
                .map(|(_, o)| o.content_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            outs.iter()
                .map(|(_, o)| o.body.to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(
            outs.iter()
                .map(|(_, o)| o.upstream.as_ref().map(encode_upstream))
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    }
    Ok((answers, top))
}

pub(super) async fn delete(s: &PgStore, id: JobId) -> StoreResult<()> {
    let mut tx = s.begin().await?;
    let job = match load(&mut tx, id, true).await {
        Ok(Some(job)) => job,
        Ok(None) => return s.abort(tx, StoreError::NotFound).await,
        Err(e) => return s.abort(tx, e).await,
    };
    if !job.state.is_terminal() {
        return s
            .abort(tx, TransitionError::NotFinished(job.state).into())
            .await;
    }
    forget_history(&mut tx, &[id.0]).await?;
    sqlx::query(concat!(
        "WITH gone AS (DELETE FROM jobs WHERE id = $1 RETURNING tenant, id)",
        forget_keys_of_gone!()
    ))
    .bind(id.0)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    s.commit(tx, None).await
}

/// After `WITH gone AS (… tenant, id …)`: removes the console's keys
/// (`job_keys`) of the jobs `gone` names. Each row is found by its index
/// (tenant, id), one probe per job (`LIMIT` keeps the subquery a probe:
/// joined whole, a planner could prefer a scan of the table), and deleted
/// by its place.
macro_rules! forget_keys_of_gone {
    () => {
        " DELETE FROM job_keys WHERE ctid = ANY(ARRAY(
             SELECT k.ctid FROM gone g,
                  LATERAL (SELECT ctid FROM job_keys
                           WHERE tenant = g.tenant AND id = g.id LIMIT 1) k))"
    };
}
pub(super) use forget_keys_of_gone;

/// Removes what jobs (`ids`) have beyond their records: their results,
/// their events (raising the log's floor past them), their deliveries and
/// their output streams.
pub(super) async fn forget_history(tx: &mut Tx, ids: &[uuid::Uuid]) -> StoreResult<()> {
    for sql in [
        FORGET_EVENTS_OF_JOBS,
        "DELETE FROM job_outputs WHERE job_id = ANY($1)",
        "DELETE FROM delivery_attempts WHERE delivery_id IN
             (SELECT id FROM outbox WHERE job_id = ANY($1))",
        "DELETE FROM outbox WHERE job_id = ANY($1)",
        "DELETE FROM stream_chunks WHERE stream IN (SELECT id FROM streams WHERE job = ANY($1))",
        "DELETE FROM stream_producers WHERE stream IN
             (SELECT id FROM streams WHERE job = ANY($1))",
        "DELETE FROM streams WHERE job = ANY($1)",
    ] {
        sqlx::query(sql)
            .bind(ids)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// Jobs by queue and state, and the events the count saw: read in one
/// repeatable-read transaction with its snapshot, whose transactions
/// still running (and those not yet begun) wrote the events it did not
/// see (`events`: a position is its transaction's id × 65,536 + a shift).
pub(super) async fn counts(s: &PgStore) -> StoreResult<Counts> {
    let mut tx = s.inner.pool.begin().await.map_err(backend)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let (xmax, running, shift): (i64, Vec<i64>, i64) = sqlx::query_as(
        "SELECT pg_snapshot_xmax(s)::text::bigint,
                array(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x),
                (SELECT shift FROM event_origin)
         FROM pg_current_snapshot() AS s",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(backend)?;
    let rows = sqlx::query(
        "SELECT queue, state, count(*) AS n FROM jobs WHERE input IS NOT NULL
         GROUP BY queue, state",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    let at = |xid: i64| xid * super::events::PER_TRANSACTION + shift;
    Ok(Counts {
        jobs: rows
            .iter()
            .filter_map(|r| {
                let state = JobState::parse(r.get::<&str, _>("state"))?;
                Some(StateCount {
                    queue: r.get("queue"),
                    state,
                    count: u64::try_from(r.get::<i64, _>("n")).unwrap_or(0),
                })
            })
            .collect(),
        seen: Seen {
            below: at(xmax),
            unseen: running.into_iter().map(|x| (at(x), at(x + 1))).collect(),
        },
    })
}

pub(super) async fn load(tx: &mut Tx, id: JobId, lock: bool) -> StoreResult<Option<JobRecord>> {
    let sql = if lock {
        "SELECT record FROM jobs WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT record FROM jobs WHERE id = $1"
    };
    let text: Option<String> = sqlx::query_scalar(sql)
        .bind(id.0)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?;
    text.as_deref().map(decode).transpose()
}

pub(super) async fn update_job(tx: &mut Tx, job: &JobRecord, text: &str) -> StoreResult<()> {
    sqlx::query(
        "UPDATE jobs SET state = $2, run_at = $3, lease_expires_at = $4, expires_at = $5,
                         record = $6, order_at = $7
         WHERE id = $1",
    )
    .bind(job.id.0)
    .bind(job.state.as_str())
    .bind(ms(job.run_at))
    .bind(job.lease.as_ref().map(|l| ms(l.expires_at)))
    .bind(job.expires_at.map(ms))
    .bind(text)
    .bind(job.order_at())
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Loads (locked), applies (`record::transition` decides), writes back,
/// appends the event: every transition's one path. Returns whether an
/// event was appended: its position.
pub(super) async fn transition(
    tx: &mut Tx,
    id: JobId,
    scope: Option<&Tenant>,
    cmd: Command,
    output: Option<JobOutput>,
    now: DateTime<Utc>,
    retry: &RetryPolicy,
) -> StoreResult<(JobRecord, Option<TransitionError>, Option<i64>)> {
    let job = load(tx, id, true).await?.ok_or(StoreError::NotFound)?;
    let t = crate::record::transition(job, scope, cmd, output, now, retry)?;
    update_job(tx, &t.job, &t.text).await?;
    let top = match t.event {
        Some(kind) => append_events(tx, &[(&t.job, kind, &t.text)]).await?,
        None => None,
    };
    if let Some(out) = &t.output {
        sqlx::query(
            "INSERT INTO job_outputs (job_id, content_type, body, upstream) VALUES ($1, $2, $3, $4)
             ON CONFLICT (job_id) DO UPDATE SET content_type = $2, body = $3, upstream = $4",
        )
        .bind(id.0)
        .bind(&out.content_type)
        .bind(&out.body[..])
        .bind(out.upstream.as_ref().map(encode_upstream))
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    }
    Ok((t.job, t.refused, top))
}
