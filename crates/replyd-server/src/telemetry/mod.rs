//! OpenTelemetry: the trace a job belongs to, passed on everywhere the job
//! goes, and (with `[telemetry] otlp_endpoint`, feature `otel`) replyd's
//! own spans of it, exported over OTLP.
//!
//! **Propagation** (always on): a submission's W3C `traceparent` and
//! `tracestate` (an HTTP header, a WebSocket field, a broker message's
//! headers) are kept in the job ([`replyd_core::trace::TraceContext`]).
//! Whatever the job causes carries them on: a worker's lease, an `exec`
//! command's `TRACEPARENT`, an `http` upstream call's headers, a broker
//! worker's message, each webhook and broker reply ([`Telemetry::outgoing`]).
//!
//! **Spans** (when exporting): a sampled job's spans, each a child of
//! `replyd.job` (which is the submitter's span's child, or the root of a
//! trace replyd started): `replyd.submit` (until durable), and for each
//! attempt `replyd.queue_wait` and `replyd.attempt`, and for each delivery
//! attempt `replyd.deliver`. What a worker or receiver gets is the
//! position of the span that caused it (its attempt, its delivery), so its
//! own spans hang below. Span ids are derived from the job
//! ([`replyd_core::trace::span_id`]), so every node names them alike.
//! Spans of what one node does itself (a submission, a delivery attempt)
//! are recorded where it happens ([`Telemetry::record`]); spans of a job's
//! moves are read from the event log by one node of the cluster at a time
//! ([`log`]), so that each is exported once whichever node made the move.
//! Export is best effort: a full queue or an unreachable collector drops
//! spans (counted in `replyd_telemetry_spans_dropped_total`), never slows
//! a job.

pub mod log;
#[cfg(feature = "otel")]
pub mod otlp;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use replyd_core::JobRecord;
use replyd_core::outbox::Delivery;
use replyd_core::trace::{SpanContext, SpanOf, TraceContext, span_id};
use tokio::sync::mpsc;

/// Spans waiting for export, at most.
const QUEUE: usize = 8192;

/// What replyd does with traces; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Spans are made and exported.
    exporting: bool,
    sample_ratio: f64,
    spans: Option<mpsc::Sender<Span>>,
}

/// The W3C headers to send with something a job causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// What kind of span, as OTLP numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub name: &'static str,
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub kind: SpanKind,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub attributes: Vec<(&'static str, Value)>,
    /// Why it failed, if it did (status ERROR).
    pub error: Option<String>,
}

impl Span {
    /// Span `what` of `job` (sampled in a trace), `None` if the job is not.
    /// Its parent is the job's span; the job's span's is the submitter's.
    pub fn of(
        job: &JobRecord,
        what: SpanOf,
        name: &'static str,
        kind: SpanKind,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Option<Span> {
        let trace = job.trace.as_ref().filter(|t| t.sampled())?;
        let parent = match what {
            SpanOf::Job => trace.parent,
            _ => Some(span_id(job.id, SpanOf::Job)),
        };
        Some(Span {
            name,
            context: trace.at(span_id(job.id, what)),
            parent,
            kind,
            start: start.min(end),
            end,
            attributes: vec![
                ("replyd.job.id", Value::Str(job.id.to_string())),
                ("replyd.queue", Value::Str(job.queue.clone())),
                ("replyd.tenant", Value::Str(job.tenant.0.clone())),
            ],
            error: None,
        })
    }

    pub fn with(mut self, key: &'static str, value: Value) -> Span {
        self.attributes.push((key, value));
        self
    }

    pub fn failed(mut self, why: Option<String>) -> Span {
        self.error = Some(why.unwrap_or_default());
        self
    }
}

impl Telemetry {
    /// Propagation only: no spans are made.
    pub fn off() -> Telemetry {
        Telemetry::default()
    }

    /// Exporting spans: they are sent on the returned queue.
    pub fn exporting(sample_ratio: f64) -> (Telemetry, mpsc::Receiver<Span>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Inner {
            exporting: true,
            sample_ratio,
            spans: Some(tx),
        };
        (
            Telemetry {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// As `[telemetry]` says: exporting when an endpoint is set (and the
    /// `otel` feature built in), else propagation only.
    pub fn configured(cfg: &crate::config::Telemetry) -> (Telemetry, Option<mpsc::Receiver<Span>>) {
        if cfg!(feature = "otel") && cfg.otlp_endpoint.is_some() {
            let (t, rx) = Telemetry::exporting(cfg.sample_ratio);
            (t, Some(rx))
        } else {
            (Telemetry::off(), None)
        }
    }

    pub fn is_exporting(&self) -> bool {
        self.inner.exporting
    }

    /// The trace a new job is in: its submitter's, or, when exporting, a
    /// new one (sampled at `sample_ratio`).
    pub fn begin(&self, given: Option<TraceContext>) -> Option<TraceContext> {
        if given.is_some() || !self.inner.exporting {
            return given;
        }
        let sampled = rand::random::<f64>() < self.inner.sample_ratio;
        let mut id: [u8; 16] = rand::random();
        if id == [0; 16] {
            id[15] = 1;
        }
        Some(TraceContext::root(id, sampled))
    }

    /// What to send with what span `what` of `job` causes: that span's
    /// position when replyd exports the job's spans, else the submitter's
    /// own (passed on unchanged); `None` when the job is in no trace.
    pub fn outgoing(&self, job: &JobRecord, what: SpanOf) -> Option<Outgoing> {
        let trace = job.trace.as_ref()?;
        let at = if self.inner.exporting && trace.sampled() {
            trace.at(span_id(job.id, what))
        } else {
            trace.submitter()?
        };
        Some(Outgoing {
            traceparent: at.traceparent(),
            tracestate: trace.state.clone(),
        })
    }

    /// Hands a span to the exporter; dropped (and counted) if it is behind.
    pub fn record(&self, span: Option<Span>) {
        let (Some(span), Some(tx)) = (span, &self.inner.spans) else {
            return;
        };
        if tx.try_send(span).is_err() {
            metrics::counter!("replyd_telemetry_spans_dropped_total", "why" => "queue_full")
                .increment(1);
        }
    }

    /// The span of a job's acceptance, from `start` to `end`, `via` the
    /// ingress it came by.
    pub fn submitted(
        &self,
        job: &JobRecord,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
        via: &'static str,
    ) {
        if !self.inner.exporting {
            return;
        }
        let span = Span::of(
            job,
            SpanOf::Submit,
            "replyd.submit",
            SpanKind::Server,
            start,
            end,
        )
        .map(|s| s.with("replyd.via", Value::Str(via.into())));
        self.record(span);
    }

    /// The span of attempt `n` of a delivery, from `start` to `end`.
    pub fn delivered(
        &self,
        d: &Delivery,
        n: u32,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        status: Option<u16>,
        error: Option<&str>,
    ) {
        if !self.inner.exporting {
            return;
        }
        let kind = if d.channel == replyd_core::outbox::Channel::Webhook {
            SpanKind::Client
        } else {
            SpanKind::Producer
        };
        let span = Span::of(
            &d.job,
            SpanOf::Delivery(d.id, n),
            "replyd.deliver",
            kind,
            start,
            end,
        )
        .map(|s| {
            let mut s = s
                .with("replyd.channel", Value::Str(d.channel.as_str().into()))
                .with("replyd.event", Value::Str(d.kind.name().into()))
                .with("replyd.delivery.attempt", Value::Int(i64::from(n)));
            if let Some(code) = status {
                s = s.with("http.response.status_code", Value::Int(i64::from(code)));
            }
            match error {
                Some(e) => s.failed(Some(e.to_string())),
                None => s,
            }
        });
        self.record(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replyd_core::trace::parse_traceparent;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn job(trace: Option<TraceContext>) -> JobRecord {
        let new = replyd_core::NewJob {
            trace,
            ..replyd_core::NewJob::plain(replyd_core::Tenant::open(), "q")
        };
        new.into_record(Utc::now()).0
    }

    #[test]
    fn without_export_the_submitters_position_is_passed_on_unchanged() {
        let t = Telemetry::off();
        let given = TraceContext::parse(TP, Some("a=1"));
        assert_eq!(t.begin(given.clone()), given);
        assert_eq!(t.begin(None), None, "no trace is started");
        let j = job(given);
        let out = t.outgoing(&j, SpanOf::Attempt(1)).unwrap();
        assert_eq!(out.traceparent, TP);
        assert_eq!(out.tracestate.as_deref(), Some("a=1"));
        assert_eq!(t.outgoing(&job(None), SpanOf::Attempt(1)), None);
    }

    #[test]
    fn when_exporting_what_a_job_causes_hangs_below_replyds_span() {
        let (t, _rx) = Telemetry::exporting(1.0);
        let j = job(TraceContext::parse(TP, None));
        let out =
            parse_traceparent(&t.outgoing(&j, SpanOf::Attempt(2)).unwrap().traceparent).unwrap();
        assert_eq!(out.trace_id, j.trace.as_ref().unwrap().trace_id);
        assert_eq!(out.span_id, span_id(j.id, SpanOf::Attempt(2)));
        // A trace the submitter did not sample is passed on, not joined.
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let j = job(TraceContext::parse(unsampled, None));
        assert_eq!(
            t.outgoing(&j, SpanOf::Attempt(1)).unwrap().traceparent,
            unsampled
        );
        // A job with no trace starts one, sampled at the ratio.
        let root = t.begin(None).unwrap();
        assert!(root.sampled() && root.parent.is_none());
        let (never, _rx) = Telemetry::exporting(0.0);
        assert!(!never.begin(None).unwrap().sampled());
    }

    #[test]
    fn a_jobs_spans_hang_below_its_job_span_which_hangs_below_the_submitter() {
        let j = job(TraceContext::parse(TP, None));
        let now = Utc::now();
        let job_span =
            Span::of(&j, SpanOf::Job, "replyd.job", SpanKind::Internal, now, now).unwrap();
        assert_eq!(
            job_span.parent,
            Some(parse_traceparent(TP).unwrap().span_id)
        );
        let attempt = Span::of(
            &j,
            SpanOf::Attempt(1),
            "replyd.attempt",
            SpanKind::Internal,
            now,
            now,
        )
        .unwrap();
        assert_eq!(attempt.parent, Some(job_span.context.span_id));
        assert!(
            Span::of(
                &job(None),
                SpanOf::Job,
                "replyd.job",
                SpanKind::Internal,
                now,
                now
            )
            .is_none()
        );
    }
}
