//! Conformance: flow control — jobs scheduled for later wait until they
//! are due and are then queued; priorities order a queue's leases.

use std::sync::Arc;
use std::time::Duration;

use replyd_core::event::EventKind;
use replyd_core::job::{Command, JobState, NewJob};
use replyd_core::store::{LeaseQuery, QueueLimits, Rate, Store};
use replyd_core::{JobId, Tenant};

use super::{lq, t};

/// A priority level's worth of waiting in these tests.
const STEP: u64 = 60;

fn job(queue: &str, priority: u8, run_at: Option<i64>) -> NewJob {
    NewJob {
        priority,
        head_start: Duration::from_secs(STEP * u64::from(priority)),
        run_at: run_at.map(t),
        ..NewJob::plain(Tenant("t".into()), queue)
    }
}

async fn submit_at(store: &dyn Store, new: NewJob, now: i64) -> JobId {
    store.submit(new, t(now)).await.unwrap().job().id
}

pub async fn a_scheduled_job_waits_until_it_is_due(store: Arc<dyn Store>) {
    let later = submit_at(&*store, job("q", 0, Some(10)), 0).await;
    let past = submit_at(&*store, job("q", 0, Some(-5)), 0).await;
    let gone = submit_at(&*store, job("q", 0, Some(20)), 0).await;
    let j = store.get(later).await.unwrap().unwrap();
    assert_eq!((j.state, j.run_at), (JobState::Scheduled, t(10)));
    // A time already past queues the job at once.
    let p = store.get(past).await.unwrap().unwrap();
    assert_eq!((p.state, p.run_at), (JobState::Queued, t(0)));
    assert_eq!(store.next_due().await.unwrap(), Some(t(10)));
    // Not before it is due: neither leased nor queued.
    let leased = store.lease(lq("q", 10), t(5)).await.unwrap();
    assert_eq!(leased.iter().map(|l| l.job.id).collect::<Vec<_>>(), [past]);
    assert_eq!(store.promote_due(t(5), 10).await.unwrap(), 0);
    // Canceled while scheduled: at once, and never queued.
    let c = store
        .apply(gone, None, Command::Cancel, None, t(6))
        .await
        .unwrap();
    assert_eq!(c.state, JobState::Canceled);
    assert_eq!(store.next_due().await.unwrap(), Some(t(10)));
    // Due: queued, with its event, then leased.
    assert_eq!(store.promote_due(t(10), 10).await.unwrap(), 1);
    assert_eq!(store.promote_due(t(10), 10).await.unwrap(), 0);
    assert_eq!(store.next_due().await.unwrap(), None);
    let events = store.events(later, None).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.job.state)).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Accepted, JobState::Scheduled),
            (EventKind::Queued, JobState::Queued)
        ]
    );
    let leased = store.lease(lq("q", 10), t(10)).await.unwrap();
    assert_eq!(leased.iter().map(|l| l.job.id).collect::<Vec<_>>(), [later]);
    // A promotion refuses a job not due, or not scheduled.
    let soon = submit_at(&*store, job("q", 0, Some(30)), 10).await;
    let refused = store
        .apply(soon, None, Command::Promote, None, t(29))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            replyd_core::store::StoreError::Transition(replyd_core::job::TransitionError::NotDue)
        ),
        "{refused:?}"
    );
}

pub async fn many_due_jobs_are_queued_in_batches_earliest_first(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..25 {
        // Due at 100 + (24 - i): the last submitted is due first.
        ids.push(submit_at(&*store, job("q", 0, Some(124 - i)), 0).await);
    }
    assert_eq!(store.promote_due(t(110), 10).await.unwrap(), 10);
    // The earliest ten, due 100 to 109.
    for (i, id) in ids.iter().enumerate() {
        let state = store.get(*id).await.unwrap().unwrap().state;
        let due = 124 - i as i64;
        let want = if due <= 109 {
            JobState::Queued
        } else {
            JobState::Scheduled
        };
        assert_eq!(state, want, "job due at {due}");
    }
    assert_eq!(store.promote_due(t(110), 10).await.unwrap(), 1);
    assert_eq!(store.next_due().await.unwrap(), Some(t(111)));
    assert_eq!(store.promote_due(t(200), 100).await.unwrap(), 14);
}

pub async fn higher_priorities_lease_first_and_each_in_order(store: Arc<dyn Store>) {
    // (priority, submitted at)
    let plan = [
        (0, 0),
        (5, 1),
        (0, 2),
        (9, 3),
        (5, 4),
        (9, 5),
        (0, 6),
        (1, 7),
    ];
    let mut made = Vec::new();
    for (priority, at) in plan {
        made.push((
            submit_at(&*store, job("q", priority, None), at).await,
            priority,
            at,
        ));
    }
    let mut want = made.clone();
    want.sort_by_key(|&(_, p, at)| (std::cmp::Reverse(p), at));
    let mut got = Vec::new();
    for _ in 0..3 {
        for l in store.lease(lq("q", 3), t(10)).await.unwrap() {
            got.push(l.job.id);
        }
    }
    assert_eq!(got, want.iter().map(|w| w.0).collect::<Vec<_>>());
    // A job of a higher priority submitted after a lease still goes first.
    let low = submit_at(&*store, job("q", 0, None), 11).await;
    let high = submit_at(&*store, job("q", 8, None), 12).await;
    let leased = store.lease(lq("q", 1), t(13)).await.unwrap();
    assert_eq!(leased[0].job.id, high);
    assert_eq!(leased[0].job.priority, 8);
    let leased = store.lease(lq("q", 1), t(13)).await.unwrap();
    assert_eq!(leased[0].job.id, low);
}

pub async fn a_job_waiting_longer_than_a_priority_is_worth_goes_first(store: Arc<dyn Store>) {
    // Priority 9 is worth 9 minutes: a priority-0 job submitted 10 minutes
    // before it goes first, one submitted 8 minutes before goes after, and
    // a priority-5 job of 3.5 minutes before goes after too (5 + 3.5 < 9).
    let old = submit_at(&*store, job("q", 0, None), 0).await;
    let mid = submit_at(&*store, job("q", 5, None), 390).await;
    let recent = submit_at(&*store, job("q", 0, None), 120).await;
    let urgent = submit_at(&*store, job("q", 9, None), 600).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(
            store
                .lease(lq("q", 1), t(601))
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.job.id),
        );
    }
    assert_eq!(got, [old, urgent, mid, recent]);
}

fn limited(queue: &str, max: u32, limits: QueueLimits) -> LeaseQuery {
    LeaseQuery {
        limits,
        ..lq(queue, max)
    }
}

pub async fn max_running_caps_the_jobs_leased_at_once(store: Arc<dyn Store>) {
    for _ in 0..10 {
        submit_at(&*store, job("q", 0, None), 0).await;
    }
    let cap = QueueLimits {
        max_running: Some(3),
        rate: None,
    };
    let first = store.lease(limited("q", 10, cap), t(1)).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(
        store
            .lease(limited("q", 10, cap), t(1))
            .await
            .unwrap()
            .is_empty()
    );
    // Another queue, or a lease without the limit, is not held back.
    assert_eq!(store.lease(lq("q", 2), t(1)).await.unwrap().len(), 2);
    // A slot freed is a job leased: 5 running now, so one more needs three
    // of them to end.
    for l in &first {
        store
            .apply(
                l.job.id,
                None,
                Command::Complete {
                    lease_id: l.lease_id.clone(),
                },
                None,
                t(2),
            )
            .await
            .unwrap();
    }
    let more = store.lease(limited("q", 10, cap), t(2)).await.unwrap();
    assert_eq!(more.len(), 1, "2 still running of 3");
}

pub async fn a_rate_limit_takes_a_token_per_job_leased(store: Arc<dyn Store>) {
    for _ in 0..20 {
        submit_at(&*store, job("q", 0, None), 0).await;
    }
    // 10 a second, at most 2 saved up.
    let rate = QueueLimits {
        max_running: None,
        rate: Some(Rate {
            per_sec: 10.0,
            burst: 2.0,
        }),
    };
    let at = |ms: i64| t(10) + chrono::Duration::milliseconds(ms);
    let take = |ms| {
        let store = store.clone();
        async move {
            store
                .lease(limited("q", 10, rate), at(ms))
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(take(0).await, 2, "a full bucket");
    assert_eq!(take(0).await, 0);
    assert_eq!(take(50).await, 0, "half a token");
    assert_eq!(take(100).await, 1);
    assert_eq!(take(5_000).await, 2, "never more than the bucket holds");
    assert_eq!(take(5_300).await, 2);
    assert_eq!(take(5_400).await, 1);
}

pub async fn groups_take_turns_in_their_queue(store: Arc<dyn Store>) {
    let grouped = |g: &str| NewJob {
        group: Some(g.into()),
        ..job("q", 0, None)
    };
    let mut a = Vec::new();
    for _ in 0..20 {
        a.push(submit_at(&*store, grouped("a"), 0).await);
    }
    // b comes later, with 3 jobs: they are not queued behind a's 20.
    let mut b = Vec::new();
    for _ in 0..3 {
        b.push(submit_at(&*store, grouped("b"), 1).await);
    }
    // Another tenant's group of the same name is a group of its own.
    let other = NewJob {
        tenant: Tenant("u".into()),
        ..grouped("a")
    };
    let other = submit_at(&*store, other, 1).await;
    let mut got = Vec::new();
    for _ in 0..24 {
        got.extend(
            store
                .lease(lq("q", 1), t(2))
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.job.id),
        );
    }
    assert_eq!(got.len(), 24);
    let first: Vec<_> = got[..7].to_vec();
    for id in b.iter().chain([&other]) {
        assert!(
            first.contains(id),
            "b's and the other tenant's jobs in the first 7: {got:?}"
        );
    }
    // Each group's own jobs keep their order.
    let a_order: Vec<_> = got.iter().filter(|id| a.contains(id)).copied().collect();
    assert_eq!(a_order, a);
    let b_order: Vec<_> = got.iter().filter(|id| b.contains(id)).copied().collect();
    assert_eq!(b_order, b);
    // The group is on the job.
    let j = store.get(b[0]).await.unwrap().unwrap();
    assert_eq!(j.group.as_deref(), Some("b"));
}

/// A flood of priority-9 jobs that takes all the queue's capacity, with
/// priority-0 jobs among them (11,000 jobs): by strict priority none of
/// the priority-0 jobs would be leased until the flood ends; with a
/// priority worth 0.1 s a level, each is leased within the 0.9 s a
/// priority-9 job is worth more, plus the backlog the flood builds.
pub async fn a_flood_of_high_priorities_starves_no_low_one(store: Arc<dyn Store>) {
    const TICKS: i64 = 2000;
    let at = |tick: i64| t(0) + chrono::Duration::milliseconds(tick * 10);
    let mixed = |priority: u8, run_at| NewJob {
        priority,
        head_start: Duration::from_millis(100 * u64::from(priority)),
        run_at,
        ..NewJob::plain(Tenant("t".into()), "q")
    };
    let mut low = std::collections::HashMap::new();
    let mut waits = Vec::new();
    for tick in 0..TICKS {
        let now = at(tick);
        let mut batch: Vec<_> = (0..5).map(|_| mixed(9, None)).collect();
        if tick % 2 == 0 {
            let j = mixed(0, None);
            low.insert(j.id, tick);
            batch.push(j);
        }
        let submits = batch.into_iter().map(|j| store.submit(j, now));
        for s in futures::future::join_all(submits).await {
            s.unwrap();
        }
        for l in store.lease(lq("q", 5), now).await.unwrap() {
            if let Some(from) = low.remove(&l.job.id) {
                waits.push((from, tick - from));
            }
        }
    }
    // Every low job of the flood's first half was leased during it.
    let left_early = low.values().filter(|&&from| from < TICKS / 2).count();
    assert_eq!(
        left_early, 0,
        "{} low jobs of the first half never leased",
        left_early
    );
    let worst = waits.iter().map(|w| w.1).max().unwrap();
    // 0.9 s (90 ticks) behind, plus the backlog: 0.5 jobs a tick more
    // than the 5 a tick leased, 1,000 jobs (200 ticks) by the end.
    assert!(worst <= 90 + 200 + 10, "a low job waited {worst} ticks");
}

pub async fn schedules_are_kept_and_a_tick_moves_on_once(store: Arc<dyn Store>) {
    use replyd_core::schedule::{ScheduleRecord, ScheduleSource};
    let tenant = Tenant("t".into());
    let rec = |name: &str, next: i64| ScheduleRecord {
        tenant: tenant.clone(),
        name: name.into(),
        spec: serde_json::json!({"cron": "* * * * *", "job": {"queue": "q"}}),
        source: ScheduleSource::Api,
        next_at: t(next),
        last_at: None,
        created_at: t(0),
        updated_at: t(0),
    };
    assert!(store.put_schedule(rec("b", 60)).await.unwrap());
    assert!(store.put_schedule(rec("a", 120)).await.unwrap());
    let other = ScheduleRecord {
        tenant: Tenant("u".into()),
        ..rec("a", 30)
    };
    assert!(store.put_schedule(other).await.unwrap());
    let mine: Vec<_> = store.schedules(Some(&tenant)).await.unwrap();
    assert_eq!(
        mine.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(mine[1].spec["cron"], "* * * * *");
    assert_eq!(store.schedules(None).await.unwrap().len(), 3);
    // Due by their next tick, earliest first.
    let due = store.due_schedules(t(60), 10).await.unwrap();
    assert_eq!(
        due.iter()
            .map(|s| (s.tenant.0.as_str(), s.name.as_str()))
            .collect::<Vec<_>>(),
        [("u", "a"), ("t", "b")]
    );
    // A tick moves on once: the second node to try finds it moved.
    assert!(
        store
            .advance_schedule(&tenant, "b", t(60), t(120))
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_schedule(&tenant, "b", t(60), t(120))
            .await
            .unwrap()
    );
    let b = store.schedule(&tenant, "b").await.unwrap().unwrap();
    assert_eq!((b.next_at, b.last_at), (t(120), Some(t(60))));
    // Replaced: the same next tick keeps its last one; created stays.
    assert!(
        !store
            .put_schedule(ScheduleRecord {
                updated_at: t(90),
                ..rec("b", 120)
            })
            .await
            .unwrap()
    );
    let b = store.schedule(&tenant, "b").await.unwrap().unwrap();
    assert_eq!(
        (b.last_at, b.created_at, b.updated_at),
        (Some(t(60)), t(0), t(90))
    );
    assert!(store.delete_schedule(&tenant, "b").await.unwrap());
    assert!(!store.delete_schedule(&tenant, "b").await.unwrap());
    assert!(store.schedule(&tenant, "b").await.unwrap().is_none());
}
