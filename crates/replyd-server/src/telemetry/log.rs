//! The spans of a job's moves, read from its events: what each event
//! ends. One node of a cluster reads the log at a time (`otlp::run`), so
//! each span is exported once, whichever node made the move.

use replyd_core::trace::SpanOf;
use replyd_core::{EventKind, EventRecord};

use super::{Span, SpanKind, Value};

/// The spans event `e` ends (none for a job in no sampled trace):
/// - `job.started`: attempt n's wait in its queue (from when it could
///   run);
/// - the end of a running attempt (`job.retrying`, `job.succeeded`,
///   `job.failed`, or `job.canceled` of a running job): the attempt;
/// - a terminal event: the job, from its acceptance.
pub fn spans_of(e: &EventRecord) -> Vec<Span> {
    let job = &e.job;
    let mut spans = Vec::new();
    let attempt = i64::from(job.attempt);
    match e.kind {
        EventKind::Started => {
            let span = Span::of(
                job,
                SpanOf::Wait(job.attempt),
                "replyd.queue_wait",
                SpanKind::Internal,
                job.run_at,
                e.at,
            );
            spans.extend(span.map(|s| s.with("replyd.attempt", Value::Int(attempt))));
        }
        EventKind::Retrying | EventKind::Succeeded | EventKind::Failed | EventKind::Canceled => {
            // A job canceled while queued had no attempt running.
            let ran = e.kind != EventKind::Canceled || job.cancel_requested;
            if let (true, Some(started)) = (ran, job.started_at) {
                let span = Span::of(
                    job,
                    SpanOf::Attempt(job.attempt),
                    "replyd.attempt",
                    SpanKind::Internal,
                    started,
                    e.at,
                )
                .map(|s| {
                    let s = s
                        .with("replyd.attempt", Value::Int(attempt))
                        .with("replyd.outcome", Value::Str(e.kind.name().into()));
                    if e.kind == EventKind::Succeeded {
                        s
                    } else {
                        s.failed(job.error.as_ref().map(|x| x.message.clone()))
                    }
                });
                spans.extend(span);
            }
        }
        _ => {}
    }
    if e.kind.is_terminal() {
        let span = Span::of(
            job,
            SpanOf::Job,
            "replyd.job",
            SpanKind::Internal,
            job.created_at,
            e.at,
        )
        .map(|s| {
            let s = s
                .with("replyd.state", Value::Str(job.state.as_str().into()))
                .with("replyd.attempts", Value::Int(attempt));
            if e.kind == EventKind::Succeeded {
                s
            } else {
                s.failed(job.error.as_ref().map(|x| x.message.clone()))
            }
        });
        spans.extend(span);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use replyd_core::job::{Command, JobRecord, RetryPolicy};
    use replyd_core::trace::{TraceContext, span_id};
    use replyd_core::{EventId, JobError, LeaseId};
    use std::time::Duration;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn event(job: &JobRecord, kind: EventKind) -> EventRecord {
        EventRecord {
            id: EventId(1),
            job_id: job.id,
            tenant: job.tenant.clone(),
            queue: job.queue.clone(),
            kind,
            at: job.updated_at,
            job: job.clone(),
        }
    }

    fn names(spans: &[Span]) -> Vec<&'static str> {
        spans.iter().map(|s| s.name).collect()
    }

    #[test]
    fn each_move_ends_its_spans() {
        let t0 = Utc::now();
        let new = replyd_core::NewJob {
            max_attempts: 2,
            trace: TraceContext::parse(TP, None),
            ..replyd_core::NewJob::plain(replyd_core::Tenant::open(), "q")
        };
        let (mut job, _) = new.into_record(t0);
        let policy = RetryPolicy::default();
        let lease = LeaseId::new();
        let t1 = t0 + chrono::Duration::milliseconds(40);
        let cmd = Command::Lease {
            lease_id: lease.clone(),
            worker: "w".into(),
            length: Duration::from_secs(30),
        };
        job.apply(cmd, t1, &policy).unwrap();
        let started = spans_of(&event(&job, EventKind::Started));
        assert_eq!(names(&started), ["replyd.queue_wait"]);
        assert_eq!(started[0].start, t0);
        assert_eq!(started[0].end, t1);
        assert_eq!(started[0].context.span_id, span_id(job.id, SpanOf::Wait(1)));

        let t2 = t1 + chrono::Duration::milliseconds(100);
        let fail = Command::Fail {
            lease_id: lease,
            error: JobError::new("boom", "it broke"),
            retry: true,
        };
        job.apply(fail, t2, &policy).unwrap();
        let retrying = spans_of(&event(&job, EventKind::Retrying));
        assert_eq!(names(&retrying), ["replyd.attempt"]);
        assert_eq!((retrying[0].start, retrying[0].end), (t1, t2));
        assert_eq!(retrying[0].error.as_deref(), Some("it broke"));

        // Canceled while queued: no attempt ran, the job ends.
        let t3 = t2 + chrono::Duration::milliseconds(5);
        job.apply(Command::Cancel, t3, &policy).unwrap();
        let canceled = spans_of(&event(&job, EventKind::Canceled));
        assert_eq!(names(&canceled), ["replyd.job"]);
        assert_eq!((canceled[0].start, canceled[0].end), (t0, t3));
        assert_eq!(
            canceled[0].parent,
            TraceContext::parse(TP, None).unwrap().parent
        );

        // A job in no trace has no spans.
        job.trace = None;
        assert!(spans_of(&event(&job, EventKind::Canceled)).is_empty());
    }
}
