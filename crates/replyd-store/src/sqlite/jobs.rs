//! Jobs: submitting, reading, listing, moving (every transition), deleting, counting.

use super::events::{RAISE_LOG_FLOOR, append_event};
use super::writer::Events;
use super::{SqliteStore, backend};
use crate::listing;
use crate::record::{decode, decode_upstream, encode_upstream, json_err, ms};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::event::EventKind;
use replyd_core::job::{
    Command, FAIR_STEP_MS, JobRecord, JobState, NewJob, RetryPolicy, TransitionError, fair_start,
};
use replyd_core::store::{
    Counts, JobOutput, JobPage, ListQuery, Move, Seen, StateCount, StoreError, StoreResult,
    Submitted,
};
use replyd_core::{JobId, Tenant};
use rusqlite::{Connection, OptionalExtension, params};

pub(super) async fn submit(
    s: &SqliteStore,
    new: NewJob,
    now: DateTime<Utc>,
) -> StoreResult<Submitted> {
    // Serialize here, off the writer thread: it is the hot path.
    let (job, input) = new.into_record(now);
    let text = serde_json::to_string(&job).map_err(json_err)?;
    s.write(move |conn, events| {
        if let Some(key) = &job.idempotency_key {
            let found: Option<String> = conn
                .prepare_cached(
                    "SELECT record FROM jobs WHERE tenant = ?1 AND idempotency_key = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![job.tenant.0, key], |r| r.get(0))
                        .optional()
                })
                .map_err(backend)?;
            if let Some(found) = found {
                let existing = decode(&found)?;
                return if existing.request_hash == job.request_hash {
                    Ok(Submitted::Existing(existing))
                } else {
                    Err(StoreError::IdempotencyMismatch)
                };
            }
        }
        // A scheduled job takes its turn when it is queued (its due time).
        let order_at = match &job.group {
            Some(group) if job.state == JobState::Queued => fair_order(conn, &job, group, ms(now))?,
            _ => job.order_at(),
        };
        insert_job(conn, &job, &input, &text, order_at)?;
        append_event(conn, events, &job, EventKind::Accepted, &text)?;
        Ok(Submitted::Created(job))
    })
    .await
}

pub(super) async fn get(s: &SqliteStore, id: JobId) -> StoreResult<Option<JobRecord>> {
    s.read(move |conn| load(conn, id)).await
}

pub(super) async fn input(s: &SqliteStore, id: JobId) -> StoreResult<Option<Bytes>> {
    s.read(move |conn| {
        conn.prepare_cached("SELECT input FROM jobs WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([id_bytes(id)], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
            })
            .map(|o| o.map(Bytes::from))
            .map_err(backend)
    })
    .await
}

pub(super) async fn output(s: &SqliteStore, id: JobId) -> StoreResult<Option<JobOutput>> {
    s.read(move |conn| {
        conn.prepare_cached(
            "SELECT content_type, body, upstream FROM job_outputs WHERE job_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([id_bytes(id)], |r| {
                Ok(JobOutput {
                    content_type: r.get(0)?,
                    body: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                    upstream: r
                        .get::<_, Option<String>>(2)?
                        .and_then(|u| decode_upstream(&u)),
                })
            })
            .optional()
        })
        .map_err(backend)
    })
    .await
}

/// Jobs newest first (see `crate::listing`): the key filters in the
/// WHERE clause, walking the index `listing::access` names, the others a
/// predicate read with each row; SQLite steps rows lazily, so the walk
/// stops reading where the page is done.
pub(super) async fn list(s: &SqliteStore, q: ListQuery) -> StoreResult<JobPage> {
    s.read(move |conn| {
        let (sql, args) = list_sql(&q);
        let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args))
            .map_err(backend)?;
        let mut walk = listing::Walk::new(&q);
        while let Some(row) = rows.next().map_err(backend)? {
            let id = JobId(uuid::Uuid::from_bytes(
                row.get::<_, [u8; 16]>(0).map_err(backend)?,
            ));
            let matched = row.get::<_, bool>(1).map_err(backend)?;
            let record = matched.then_some(|| {
                row.get::<_, String>(2)
                    .map_err(backend)
                    .and_then(|t| decode(&t))
            });
            if !walk.take(id, record)? {
                break;
            }
        }
        Ok(walk.finish())
    })
    .await
}

/// A listing's statement and its arguments.
pub(super) fn list_sql(q: &ListQuery) -> (String, Vec<rusqlite::types::Value>) {
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut arg = |v: rusqlite::types::Value| {
        args.push(v);
        format!("?{}", args.len())
    };
    let mut tests = Vec::new();
    if let Some(queue) = &q.queue {
        tests.push(format!("queue = {}", arg(queue.clone().into())));
    }
    if let Some(state) = q.state {
        tests.push(format!(
            "state = {}",
            arg(state.as_str().to_string().into())
        ));
    }
    if let Some(text) = &q.text {
        let p = arg(listing::like_pattern(text).into());
        tests.push(format!(
            "(CAST(input AS TEXT) LIKE {p} ESCAPE '\\' \
              OR json_extract(record, '$.error.message') LIKE {p} ESCAPE '\\')"
        ));
    }
    let test = if tests.is_empty() {
        "1".to_string()
    } else {
        format!("coalesce({}, 0)", tests.join(" AND "))
    };
    let mut sql = match listing::access(q) {
        listing::Access::Ended(state) => format!(
            "SELECT id, {test}, record FROM jobs INDEXED BY jobs_{state} WHERE state = '{state}'"
        ),
        listing::Access::Queue => {
            format!("SELECT id, {test}, record FROM jobs INDEXED BY jobs_queue WHERE queue = ?1")
        }
        listing::Access::Key => format!("SELECT id, {test}, record FROM jobs WHERE 1 = 1"),
    };
    if let Some(t) = &q.tenant {
        sql += &format!(" AND tenant = {}", arg(t.0.clone().into()));
    }
    if let Some(key) = &q.idempotency_key {
        sql += &format!(" AND idempotency_key = {}", arg(key.clone().into()));
    }
    let (lower, upper) = listing::bounds(q);
    if let Some(l) = lower {
        sql += &format!(" AND id >= {}", arg(id_bytes(l).to_vec().into()));
    }
    if let Some(u) = upper {
        sql += &format!(" AND id < {}", arg(id_bytes(u).to_vec().into()));
    }
    sql += " ORDER BY id DESC";
    (sql, args)
}

pub(super) async fn apply(
    s: &SqliteStore,
    id: JobId,
    scope: Option<&Tenant>,
    cmd: Command,
    output: Option<JobOutput>,
    now: DateTime<Utc>,
) -> StoreResult<JobRecord> {
    let retry = s.inner.retry;
    let scope = scope.cloned();
    let (job, refused) = s
        .write(move |conn, events| {
            let step = Step {
                id,
                scope: scope.as_ref(),
                cmd,
                output,
                now,
            };
            transition(conn, events, step, &retry)
        })
        .await?;
    match refused {
        Some(e) => Err(StoreError::Transition(e)),
        None => Ok(job),
    }
}

/// Every move in one write (so in one commit), each answered on its own:
/// a move the job refuses (or a job not found) is that move's answer and
/// changes nothing; only the store's own failure fails them all (and rolls
/// back the commit they were in).
pub(super) async fn apply_many(
    s: &SqliteStore,
    scope: Option<&Tenant>,
    moves: Vec<Move>,
    now: DateTime<Utc>,
) -> StoreResult<Vec<StoreResult<JobRecord>>> {
    let retry = s.inner.retry;
    let scope = scope.cloned();
    s.write(move |conn, events| {
        let mut answers = Vec::with_capacity(moves.len());
        for m in moves {
            let step = Step {
                id: m.id,
                scope: scope.as_ref(),
                cmd: m.cmd,
                output: m.output,
                now,
            };
            answers.push(match transition(conn, events, step, &retry) {
                Ok((job, None)) => Ok(job),
                Ok((_, Some(refused))) => Err(StoreError::Transition(refused)),
                Err(e @ (StoreError::Backend(_) | StoreError::Unavailable(_))) => return Err(e),
                Err(e) => Err(e),
            });
        }
        Ok(answers)
    })
    .await
}

pub(super) async fn delete(s: &SqliteStore, id: JobId) -> StoreResult<()> {
    s.write(move |conn, _| {
        let job = load(conn, id)?.ok_or(StoreError::NotFound)?;
        if !job.state.is_terminal() {
            return Err(TransitionError::NotFinished(job.state).into());
        }
        let key = id_bytes(id);
        forget_history(conn, key)?;
        conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")
            .and_then(|mut s| s.execute([key]))
            .map_err(backend)?;
        Ok(())
    })
    .await
}

/// Jobs by queue and state, and the last event the count saw: both read
/// in one transaction, so one snapshot (event ids are in commit order).
pub(super) async fn counts(s: &SqliteStore) -> StoreResult<Counts> {
    s.read(|conn| {
        let tx = conn.unchecked_transaction().map_err(backend)?;
        let mut stmt = tx
            .prepare_cached(
                "SELECT queue, state, count(*) FROM jobs WHERE input IS NOT NULL
                 GROUP BY queue, state",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(backend)?;
        let mut jobs = Vec::new();
        for row in rows {
            let (queue, state, count) = row.map_err(backend)?;
            if let Some(state) = JobState::parse(&state) {
                jobs.push(StateCount {
                    queue,
                    state,
                    count: u64::try_from(count).unwrap_or(0),
                });
            }
        }
        drop(stmt);
        // The log's counter, not its highest row: events may have been
        // collected.
        let last: i64 = tx
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(backend)?;
        tx.finish().map_err(backend)?;
        Ok(Counts {
            jobs,
            seen: Seen {
                below: last + 1,
                unseen: Vec::new(),
            },
        })
    })
    .await
}

/// Removes what a job (`key`) has beyond its record: its result, its
/// events (raising the log's floor past them first), its deliveries and
/// its output stream.
pub(super) fn forget_history(conn: &Connection, key: [u8; 16]) -> StoreResult<()> {
    for sql in [
        RAISE_LOG_FLOOR,
        "DELETE FROM job_outputs WHERE job_id = ?1",
        "DELETE FROM events WHERE job_id = ?1",
        "DELETE FROM delivery_attempts WHERE delivery_id IN
             (SELECT id FROM outbox WHERE job_id = ?1)",
        "DELETE FROM outbox WHERE job_id = ?1",
        "DELETE FROM stream_chunks WHERE stream IN (SELECT id FROM streams WHERE job = ?1)",
        "DELETE FROM stream_producers WHERE stream IN (SELECT id FROM streams WHERE job = ?1)",
        "DELETE FROM streams WHERE job = ?1",
    ] {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([key]))
            .map_err(backend)?;
    }
    Ok(())
}

pub(super) fn id_bytes(id: JobId) -> [u8; 16] {
    *id.0.as_bytes()
}

pub(super) fn load(conn: &Connection, id: JobId) -> StoreResult<Option<JobRecord>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT record FROM jobs WHERE id = ?1")
        .and_then(|mut s| s.query_row([id_bytes(id)], |r| r.get(0)).optional())
        .map_err(backend)?;
    text.as_deref().map(decode).transpose()
}

/// A grouped job's place in its queue's order: its group's turn
/// (`fair_start`), less its priority's head start. Moves the group's clock.
fn fair_order(conn: &Connection, job: &JobRecord, group: &str, now: i64) -> StoreResult<i64> {
    let head: Option<i64> = conn
        .prepare_cached("SELECT min(order_at) FROM jobs WHERE queue = ?1 AND state = 'queued'")
        .and_then(|mut s| s.query_row([&job.queue], |r| r.get(0)))
        .map_err(backend)?;
    let clock: Option<i64> = conn
        .prepare_cached(
            "SELECT tag FROM group_clocks WHERE queue = ?1 AND tenant = ?2 AND grp = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![job.queue, job.tenant.0, group], |r| r.get(0))
                .optional()
        })
        .map_err(backend)?;
    let start = fair_start(head, clock, now);
    conn.prepare_cached(
        "INSERT INTO group_clocks (queue, tenant, grp, tag) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (queue, tenant, grp) DO UPDATE SET tag = excluded.tag",
    )
    .and_then(|mut s| {
        s.execute(params![
            job.queue,
            job.tenant.0,
            group,
            start + FAIR_STEP_MS
        ])
    })
    .map_err(backend)?;
    Ok(start.saturating_sub(i64::try_from(job.head_start_ms).unwrap_or(i64::MAX)))
}

pub(super) fn insert_job(
    conn: &Connection,
    job: &JobRecord,
    input: &[u8],
    text: &str,
    order_at: i64,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO jobs (id, tenant, queue, state, run_at, lease_expires_at, expires_at,
                           idempotency_key, input, record, order_at)
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id_bytes(job.id),
            job.tenant.0,
            job.queue,
            job.state.as_str(),
            ms(job.run_at),
            job.idempotency_key,
            input,
            text,
            order_at
        ])
    })
    .map_err(backend)?;
    Ok(())
}

pub(super) fn update_job(conn: &Connection, job: &JobRecord, text: &str) -> StoreResult<()> {
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, run_at = ?3, lease_expires_at = ?4, expires_at = ?5,
                         record = ?6, order_at = ?7
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id_bytes(job.id),
            job.state.as_str(),
            ms(job.run_at),
            job.lease.as_ref().map(|l| ms(l.expires_at)),
            job.expires_at.map(ms),
            text,
            job.order_at()
        ])
    })
    .map_err(backend)?;
    Ok(())
}

/// One transition to make.
pub(super) struct Step<'a> {
    pub id: JobId,
    /// Refuse (as not found) a job of another tenant.
    pub scope: Option<&'a Tenant>,
    pub cmd: Command,
    pub output: Option<JobOutput>,
    pub now: DateTime<Utc>,
}

/// Loads a job, applies the command (`record::transition` decides), writes
/// the job, its event and its result. The shared path of every transition.
pub(super) fn transition(
    conn: &Connection,
    events: &mut Events,
    step: Step<'_>,
    retry: &RetryPolicy,
) -> StoreResult<(JobRecord, Option<TransitionError>)> {
    let job = load(conn, step.id)?.ok_or(StoreError::NotFound)?;
    transition_loaded(conn, events, job, step, retry)
}

/// [`transition`] of a job already read (in this transaction) by its
/// caller.
pub(super) fn transition_loaded(
    conn: &Connection,
    events: &mut Events,
    job: JobRecord,
    step: Step<'_>,
    retry: &RetryPolicy,
) -> StoreResult<(JobRecord, Option<TransitionError>)> {
    let Step {
        id,
        scope,
        cmd,
        output,
        now,
    } = step;
    let t = crate::record::transition(job, scope, cmd, output, now, retry)?;
    update_job(conn, &t.job, &t.text)?;
    if let Some(kind) = t.event {
        append_event(conn, events, &t.job, kind, &t.text)?;
    }
    if let Some(out) = &t.output {
        let upstream = out.upstream.as_ref().map(encode_upstream);
        conn.prepare_cached(
            "INSERT OR REPLACE INTO job_outputs (job_id, content_type, body, upstream)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id_bytes(id),
                out.content_type,
                &out.body[..],
                upstream
            ])
        })
        .map_err(backend)?;
    }
    Ok((t.job, t.refused))
}

pub(super) fn query_ids(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<JobId>> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(params, |r| r.get::<_, [u8; 16]>(0))
        .map_err(backend)?;
    rows.map(|r| r.map(|b| JobId(uuid::Uuid::from_bytes(b))).map_err(backend))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use replyd_core::job::JobState;

    /// The plan SQLite makes for a listing: each access path walks its
    /// index newest first, with no sort of what it finds (a sort reads
    /// every match before the first row comes back).
    fn plan(q: &ListQuery) -> String {
        let (sql, args) = list_sql(q);
        super::super::query_plan(&sql, args)
    }

    #[test]
    fn each_listing_walks_its_index_without_sorting() {
        let tenant = Some(Tenant("t".into()));
        let cases: [(ListQuery, &str); 6] = [
            (ListQuery::default(), "SCAN jobs"),
            (
                ListQuery {
                    tenant: tenant.clone(),
                    ..Default::default()
                },
                "jobs_tenant",
            ),
            (
                ListQuery {
                    tenant: tenant.clone(),
                    state: Some(JobState::Failed),
                    text: Some("x".into()),
                    ..Default::default()
                },
                "jobs_failed",
            ),
            (
                ListQuery {
                    state: Some(JobState::Canceled),
                    queue: Some("q".into()),
                    ..Default::default()
                },
                "jobs_canceled",
            ),
            (
                ListQuery {
                    queue: Some("q".into()),
                    state: Some(JobState::Succeeded),
                    ..Default::default()
                },
                "jobs_queue",
            ),
            (
                ListQuery {
                    idempotency_key: Some("k".into()),
                    ..Default::default()
                },
                "jobs_idempotency_any",
            ),
        ];
        for (q, index) in cases {
            let p = plan(&q);
            assert!(p.contains(index), "{q:?}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{q:?} sorts: {p}");
        }
    }
}
