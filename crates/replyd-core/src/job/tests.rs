//! `JobRecord`'s rules, case by case.

use super::*;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn job(max_attempts: u32) -> JobRecord {
    NewJob {
        id: JobId::new(),
        tenant: Tenant::open(),
        queue: "q".into(),
        input: bytes::Bytes::from_static(b"{}"),
        max_attempts,
        timeout: Duration::from_secs(60),
        ttl: Duration::from_secs(3600),
        webhook: None,
        reply: None,
        idempotency_key: None,
        request_hash: None,
        output_type: None,
        trace: None,
        priority: 0,
        head_start: std::time::Duration::ZERO,
        group: None,
        run_at: None,
    }
    .into_record(t(0))
    .0
}

fn lease(j: &mut JobRecord, now: DateTime<Utc>, secs: u64) -> LeaseId {
    let id = LeaseId::new();
    j.apply(
        Command::Lease {
            lease_id: id.clone(),
            worker: "w".into(),
            length: Duration::from_secs(secs),
        },
        now,
        &RetryPolicy::default(),
    )
    .unwrap();
    id
}

const P: RetryPolicy = RetryPolicy {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

#[test]
fn happy_path_bumps_version_and_sets_expiry() {
    let mut j = job(3);
    let l = lease(&mut j, t(1), 30);
    assert_eq!((j.state, j.attempt, j.version), (JobState::Running, 1, 2));
    let e = j
        .apply(Command::Complete { lease_id: l }, t(2), &P)
        .unwrap();
    assert_eq!(e.event, Some(EventKind::Succeeded));
    assert_eq!(j.state, JobState::Succeeded);
    assert_eq!(j.finished_at, Some(t(2)));
    assert_eq!(j.expires_at, Some(t(3602)));
    assert!(j.lease.is_none());
    assert_eq!(j.version, 3);
}

/// Each `job.output` announces the part since the last one, never the
/// same part twice; only the lease holder's, and not after the end.
#[test]
fn output_announcements_cover_each_part_once() {
    let mut j = job(1);
    let l = lease(&mut j, t(0), 30);
    let out = |to| Command::Output {
        lease_id: l.clone(),
        to,
    };
    let e = j.apply(out(10), t(1), &P).unwrap();
    assert_eq!(e.event, Some(EventKind::Output));
    assert_eq!(j.output, Some(OutputMark { from: 0, to: 10 }));
    let v = j.version;
    // Nothing new (a late or repeated announcement): no event.
    assert_eq!(j.apply(out(10), t(2), &P).unwrap().event, None);
    assert_eq!(j.apply(out(4), t(2), &P).unwrap().event, None);
    assert_eq!(j.version, v);
    assert_eq!(j.output, Some(OutputMark { from: 0, to: 10 }));
    // An announcement is a sign of life: it extends the lease.
    assert_eq!(j.lease.as_ref().unwrap().expires_at, t(32));
    j.apply(out(25), t(3), &P).unwrap();
    assert_eq!(j.output, Some(OutputMark { from: 10, to: 25 }));
    let stranger = Command::Output {
        lease_id: LeaseId::new(),
        to: 40,
    };
    assert_eq!(
        j.apply(stranger, t(4), &P).unwrap_err(),
        TransitionError::LeaseLost
    );
    j.apply(
        Command::Complete {
            lease_id: l.clone(),
        },
        t(5),
        &P,
    )
    .unwrap();
    assert!(matches!(
        j.apply(out(40), t(6), &P).unwrap_err(),
        TransitionError::AlreadyFinished(_)
    ));
    assert_eq!(j.output, Some(OutputMark { from: 10, to: 25 }));
}

#[test]
fn a_stale_lease_is_fenced_off() {
    let mut j = job(3);
    let old = lease(&mut j, t(0), 10);
    // The lease expires; the reaper requeues; another worker takes it.
    j.apply(Command::ExpireLease, t(10), &P).unwrap();
    assert_eq!(j.state, JobState::Queued);
    let new = lease(&mut j, t(20), 10);
    let err = j
        .apply(
            Command::Complete {
                lease_id: old.clone(),
            },
            t(21),
            &P,
        )
        .unwrap_err();
    assert_eq!(err, TransitionError::LeaseLost);
    assert_eq!(j.state, JobState::Running);
    j.apply(Command::Complete { lease_id: new }, t(21), &P)
        .unwrap();
    assert_eq!(j.state, JobState::Succeeded);
}

#[test]
fn an_expired_lease_is_refused_even_before_the_reaper_runs() {
    let mut j = job(3);
    let l = lease(&mut j, t(0), 10);
    let err = j
        .apply(
            Command::Heartbeat {
                lease_id: l,
                length: None,
            },
            t(10),
            &P,
        )
        .unwrap_err();
    assert_eq!(err, TransitionError::LeaseLost);
}

#[test]
fn heartbeats_extend_the_lease_but_never_past_the_timeout() {
    let mut j = job(3);
    let l = lease(&mut j, t(0), 30);
    let v = j.version;
    j.apply(
        Command::Heartbeat {
            lease_id: l.clone(),
            length: None,
        },
        t(20),
        &P,
    )
    .unwrap();
    assert_eq!(j.lease.as_ref().unwrap().expires_at, t(50));
    assert_eq!(j.version, v, "a heartbeat is not a visible change");
    j.apply(
        Command::Heartbeat {
            lease_id: l,
            length: None,
        },
        t(45),
        &P,
    )
    .unwrap();
    assert_eq!(
        j.lease.as_ref().unwrap().expires_at,
        t(60),
        "capped by the 60 s timeout"
    );
}

#[test]
fn expired_leases_retry_with_backoff_until_max_attempts() {
    let mut j = job(3);
    let mut now = t(0);
    for attempt in 1..=3 {
        lease(&mut j, now, 10);
        now += chrono::Duration::seconds(10);
        let e = j.apply(Command::ExpireLease, now, &P).unwrap();
        if attempt < 3 {
            assert_eq!(e.event, Some(EventKind::Retrying));
            assert_eq!(j.state, JobState::Queued);
            let delay = (j.run_at - now).to_std().unwrap();
            let full = Duration::from_secs(1 << (attempt - 1));
            assert!(delay <= full && delay >= full.mul_f64(0.8), "{delay:?}");
            now = j.run_at;
        } else {
            assert_eq!(e.event, Some(EventKind::Failed));
            assert_eq!(j.state, JobState::Failed);
            assert_eq!(j.error.as_ref().unwrap().code, "lease_expired");
        }
    }
}

#[test]
fn fail_without_retry_is_final() {
    let mut j = job(5);
    let l = lease(&mut j, t(0), 10);
    let e = j
        .apply(
            Command::Fail {
                lease_id: l,
                error: JobError::new("worker_error", "boom"),
                retry: false,
            },
            t(1),
            &P,
        )
        .unwrap();
    assert_eq!(e.event, Some(EventKind::Failed));
    assert_eq!(j.error.as_ref().unwrap().message, "boom");
}

#[test]
fn cancel_of_a_queued_job_is_immediate() {
    let mut j = job(1);
    let e = j.apply(Command::Cancel, t(1), &P).unwrap();
    assert_eq!(e.event, Some(EventKind::Canceled));
    assert_eq!(j.state, JobState::Canceled);
    assert_eq!(
        j.apply(Command::Cancel, t(2), &P).unwrap_err(),
        TransitionError::AlreadyFinished(JobState::Canceled)
    );
}

#[test]
fn cancel_of_a_running_job_refuses_the_late_completion() {
    let mut j = job(1);
    let l = lease(&mut j, t(0), 30);
    let e = j.apply(Command::Cancel, t(1), &P).unwrap();
    assert_eq!(e.event, Some(EventKind::CancelRequested));
    assert!(j.cancel_requested);
    assert_eq!(j.state, JobState::Running);
    let e = j
        .apply(Command::Complete { lease_id: l }, t(2), &P)
        .unwrap();
    assert_eq!(e.event, Some(EventKind::Canceled));
    assert_eq!(e.refused, Some(TransitionError::CancelRequested));
    assert_eq!(j.state, JobState::Canceled);
}

#[test]
fn a_canceled_running_job_that_fails_or_expires_ends_canceled() {
    for expire in [false, true] {
        let mut j = job(3);
        let l = lease(&mut j, t(0), 30);
        j.apply(Command::Cancel, t(1), &P).unwrap();
        let cmd = if expire {
            Command::ExpireLease
        } else {
            Command::Fail {
                lease_id: l,
                error: JobError::new("x", "stopped"),
                retry: true,
            }
        };
        let now = if expire { t(30) } else { t(29) };
        j.apply(cmd, now, &P).unwrap();
        assert_eq!(j.state, JobState::Canceled);
    }
}

#[test]
fn only_queued_jobs_can_be_leased() {
    let mut j = job(1);
    lease(&mut j, t(0), 30);
    let err = j
        .apply(
            Command::Lease {
                lease_id: LeaseId::new(),
                worker: "w2".into(),
                length: Duration::from_secs(5),
            },
            t(1),
            &P,
        )
        .unwrap_err();
    assert_eq!(err, TransitionError::NotQueued(JobState::Running));
}

#[test]
fn backoff_grows_and_is_capped() {
    let id = JobId::new();
    let p = RetryPolicy {
        base: Duration::from_secs(2),
        max: Duration::from_secs(10),
    };
    assert!(p.backoff(id, 1) <= Duration::from_secs(2));
    assert!(p.backoff(id, 3) > Duration::from_secs(6));
    assert!(p.backoff(id, 40) <= Duration::from_secs(10));
    assert!(p.backoff(id, 40) >= Duration::from_secs(8));
}
