//! Fair share: a grouped job's place in its queue's order is its group's
//! turn (`replyd_core::job::fair_start`), read and moved in the submit's
//! transaction, for a batch of submits at once.

use std::collections::{BTreeMap, HashMap};

use replyd_core::job::{FAIR_STEP_MS, JobRecord, JobState, fair_start};
use replyd_core::store::StoreResult;

use super::{Tx, backend};

type Key<'a> = (&'a str, &'a str, &'a str);

/// The places in their queues' order of the grouped jobs among `jobs`
/// (queued ones: a scheduled job takes its turn when it is queued), by
/// id. Each group's clock moves on by its jobs; the clocks are locked in
/// key order, so that batches on other nodes wait rather than deadlock.
pub(super) async fn places(
    tx: &mut Tx,
    jobs: &[&JobRecord],
    now: i64,
) -> StoreResult<HashMap<uuid::Uuid, i64>> {
    // Each group's jobs, in the batch's order.
    let mut groups: BTreeMap<Key, Vec<&JobRecord>> = BTreeMap::new();
    for job in jobs {
        if let (Some(g), JobState::Queued) = (&job.group, job.state) {
            groups
                .entry((&job.queue, &job.tenant.0, g))
                .or_default()
                .push(job);
        }
    }
    if groups.is_empty() {
        return Ok(HashMap::new());
    }
    let mut queues: Vec<&str> = groups.keys().map(|k| k.0).collect();
    queues.dedup();
    let heads: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT q, (SELECT min(order_at) FROM jobs WHERE queue = q AND state = 'queued')
         FROM unnest($1::text[]) AS q",
    )
    .bind(&queues)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    let heads: HashMap<String, Option<i64>> = heads.into_iter().collect();
    // A new clock is the queue's head plus its jobs' steps; one already
    // there moves from where it was if that is later (the greater of the
    // two, as `fair_start` says).
    let span = |n: usize| n as i64 * FAIR_STEP_MS;
    let rows: Vec<(Key, i64, i64)> = groups
        .iter()
        .map(|(k, js)| {
            let head = fair_start(heads.get(k.0).copied().flatten(), None, now);
            (*k, head, span(js.len()))
        })
        .collect();
    let moved: Vec<(String, String, String, i64)> = sqlx::query_as(
        "WITH b AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
                 AS b(queue, tenant, grp, head, span)
         )
         INSERT INTO group_clocks AS c (queue, tenant, grp, tag)
         SELECT queue, tenant, grp, head + span FROM b ORDER BY queue, tenant, grp
         ON CONFLICT (queue, tenant, grp) DO UPDATE SET tag = greatest(
             excluded.tag,
             c.tag + (SELECT b.span FROM b WHERE (b.queue, b.tenant, b.grp)
                                                  = (excluded.queue, excluded.tenant, excluded.grp)))
         RETURNING queue, tenant, grp, tag",
    )
    .bind(rows.iter().map(|r| r.0.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.0.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.0.2).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    let mut out = HashMap::new();
    for (queue, tenant, grp, tag) in moved {
        let Some(js) = groups.get(&(queue.as_str(), tenant.as_str(), grp.as_str())) else {
            continue;
        };
        let start = tag - span(js.len());
        for (i, job) in js.iter().enumerate() {
            let head_start = i64::try_from(job.head_start_ms).unwrap_or(i64::MAX);
            out.insert(job.id.0, (start + span(i)).saturating_sub(head_start));
        }
    }
    Ok(out)
}
