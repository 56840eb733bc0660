//! The store conformance suite: what every [`Store`] must do, written once.
//!
//! A store's test file instantiates it with [`conformance_tests!`], giving
//! an async expression that builds a fresh, empty store. Time is passed in
//! explicitly, so leases, backoff and TTLs are tested without sleeping.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use replyd_core::event::{EventId, EventKind, EventRecord};
use replyd_core::job::{Command, JobError, JobState, NewJob, TransitionError};
use replyd_core::outbox::{
    AfterAttempt, AttemptRecord, Channel, DeliveryState, ReplyAsked, ReplySpec, ReplyTarget,
};
use replyd_core::store::{
    JobOutput, LeaseQuery, ListQuery, Move, Outcome, Store, StoreError, Submitted,
};
use replyd_core::{JobId, LeaseId, Tenant};

mod flow;
mod ops;
mod steering;
pub use flow::*;
pub use ops::*;
pub use steering::*;

/// Instantiates every conformance test for a store. `$make` is an async
/// expression yielding `Option<Arc<dyn Store>>`: `None` skips the test (a
/// service that is absent; the factory says why).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            submit_then_get, idempotency_replay_and_mismatch, concurrent_duplicates_make_one_job,
            concurrent_submits_are_each_answered_on_their_own,
            lease_hands_each_job_to_one_worker, fencing_refuses_stale_leases, many_moves_each_answered,
            expired_leases_retry_with_backoff_then_fail, cancel_queued_and_running,
            complete_stores_the_output, events_resume_after_an_id, garbage_collection_leaves_a_tombstone,
            delete_only_finished_jobs, list_pages_newest_first_per_tenant, counts_by_queue_and_state,
            cluster_secret_is_stable, settings_are_kept_once_and_replaced_only_from_what_was_read,
            subscribers_see_committed_events,
            dead_letters_pause_their_endpoint_which_holds_then_resumes_in_order,
            dead_letter_counts_survive_folding, tenant_scoped_leases,
            log_floor_rises_when_events_are_removed, outbox_deliveries_in_order_with_attempts,
            concurrent_claims_never_share_a_delivery, replies_are_owed_on_their_own_channel,
            job_output_is_fenced_by_the_lease_and_goes_with_the_job,
            list_filters_by_time_key_text_and_state_within_a_bounded_scan,
            a_paused_queue_leases_nothing_until_resumed,
            an_endpoint_paused_by_hand_holds_its_deliveries_until_resumed,
            a_scheduled_job_waits_until_it_is_due,
            many_due_jobs_are_queued_in_batches_earliest_first,
            higher_priorities_lease_first_and_each_in_order,
            a_job_waiting_longer_than_a_priority_is_worth_goes_first,
            max_running_caps_the_jobs_leased_at_once, a_rate_limit_takes_a_token_per_job_leased,
            groups_take_turns_in_their_queue, a_flood_of_high_priorities_starves_no_low_one,
            schedules_are_kept_and_a_tick_moves_on_once,
            an_accepted_event_asked_for_is_owed_from_the_submit);
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: Option<std::sync::Arc<dyn replyd_core::Store>> = $make;
                if let Some(store) = store {
                    $crate::conformance::$name(store).await;
                }
            }
        )*
    };
}

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn new_job(tenant: &str, queue: &str, key: Option<&str>, body: &str) -> NewJob {
    NewJob {
        id: JobId::new(),
        tenant: Tenant(tenant.into()),
        queue: queue.into(),
        input: Bytes::from(body.to_string()),
        max_attempts: 3,
        timeout: Duration::from_secs(60),
        ttl: Duration::from_secs(100),
        webhook: None,
        reply: None,
        idempotency_key: key.map(str::to_string),
        request_hash: Some(format!("hash:{body}")),
        output_type: None,
        trace: None,
        priority: 0,
        head_start: std::time::Duration::ZERO,
        group: None,
        run_at: None,
    }
}

/// Every job of `tenant` (up to 1,000), newest first.
async fn jobs_of(store: &dyn Store, tenant: &str) -> Vec<replyd_core::job::JobRecord> {
    store
        .list(ListQuery {
            tenant: Some(Tenant(tenant.into())),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .jobs
}

async fn submit(store: &dyn Store, queue: &str) -> JobId {
    store
        .submit(new_job("t", queue, None, "{}"), t(0))
        .await
        .unwrap()
        .job()
        .id
}

fn lq(queue: &str, max: u32) -> LeaseQuery {
    LeaseQuery {
        queue: queue.into(),
        tenant: None,
        worker: "w".into(),
        length: Duration::from_secs(10),
        max,
        limits: Default::default(),
    }
}

async fn lease_one(store: &dyn Store, queue: &str, now: DateTime<Utc>) -> (JobId, LeaseId) {
    let mut l = store.lease(lq(queue, 1), now).await.unwrap();
    assert_eq!(l.len(), 1, "expected a job to lease in {queue}");
    let l = l.remove(0);
    (l.job.id, l.lease_id)
}

fn transition_err(r: Result<impl std::fmt::Debug, StoreError>) -> TransitionError {
    match r {
        Err(StoreError::Transition(e)) => e,
        other => panic!("expected a transition error, got {other:?}"),
    }
}

pub async fn submit_then_get(store: Arc<dyn Store>) {
    let s = store
        .submit(new_job("t", "q", None, r#"{"a":1}"#), t(0))
        .await
        .unwrap();
    let Submitted::Created(job) = s else {
        panic!("expected a new job")
    };
    let got = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(got, job);
    assert_eq!(got.state, JobState::Queued);
    assert_eq!(
        store.input(job.id).await.unwrap().unwrap(),
        Bytes::from_static(br#"{"a":1}"#)
    );
    let events = store.events(job.id, None).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Accepted);
    assert!(store.get(JobId::new()).await.unwrap().is_none());
}

pub async fn idempotency_replay_and_mismatch(store: Arc<dyn Store>) {
    let a = store
        .submit(new_job("t", "q", Some("k1"), "{}"), t(0))
        .await
        .unwrap();
    let b = store
        .submit(new_job("t", "q", Some("k1"), "{}"), t(1))
        .await
        .unwrap();
    assert!(matches!(a, Submitted::Created(_)));
    assert!(matches!(b, Submitted::Existing(_)));
    assert_eq!(a.job().id, b.job().id);
    let c = store
        .submit(new_job("t", "q", Some("k1"), r#"{"other":1}"#), t(2))
        .await;
    assert!(matches!(c, Err(StoreError::IdempotencyMismatch)), "{c:?}");
    // Keys are per tenant.
    let d = store
        .submit(new_job("u", "q", Some("k1"), r#"{"other":1}"#), t(2))
        .await
        .unwrap();
    assert!(matches!(d, Submitted::Created(_)));
}

pub async fn concurrent_duplicates_make_one_job(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .submit(new_job("t", "q", Some("same"), "{}"), t(0))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    let mut ids = HashSet::new();
    for task in tasks {
        let s = task.await.unwrap();
        created += matches!(s, Submitted::Created(_)) as u32;
        ids.insert(s.job().id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(jobs_of(&*store, "t").await.len(), 1);
}

/// Many submits at once (a store may commit them together): plain jobs,
/// repeats of a key with the same request, and reuses of a key with
/// another. Each key makes one job; a repeat gets that job, a reuse is
/// refused; every job made has its one `job.accepted` event.
pub async fn concurrent_submits_are_each_answered_on_their_own(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..120 {
        let store = store.clone();
        let (key, body) = match i % 4 {
            0 => (None, format!("{{\"plain\":{i}}}")),
            // Ten keys, each sent 6 times with one body and 3 with another.
            1 | 2 => (Some(format!("k{}", i % 10)), "{\"same\":1}".to_string()),
            _ => (Some(format!("k{}", i % 10)), "{\"other\":1}".to_string()),
        };
        tasks.push(tokio::spawn(async move {
            let job = new_job("t", "q", key.as_deref(), &body);
            let hash = job.request_hash.clone();
            (key, hash, store.submit(job, t(0)).await)
        }));
    }
    let mut plain = 0;
    let mut made: std::collections::HashMap<String, (JobId, Option<String>)> = Default::default();
    let mut answers = Vec::new();
    for task in tasks {
        let (key, hash, answer) = task.await.unwrap();
        match (&key, &answer) {
            (None, Ok(Submitted::Created(_))) => plain += 1,
            (Some(k), Ok(Submitted::Created(job))) => {
                let first = made.insert(k.clone(), (job.id, hash.clone()));
                assert!(first.is_none(), "key {k} made two jobs");
            }
            (None, other) => panic!("a plain job was answered {other:?}"),
            _ => {}
        }
        answers.push((key, hash, answer));
    }
    assert_eq!(plain, 30);
    assert_eq!(made.len(), 10, "each key makes one job");
    for (key, hash, answer) in answers {
        let Some(key) = key else { continue };
        let (id, made_with) = &made[&key];
        match answer {
            Ok(Submitted::Created(job)) => assert_eq!(job.id, *id),
            Ok(Submitted::Existing(job)) => {
                assert_eq!(job.id, *id);
                assert_eq!(hash, *made_with, "a repeat of {key} with another request");
            }
            Err(StoreError::IdempotencyMismatch) => {
                assert_ne!(hash, *made_with, "a repeat of {key} refused")
            }
            Err(e) => panic!("{key}: {e}"),
        }
    }
    let all = jobs_of(&*store, "t").await;
    assert_eq!(all.len(), 40);
    for job in all {
        let events = store.events(job.id, None).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Accepted], "{}", job.id);
    }
}

pub async fn lease_hands_each_job_to_one_worker(store: Arc<dyn Store>) {
    let mut submitted = HashSet::new();
    for _ in 0..60 {
        submitted.insert(submit(&*store, "q").await);
    }
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let l = store.lease(lq("q", 4), t(1)).await.unwrap();
                    if l.is_empty() {
                        return got;
                    }
                    got.extend(l.into_iter().map(|l| l.job.id));
                }
            })
        })
        .collect();
    let mut leased = Vec::new();
    for task in tasks {
        leased.extend(task.await.unwrap());
    }
    let unique: HashSet<_> = leased.iter().copied().collect();
    assert_eq!(leased.len(), 60, "every job leased exactly once");
    assert_eq!(unique, submitted);
    // Other queues are untouched.
    submit(&*store, "other").await;
    assert!(store.lease(lq("q", 10), t(2)).await.unwrap().is_empty());
}

/// A batch of moves: each is answered as `apply` would answer it, a
/// refused or unknown one changes nothing and spoils none of the others,
/// and another tenant's job is not found.
pub async fn many_moves_each_answered(store: Arc<dyn Store>) {
    let mut leased = Vec::new();
    for _ in 0..3 {
        submit(&*store, "q").await;
    }
    for l in store.lease(lq("q", 3), t(0)).await.unwrap() {
        leased.push((l.job.id, l.lease_id));
    }
    let [(a, la), (b, lb), (c, _)] = &leased[..] else {
        panic!("expected three leases, got {leased:?}")
    };
    let output = |body: &'static str| JobOutput {
        content_type: "application/json".into(),
        body: Bytes::from_static(body.as_bytes()),
        upstream: None,
    };
    let moves = vec![
        Move {
            id: *a,
            cmd: Command::Complete {
                lease_id: la.clone(),
            },
            output: Some(output(r#"{"a":1}"#)),
        },
        Move {
            id: *c,
            cmd: Command::Complete {
                lease_id: LeaseId::new(),
            },
            output: Some(output("2")),
        },
        Move {
            id: JobId::new(),
            cmd: Command::Complete {
                lease_id: LeaseId::new(),
            },
            output: None,
        },
        // The same job again, after its completion: it sees the first move.
        Move {
            id: *a,
            cmd: Command::Complete {
                lease_id: la.clone(),
            },
            output: Some(output("3")),
        },
        Move {
            id: *b,
            cmd: Command::Fail {
                lease_id: lb.clone(),
                error: JobError::new("bad_input", "no"),
                retry: false,
            },
            output: None,
        },
    ];
    let answers = store.apply_many(None, moves, t(1)).await.unwrap();
    assert_eq!(answers.len(), 5);
    assert_eq!(answers[0].as_ref().unwrap().state, JobState::Succeeded);
    assert!(matches!(
        answers[1],
        Err(StoreError::Transition(TransitionError::LeaseLost))
    ));
    assert!(matches!(answers[2], Err(StoreError::NotFound)));
    assert!(
        matches!(
            answers[3],
            Err(StoreError::Transition(TransitionError::AlreadyFinished(_)))
        ),
        "a job named twice sees its first move: {:?}",
        answers[3]
    );
    assert_eq!(answers[4].as_ref().unwrap().state, JobState::Failed);
    let out = store.output(*a).await.unwrap().unwrap();
    assert_eq!(
        &out.body[..],
        br#"{"a":1}"#,
        "the refused repeat wrote nothing"
    );
    assert_eq!(
        store.get(*c).await.unwrap().unwrap().state,
        JobState::Running,
        "a refused move changes nothing"
    );
    // Scoped to another tenant: not found, and not moved.
    let d = submit(&*store, "q2").await;
    let (_, ld) = lease_one(&*store, "q2", t(2)).await;
    let other = Tenant("someone-else".into());
    let moves = vec![Move {
        id: d,
        cmd: Command::Complete { lease_id: ld },
        output: None,
    }];
    let answers = store.apply_many(Some(&other), moves, t(3)).await.unwrap();
    assert!(matches!(answers[0], Err(StoreError::NotFound)));
    assert_eq!(
        store.get(d).await.unwrap().unwrap().state,
        JobState::Running
    );
}

pub async fn fencing_refuses_stale_leases(store: Arc<dyn Store>) {
    let id = submit(&*store, "q").await;
    let (_, lease) = lease_one(&*store, "q", t(0)).await;
    let wrong = Command::Complete {
        lease_id: LeaseId::new(),
    };
    let e = transition_err(store.apply(id, None, wrong, None, t(1)).await);
    assert_eq!(e, TransitionError::LeaseLost);
    // The lease expires and another worker takes the job.
    assert_eq!(store.expire_leases(t(10), 100).await.unwrap(), 1);
    let (_, second) = lease_one(&*store, "q", t(20)).await;
    let stale = Command::Complete { lease_id: lease };
    let e = transition_err(store.apply(id, None, stale, None, t(21)).await);
    assert_eq!(e, TransitionError::LeaseLost);
    let job = store
        .apply(
            id,
            None,
            Command::Complete { lease_id: second },
            None,
            t(22),
        )
        .await
        .unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Succeeded, 2));
}

pub async fn expired_leases_retry_with_backoff_then_fail(store: Arc<dyn Store>) {
    let id = submit(&*store, "q").await;
    lease_one(&*store, "q", t(0)).await;
    assert_eq!(store.expire_leases(t(9), 100).await.unwrap(), 0, "not yet");
    assert_eq!(store.expire_leases(t(10), 100).await.unwrap(), 1);
    let job = store.get(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert!(job.run_at > t(10), "backoff: {}", job.run_at);
    assert_eq!(store.next_run_at("q").await.unwrap(), Some(job.run_at));
    assert!(
        store.lease(lq("q", 1), t(10)).await.unwrap().is_empty(),
        "not leasable during its backoff"
    );
    let mut now = job.run_at;
    for attempt in 2..=3 {
        let (_, _) = lease_one(&*store, "q", now).await;
        now += chrono::Duration::seconds(10);
        store.expire_leases(now, 100).await.unwrap();
        let job = store.get(id).await.unwrap().unwrap();
        assert_eq!(job.attempt, attempt);
        if attempt < 3 {
            assert_eq!(job.state, JobState::Queued);
            now = job.run_at;
        } else {
            assert_eq!(job.state, JobState::Failed);
            assert_eq!(job.error.unwrap().code, "lease_expired");
        }
    }
    let kinds: Vec<_> = store
        .events(id, None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        [
            Accepted, Started, Retrying, Started, Retrying, Started, Failed
        ]
    );
}

pub async fn cancel_queued_and_running(store: Arc<dyn Store>) {
    let queued = submit(&*store, "q").await;
    let job = store
        .apply(queued, None, Command::Cancel, None, t(1))
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Canceled);
    let e = transition_err(store.apply(queued, None, Command::Cancel, None, t(2)).await);
    assert_eq!(e, TransitionError::AlreadyFinished(JobState::Canceled));

    let running = submit(&*store, "q").await;
    let (_, lease) = lease_one(&*store, "q", t(0)).await;
    let job = store
        .apply(running, None, Command::Cancel, None, t(1))
        .await
        .unwrap();
    assert_eq!((job.state, job.cancel_requested), (JobState::Running, true));
    let e = transition_err(
        store
            .apply(
                running,
                None,
                Command::Complete { lease_id: lease },
                None,
                t(2),
            )
            .await,
    );
    assert_eq!(e, TransitionError::CancelRequested);
    let job = store.get(running).await.unwrap().unwrap();
    assert_eq!(
        job.state,
        JobState::Canceled,
        "the refused completion canceled it"
    );
    assert!(store.output(running).await.unwrap().is_none());
}

pub async fn complete_stores_the_output(store: Arc<dyn Store>) {
    let id = submit(&*store, "q").await;
    let (_, lease) = lease_one(&*store, "q", t(0)).await;
    store
        .apply(
            id,
            None,
            Command::Progress {
                lease_id: lease.clone(),
                progress: replyd_core::Progress {
                    percent: Some(50.0),
                    message: Some("half".into()),
                },
            },
            None,
            t(1),
        )
        .await
        .unwrap();
    // With what an upstream answered (the gateway's result), kept as is.
    let out = JobOutput {
        content_type: "image/png".into(),
        body: Bytes::from_static(b"\x89PNG\r\n"),
        upstream: Some(replyd_core::store::Upstream {
            status: 201,
            headers: vec![
                (
                    "content-disposition".into(),
                    "attachment; filename=r.png".into(),
                ),
                ("x-report".into(), "7".into()),
            ],
        }),
    };
    let job = store
        .apply(
            id,
            None,
            Command::Complete { lease_id: lease },
            Some(out.clone()),
            t(2),
        )
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(store.output(id).await.unwrap(), Some(out));

    let failing = submit(&*store, "q").await;
    let (_, lease) = lease_one(&*store, "q", t(3)).await;
    let job = store
        .apply(
            failing,
            None,
            Command::Fail {
                lease_id: lease,
                error: JobError::new("worker_error", "boom"),
                retry: false,
            },
            None,
            t(4),
        )
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(store.output(failing).await.unwrap().is_none());
}

pub async fn events_resume_after_an_id(store: Arc<dyn Store>) {
    let id = submit(&*store, "q").await;
    let other = submit(&*store, "q").await;
    let (first, lease) = lease_one(&*store, "q", t(0)).await;
    assert_eq!(first, id, "oldest first");
    for p in 1..=3 {
        store
            .apply(
                id,
                None,
                Command::Progress {
                    lease_id: lease.clone(),
                    progress: replyd_core::Progress {
                        percent: Some(f64::from(p) * 25.0),
                        message: None,
                    },
                },
                None,
                t(p.into()),
            )
            .await
            .unwrap();
    }
    let all = store.events(id, None).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert!(all.iter().all(|e| e.job_id == id));
    let rest = store.events(id, Some(all[1].id)).await.unwrap();
    assert_eq!(rest, all[2..].to_vec());
    assert_eq!(rest[0].job.progress.as_ref().unwrap().percent, Some(25.0));
    assert!(store.events(id, Some(all[4].id)).await.unwrap().is_empty());
    assert_eq!(
        store.events(other, Some(EventId(0))).await.unwrap().len(),
        1
    );
}

pub async fn garbage_collection_leaves_a_tombstone(store: Arc<dyn Store>) {
    let a = store
        .submit(new_job("t", "q", Some("gc"), "{}"), t(0))
        .await
        .unwrap()
        .job()
        .id;
    let (_, lease) = lease_one(&*store, "q", t(0)).await;
    let out = JobOutput {
        content_type: "application/json".into(),
        body: Bytes::from_static(b"1"),
        upstream: None,
    };
    store
        .apply(
            a,
            None,
            Command::Complete { lease_id: lease },
            Some(out),
            t(1),
        )
        .await
        .unwrap();
    // ttl is 100 s: expires at t(101).
    assert_eq!(store.collect_garbage(t(100), 100).await.unwrap(), 0);
    assert_eq!(store.collect_garbage(t(101), 100).await.unwrap(), 1);
    let tomb = store.get(a).await.unwrap().expect("a tombstone remains");
    assert!(tomb.is_expired(t(101)));
    assert!(store.output(a).await.unwrap().is_none());
    assert!(store.events(a, None).await.unwrap().is_empty());
    // The key is free again.
    let again = store
        .submit(new_job("t", "q", Some("gc"), "{}"), t(102))
        .await
        .unwrap();
    assert!(matches!(again, Submitted::Created(_)));
    // Tombstones go after their retention.
    let later =
        t(101) + chrono::Duration::from_std(replyd_core::store::TOMBSTONE_RETENTION).unwrap();
    store.collect_garbage(later, 100).await.unwrap();
    assert!(store.get(a).await.unwrap().is_none());
    // Counts skip tombstones.
    let counts = store.counts().await.unwrap().jobs;
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 1);
}

pub async fn log_floor_rises_when_events_are_removed(store: Arc<dyn Store>) {
    assert_eq!(store.log_floor().await.unwrap(), None);
    let a = submit(&*store, "q").await;
    let b = submit(&*store, "q").await;
    let c = submit(&*store, "q").await;
    for id in [a, b, c] {
        store
            .apply(id, None, Command::Cancel, None, t(1))
            .await
            .unwrap();
    }
    let last_of = |evs: Vec<EventRecord>| evs.last().unwrap().id;
    let b_last = last_of(store.events(b, None).await.unwrap());
    let a_last = last_of(store.events(a, None).await.unwrap());
    store.delete(b).await.unwrap();
    assert_eq!(store.log_floor().await.unwrap(), Some(b_last));
    // Removing older events never lowers it.
    store.delete(a).await.unwrap();
    assert_eq!(store.log_floor().await.unwrap(), Some(b_last.max(a_last)));
    // Garbage collection raises it too (ttl 100 s).
    let c_last = last_of(store.events(c, None).await.unwrap());
    assert_eq!(store.collect_garbage(t(200), 100).await.unwrap(), 1);
    assert_eq!(store.log_floor().await.unwrap(), Some(c_last));
    // Ids never go back, even though the newest events were removed: a
    // reader resuming from c_last must see what comes next.
    let d = submit(&*store, "q").await;
    let d_first = store.events(d, None).await.unwrap()[0].id;
    assert!(d_first > c_last, "{d_first} must come after {c_last}");
    let after = log_when_readable(&*store, Some(c_last)).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].job_id, d);
}

/// The log after `after` once it shows something, for at most 5 s: a
/// store may show a commit in its log a moment after it (PostgreSQL's
/// waits for older transactions to end), never out of order.
async fn log_when_readable(store: &dyn Store, after: Option<EventId>) -> Vec<EventRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = store.log(after, 10).await.unwrap();
        if !page.is_empty() || tokio::time::Instant::now() >= deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn delete_only_finished_jobs(store: Arc<dyn Store>) {
    let id = submit(&*store, "q").await;
    let r = store.delete(id).await;
    assert!(
        matches!(
            r,
            Err(StoreError::Transition(TransitionError::NotFinished(
                JobState::Queued
            )))
        ),
        "{r:?}"
    );
    store
        .apply(id, None, Command::Cancel, None, t(1))
        .await
        .unwrap();
    store.delete(id).await.unwrap();
    assert!(store.get(id).await.unwrap().is_none());
    assert!(store.events(id, None).await.unwrap().is_empty());
    assert!(matches!(store.delete(id).await, Err(StoreError::NotFound)));
}

pub async fn list_pages_newest_first_per_tenant(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..7 {
        let queue = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(
            store
                .submit(new_job("t", queue, None, "{}"), t(i))
                .await
                .unwrap()
                .job()
                .id,
        );
    }
    store
        .submit(new_job("other", "even", None, "{}"), t(9))
        .await
        .unwrap();
    let q = |before, queue: Option<&str>| ListQuery {
        tenant: Some(Tenant("t".into())),
        queue: queue.map(str::to_string),
        before,
        limit: 3,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store.list(q(before, None)).await.unwrap().jobs;
        if page.is_empty() {
            break;
        }
        before = page.last().map(|j| j.id);
        seen.extend(page.into_iter().map(|j| j.id));
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let even = store.list(q(None, Some("even"))).await.unwrap().jobs;
    assert_eq!(even.len(), 3);
    assert!(even.iter().all(|j| j.queue == "even" && j.tenant.0 == "t"));
    let canceled = store
        .list(ListQuery {
            state: Some(JobState::Canceled),
            ..q(None, None)
        })
        .await
        .unwrap()
        .jobs;
    assert!(canceled.is_empty());
}

pub async fn counts_by_queue_and_state(store: Arc<dyn Store>) {
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(submit(&*store, "a").await);
    }
    made.push(submit(&*store, "b").await);
    lease_one(&*store, "a", t(0)).await;
    let counted = store.counts().await.unwrap();
    let mut counts: Vec<_> = counted
        .jobs
        .iter()
        .cloned()
        .map(|c| (c.queue, c.state, c.count))
        .collect();
    counts.sort_by(|x, y| (&x.0, x.1.as_str()).cmp(&(&y.0, y.1.as_str())));
    assert_eq!(
        counts,
        [
            ("a".to_string(), JobState::Queued, 2),
            ("a".to_string(), JobState::Running, 1),
            ("b".to_string(), JobState::Queued, 1),
        ]
    );
    // The count says which events it saw: all so far, none after. (Each
    // job's events: the log's readers wait for the horizon, which other
    // tests' transactions may hold.)
    let mut log = Vec::new();
    for id in made {
        log.extend(store.events(id, None).await.unwrap());
    }
    assert_eq!(log.len(), 5);
    assert!(
        log.iter().all(|e| counted.seen.includes(e.id)),
        "{counted:?}"
    );
    let later = submit(&*store, "a").await;
    let after = store.events(later, None).await.unwrap();
    assert!(!counted.seen.includes(after[0].id), "{counted:?}");
}

pub async fn cluster_secret_is_stable(store: Arc<dyn Store>) {
    let a = store.cluster_secret().await.unwrap();
    let b = store.cluster_secret().await.unwrap();
    assert_eq!(a, b);
    assert!(a.len() >= 32);
    store.ping().await.unwrap();
}

pub async fn settings_are_kept_once_and_replaced_only_from_what_was_read(store: Arc<dyn Store>) {
    let key = "conformance_setting";
    assert_eq!(store.setting(key).await.unwrap(), None);
    // Racing initialisers agree on one value.
    let racers = (0..8u8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.setting_or_init(key, vec![i; 4]).await.unwrap() })
    });
    let kept: Vec<Vec<u8>> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(kept.iter().all(|v| *v == kept[0]), "{kept:?}");
    assert_eq!(store.setting(key).await.unwrap().as_ref(), Some(&kept[0]));
    // A replacement from a stale read changes nothing.
    assert!(
        !store
            .replace_setting(key, Some(b"stale"), b"x".to_vec())
            .await
            .unwrap()
    );
    assert!(
        !store
            .replace_setting(key, None, b"x".to_vec())
            .await
            .unwrap()
    );
    assert!(
        store
            .replace_setting(key, Some(&kept[0]), b"new".to_vec())
            .await
            .unwrap()
    );
    assert_eq!(store.setting(key).await.unwrap(), Some(b"new".to_vec()));
    // The first value of a key is set from "none".
    assert!(
        store
            .replace_setting("conformance_other", None, b"1".to_vec())
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .setting_or_init("conformance_other", b"2".to_vec())
            .await
            .unwrap(),
        b"1"
    );
}

pub async fn subscribers_see_committed_events(store: Arc<dyn Store>) {
    let mut rx = store.subscribe();
    let id = submit(&*store, "q").await;
    let batch = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .unwrap();
    let e = &batch[0];
    assert_eq!((e.job_id, e.kind), (id, EventKind::Accepted));
    let logged = store.events(id, None).await.unwrap();
    assert_eq!(logged[0].id, e.id, "the bus carries the log's ids");
}

pub async fn tenant_scoped_leases(store: Arc<dyn Store>) {
    store
        .submit(new_job("a", "q", None, "{}"), t(0))
        .await
        .unwrap();
    let b = store
        .submit(new_job("b", "q", None, "{}"), t(1))
        .await
        .unwrap();
    let got = store
        .lease(
            LeaseQuery {
                tenant: Some(Tenant("b".into())),
                ..lq("q", 10)
            },
            t(2),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.id, b.job().id);
    // A command scoped to another tenant finds no such job, even with the
    // right lease.
    let complete = || Command::Complete {
        lease_id: got[0].lease_id.clone(),
    };
    let id = got[0].job.id;
    let wrong = store
        .apply(id, Some(&Tenant("a".into())), complete(), None, t(3))
        .await;
    assert!(matches!(wrong, Err(StoreError::NotFound)), "{wrong:?}");
    let right = store
        .apply(id, Some(&Tenant("b".into())), complete(), None, t(3))
        .await;
    assert_eq!(right.unwrap().state, JobState::Succeeded);
}

fn hooked(tenant: &str, events: serde_json::Value) -> NewJob {
    let mut job = new_job(tenant, "q", None, "{}");
    job.webhook = Some(serde_json::json!({"url": "https://hooks.test/x", "events": events}));
    job
}

/// A finished job of `tenant` owing one webhook delivery; its id.
async fn owing(store: &dyn Store, tenant: &str) -> JobId {
    let id = store
        .submit(hooked(tenant, serde_json::json!([])), t(0))
        .await
        .unwrap()
        .job()
        .id;
    store
        .apply(id, None, Command::Cancel, None, t(1))
        .await
        .unwrap();
    id
}

fn attempt(at: DateTime<Utc>, status: Option<u16>) -> AttemptRecord {
    AttemptRecord {
        at,
        status,
        latency_ms: 12,
        error: status.filter(|s| *s >= 300).map(|s| format!("HTTP {s}")),
    }
}

/// A webhook that asks for `job.accepted` is owed it from the submit's
/// own transaction, among submits that owe nothing (PostgreSQL writes a
/// batch of those in one statement, and a batch with an owed delivery in
/// a transaction around it); each job has its accepted event once.
pub async fn an_accepted_event_asked_for_is_owed_from_the_submit(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let new = if i % 4 == 0 {
                    hooked("t", serde_json::json!(["job.accepted"]))
                } else {
                    new_job("t", "q", None, "{}")
                };
                (i, store.submit(new, t(0)).await.unwrap().job().id)
            })
        })
        .collect();
    for task in tasks {
        let (i, id) = task.await.unwrap();
        let kinds: Vec<EventKind> = store
            .deliveries(id)
            .await
            .unwrap()
            .iter()
            .map(|(d, _)| d.kind)
            .collect();
        let want: &[EventKind] = if i % 4 == 0 {
            &[EventKind::Accepted]
        } else {
            &[]
        };
        assert_eq!(kinds, want, "job {i}");
        let events: Vec<EventKind> = store
            .events(id, None)
            .await
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(events, [EventKind::Accepted], "job {i}");
    }
}

pub async fn outbox_deliveries_in_order_with_attempts(store: Arc<dyn Store>) {
    let lease_len = Duration::from_secs(30);
    // No webhook: nothing owed.
    let plain = submit(&*store, "other").await;
    store
        .apply(plain, None, Command::Cancel, None, t(1))
        .await
        .unwrap();
    assert!(store.deliveries(plain).await.unwrap().is_empty());

    let id = store
        .submit(hooked("t", serde_json::json!(["job.progress"])), t(0))
        .await
        .unwrap()
        .job()
        .id;
    let (_, lease) = lease_one(&*store, "q", t(0)).await;
    store
        .apply(
            id,
            None,
            Command::Progress {
                lease_id: lease.clone(),
                progress: replyd_core::Progress {
                    percent: Some(50.0),
                    message: None,
                },
            },
            None,
            t(1),
        )
        .await
        .unwrap();
    let out = JobOutput {
        content_type: "application/json".into(),
        body: Bytes::from_static(b"1"),
        upstream: None,
    };
    store
        .apply(
            id,
            None,
            Command::Complete { lease_id: lease },
            Some(out.clone()),
            t(2),
        )
        .await
        .unwrap();
    let owed = store.deliveries(id).await.unwrap();
    let kinds: Vec<EventKind> = owed.iter().map(|(d, _)| d.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::Progress, EventKind::Succeeded],
        "started and accepted are not owed"
    );
    assert!(
        owed.iter()
            .all(|(d, a)| d.state == DeliveryState::Pending && a.is_empty())
    );
    assert_eq!(
        owed[1].0.job.state,
        JobState::Succeeded,
        "the job as it was after the event"
    );
    let (first, second) = (owed[0].0.id, owed[1].0.id);
    assert_ne!(owed[0].0.message_id(), owed[1].0.message_id());

    // Only the oldest pending delivery of a job is due.
    let claimed = store
        .claim_deliveries(Channel::Webhook, t(3), lease_len, 10)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.delivery.id).collect::<Vec<_>>(),
        [first]
    );
    assert_eq!(
        claimed[0].result, None,
        "a progress delivery carries no result"
    );
    assert!(
        store
            .claim_deliveries(Channel::Webhook, t(4), lease_len, 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed"
    );
    // A failed attempt: retried at t(20); meanwhile the later one waits.
    record(
        &store,
        first,
        attempt(t(5), Some(503)),
        AfterAttempt::RetryAt(t(20)),
    )
    .await;
    assert!(
        store
            .claim_deliveries(Channel::Webhook, t(10), lease_len, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .claim_deliveries(Channel::Webhook, t(20), lease_len, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.id, first);
    assert_eq!(again[0].delivery.attempts, 1);
    record(
        &store,
        first,
        attempt(t(21), Some(200)),
        AfterAttempt::Delivered,
    )
    .await;
    // Now the terminal one, with the job's (small) result.
    let next = store
        .claim_deliveries(Channel::Webhook, t(22), lease_len, 10)
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|c| c.delivery.id).collect::<Vec<_>>(),
        [second]
    );
    assert_eq!(next[0].result.as_ref(), Some(&out));
    // Given back because its endpoint is busy: due again later, no attempt
    // counted.
    store.defer_deliveries(vec![(second, t(30))]).await.unwrap();
    assert!(
        store
            .claim_deliveries(Channel::Webhook, t(29), lease_len, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let back = store
        .claim_deliveries(Channel::Webhook, t(30), lease_len, 10)
        .await
        .unwrap();
    assert_eq!(
        (back[0].delivery.id, back[0].delivery.attempts),
        (second, 0)
    );
    // A claim that expires (the dispatcher died) is claimed again.
    assert_eq!(
        store
            .claim_deliveries(Channel::Webhook, t(60), lease_len, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    record(
        &store,
        second,
        attempt(t(61), Some(410)),
        AfterAttempt::Dead,
    )
    .await;
    let dead = store.deliveries(id).await.unwrap().remove(1).0;
    assert_eq!(dead.state, DeliveryState::Dead);
    assert_eq!(dead.last_error.as_deref(), Some("HTTP 410"));

    // The attempt log.
    let log = store.deliveries(id).await.unwrap();
    assert_eq!(log[0].0.state, DeliveryState::Delivered);
    let statuses: Vec<Option<u16>> = log[0].1.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(503), Some(200)]);
    assert_eq!(log[0].1[0].at, t(5));
    assert_eq!(log[0].1[0].latency_ms, 12);
    assert_eq!(log[1].1.len(), 1);

    // A delivery that succeeded is sent again only when that is asked for.
    let first = log[0].0.id;
    assert!(matches!(
        store
            .replay_delivery(first, Some(&Tenant("t".into())), false, t(65))
            .await,
        Err(StoreError::AlreadyDelivered)
    ));
    assert_eq!(
        store.deliveries(id).await.unwrap()[0].0.state,
        DeliveryState::Delivered,
        "a refused replay changes nothing"
    );
    assert!(matches!(
        store
            .replay_delivery(first, Some(&Tenant("u".into())), false, t(65))
            .await,
        Err(StoreError::NotFound)
    ));

    // Dead letters: listed per tenant, replayed.
    let listed = store
        .list_deliveries(
            Some(Tenant("t".into())),
            Some(DeliveryState::Dead),
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|d| d.id).collect::<Vec<_>>(), [second]);
    assert!(
        store
            .list_deliveries(Some(Tenant("u".into())), None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list_deliveries(None, None, None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .list_deliveries(None, None, Some(second), 10)
            .await
            .unwrap()
            .len(),
        1,
        "the cursor pages"
    );
    assert!(matches!(
        store
            .replay_delivery(second, Some(&Tenant("u".into())), false, t(70))
            .await,
        Err(StoreError::NotFound)
    ));
    let replayed = store
        .replay_delivery(second, Some(&Tenant("t".into())), false, t(70))
        .await
        .unwrap();
    assert_eq!(
        (replayed.state, replayed.attempts),
        (DeliveryState::Pending, 0)
    );
    assert_eq!(
        store
            .claim_deliveries(Channel::Webhook, t(70), lease_len, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.deliveries(id).await.unwrap()[1].1.len(),
        1,
        "the log stays"
    );

    // Replaying dead letters in bulk: by tenant, queue and when they died.
    record(
        &store,
        second,
        attempt(t(71), Some(410)),
        AfterAttempt::Dead,
    )
    .await;
    let none = store
        .replay_dead_deliveries(
            Some(Tenant("t".into())),
            Some("other".into()),
            t(0),
            t(100),
            t(80),
        )
        .await
        .unwrap();
    assert_eq!(none, 0, "another queue");
    let too_early = store
        .replay_dead_deliveries(None, None, t(0), t(70), t(80))
        .await
        .unwrap();
    assert_eq!(too_early, 0, "died at t(71)");
    let n = store
        .replay_dead_deliveries(
            Some(Tenant("t".into())),
            Some("q".into()),
            t(71),
            t(72),
            t(80),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        store
            .claim_deliveries(Channel::Webhook, t(80), lease_len, 10)
            .await
            .unwrap()[0]
            .delivery
            .id,
        second
    );
    // Deleting the job takes its deliveries; an attempt on one that was
    // in flight is then skipped, not an error.
    store.delete(id).await.unwrap();
    assert!(store.deliveries(id).await.unwrap().is_empty());
    record(
        &store,
        second,
        attempt(t(81), Some(200)),
        AfterAttempt::Delivered,
    )
    .await;
}

/// Records one attempt.
async fn record(
    store: &Arc<dyn Store>,
    delivery: i64,
    attempt: AttemptRecord,
    after: AfterAttempt,
) {
    store
        .record_attempts(
            vec![Outcome {
                delivery,
                attempt,
                after,
            }],
            replyd_core::ops::Watch::default(),
        )
        .await
        .unwrap();
}

/// A job that came over a broker owes its reply on that broker's channel,
/// beside (and not behind) its webhook; a duplicate request is owed the
/// outcome at its own address, whether the job had finished or not.
pub async fn replies_are_owed_on_their_own_channel(store: Arc<dyn Store>) {
    let lease_len = Duration::from_secs(30);
    let target = ReplyTarget {
        to: "amq.rabbitmq.reply-to.abc".into(),
        correlation_id: Some("corr-1".into()),
        echo: Default::default(),
    };
    let mut new = hooked("t", serde_json::json!([]));
    new.reply = Some(ReplySpec {
        channel: Channel::Amqp,
        target: target.clone(),
        progress: true,
    });
    let spec = new.reply.clone().unwrap();
    let id = store.submit(new, t(0)).await.unwrap().job().id;
    // A duplicate with the request's own target while it runs: owed already.
    assert_eq!(
        store.ask_reply(id, spec.clone(), t(0)).await.unwrap(),
        ReplyAsked::Owed
    );
    // A duplicate from a requester back with another callback queue while
    // it runs: remembered, and owed the outcome (not the progress).
    let back = ReplySpec {
        // What the reply echoes (a Kafka key, say) is remembered too.
        target: ReplyTarget {
            to: "callback-2".into(),
            correlation_id: Some("corr-b".into()),
            echo: [("key".to_string(), "a2V5LWI=".to_string())].into(),
        },
        ..spec.clone()
    };
    assert_eq!(
        store.ask_reply(id, back.clone(), t(0)).await.unwrap(),
        ReplyAsked::Remembered
    );
    assert_eq!(
        store.ask_reply(id, back.clone(), t(0)).await.unwrap(),
        ReplyAsked::Owed,
        "remembered durably, once"
    );
    let (_, lease) = lease_one(&*store, "q", t(1)).await;
    store
        .apply(
            id,
            None,
            Command::Progress {
                lease_id: lease.clone(),
                progress: replyd_core::Progress {
                    percent: Some(50.0),
                    message: None,
                },
            },
            None,
            t(2),
        )
        .await
        .unwrap();
    store
        .apply(id, None, Command::Complete { lease_id: lease }, None, t(3))
        .await
        .unwrap();
    // The webhook owes only the terminal event; the reply its progress too.
    let owed: Vec<(Channel, EventKind)> = store
        .deliveries(id)
        .await
        .unwrap()
        .iter()
        .map(|(d, _)| (d.channel, d.kind))
        .collect();
    assert_eq!(
        owed,
        [
            (Channel::Amqp, EventKind::Progress),
            (Channel::Webhook, EventKind::Succeeded),
            (Channel::Amqp, EventKind::Succeeded),
            (Channel::Amqp, EventKind::Succeeded),
        ]
    );
    let targets: Vec<Option<ReplyTarget>> = store
        .deliveries(id)
        .await
        .unwrap()
        .iter()
        .filter(|(d, _)| d.kind == EventKind::Succeeded && d.channel == Channel::Amqp)
        .map(|(d, _)| ReplyTarget::decode(&d.target))
        .collect();
    assert_eq!(targets, [Some(target.clone()), Some(back.target.clone())]);
    // Each channel is claimed on its own: the webhook's pending delivery
    // does not hold up the reply, nor the reverse.
    let hook = store
        .claim_deliveries(Channel::Webhook, t(4), lease_len, 10)
        .await
        .unwrap();
    assert_eq!(hook.len(), 1);
    let replies = store
        .claim_deliveries(Channel::Amqp, t(4), lease_len, 10)
        .await
        .unwrap();
    assert_eq!(
        replies.iter().map(|c| c.delivery.kind).collect::<Vec<_>>(),
        [EventKind::Progress],
        "a job's replies leave in order"
    );
    assert_eq!(
        ReplyTarget::decode(&replies[0].delivery.target),
        Some(target.clone())
    );
    record(
        &store,
        replies[0].delivery.id,
        attempt(t(5), None),
        AfterAttempt::Delivered,
    )
    .await;
    let last = store
        .claim_deliveries(Channel::Amqp, t(6), lease_len, 10)
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].delivery.kind, EventKind::Succeeded);
    assert_eq!(last[0].delivery.job.state, JobState::Succeeded);
    // A duplicate request once it has finished: its reply is owed again,
    // to the duplicate's own address.
    let again = ReplyTarget {
        to: "replies-2".into(),
        correlation_id: Some("corr-2".into()),
        echo: [("partition".to_string(), "3".to_string())].into(),
    };
    assert_eq!(
        store
            .ask_reply(
                id,
                ReplySpec {
                    target: again.clone(),
                    ..spec.clone()
                },
                t(7)
            )
            .await
            .unwrap(),
        ReplyAsked::Now(EventKind::Succeeded)
    );
    let all = store.deliveries(id).await.unwrap();
    let (d, attempts) = all.last().unwrap();
    assert_eq!(
        (d.channel, d.kind, d.state, attempts.len()),
        (
            Channel::Amqp,
            EventKind::Succeeded,
            DeliveryState::Pending,
            0
        )
    );
    assert_eq!(ReplyTarget::decode(&d.target), Some(again));
    assert!(matches!(
        store.ask_reply(JobId::new(), spec, t(7)).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn concurrent_claims_never_share_a_delivery(store: Arc<dyn Store>) {
    let mut ids = HashSet::new();
    for _ in 0..30 {
        ids.insert(owing(&*store, "t").await);
    }
    let mut claimers = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim_deliveries(Channel::Webhook, t(2), Duration::from_secs(60), 3)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| c.delivery.id));
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 30, "each delivery claimed once: {all:?}");
    assert_eq!(distinct.len(), 30);
}

/// A job's output stream: appended only with the job's current lease (the
/// first append makes it), and gone with the job (garbage collection, as
/// `delete` shares its forgetting).
pub async fn job_output_is_fenced_by_the_lease_and_goes_with_the_job(store: Arc<dyn Store>) {
    use replyd_core::stream::{Append, AppendRefusal, Appended, Found, StreamKey, output_path};
    let Some(streams) = store.streams() else {
        return;
    };
    let a = store
        .submit(new_job("t", "q", None, "{}"), t(0))
        .await
        .unwrap()
        .job()
        .id;
    let key = StreamKey {
        tenant: Tenant("t".into()),
        path: output_path(a),
    };
    let chunk = |body: &'static str| Append {
        content_type: Some("text/plain".into()),
        body: Bytes::from_static(body.as_bytes()),
        ..Append::default()
    };
    let refused = streams
        .output_append(&key, a, LeaseId("nope".into()), chunk("x"), t(0))
        .await
        .unwrap();
    assert_eq!(
        refused,
        Found::Live(Err(AppendRefusal::NotLeased)),
        "queued: no lease"
    );
    let (_, lease) = lease_one(&*store, "q", t(0)).await;
    for part in ["Hello, ", "world"] {
        let ok = streams
            .output_append(&key, a, lease.clone(), chunk(part), t(1))
            .await
            .unwrap();
        assert!(
            matches!(ok, Found::Live(Ok(Appended::Written { .. }))),
            "{ok:?}"
        );
    }
    let other = StreamKey {
        tenant: Tenant("u".into()),
        path: output_path(a),
    };
    let foreign = streams
        .output_append(&other, a, lease.clone(), chunk("x"), t(1))
        .await
        .unwrap();
    assert_eq!(
        foreign,
        Found::Missing,
        "another tenant's key reaches nothing"
    );
    let Found::Live((s, read)) = streams.stream_read(&key, 0, 1024, t(1)).await.unwrap() else {
        panic!("the output is there");
    };
    assert_eq!(s.content_type, "text/plain");
    assert_eq!(read.chunks.concat(), b"Hello, world".to_vec());
    store
        .apply(
            a,
            None,
            Command::Complete {
                lease_id: lease.clone(),
            },
            None,
            t(2),
        )
        .await
        .unwrap();
    let late = streams
        .output_append(&key, a, lease, chunk("late"), t(3))
        .await
        .unwrap();
    assert_eq!(
        late,
        Found::Live(Err(AppendRefusal::NotLeased)),
        "an ended job takes no more"
    );
    // ttl is 100 s after the end.
    assert_eq!(store.collect_garbage(t(102), 100).await.unwrap(), 1);
    assert_eq!(
        streams.stream_head(&key, false, t(102)).await.unwrap(),
        Found::Missing,
        "the output went with its job"
    );
}
