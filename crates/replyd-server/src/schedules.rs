//! Recurring schedules: a job submitted at each tick of a cron expression
//! in a time zone (`[schedules.NAME]`, `PUT /v1/schedules/{name}`).
//!
//! Every node fires the due ticks (`fire_due`, from the scheduler's loop):
//! it submits the tick's job under the idempotency key of the schedule and
//! the tick, so that nodes firing the same tick make one job, then moves
//! the schedule on from that tick (compare and set: one node does). A
//! node that stops between the two leaves the tick due: the next one to
//! look fires it again, and finds its job. Ticks a busy node fires late
//! are each fired, in order, up to [`CATCH_UP`] back; after a longer
//! outage the first tick missed fires, late, and the ticks older than
//! that are skipped.

use chrono::{DateTime, Utc};
use replyd_core::Tenant;
use replyd_core::schedule::{ScheduleRecord, ScheduleSource};
use replyd_core::store::StoreError;
use replyd_proto as proto;

use crate::app::{App, Submission, request_hash};
pub use crate::config::schedules::{Ticks, valid_name};
use crate::error::{ApiError, ApiResult};

/// Schedules fired per look.
const BATCH: u32 = 100;

/// How far back missed ticks are still fired, each once.
pub const CATCH_UP: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Looks per call at most: a schedule behind by many ticks catches up
/// by one tick per look.
const LOOKS: usize = 64;

/// Checks a schedule as a client or the configuration gives it: its cron,
/// its time zone, and a job that can be scheduled. Returns its ticks.
pub fn check(app: &App, req: &proto::ScheduleRequest) -> ApiResult<Ticks> {
    let ticks = Ticks::parse(&req.cron, req.timezone.as_deref()).map_err(ApiError::bad_request)?;
    if req.job.delay.is_some() || req.job.run_at.is_some() {
        return Err(ApiError::bad_request(
            "a schedule's job has no delay or run_at: its ticks are its times",
        ));
    }
    if !app.config.queues.contains_key(&req.job.queue) {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown-queue",
            format!("no queue named {:?} is configured", req.job.queue),
        ));
    }
    Ok(ticks)
}

/// The record of a schedule `req` of `tenant`, firing next after `now`.
pub fn record(
    tenant: Tenant,
    name: &str,
    req: &proto::ScheduleRequest,
    ticks: &Ticks,
    source: ScheduleSource,
    now: DateTime<Utc>,
) -> ApiResult<ScheduleRecord> {
    let next_at = ticks
        .after(now)
        .ok_or_else(|| ApiError::bad_request(format!("cron {:?} never comes", req.cron)))?;
    Ok(ScheduleRecord {
        tenant,
        name: name.to_string(),
        spec: serde_json::to_value(req).map_err(|e| ApiError::bad_request(e.to_string()))?,
        source,
        next_at,
        last_at: None,
        created_at: now,
        updated_at: now,
    })
}

/// The wire form of a schedule.
pub fn view(s: &ScheduleRecord) -> Option<proto::Schedule> {
    let req: proto::ScheduleRequest = serde_json::from_value(s.spec.clone()).ok()?;
    Some(proto::Schedule {
        name: s.name.clone(),
        cron: req.cron,
        timezone: req.timezone.unwrap_or_else(|| "UTC".into()),
        job: req.job,
        source: s.source.as_str().into(),
        next_at: s.next_at,
        last_at: s.last_at,
        created_at: s.created_at,
        updated_at: s.updated_at,
    })
}

/// Keeps the stored schedules of the configuration as the file says: new
/// and changed ones put (a changed one fires next from now), those gone
/// from the file removed. Unchanged ones keep their next tick, so that a
/// restart neither skips nor repeats one.
pub async fn sync_config(app: &App) -> Result<(), String> {
    let now = app.now();
    let stored = app.store.schedules(None).await.map_err(|e| e.to_string())?;
    for (name, s) in &app.config.schedules {
        let tenant = Tenant(s.tenant.clone());
        let req = s.request();
        let ticks = check(app, &req).map_err(|e| format!("schedules.{name}: {}", e.detail))?;
        let mut rec = record(tenant, name, &req, &ticks, ScheduleSource::Config, now)
            .map_err(|e| format!("schedules.{name}: {}", e.detail))?;
        if let Some(old) = stored
            .iter()
            .find(|o| o.tenant == rec.tenant && o.name == rec.name)
        {
            if old.spec == rec.spec && old.source == ScheduleSource::Config {
                continue;
            }
            rec.created_at = old.created_at;
        }
        app.store
            .put_schedule(rec)
            .await
            .map_err(|e| e.to_string())?;
    }
    for old in stored {
        if old.source == ScheduleSource::Config
            && app
                .config
                .schedules
                .get(&old.name)
                .is_none_or(|s| s.tenant != old.tenant.0)
        {
            app.store
                .delete_schedule(&old.tenant, &old.name)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Fires the ticks due by now; returns how many.
pub async fn fire_due(app: &App) -> Result<usize, StoreError> {
    let mut fired = 0;
    for _ in 0..LOOKS {
        match fire_once(app).await? {
            0 => break,
            n => fired += n,
        }
    }
    Ok(fired)
}

/// Fires each due schedule's next tick; returns how many were due.
async fn fire_once(app: &App) -> Result<usize, StoreError> {
    let now = app.now();
    let due = app.store.due_schedules(now, BATCH).await?;
    let mut fired = 0;
    for s in due {
        let tick = s.next_at;
        let Ok(req) = serde_json::from_value::<proto::ScheduleRequest>(s.spec.clone()) else {
            tracing::warn!(tenant = %s.tenant.0, schedule = %s.name, "a schedule that cannot be read; removed");
            app.store.delete_schedule(&s.tenant, &s.name).await?;
            continue;
        };
        // The next tick: the one after this, unless that is older than
        // the catch-up window.
        let next = Ticks::parse(&req.cron, req.timezone.as_deref())
            .ok()
            .and_then(|t| t.after(tick.max(now - CATCH_UP)));
        let submitted = app
            .submit(Submission {
                tenant: s.tenant.clone(),
                request_hash: Some(request_hash(
                    &serde_json::to_value(&req.job).unwrap_or_default(),
                )),
                request: req.job,
                idempotency_key: Some(s.tick_key(tick)),
                reply: None,
                trace: None,
                via: "schedule",
            })
            .await;
        fired += 1;
        match submitted {
            Ok(_) => {}
            // The store could not take it: the tick stays due.
            Err(e) if e.status.is_server_error() => {
                tracing::warn!(tenant = %s.tenant.0, schedule = %s.name, %tick, error = %e.detail, "cannot fire a schedule's tick; trying again");
                fired -= 1;
                continue;
            }
            // Another node fires it now (409), or fired it with the
            // schedule as it was before a change (422): it is fired.
            // Anything else the job can never be: the tick is skipped.
            Err(e) if matches!(e.status.as_u16(), 409 | 422) => {}
            Err(e) => {
                tracing::warn!(tenant = %s.tenant.0, schedule = %s.name, %tick, error = %e.detail, "a schedule's job is refused; the tick is skipped");
            }
        }
        match next {
            Some(next) => {
                app.store
                    .advance_schedule(&s.tenant, &s.name, tick, next)
                    .await?;
            }
            None => {
                tracing::info!(tenant = %s.tenant.0, schedule = %s.name, "a schedule with no tick to come; removed");
                app.store.delete_schedule(&s.tenant, &s.name).await?;
            }
        }
    }
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn ticks_follow_the_wall_clock_of_their_time_zone() {
        let t = Ticks::parse("0 9 * * MON-FRI", Some("Europe/Paris")).unwrap();
        // Friday 2026-03-27 09:00 in Paris is 08:00 UTC (CET, +1).
        assert_eq!(
            t.after(at("2026-03-27T07:00:00Z")),
            Some(at("2026-03-27T08:00:00Z"))
        );
        // The next is Monday, after the clocks went forward (CEST, +2).
        assert_eq!(
            t.after(at("2026-03-27T08:00:00Z")),
            Some(at("2026-03-30T07:00:00Z"))
        );
        // Seconds, when six fields are given; UTC by default.
        let s = Ticks::parse("*/15 * * * * *", None).unwrap();
        assert_eq!(
            s.after(at("2026-01-01T00:00:07Z")),
            Some(at("2026-01-01T00:00:15Z"))
        );
        let d = Ticks::parse("@daily", None).unwrap();
        assert_eq!(
            d.after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-02T00:00:00Z"))
        );
        // A time the clocks skip fires at the first time after the gap, once.
        let gap = Ticks::parse("30 2 * * *", Some("Europe/Paris")).unwrap();
        let first = gap.after(at("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(first, at("2026-03-29T01:00:00Z"), "03:00 CEST");
        assert_eq!(gap.after(first), Some(at("2026-03-30T00:30:00Z")));
    }

    #[test]
    fn what_cannot_be_a_schedule_says_why() {
        for (cron, tz, says) in [
            ("0 9 * *", None, "cron"),
            ("61 * * * *", None, "cron"),
            ("0 9 * * *", Some("Mars/Olympus"), "timezone"),
        ] {
            let e = Ticks::parse(cron, tz).unwrap_err();
            assert!(e.contains(says), "{cron} {tz:?}: {e}");
        }
        assert!(valid_name("nightly-report.v2"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
    }
}
