//! What both stores share to list jobs ([`replyd_core::store::ListQuery`]):
//! the id bounds a query's cursor and time range make, the LIKE pattern of
//! a text search, and the walk that turns a newest-first scan into a page.
//!
//! Each store reads rows newest first by the filters an index serves
//! (tenant, the id bounds, the idempotency key); the others (queue, state,
//! text) are a predicate tested on each row, and then the scan stops after
//! [`SEARCH_SCAN`] rows, so that no query reads more than that however
//! rare its matches are.

use replyd_core::JobId;
use replyd_core::job::{JobRecord, JobState};
use replyd_core::store::{JobPage, ListQuery, SEARCH_SCAN, StoreResult};

/// The bounds of a listing: ids below `upper` (the cursor, or the end of
/// the time range, whichever is lower) and at or above `lower`.
pub(crate) fn bounds(q: &ListQuery) -> (Option<JobId>, Option<JobId>) {
    let until = q.until.map(JobId::first_at);
    let upper = match (q.before, until) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (q.since.map(JobId::first_at), upper)
}

/// The index a listing walks, newest first: the narrowest its filters
/// give. Each is in both stores' schemas (PostgreSQL's by tenant and by
/// queue on `job_keys`: `postgres/jobs.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// `jobs_failed` or `jobs_canceled`: the jobs that ended so (the
    /// state as a literal, which a partial index needs to be used).
    Ended(&'static str),
    /// `jobs_queue`: one queue's jobs.
    Queue,
    /// The primary key, the tenant's (`jobs_tenant`) or an idempotency
    /// key's, as the planner takes them.
    Key,
}

pub(crate) fn access(q: &ListQuery) -> Access {
    match q.state {
        _ if q.idempotency_key.is_some() => Access::Key,
        Some(JobState::Failed) => Access::Ended("failed"),
        Some(JobState::Canceled) => Access::Ended("canceled"),
        _ if q.queue.is_some() => Access::Queue,
        _ => Access::Key,
    }
}

/// Whether the query tests rows (queue, state or text), so that its scan
/// is bounded.
pub(crate) fn filters_rows(q: &ListQuery) -> bool {
    q.queue.is_some() || q.state.is_some() || q.text.is_some()
}

/// How many rows a query with a row filter reads at most.
pub(crate) fn scan_bound(q: &ListQuery) -> u32 {
    q.scan.unwrap_or(SEARCH_SCAN).max(1)
}

/// `%text%` for LIKE with `\` as the escape, the text's own `%`, `_` and
/// `\` escaped.
pub(crate) fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Builds a page from rows read newest first: each row's id, whether it
/// matches, and (when it does) its record, decoded lazily. SQLite's walk
/// (it steps rows one by one); PostgreSQL's statement returns only the
/// matches and the scan's last row, and makes its page from those.
pub(crate) struct Walk {
    limit: usize,
    /// The most rows to read; `None`: unbounded (no row filter).
    bound: Option<u32>,
    scanned: u32,
    page: JobPage,
}

impl Walk {
    pub(crate) fn new(q: &ListQuery) -> Walk {
        Walk {
            limit: q.limit as usize,
            bound: filters_rows(q).then(|| scan_bound(q)),
            scanned: 0,
            page: JobPage::default(),
        }
    }

    /// Takes one row; `false` once the page is done (full, or the scan at
    /// its bound).
    pub(crate) fn take(
        &mut self,
        id: JobId,
        record: Option<impl FnOnce() -> StoreResult<JobRecord>>,
    ) -> StoreResult<bool> {
        self.scanned += 1;
        if let Some(record) = record {
            self.page.jobs.push(record()?);
            if self.page.jobs.len() >= self.limit {
                self.page.next = Some(id);
                return Ok(false);
            }
        }
        if self.bound.is_some_and(|b| self.scanned >= b) {
            self.page.next = Some(id);
            return Ok(false);
        }
        Ok(true)
    }

    pub(crate) fn finish(self) -> JobPage {
        self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_the_wildcards() {
        assert_eq!(like_pattern("a%b_c\\d"), "%a\\%b\\_c\\\\d%");
        assert_eq!(like_pattern(""), "%%");
    }

    #[test]
    fn the_lower_of_cursor_and_time_range_bounds_a_page() {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let early = JobId::first_at(t);
        let q = ListQuery {
            before: Some(JobId::first_at(t + chrono::Duration::seconds(5))),
            until: Some(t),
            since: Some(t - chrono::Duration::seconds(5)),
            ..Default::default()
        };
        let (lower, upper) = bounds(&q);
        assert_eq!(upper, Some(early));
        assert!(lower.unwrap() < early);
        // A job made at t sorts at or above t's bound, one made a
        // millisecond before sorts below.
        let at = JobId(uuid::Uuid::from_u128(early.0.as_u128() | 0xffff));
        assert!(at >= early);
        assert!(JobId::first_at(t - chrono::Duration::milliseconds(1)) < early);
    }
}
