//! Leases: handing queued jobs to workers (`FOR UPDATE SKIP LOCKED`), and taking back the ones whose lease ran out.

use super::jobs::{Locked, Moved, transition, transition_locked};
use super::{PgStore, backend};
use crate::record::{from_ms, ms};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::job::{Command, JobRecord, JobState};
use replyd_core::store::{LeaseQuery, Leased, Move, Rate, StoreError, StoreResult};
use replyd_core::{JobId, LeaseId};
use sqlx::Row;
use uuid::Uuid;

/// The jobs a lease takes: `$1` queue, `$2` now (ms), `$3` tenant or
/// NULL, `$4` how many, from (`$5` order_at, `$6` id) on (the scan
/// floor). `jobs_ready` serves the order (`JobRecord::order_at`: run_at
/// less the priority's head start), so the scan starts at the floor and
/// stops at the limit. With each row's place and record, for the
/// transition (`jobs::Locked`): the rows are not looked up again.
pub(super) const LEASE: &str = "SELECT id, input, order_at, ctid::text AS place, record FROM jobs
     WHERE queue = $1 AND state = 'queued' AND run_at <= $2
       AND ($3::text IS NULL OR tenant = $3)
       AND (order_at, id) >= ($5, $6)
       AND NOT EXISTS (SELECT 1 FROM queue_pauses WHERE queue = $1)
     ORDER BY order_at, id LIMIT $4
     FOR UPDATE SKIP LOCKED";

/// How often a lease of a queue scans from the start rather than from its
/// floor: the longest a job below the floor waits.
const FULL_SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How far behind the last job leased a floor stays (ms): longer than a
/// submit takes from taking its `run_at` to its commit.
const FLOOR_LAG: i64 = 250;

/// Queues (with tenants) whose floors a node keeps at most.
const MAX_FLOORS: usize = 10_000;

/// Where a queue's lease scan starts: [`FLOOR_LAG`] before the last job
/// this node leased from it. A leased job leaves `jobs_ready`, but its
/// index entry stays until vacuum removes it, and vacuum cannot while any
/// snapshot older than the lease is open (a long report): a scan from the
/// start walks every such entry, and leases slowed as a run went on
/// (issue 25's held horizon: end to end at 0.53 of its figure). Every
/// queued job below the last one leased was leased too, or was held by
/// another lease, or had not committed yet; a job's `run_at` is set when
/// it is submitted, before its commit, hence the lag. A job of a higher
/// priority (an earlier order_at), or one queued late (a scheduled job coming
/// due), lowers the floor to it when its event is read ([`Floors::saw`]).
/// One that still comes in below the floor (a submit slower than the lag,
/// a lease that rolled back, a node's clock behind) is found by a scan
/// from the start, at least every [`FULL_SCAN_EVERY`].
#[derive(Debug, Default)]
pub(super) struct Floors(std::sync::Mutex<std::collections::HashMap<FloorKey, Floor>>);

type FloorKey = (String, Option<String>);

/// A place in the lease order: (order_at, id).
type Place = (i64, Uuid);

#[derive(Debug, Clone, Copy)]
struct Floor {
    order_at: i64,
    id: Uuid,
    /// When a lease last scanned this queue from the start.
    full_at: std::time::Instant,
}

impl Floors {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<FloorKey, Floor>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where to scan from: the floor, or the start (`None`) when there is
    /// none or a scan from the start is due.
    fn start(&self, key: &FloorKey) -> Option<Place> {
        self.lock()
            .get(key)
            .filter(|f| f.full_at.elapsed() < FULL_SCAN_EVERY)
            .map(Floor::place)
    }

    /// Jobs as they were committed (this node's submits and promotions
    /// at once, every node's as the log is read): one queued below a
    /// floor of its queue (and tenant) lowers it to the job.
    ///
    /// A grouped job's place is its group's turn, which its record does
    /// not say: read from the log, it counts as `JobRecord::order_at`,
    /// and one placed lower still is found by the next scan from the start.
    pub(super) fn saw<'a>(&self, jobs: impl IntoIterator<Item = &'a JobRecord>) {
        self.saw_at(
            jobs.into_iter()
                .filter(|j| j.state == JobState::Queued)
                .map(|j| (j, j.order_at())),
        );
    }

    /// Queued jobs at their places in the order.
    pub(super) fn saw_at<'a>(&self, jobs: impl IntoIterator<Item = (&'a JobRecord, i64)>) {
        let mut floors = self.lock();
        if floors.is_empty() {
            return;
        }
        for (job, order_at) in jobs {
            let place = (order_at, job.id.0);
            // The floors of the job's queue: every tenant's, and its own's.
            for tenant in [None, Some(job.tenant.0.clone())] {
                if let Some(f) = floors.get_mut(&(job.queue.clone(), tenant))
                    && place < f.place()
                {
                    (f.order_at, f.id) = place;
                }
            }
        }
    }

    /// After a lease (committed) that scanned from `from` and took jobs up
    /// to `last` (`None`: none).
    fn moved(&self, key: FloorKey, from: Option<Place>, last: Option<Place>) {
        let mut floors = self.lock();
        if floors.len() >= MAX_FLOORS && !floors.contains_key(&key) {
            floors.clear();
        }
        let now = std::time::Instant::now();
        match (floors.get_mut(&key), last) {
            (Some(f), Some(place)) => {
                if place > f.place() || from.is_none() {
                    (f.order_at, f.id) = place;
                }
                if from.is_none() {
                    f.full_at = now;
                }
            }
            (Some(f), None) => {
                if from.is_none() {
                    f.full_at = now;
                }
            }
            (None, Some((order_at, id))) => {
                floors.insert(
                    key,
                    Floor {
                        order_at,
                        id,
                        full_at: now,
                    },
                );
            }
            (None, None) => {}
        }
    }

    /// The lowest fresh floor of a queue's leases, whatever their tenant
    /// (for `next_run_at`, which is asked after a lease of any tenant).
    fn of_queue(&self, queue: &str) -> Option<Place> {
        self.lock()
            .iter()
            .filter(|((q, _), f)| q == queue && f.full_at.elapsed() < FULL_SCAN_EVERY)
            .map(|(_, f)| f.place())
            .min()
    }
}

impl Floor {
    fn place(&self) -> Place {
        (self.order_at, self.id)
    }
}

pub(super) async fn lease(
    s: &PgStore,
    q: LeaseQuery,
    now: DateTime<Utc>,
) -> StoreResult<Vec<Leased>> {
    let key: FloorKey = (q.queue.clone(), q.tenant.as_ref().map(|t| t.0.clone()));
    let from = s.inner.floors.start(&key);
    let (from_order_at, from_id) = from.unwrap_or((i64::MIN, Uuid::nil()));
    let mut tx = s.begin().await?;
    let allowed = if q.limits.any() {
        allowed(&mut tx, &q, now).await?
    } else {
        q.max
    };
    if allowed == 0 {
        tx.rollback().await.map_err(backend)?;
        return Ok(Vec::new());
    }
    let picked = sqlx::query(LEASE)
        .bind(&q.queue)
        .bind(ms(now))
        .bind(q.tenant.as_ref().map(|t| t.0.as_str()))
        .bind(i64::from(allowed))
        .bind(from_order_at)
        .bind(from_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
    let mut inputs = Vec::with_capacity(picked.len());
    let mut moves = Vec::with_capacity(picked.len());
    for row in &picked {
        let lease_id = LeaseId::new();
        moves.push(Move {
            id: JobId(row.get::<Uuid, _>("id")),
            cmd: Command::Lease {
                lease_id: lease_id.clone(),
                worker: q.worker.clone(),
                length: q.length,
            },
            output: None,
        });
        let input: Option<Vec<u8>> = row.get("input");
        inputs.push((lease_id, Bytes::from(input.unwrap_or_default())));
    }
    // The rows are ours (locked above): every lease is granted.
    let locked = Locked::from_rows(&picked)?;
    let (moved, appended) =
        transition_locked(&mut tx, moves, locked, None, now, &s.inner.retry).await?;
    let mut leased = Vec::with_capacity(moved.len());
    for (m, (lease_id, input)) in moved.into_iter().zip(inputs) {
        let (job, _) = match m {
            Moved::Done(r) => r?,
            // Our own locks are never skipped.
            Moved::Busy(_) => {
                return s
                    .abort(tx, StoreError::Backend("a leased row was held".into()))
                    .await;
            }
        };
        leased.push(Leased {
            job,
            input,
            lease_id,
        });
    }
    if let Some(rate) = q.limits.rate {
        spend(&mut tx, &q.queue, rate, now, leased.len()).await?;
    }
    s.commit(tx, appended).await?;
    let last = picked
        .last()
        .map(|r| (r.get::<i64, _>("order_at") - FLOOR_LAG, Uuid::nil()));
    s.inner.floors.moved(key, from, last);
    Ok(leased)
}

/// The advisory locks of limited queues: (this class, the queue's hash).
const LIMITS_LOCK: i32 = 0x7265_706c; // "repl"

/// How many jobs a lease may take: its `max`, less what the queue's
/// limits leave (its running jobs against `max_running`, the tokens in
/// its bucket). Takes the queue's advisory lock first, which the other
/// leases of the queue wait for until this one commits: what they read
/// then includes its jobs and its spent tokens, on every node.
async fn allowed(tx: &mut super::Tx, q: &LeaseQuery, now: DateTime<Utc>) -> StoreResult<u32> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(LIMITS_LOCK)
        .bind(&q.queue)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    let mut allowed = q.max;
    if let Some(cap) = q.limits.max_running {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'running'")
                .bind(&q.queue)
                .fetch_one(&mut **tx)
                .await
                .map_err(backend)?;
        let left = i64::from(cap).saturating_sub(running).max(0);
        allowed = allowed.min(u32::try_from(left).unwrap_or(0));
    }
    if let Some(rate) = q.limits.rate {
        let tokens = rate.available(bucket(tx, &q.queue).await?, ms(now));
        allowed = allowed.min(tokens.max(0.0).floor() as u32);
    }
    Ok(allowed)
}

async fn bucket(tx: &mut super::Tx, queue: &str) -> StoreResult<Option<(f64, i64)>> {
    sqlx::query_as("SELECT tokens, at FROM queue_buckets WHERE queue = $1")
        .bind(queue)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)
}

/// Takes `n` tokens from the queue's bucket (under the queue's lock).
async fn spend(
    tx: &mut super::Tx,
    queue: &str,
    rate: Rate,
    now: DateTime<Utc>,
    n: usize,
) -> StoreResult<()> {
    let left = rate.available(bucket(tx, queue).await?, ms(now)) - n as f64;
    sqlx::query(
        "INSERT INTO queue_buckets (queue, tokens, at) VALUES ($1, $2, $3)
         ON CONFLICT (queue) DO UPDATE SET tokens = excluded.tokens, at = excluded.at",
    )
    .bind(queue)
    .bind(left)
    .bind(ms(now))
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

pub(super) async fn expire_leases(
    s: &PgStore,
    now: DateTime<Utc>,
    limit: u32,
) -> StoreResult<usize> {
    let mut tx = s.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= $1
         LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(ms(now))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(backend)?;
    let mut top = None;
    for &id in &ids {
        let (_, _, appended) = transition(
            &mut tx,
            JobId(id),
            None,
            Command::ExpireLease,
            None,
            now,
            &s.inner.retry,
        )
        .await?;
        top = top.max(appended);
    }
    s.commit(tx, top).await?;
    Ok(ids.len())
}

pub(super) async fn promote_due(s: &PgStore, now: DateTime<Utc>, limit: u32) -> StoreResult<usize> {
    let mut tx = s.begin().await?;
    let due = sqlx::query(
        "SELECT id, ctid::text AS place, record FROM jobs
         WHERE state = 'scheduled' AND run_at <= $1
         ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(ms(now))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(backend)?;
    let moves = due
        .iter()
        .map(|r| Move {
            id: JobId(r.get("id")),
            cmd: Command::Promote,
            output: None,
        })
        .collect();
    // The rows are ours (locked above).
    let locked = Locked::from_rows(&due)?;
    let (moved, appended) =
        transition_locked(&mut tx, moves, locked, None, now, &s.inner.retry).await?;
    let mut queued = Vec::with_capacity(moved.len());
    for m in moved {
        match m {
            Moved::Done(r) => queued.push(r?.0),
            Moved::Busy(_) => {
                return s
                    .abort(tx, StoreError::Backend("a promoted row was held".into()))
                    .await;
            }
        }
    }
    s.commit(tx, appended).await?;
    s.inner.floors.saw(&queued);
    Ok(queued.len())
}

pub(super) async fn next_due(s: &PgStore) -> StoreResult<Option<DateTime<Utc>>> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT min(run_at) FROM jobs WHERE state = 'scheduled'")
            .fetch_one(&s.inner.pool)
            .await
            .map_err(backend)?;
    Ok(v.and_then(DateTime::from_timestamp_millis))
}

pub(super) async fn next_run_at(s: &PgStore, queue: &str) -> StoreResult<Option<DateTime<Utc>>> {
    // From the queue's floor, as a lease scans: a job below it is found by
    // the next scan from the start.
    let (order_at, id) = s
        .inner
        .floors
        .of_queue(queue)
        .unwrap_or((i64::MIN, Uuid::nil()));
    let v: Option<i64> = sqlx::query_scalar(
        "SELECT min(run_at) FROM jobs
         WHERE queue = $1 AND state = 'queued' AND (order_at, id) >= ($2, $3)
           AND NOT EXISTS (SELECT 1 FROM queue_pauses WHERE queue = $1)",
    )
    .bind(queue)
    .bind(order_at)
    .bind(id)
    .fetch_one(&s.inner.pool)
    .await
    .map_err(backend)?;
    Ok(v.and_then(DateTime::from_timestamp_millis))
}

pub(super) async fn pause_queue(
    s: &PgStore,
    queue: &str,
    paused: bool,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let sql = if paused {
        "INSERT INTO queue_pauses (queue, paused_at) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM queue_pauses WHERE queue = $1 AND $2::bigint IS NOT NULL"
    };
    let done = sqlx::query(sql)
        .bind(queue)
        .bind(ms(now))
        .execute(&s.inner.pool)
        .await
        .map_err(backend)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn paused_queues(s: &PgStore) -> StoreResult<Vec<(String, DateTime<Utc>)>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT queue, paused_at FROM queue_pauses ORDER BY queue")
            .fetch_all(&s.inner.pool)
            .await
            .map_err(backend)?;
    Ok(rows.into_iter().map(|(q, at)| (q, from_ms(at))).collect())
}
